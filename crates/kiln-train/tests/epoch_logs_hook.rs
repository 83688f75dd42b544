//! `Callback::on_epoch_logs` changes the figures before they are printed, recorded and seen by
//! `on_epoch_end`.

use kiln_data::{Batch, Targets};
use kiln_nn::{Linear, MSELoss, Module};
use kiln_optim::{SGDConfig, SGD};
use kiln_tensor::Tensor;
use kiln_train::{Callback, EpochContext, EpochLogs, Trainer, Verbosity};

struct Halve;
impl Callback for Halve {
    fn on_epoch_logs(&mut self, _epoch: usize, logs: &mut EpochLogs) {
        let l = logs["loss"];
        logs.insert("loss".into(), l / 2.0);
        logs.insert("halved".into(), 1.0);
    }
}

/// Records what `on_epoch_end` sees.
struct Seen(std::rc::Rc<std::cell::RefCell<Vec<f64>>>);
impl Callback for Seen {
    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        self.0.borrow_mut().push(ctx.logs["halved"]);
    }
}

#[test]
fn on_epoch_logs_runs_before_history_and_on_epoch_end() {
    kiln_nn::init::manual_seed(0);
    let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
    let y = Tensor::from_vec(vec![-1.0f32, 1.0, 3.0, 5.0], &[4, 1]);
    let data = vec![Batch { inputs: x, targets: Targets::Values(y) }];
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    // `Seen` is registered first: every on_epoch_logs still runs before any on_epoch_end.
    let run = |halve: bool| {
        kiln_nn::init::manual_seed(0);
        let mut model: Linear = Linear::new(1, 1);
        let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.01, ..Default::default() });
        let mut t = Trainer::new(2).verbosity(Verbosity::Silent);
        if halve {
            t = t.callback(Seen(seen.clone())).callback(Halve);
        }
        t.fit(&mut model, &mut opt, &MSELoss::new(), &data, None).unwrap()
    };
    let plain = run(false);
    let halved = run(true);
    for (p, h) in plain.epochs.iter().zip(&halved.epochs) {
        assert_eq!(h["loss"], p["loss"] / 2.0);
    }
    assert_eq!(*seen.borrow(), vec![1.0, 1.0]);
}
