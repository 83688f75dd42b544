//! Finite-difference gradient checks (f64), public so that users can check their own ops.

use kiln_tensor::{Rng, Tensor};

use crate::engine::grad;
use crate::mode::no_grad;
use crate::var::Var;

/// Where an analytical gradient disagrees with the central finite difference.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckError {
    /// Which input (position in the `inputs` slice).
    pub input: usize,
    /// The element's multi-index within that input.
    pub element: Vec<usize>,
    /// The gradient backward computed.
    pub analytical: f64,
    /// The central finite difference.
    pub numerical: f64,
    /// Largest allowed difference at this element (`atol + rtol * |numerical|`).
    pub tolerance: f64,
}

impl std::fmt::Display for GradcheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gradcheck: input {} element {:?}: analytical {:.10e} vs numerical {:.10e} (difference {:.3e} > tolerance {:.3e})",
            self.input,
            self.element,
            self.analytical,
            self.numerical,
            (self.analytical - self.numerical).abs(),
            self.tolerance
        )
    }
}

impl std::error::Error for GradcheckError {}

/// What a successful check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckReport {
    /// Number of input elements checked.
    pub checked: usize,
    /// Largest |analytical - numerical| seen.
    pub max_abs_error: f64,
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Checks the gradients of `f` at `inputs` against central finite differences, like
/// `torch.autograd.gradcheck`.
///
/// The output is projected on a fixed random cotangent `u` (the vector-Jacobian product
/// `u^T J` is what backward computes), then every input element is perturbed by `±eps`.
/// An element passes when `|analytical - numerical| <= atol + rtol * |numerical|`.
/// Inputs may be non-contiguous; the analytical pass sees them as given.
///
/// # Errors
/// The first element that disagrees, naming the input and the element.
///
/// ```
/// use kiln_autograd::gradcheck;
/// use kiln_tensor::Tensor;
/// let x = Tensor::from_vec(vec![0.3f64, -1.2, 2.0], &[3]);
/// let report = gradcheck(|v| v[0].mul(&v[0]).sum_all(), &[x], 1e-6, 1e-6, 1e-4).unwrap();
/// assert_eq!(report.checked, 3);
/// ```
pub fn gradcheck(
    f: impl Fn(&[Var<f64>]) -> Var<f64>,
    inputs: &[Tensor<f64>],
    eps: f64,
    atol: f64,
    rtol: f64,
) -> Result<GradcheckReport, GradcheckError> {
    let vars: Vec<Var<f64>> = inputs.iter().map(|t| Var::param(t.clone())).collect();
    let y = f(&vars);
    let mut rng = Rng::new(0x6772_6164);
    let u: Tensor<f64> = Tensor::uniform(&y.shape(), -1.0, 1.0, &mut rng);
    let analytical: Vec<Option<Var<f64>>> = if y.requires_grad() {
        grad(std::slice::from_ref(&y), &vars, Some(&[Var::constant(u.clone())]), false)
    } else {
        vec![None; vars.len()]
    };
    // Inputs stay differentiable here: `f` may itself take gradients (gradgradcheck).
    let project = |xs: &[Tensor<f64>]| -> f64 {
        let vs: Vec<Var<f64>> = xs.iter().map(|t| Var::param(t.clone())).collect();
        f(&vs).with_value(|v| v.mul(&u).sum_all().item())
    };
    let mut report = GradcheckReport { checked: 0, max_abs_error: 0.0 };
    let mut work: Vec<Tensor<f64>> = inputs.iter().map(|t| t.contiguous()).collect();
    for i in 0..inputs.len() {
        let a = analytical[i].as_ref().map(|g| g.value().to_vec()).unwrap_or_else(|| vec![0.0; inputs[i].numel()]);
        for j in 0..inputs[i].numel() {
            let orig = work[i].as_slice().expect("contiguous")[j];
            work[i].as_mut_slice()[j] = orig + eps;
            let plus = project(&work);
            work[i].as_mut_slice()[j] = orig - eps;
            let minus = project(&work);
            work[i].as_mut_slice()[j] = orig;
            let num = (plus - minus) / (2.0 * eps);
            let tol = atol + rtol * num.abs();
            let err = (a[j] - num).abs();
            report.checked += 1;
            report.max_abs_error = report.max_abs_error.max(err);
            if err > tol || !a[j].is_finite() {
                return Err(GradcheckError {
                    input: i,
                    element: unravel(j, inputs[i].shape()),
                    analytical: a[j],
                    numerical: num,
                    tolerance: tol,
                });
            }
        }
    }
    Ok(report)
}

/// Checks second derivatives, like `torch.autograd.gradgradcheck`: the gradient of `f`
/// (computed with `create_graph`) projected on fixed random vectors is itself gradchecked.
///
/// # Errors
/// The first element whose second derivative disagrees with finite differences of the
/// gradient.
pub fn gradgradcheck(
    f: impl Fn(&[Var<f64>]) -> Var<f64>,
    inputs: &[Tensor<f64>],
    eps: f64,
    atol: f64,
    rtol: f64,
) -> Result<GradcheckReport, GradcheckError> {
    let mut rng = Rng::new(0x6767_6368);
    let out_shape = no_grad(|| {
        let vs: Vec<Var<f64>> = inputs.iter().map(|t| Var::constant(t.clone())).collect();
        f(&vs).shape()
    });
    let u: Tensor<f64> = Tensor::uniform(&out_shape, -1.0, 1.0, &mut rng);
    let vs: Vec<Tensor<f64>> = inputs.iter().map(|t| Tensor::uniform(t.shape(), -1.0, 1.0, &mut rng)).collect();
    let h = |xs: &[Var<f64>]| -> Var<f64> {
        let y = f(xs);
        let mut total = Var::constant(Tensor::scalar(0.0));
        if !y.requires_grad() {
            return total;
        }
        let gs = grad(std::slice::from_ref(&y), xs, Some(&[Var::constant(u.clone())]), true);
        for (g, v) in gs.into_iter().zip(&vs) {
            if let Some(g) = g {
                total = total.add(&g.mul(&Var::constant(v.clone())).sum_all());
            }
        }
        total
    };
    gradcheck(h, inputs, eps, atol, rtol)
}
