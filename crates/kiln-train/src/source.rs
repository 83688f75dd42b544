//! What the trainer trains on: anything that yields [`Batch`]es, and the loss applied to them.

use kiln_autograd::Var;
use kiln_data::{Batch, Collate, DataLoader, Dataset, Targets};
use kiln_nn::{BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss, SmoothL1Loss};

/// A source of batches for one epoch: a [`DataLoader`] with the default collate step, or
/// batches held in memory.
pub trait BatchSource {
    /// The batches of the next epoch (a loader reshuffles each call).
    fn batches(&self) -> Box<dyn Iterator<Item = Batch> + '_>;
    /// How many batches an epoch has.
    fn num_batches(&self) -> usize;
}

impl<D, C> BatchSource for DataLoader<D, C>
where
    D: Dataset + 'static,
    C: Collate<D::Item, Batch = Batch> + 'static,
{
    fn batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.iter())
    }
    fn num_batches(&self) -> usize {
        self.len()
    }
}

impl BatchSource for Vec<Batch> {
    fn batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.iter().cloned())
    }
    fn num_batches(&self) -> usize {
        self.len()
    }
}

/// A loss the trainer can apply to a model's output and a batch's targets.
///
/// Implemented for kiln-nn's loss modules (class-index losses take [`Targets::Classes`],
/// the others [`Targets::Values`], reshaped to the output's shape when the element counts
/// agree) and for closures `Fn(&Var<f32>, &Targets) -> Var<f32>`.
pub trait TrainLoss {
    /// The scalar loss.
    fn loss(&self, output: &Var<f32>, targets: &Targets) -> Var<f32>;
}

impl<F: Fn(&Var<f32>, &Targets) -> Var<f32>> TrainLoss for F {
    fn loss(&self, output: &Var<f32>, targets: &Targets) -> Var<f32> {
        self(output, targets)
    }
}

impl TrainLoss for CrossEntropyLoss<f32> {
    fn loss(&self, output: &Var<f32>, targets: &Targets) -> Var<f32> {
        self.forward(output, targets.class_indices())
    }
}

impl TrainLoss for NLLLoss<f32> {
    fn loss(&self, output: &Var<f32>, targets: &Targets) -> Var<f32> {
        self.forward(output, targets.class_indices())
    }
}

/// Value targets shaped like the output (a `[N]` target for a `[N, 1]` output, say).
fn value_target(output: &Var<f32>, targets: &Targets) -> Var<f32> {
    let t = targets.values();
    let shape = output.shape();
    if t.shape() == shape.as_slice() {
        Var::constant(t.clone())
    } else {
        Var::constant(t.reshape(&shape))
    }
}

macro_rules! value_losses {
    ($($t:ty),*) => {$(
        impl TrainLoss for $t {
            fn loss(&self, output: &Var<f32>, targets: &Targets) -> Var<f32> {
                self.forward(output, &value_target(output, targets))
            }
        }
    )*};
}
value_losses!(MSELoss, L1Loss, SmoothL1Loss, HuberLoss, BCELoss<f32>, BCEWithLogitsLoss<f32>);
