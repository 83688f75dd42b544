//! Collating samples into tensors: [`Batch`], [`Targets`], [`DefaultCollate`] and
//! [`TensorDataset`].

use kiln_tensor::{Indices, Rng, Tensor};

use crate::dataloader::Collate;
use crate::dataset::Dataset;
use crate::image::Image;

/// A collated batch: the stacked inputs and the targets, as made by [`DefaultCollate`].
#[derive(Clone, Debug)]
pub struct Batch {
    /// Inputs stacked along a new first dimension: `[N, *sample_shape]`.
    pub inputs: Tensor<f32>,
    /// The targets of the `N` samples.
    pub targets: Targets,
}

impl Batch {
    /// Number of samples in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inputs.shape()[0]
    }

    /// Whether the batch has no samples.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The targets of a batch.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Class indices, one per sample, as the class losses (`CrossEntropyLoss`, `NLLLoss`) and
    /// metrics take them: `loss.forward(&logits, batch.targets.class_indices())`, no copy.
    Classes(Indices),
    /// Real-valued targets stacked as `[N, *target_shape]` (regression).
    Values(Tensor<f32>),
}

impl Targets {
    /// The class indices as a slice.
    ///
    /// **Panics** if these are real-valued targets.
    #[must_use]
    pub fn classes(&self) -> &[usize] {
        self.class_indices().as_slice()
    }

    /// The class indices in the type the class losses and metrics take.
    ///
    /// ```
    /// use kiln_data::{DataLoader, TensorDataset};
    /// use kiln_tensor::{Indices, Tensor};
    /// let ds = TensorDataset::new(Tensor::zeros(&[3, 2]), vec![2usize, 0, 1]);
    /// let batch = DataLoader::new(ds, 3).iter().next().unwrap();
    /// assert_eq!(batch.targets.class_indices(), &Indices::from_vec(vec![2, 0, 1]));
    /// ```
    ///
    /// **Panics** if these are real-valued targets.
    #[must_use]
    pub fn class_indices(&self) -> &Indices {
        match self {
            Targets::Classes(c) => c,
            Targets::Values(v) => panic!("Targets::classes: the targets are values of shape {:?}", v.shape()),
        }
    }

    /// The real-valued targets.
    ///
    /// **Panics** if these are class indices.
    #[must_use]
    pub fn values(&self) -> &Tensor<f32> {
        match self {
            Targets::Values(v) => v,
            Targets::Classes(c) => {
                panic!("Targets::values: the targets are {} class indices", c.len())
            }
        }
    }
}

/// Class targets from their indices (`Targets::from(vec![2, 0, 1])`).
impl From<Vec<usize>> for Targets {
    fn from(classes: Vec<usize>) -> Self {
        Targets::Classes(Indices::from_vec(classes))
    }
}

/// A sample input that [`DefaultCollate`] can stack: its shape and its values in row-major order.
pub trait CollateInput: Send {
    /// The shape of one sample (without the batch dimension).
    fn sample_shape(&self) -> Vec<usize>;
    /// Appends the values in row-major order.
    fn extend_into(&self, out: &mut Vec<f32>);
}

impl CollateInput for Image {
    fn sample_shape(&self) -> Vec<usize> {
        self.shape().to_vec()
    }
    fn extend_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.data);
    }
}

impl CollateInput for Vec<f32> {
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.len()]
    }
    fn extend_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(self);
    }
}

impl CollateInput for Tensor<f32> {
    fn sample_shape(&self) -> Vec<usize> {
        self.shape().to_vec()
    }
    fn extend_into(&self, out: &mut Vec<f32>) {
        match self.as_slice() {
            Some(s) => out.extend_from_slice(s),
            None => out.extend(self.to_vec()),
        }
    }
}

/// A sample target that [`DefaultCollate`] can gather into [`Targets`].
pub trait CollateTarget: Send + Sized {
    /// The targets of a batch, in order.
    fn collate_targets(targets: Vec<Self>) -> Targets;
}

impl CollateTarget for usize {
    fn collate_targets(targets: Vec<usize>) -> Targets {
        Targets::Classes(Indices::from_vec(targets))
    }
}

impl CollateTarget for f32 {
    fn collate_targets(targets: Vec<f32>) -> Targets {
        let n = targets.len();
        Targets::Values(Tensor::from_vec(targets, &[n]))
    }
}

impl CollateTarget for Vec<f32> {
    fn collate_targets(targets: Vec<Vec<f32>>) -> Targets {
        let n = targets.len();
        let k = targets.first().map_or(0, Vec::len);
        assert!(targets.iter().all(|t| t.len() == k), "collate: target vectors of different lengths in one batch");
        Targets::Values(Tensor::from_vec(targets.concat(), &[n, k]))
    }
}

/// The default collate step: stacks the inputs of `(input, target)` samples into one tensor
/// `[N, *sample_shape]` and gathers the targets, like PyTorch's `default_collate`.
///
/// **Panics** if the samples of a batch have different shapes (use a resizing transform or a
/// custom [`Collate`] for those).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultCollate;

impl<X: CollateInput, Y: CollateTarget> Collate<(X, Y)> for DefaultCollate {
    type Batch = Batch;
    fn collate(&self, items: Vec<(X, Y)>) -> Batch {
        let n = items.len();
        let shape = items.first().map(|(x, _)| x.sample_shape()).unwrap_or_default();
        let per: usize = shape.iter().product();
        let mut data = Vec::with_capacity(n * per);
        let mut targets = Vec::with_capacity(n);
        for (i, (x, y)) in items.into_iter().enumerate() {
            let s = x.sample_shape();
            assert_eq!(s, shape, "collate: sample {i} of the batch has shape {s:?}, sample 0 has {shape:?}");
            x.extend_into(&mut data);
            targets.push(y);
        }
        let mut full = vec![n];
        full.extend_from_slice(&shape);
        Batch { inputs: Tensor::from_vec(data, &full), targets: Y::collate_targets(targets) }
    }
}

/// An in-memory data set of inputs stacked in one tensor `[N, ...]` and `N` targets, like
/// `torch.utils.data.TensorDataset`. Items are `(input row as Tensor, target)`.
///
/// ```
/// use kiln_data::{Dataset, TensorDataset};
/// use kiln_tensor::Tensor;
/// let ds = TensorDataset::new(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]), vec![0usize, 1]);
/// let (x, y) = ds.get(1);
/// assert_eq!((x.to_vec(), y), (vec![3.0, 4.0], 1));
/// ```
#[derive(Clone, Debug)]
pub struct TensorDataset<Y> {
    data: Vec<f32>,
    sample_shape: Vec<usize>,
    targets: Vec<Y>,
}

impl<Y> TensorDataset<Y> {
    /// Rows of `inputs` (its first dimension indexes samples) with `targets`.
    ///
    /// **Panics** if `inputs` is 0-dimensional or its first dimension differs from `targets.len()`.
    pub fn new(inputs: Tensor<f32>, targets: Vec<Y>) -> Self {
        let shape = inputs.shape().to_vec();
        assert!(!shape.is_empty(), "TensorDataset: inputs must have a sample dimension, got a scalar");
        Self::from_vec(inputs.to_vec(), &shape[1..], targets)
    }

    /// `targets.len()` samples of shape `sample_shape`, stored row-major in `data`.
    ///
    /// **Panics** if `data.len() != targets.len() * product(sample_shape)`.
    pub fn from_vec(data: Vec<f32>, sample_shape: &[usize], targets: Vec<Y>) -> Self {
        let per: usize = sample_shape.iter().product();
        assert_eq!(
            data.len(),
            per * targets.len(),
            "TensorDataset: {} values for {} samples of shape {sample_shape:?}",
            data.len(),
            targets.len()
        );
        TensorDataset { data, sample_shape: sample_shape.to_vec(), targets }
    }

    /// The shape of one input.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// All targets.
    pub fn targets(&self) -> &[Y] {
        &self.targets
    }
}

impl<Y: Clone + Send + Sync> Dataset for TensorDataset<Y> {
    type Item = (Tensor<f32>, Y);
    fn len(&self) -> usize {
        self.targets.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Tensor<f32>, Y) {
        let n = self.targets.len();
        assert!(index < n, "TensorDataset: index {index} out of range for a data set of {n} samples");
        let per: usize = self.sample_shape.iter().product();
        let row = self.data[index * per..(index + 1) * per].to_vec();
        (Tensor::from_vec(row, &self.sample_shape), self.targets[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataLoader, VecDataset};

    #[test]
    fn default_collate_stacks_images_and_classes() {
        let ds = VecDataset::new((0..5).map(|i| (Image::new(vec![i as f32; 6], 1, 2, 3), i)).collect());
        let loader = DataLoader::new(ds, 2);
        let batches: Vec<Batch> = loader.iter().collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].inputs.shape(), &[2, 1, 2, 3]);
        assert_eq!(batches[2].inputs.shape(), &[1, 1, 2, 3]);
        assert_eq!(batches[1].targets.classes(), &[2, 3]);
        assert_eq!(batches[1].inputs.to_vec()[6], 3.0);
    }

    #[test]
    fn tensor_dataset_round_trips_with_value_targets() {
        let ds = TensorDataset::from_vec((0..12).map(|v| v as f32).collect(), &[2, 2], vec![0.5f32, 1.5, 2.5]);
        let batch: Batch = DataLoader::new(ds, 3).iter().next().unwrap();
        assert_eq!(batch.inputs.shape(), &[3, 2, 2]);
        assert_eq!(batch.inputs.to_vec(), (0..12).map(|v| v as f32).collect::<Vec<_>>());
        assert_eq!(batch.targets.values().to_vec(), vec![0.5, 1.5, 2.5]);
        assert_eq!(batch.len(), 3);
    }
}
