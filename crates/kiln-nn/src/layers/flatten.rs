//! `Flatten` and `Unflatten`: reshape modules, as `torch.nn.Flatten` / `torch.nn.Unflatten`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::error::NnError;
use crate::layers::activation::stateless_module;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

stateless_module!(Flatten, Unflatten);

/// Flattens dimensions `start_dim..=end_dim` into one, like `torch.nn.Flatten`
/// (defaults `start_dim = 1`, `end_dim = -1`: everything but the batch dimension).
///
/// # Shapes
/// - Input: `[*, S_start, ..., S_end, *]`
/// - Output: `[*, S_start * ... * S_end, *]`
///
/// **Panics** in `forward` if a dimension is out of range for the input or `start_dim` comes
/// after `end_dim`.
///
/// ```
/// use kiln_nn::{Flatten, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::<f32>::zeros(&[32, 1, 5, 5]));
/// assert_eq!(Flatten::default().forward(&x).shape().as_slice(), &[32, 25]);
/// assert_eq!(Flatten::new(0, 2).forward(&x).shape().as_slice(), &[160, 5]);
/// assert_eq!(Flatten::default().to_string(), "Flatten(start_dim=1, end_dim=-1)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten {
    /// First dimension to flatten (negative counts from the end).
    pub start_dim: isize,
    /// Last dimension to flatten, included (negative counts from the end).
    pub end_dim: isize,
}

impl Flatten {
    /// Flattens `start_dim..=end_dim`.
    pub fn new(start_dim: isize, end_dim: isize) -> Self {
        Flatten { start_dim, end_dim }
    }
}

impl Default for Flatten {
    /// `start_dim = 1, end_dim = -1`, PyTorch's defaults.
    fn default() -> Self {
        Flatten { start_dim: 1, end_dim: -1 }
    }
}

impl<E: Float> Forward<E> for Flatten {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.flatten(self.start_dim, self.end_dim)
    }
}

impl fmt::Display for Flatten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flatten(start_dim={}, end_dim={})", self.start_dim, self.end_dim)
    }
}

/// Expands dimension `dim` into `unflattened_size`, like `torch.nn.Unflatten`; the inverse of
/// [`Flatten`]. One size may be `-1`, inferred from the others.
///
/// # Shapes
/// - Input: `[*, S_dim, *]`
/// - Output: `[*, U_1, ..., U_n, *]` with `U_1 * ... * U_n = S_dim`
///
/// **Panics** in `forward` if `dim` is out of range for the input or the sizes do not
/// multiply to its size there.
///
/// ```
/// use kiln_nn::{Forward, Unflatten};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::<f32>::zeros(&[2, 50]));
/// let u = Unflatten::new(1, &[2, 5, 5]);
/// assert_eq!(u.forward(&x).shape().as_slice(), &[2, 2, 5, 5]);
/// assert_eq!(Unflatten::new(-1, &[-1, 10]).forward(&x).shape().as_slice(), &[2, 5, 10]);
/// assert_eq!(u.to_string(), "Unflatten(dim=1, unflattened_size=(2, 5, 5))");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unflatten {
    /// The dimension to expand (negative counts from the end).
    pub dim: isize,
    /// The sizes it becomes; at most one `-1`.
    pub unflattened_size: Vec<isize>,
}

impl Unflatten {
    /// Expands `dim` into `unflattened_size`.
    ///
    /// **Panics** if the sizes are invalid (use [`Unflatten::try_new`] for a `Result`).
    pub fn new(dim: isize, unflattened_size: &[isize]) -> Self {
        Self::try_new(dim, unflattened_size).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Expands `dim` into `unflattened_size`.
    ///
    /// # Errors
    /// [`NnError::Config`] when `unflattened_size` is empty, holds more than one `-1`, or a
    /// size below `-1`.
    pub fn try_new(dim: isize, unflattened_size: &[isize]) -> Result<Self, NnError> {
        if unflattened_size.is_empty() {
            return Err(NnError::Config("Unflatten: unflattened_size must not be empty".into()));
        }
        if let Some(s) = unflattened_size.iter().find(|&&s| s < -1) {
            return Err(NnError::Config(format!(
                "Unflatten: sizes must be >= 0 or -1, got {s} in {unflattened_size:?}"
            )));
        }
        if unflattened_size.iter().filter(|&&s| s == -1).count() > 1 {
            return Err(NnError::Config(format!("Unflatten: only one size can be -1, got {unflattened_size:?}")));
        }
        Ok(Unflatten { dim, unflattened_size: unflattened_size.to_vec() })
    }

    /// The output shape for an input of shape `shape`.
    fn output_shape(&self, shape: &[usize]) -> Vec<usize> {
        let nd = shape.len() as isize;
        let d = if self.dim < 0 { self.dim + nd } else { self.dim };
        assert!((0..nd).contains(&d), "Unflatten: dim {} out of range for shape {shape:?}", self.dim);
        let d = d as usize;
        let known: usize = self.unflattened_size.iter().filter(|&&s| s >= 0).map(|&s| s as usize).product();
        let sizes: Vec<usize> = self
            .unflattened_size
            .iter()
            .map(|&s| match s {
                -1 if known > 0 && shape[d].is_multiple_of(known) => shape[d] / known,
                -1 => panic!(
                    "Unflatten: cannot infer -1 in {:?} for size {} of dim {} of shape {shape:?}",
                    self.unflattened_size, shape[d], self.dim
                ),
                s => s as usize,
            })
            .collect();
        assert!(
            sizes.iter().product::<usize>() == shape[d],
            "Unflatten: sizes {:?} do not multiply to {} (dim {} of shape {shape:?})",
            self.unflattened_size,
            shape[d],
            self.dim
        );
        let mut out = shape[..d].to_vec();
        out.extend(sizes);
        out.extend_from_slice(&shape[d + 1..]);
        out
    }
}

impl<E: Float> Forward<E> for Unflatten {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.reshape(&self.output_shape(&x.shape()))
    }
}

impl fmt::Display for Unflatten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<String> = self.unflattened_size.iter().map(|s| s.to_string()).collect();
        // Python's tuple repr: `(5,)` for one element.
        let tuple = if sizes.len() == 1 { format!("({},)", sizes[0]) } else { format!("({})", sizes.join(", ")) };
        write!(f, "Unflatten(dim={}, unflattened_size={tuple})", self.dim)
    }
}

impl LayerSpec for Flatten {
    const TYPE_NAME: &'static str = "Flatten";
    const EXAMPLE: &'static str = r#"{"start_dim": 2, "end_dim": -2}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"start_dim": self.start_dim, "end_dim": self.end_dim}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        Ok(Flatten::new(a.isize("start_dim", 1)?, a.isize("end_dim", -1)?))
    }
}

crate::register_layer!(Flatten);

impl LayerSpec for Unflatten {
    const TYPE_NAME: &'static str = "Unflatten";
    const EXAMPLE: &'static str = r#"{"dim": 1, "unflattened_size": [2, -1]}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"dim": self.dim, "unflattened_size": self.unflattened_size}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let dim = match a.take("dim") {
            Some(v) => {
                v.as_i64().map(|n| n as isize).ok_or_else(|| a.err(&format!("dim must be an integer, got {v}")))?
            }
            None => return Err(a.err("dim is required")),
        };
        let sizes = match a.take("unflattened_size") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|s| {
                    s.as_i64()
                        .map(|n| n as isize)
                        .ok_or_else(|| a.err(&format!("unflattened_size must hold integers, got {s}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(v) => return Err(a.err(&format!("unflattened_size must be a list of integers, got {v}"))),
            None => return Err(a.err("unflattened_size is required")),
        };
        Unflatten::try_new(dim, &sizes)
    }
}

crate::register_layer!(Unflatten);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Tensor;

    #[test]
    fn flatten_shapes() {
        let x = Var::constant(Tensor::<f64>::zeros(&[2, 3, 4, 5]));
        assert_eq!(Flatten::default().forward(&x).shape().as_slice(), &[2, 60]);
        assert_eq!(Flatten::new(1, 2).forward(&x).shape().as_slice(), &[2, 12, 5]);
        assert_eq!(Flatten::new(-2, -1).forward(&x).shape().as_slice(), &[2, 3, 20]);
        assert_eq!(Flatten::new(0, -1).forward(&x).shape().as_slice(), &[120]);
        assert_eq!(Flatten::new(2, 2).forward(&x).shape().as_slice(), &[2, 3, 4, 5]);
        assert_eq!(Module::<f64>::num_parameters(&Flatten::default()), 0);
    }

    #[test]
    fn unflatten_shapes_and_errors() {
        let x = Var::constant(Tensor::<f64>::zeros(&[2, 12, 3]));
        assert_eq!(Unflatten::new(1, &[3, 4]).forward(&x).shape().as_slice(), &[2, 3, 4, 3]);
        assert_eq!(Unflatten::new(1, &[-1, 2]).forward(&x).shape().as_slice(), &[2, 6, 2, 3]);
        assert_eq!(Unflatten::new(-1, &[3, 1]).forward(&x).shape().as_slice(), &[2, 12, 3, 1]);
        assert_eq!(Unflatten::new(0, &[2]).to_string(), "Unflatten(dim=0, unflattened_size=(2,))");
        assert_eq!(
            Unflatten::try_new(1, &[-1, -1]).unwrap_err().to_string(),
            "Unflatten: only one size can be -1, got [-1, -1]"
        );
        assert!(Unflatten::try_new(1, &[]).is_err());
        assert!(Unflatten::try_new(1, &[-2, 3]).is_err());
        let r = std::panic::catch_unwind(|| Unflatten::new(1, &[5, 2]).output_shape(&[2, 12, 3]));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert_eq!(msg, "Unflatten: sizes [5, 2] do not multiply to 12 (dim 1 of shape [2, 12, 3])");
    }

    #[test]
    fn unflatten_inverts_flatten_and_gradients_flow() {
        let t = Tensor::<f64>::from_vec((0..24).map(|i| i as f64 * 0.1 - 1.0).collect(), &[2, 3, 4]);
        let round = Unflatten::new(1, &[3, 4]).forward(&Flatten::default().forward(&Var::constant(t.clone())));
        assert_eq!(round.value().to_vec(), t.to_vec());
        assert_eq!(round.shape().as_slice(), t.shape());
        let r = gradcheck(
            |v| Unflatten::new(1, &[2, 6]).forward(&Flatten::default().forward(&v[0])).mul(&v[0].reshape(&[2, 2, 6])),
            &[t],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
