//! The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
//! Networks", section 3.3), as fastai's `lr_find` and Lightning's `Tuner.lr_find` run it:
//! [`Trainer::lr_find`].

use std::path::Path;

use kiln_autograd::Var;
use kiln_nn::{Forward, Module};
use kiln_optim::{clip_grad_norm_, clip_grad_value_, LrGroups, Optimizer};

use super::Trainer;
use crate::error::TrainError;
use crate::plot::lr_curve::plot_lr_curve;
use crate::source::{BatchSource, TrainLoss};

/// The settings of [`Trainer::lr_find`], with Lightning's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LrFinderConfig {
    /// The first learning rate (default 1e-8).
    pub start_lr: f64,
    /// The last learning rate (default 1).
    pub end_lr: f64,
    /// The number of optimiser steps the sweep takes at most (default 100). The data is read
    /// again from the start when it has fewer batches.
    pub num_iter: usize,
    /// The weight of the running average of the loss, debiased as in Adam:
    /// `avg ← β avg + (1 - β) loss`, `smoothed = avg / (1 - β^(i+1))` (fastai's and Lightning's
    /// 0.98; torch-lr-finder's `smooth_f = 0.05` is `β = 0.95` without the debiasing).
    pub beta: f64,
    /// The sweep stops once the smoothed loss exceeds `diverge_th` times the best one so far
    /// (default 4, Lightning's `early_stop_threshold`; `f64::INFINITY` never stops early).
    pub diverge_th: f64,
    /// Points left out at the start of the curve when looking for the steepest descent
    /// (default 10).
    pub skip_begin: usize,
    /// Points left out at its end (default 1).
    pub skip_end: usize,
}

impl Default for LrFinderConfig {
    fn default() -> Self {
        LrFinderConfig {
            start_lr: 1e-8,
            end_lr: 1.0,
            num_iter: 100,
            beta: 0.98,
            diverge_th: 4.0,
            skip_begin: 10,
            skip_end: 1,
        }
    }
}

impl LrFinderConfig {
    fn check(&self) {
        assert!(
            self.start_lr > 0.0 && self.start_lr.is_finite() && self.end_lr.is_finite() && self.end_lr > self.start_lr,
            "lr_find: expected 0 < start_lr < end_lr, got start_lr {} and end_lr {}",
            self.start_lr,
            self.end_lr
        );
        assert!(self.num_iter >= 2, "lr_find: num_iter must be >= 2, got {}", self.num_iter);
        assert!((0.0..1.0).contains(&self.beta), "lr_find: beta must be in [0, 1), got {}", self.beta);
        assert!(self.diverge_th > 1.0, "lr_find: diverge_th must be > 1, got {}", self.diverge_th);
    }

    /// The learning rate of step `i`: `start · (end / start)^(i / (num_iter - 1))`, from
    /// `start_lr` at the first step to `end_lr` at the last.
    pub fn lr_at(&self, i: usize) -> f64 {
        self.start_lr * (self.end_lr / self.start_lr).powf(i as f64 / (self.num_iter - 1) as f64)
    }
}

/// What [`Trainer::lr_find`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LrFinderResult {
    /// The learning rate of each step taken.
    pub lrs: Vec<f64>,
    /// The smoothed loss of each step.
    pub losses: Vec<f64>,
    /// The training loss of each step as measured (the mean over an accumulation group).
    pub raw_losses: Vec<f64>,
    /// Whether the sweep stopped early because the loss diverged.
    pub diverged: bool,
    /// The index of the suggested learning rate in `lrs`, if there were enough points.
    pub suggestion_index: Option<usize>,
}

impl LrFinderResult {
    /// The suggested learning rate: where the smoothed loss falls fastest, as Lightning's
    /// `suggestion()` finds it — the smallest numerical gradient (`torch.gradient` with unit
    /// spacing: central differences inside, one-sided at the ends; the rates are evenly spaced
    /// in `log lr`) over the finite points of the curve without its first `skip_begin` and
    /// last `skip_end` points. `None` with fewer than two such points.
    pub fn suggestion(&self) -> Option<f64> {
        self.suggestion_index.map(|i| self.lrs[i])
    }

    /// Draws the smoothed loss against the learning rate (log scale) as a PNG at `path`, the
    /// suggestion marked in red.
    ///
    /// # Errors
    /// [`TrainError::Plot`] if drawing fails, [`TrainError::Io`] if the file cannot be written.
    ///
    /// **Panics** if the result has no point.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        plot_lr_curve(path.as_ref(), &self.lrs, &self.losses, self.suggestion_index)
    }
}

/// Lightning's `_LRFinder.suggestion`: the index of the steepest descent of `losses`, looking
/// only at `skip_begin..len - skip_end` and at finite values there.
fn steepest_descent(losses: &[f64], skip_begin: usize, skip_end: usize) -> Option<usize> {
    let end = losses.len().saturating_sub(skip_end);
    if skip_begin >= end {
        return None;
    }
    let kept: Vec<(usize, f64)> = losses[skip_begin..end]
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i + skip_begin, l))
        .collect();
    let n = kept.len();
    if n < 2 {
        return None;
    }
    let grad = |i: usize| match i {
        0 => kept[1].1 - kept[0].1,
        i if i == n - 1 => kept[n - 1].1 - kept[n - 2].1,
        i => (kept[i + 1].1 - kept[i - 1].1) / 2.0,
    };
    // torch.argmin: the first of equal minima
    let best = (0..n).fold(0, |b, i| if grad(i) < grad(b) { i } else { b });
    Some(kept[best].0)
}

impl Trainer {
    /// Runs the learning-rate range test (Smith 2017) on `model`: up to
    /// [`num_iter`](LrFinderConfig::num_iter) training steps on `train`, the learning rate of
    /// every parameter group growing exponentially from `start_lr` to `end_lr`, recording the
    /// smoothed loss, and stopping early when the loss diverges. The model's parameters and
    /// buffers, its mode and the optimiser's state (learning rates, momenta, step counts) are
    /// restored afterwards, bit for bit, so the training can start as if nothing happened.
    ///
    /// Pick the learning rate from [`LrFinderResult::suggestion`] or from the plot
    /// ([`LrFinderResult::plot`]): usually a value somewhat below the one where the loss is
    /// lowest. The trainer's gradient clipping and accumulation apply to the sweep's steps;
    /// its scheduler and callbacks do not run.
    ///
    /// # Errors
    /// [`TrainError::EmptyData`] when `train` yields no batch.
    ///
    /// **Panics** on an invalid config (see [`LrFinderConfig`]) or tensor-shape errors.
    ///
    /// ```
    /// use kiln_data::{Batch, Targets};
    /// use kiln_nn::{Linear, MSELoss, Module};
    /// use kiln_optim::{Optimizer, SGD, SGDConfig};
    /// use kiln_tensor::Tensor;
    /// use kiln_train::{LrFinderConfig, Trainer};
    /// kiln_nn::init::manual_seed(0);
    /// let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
    /// let data = vec![Batch { inputs: x.clone(), targets: Targets::Values(x.mul_scalar(2.0)) }];
    /// let mut model: Linear = Linear::new(1, 1);
    /// let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.01, ..Default::default() });
    /// let before = model.state_dict();
    /// let config = LrFinderConfig { start_lr: 1e-4, end_lr: 10.0, num_iter: 60, ..Default::default() };
    /// let found = Trainer::new(1).lr_find(&mut model, &mut opt, &MSELoss::new(), &data, &config)?;
    /// assert!(found.diverged); // a rate of 10 blows this problem up
    /// let lr = found.suggestion().unwrap();
    /// assert!(lr > 1e-3 && lr < 1.0, "suggested {lr}");
    /// assert_eq!(model.state_dict(), before); // restored
    /// assert_eq!(opt.lr(), 0.01);
    /// # Ok::<(), kiln_train::TrainError>(())
    /// ```
    pub fn lr_find<M, O>(
        &self,
        model: &mut M,
        optimizer: &mut O,
        loss: &dyn TrainLoss,
        train: &dyn BatchSource,
        config: &LrFinderConfig,
    ) -> Result<LrFinderResult, TrainError>
    where
        M: Module<f32> + Forward<f32>,
        O: Optimizer<f32> + LrGroups,
    {
        config.check();
        let saved_model = model.state_dict();
        let saved_opt = optimizer.state_dict();
        let was_training = model.is_training();
        let result = self.sweep(model, optimizer, loss, train, config);
        optimizer.zero_grad();
        model.load_state_dict(&saved_model, true).expect("the state was taken from this model");
        optimizer.load_state_dict(&saved_opt).expect("the state was taken from this optimizer");
        model.set_training(was_training);
        result
    }

    fn sweep<M, O>(
        &self,
        model: &mut M,
        optimizer: &mut O,
        loss: &dyn TrainLoss,
        train: &dyn BatchSource,
        config: &LrFinderConfig,
    ) -> Result<LrFinderResult, TrainError>
    where
        M: Module<f32> + Forward<f32>,
        O: Optimizer<f32> + LrGroups,
    {
        model.train();
        let params = model.parameters();
        let mut out = LrFinderResult {
            lrs: Vec::new(),
            losses: Vec::new(),
            raw_losses: Vec::new(),
            diverged: false,
            suggestion_index: None,
        };
        let (mut avg, mut best) = (0.0f64, f64::INFINITY);
        let mut batches = train.batches();
        let mut step_loss = 0.0f64;
        let mut pending = 0usize;
        while out.lrs.len() < config.num_iter {
            let i = out.lrs.len();
            let batch = match batches.next() {
                Some(b) => b,
                None => {
                    batches = train.batches();
                    match batches.next() {
                        Some(b) => b,
                        None => return Err(TrainError::EmptyData { what: "training data", epoch: 0 }),
                    }
                }
            };
            let lr = config.lr_at(i);
            for g in 0..optimizer.num_param_groups() {
                optimizer.set_group_lr(g, lr);
            }
            let l = loss.loss(&model.forward(&Var::constant(batch.inputs.clone())), &batch.targets);
            let lv = l.item() as f64;
            step_loss += lv;
            pending += 1;
            if lv.is_finite() {
                let scaled = if self.accumulation > 1 { l.div_scalar(self.accumulation as f32) } else { l };
                scaled.backward();
            }
            if pending < self.accumulation && lv.is_finite() {
                continue;
            }
            let raw = step_loss / pending as f64;
            (step_loss, pending) = (0.0, 0);
            if raw.is_finite() {
                if let Some(v) = self.clip_value {
                    clip_grad_value_(&params, v);
                }
                if let Some(m) = self.clip_norm {
                    clip_grad_norm_(&params, m, 2.0);
                }
                optimizer.step();
            }
            optimizer.zero_grad();
            avg = config.beta * avg + (1.0 - config.beta) * raw;
            let smoothed = avg / (1.0 - config.beta.powi(i as i32 + 1));
            out.lrs.push(lr);
            out.raw_losses.push(raw);
            out.losses.push(smoothed);
            if !smoothed.is_finite() || (i > 0 && smoothed > config.diverge_th * best) {
                out.diverged = true;
                break;
            }
            if smoothed < best || i == 0 {
                best = smoothed;
            }
        }
        out.suggestion_index = steepest_descent(&out.losses, config.skip_begin, config.skip_end);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steepest_descent_is_lightnings() {
        // gradients (unit spacing) of [5, 4, 2, 1.5, 1.4, 3]: -1, -1.5, -1.25, -0.3, 0.75, 1.6
        let l = [5.0, 4.0, 2.0, 1.5, 1.4, 3.0];
        assert_eq!(steepest_descent(&l, 0, 0), Some(1));
        // skipping the first two: [2, 1.5, 1.4] -> -0.5, -0.3, -0.1
        assert_eq!(steepest_descent(&l, 2, 1), Some(2));
        assert_eq!(steepest_descent(&l, 4, 1), None);
        // non-finite points are left out
        assert_eq!(steepest_descent(&[3.0, f64::NAN, 2.0, 0.5, 0.4], 0, 0), Some(2));
    }

    #[test]
    fn the_sweep_is_exponential_from_start_to_end() {
        let c = LrFinderConfig { start_lr: 1e-6, end_lr: 1.0, num_iter: 7, ..Default::default() };
        let lrs: Vec<f64> = (0..7).map(|i| c.lr_at(i)).collect();
        for (i, lr) in lrs.iter().enumerate() {
            assert!((lr.log10() - (-6.0 + i as f64)).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    #[should_panic(expected = "lr_find: expected 0 < start_lr < end_lr, got start_lr 1 and end_lr 0.1")]
    fn reversed_range_panics() {
        LrFinderConfig { start_lr: 1.0, end_lr: 0.1, ..Default::default() }.check();
    }
}
