//! `Embedding`: a lookup table, `y[..] = weight[ids[..]]`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Indices, Tensor};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// Configuration of an [`Embedding`] layer (PyTorch's default: no padding index).
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingConfig {
    /// Size of the dictionary (ids are `0..num_embeddings`).
    pub num_embeddings: usize,
    /// Size of each embedding vector.
    pub embedding_dim: usize,
    /// An id whose row is zero at initialisation and never receives a gradient (e.g. for
    /// padding tokens).
    pub padding_idx: Option<usize>,
}

impl EmbeddingConfig {
    /// A configuration without a padding index.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        EmbeddingConfig { num_embeddings, embedding_dim, padding_idx: None }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]).
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero or `padding_idx` is not below
    /// `num_embeddings`.
    pub fn build<E: Float>(&self) -> Result<Embedding<E>, NnError> {
        for (what, v) in [("num_embeddings", self.num_embeddings), ("embedding_dim", self.embedding_dim)] {
            if v == 0 {
                return Err(NnError::Config(format!("Embedding: {what} must be > 0, got 0")));
            }
        }
        if let Some(p) = self.padding_idx {
            if p >= self.num_embeddings {
                return Err(NnError::Config(format!(
                    "Embedding: padding_idx must be within num_embeddings, got padding_idx={p}, num_embeddings={}",
                    self.num_embeddings
                )));
            }
        }
        let weight = Var::param(Tensor::zeros(&[self.num_embeddings, self.embedding_dim]));
        let e = Embedding { config: self.clone(), weight };
        e.reset_parameters();
        Ok(e)
    }
}

/// A lookup table of `num_embeddings` vectors of size `embedding_dim`, like
/// `torch.nn.Embedding`: `y[i..] = weight[ids[i..]]`. The gradient is scattered back into the
/// rows that were looked up (repeated ids accumulate); the `padding_idx` row gets none.
///
/// Ids come as [`Indices`] through [`forward_ids`](Embedding::forward_ids); the
/// [`Forward`] impl (for [`Sequential`](crate::Sequential)) reads a `Var` holding
/// integer-valued floats.
///
/// # Shapes
/// - Input: ids of any shape `[*]`
/// - Output: `[*, embedding_dim]`
///
/// # Parameters
/// - `weight`: `[num_embeddings, embedding_dim]`, N(0, 1), the `padding_idx` row zero
///
/// ```
/// use kiln_nn::{Embedding, EmbeddingConfig, Module};
/// use kiln_tensor::Indices;
/// let emb: Embedding = EmbeddingConfig { padding_idx: Some(0), ..EmbeddingConfig::new(10, 3) }.build().unwrap();
/// let ids = Indices::new(vec![1, 0, 4, 4, 2, 0], &[2, 3]);
/// let y = emb.forward_ids(&ids);
/// assert_eq!(y.shape().as_slice(), &[2, 3, 3]);
/// assert_eq!(y.value().select(0, 0).select(0, 1).to_vec(), vec![0.0; 3]); // the padding row
/// y.sum_all().backward();
/// let g = emb.weight.grad().unwrap();
/// assert_eq!(g.select(0, 4).to_vec(), vec![2.0; 3]); // id 4 was looked up twice
/// assert_eq!(g.select(0, 0).to_vec(), vec![0.0; 3]); // padding gets no gradient
/// assert_eq!(emb.to_string(), "Embedding(10, 3, padding_idx=0) [30 parameters]");
/// ```
pub struct Embedding<E: Float = f32> {
    /// The configuration it was built with.
    pub config: EmbeddingConfig,
    /// `[num_embeddings, embedding_dim]`.
    pub weight: Var<E>,
}

impl Embedding<f32> {
    /// A table without a padding index, initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`EmbeddingConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`Embedding::new_generic`].
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        Self::new_generic(num_embeddings, embedding_dim)
    }
}

impl<E: Float> Embedding<E> {
    /// [`Embedding::new`] in any element type: `Embedding::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Embedding::new`] does.
    pub fn new_generic(num_embeddings: usize, embedding_dim: usize) -> Self {
        EmbeddingConfig::new(num_embeddings, embedding_dim).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws the table from N(0, 1) and zeroes the `padding_idx` row, as PyTorch does.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::normal_(&self.weight, 0.0, 1.0, rng));
        if let Some(p) = self.config.padding_idx {
            let d = self.config.embedding_dim;
            self.weight.update_value(|w| {
                let mut v = w.to_vec();
                v[p * d..(p + 1) * d].fill(E::zero());
                *w = Tensor::from_vec(v, &[self.config.num_embeddings, d]);
            });
        }
    }

    /// Looks up `ids` (each below `num_embeddings`): `[*] -> [*, embedding_dim]`.
    ///
    /// **Panics** if an id is out of range.
    #[must_use]
    pub fn forward_ids(&self, ids: &Indices) -> Var<E> {
        Var::embedding(&self.weight, ids, self.config.padding_idx)
    }
}

impl<E: Float> Forward<E> for Embedding<E> {
    /// Looks up the ids held (as integer-valued floats) in `x`.
    ///
    /// **Panics** if an element of `x` is not a non-negative integer, or is out of range.
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let ids: Vec<usize> = x.with_value(|v| {
            v.to_vec()
                .into_iter()
                .map(|f| {
                    let f = <E as Float>::to_f64(f);
                    assert!(f >= 0.0 && f.fract() == 0.0, "Embedding: ids must be non-negative integers, got {f}");
                    f as usize
                })
                .collect()
        });
        self.forward_ids(&Indices::new(ids, &x.shape()))
    }
}

impl<E: Float> Module<E> for Embedding<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
    }
}

impl<E: Float> fmt::Display for Embedding<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(f, "Embedding({}, {}", c.num_embeddings, c.embedding_dim)?;
        if let Some(p) = c.padding_idx {
            write!(f, ", padding_idx={p}")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

impl<E: Float> LayerSpec for Embedding<E> {
    const TYPE_NAME: &'static str = "Embedding";
    const EXAMPLE: &'static str = r#"{"num_embeddings": 5, "embedding_dim": 3, "padding_idx": 0}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"num_embeddings": c.num_embeddings, "embedding_dim": c.embedding_dim,
            "padding_idx": c.padding_idx}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let (n, d) = (a.usize("num_embeddings", None)?, a.usize("embedding_dim", None)?);
        EmbeddingConfig { padding_idx: a.opt_usize("padding_idx")?, ..EmbeddingConfig::new(n, d) }.build()
    }
}

crate::register_layer!(Embedding<E>);

#[cfg(test)]
mod tests {
    use super::super::conv::testing::{descend, int};
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;

    #[test]
    fn output_shape_and_config_errors() {
        let e: Embedding = Embedding::new(7, 5);
        assert_eq!(e.forward_ids(&Indices::new(vec![0, 6, 3, 3, 1, 2], &[3, 2])).shape().as_slice(), &[3, 2, 5]);
        assert_eq!(e.forward_ids(&Indices::new(vec![4], &[1])).shape().as_slice(), &[1, 5]);
        let ids = Var::constant(Tensor::from_vec(vec![1.0f32, 2.0, 6.0], &[3]));
        let y = e.forward(&ids);
        assert_eq!(y.shape().as_slice(), &[3, 5]);
        assert_eq!(y.value().select(0, 2).to_vec(), e.weight.value().select(0, 6).to_vec());
        assert_eq!(
            EmbeddingConfig { padding_idx: Some(7), ..EmbeddingConfig::new(7, 5) }
                .build::<f32>()
                .err()
                .unwrap()
                .to_string(),
            "Embedding: padding_idx must be within num_embeddings, got padding_idx=7, num_embeddings=7"
        );
        assert_eq!(
            EmbeddingConfig::new(7, 0).build::<f32>().err().unwrap().to_string(),
            "Embedding: embedding_dim must be > 0, got 0"
        );
        assert_eq!(e.to_string(), "Embedding(7, 5) [35 parameters]");
    }

    #[test]
    #[should_panic(expected = "Embedding: ids must be non-negative integers, got 1.5")]
    fn float_ids_are_rejected() {
        let e: Embedding = Embedding::new(3, 2);
        let _ = e.forward(&Var::constant(Tensor::from_vec(vec![1.5f32], &[1])));
    }

    #[test]
    fn init_matches_pytorch() {
        let e: Embedding<f64> =
            EmbeddingConfig { padding_idx: Some(2), ..EmbeddingConfig::new(500, 64) }.build().unwrap();
        let w = e.weight.value();
        assert_eq!(w.select(0, 2).to_vec(), vec![0.0; 64]);
        let (mean, std) = (w.mean(&[], false).item(), w.std(&[], 1, false).item());
        assert!(mean.abs() < 0.02 && (std - 1.0).abs() < 0.02, "mean {mean}, std {std}");
        let Some(c) = golden::load("init/embedding") else { return };
        let e: Embedding<f64> = EmbeddingConfig {
            padding_idx: c.opt("constructor_kwargs/padding_idx").map(|_| c.usize("constructor_kwargs/padding_idx")),
            ..EmbeddingConfig::new(
                c.usize("constructor_kwargs/num_embeddings"),
                c.usize("constructor_kwargs/embedding_dim"),
            )
        }
        .build()
        .unwrap();
        crate::layers::conv::testing::check_init(&c, &e);
    }

    #[test]
    fn gradients_flow_to_the_table() {
        let e: Embedding<f64> = EmbeddingConfig { padding_idx: Some(1), ..EmbeddingConfig::new(4, 3) }.build().unwrap();
        // repeated ids accumulate; the padding row (never looked up here: its gradient is zero
        // by design, which finite differences would not see) changes nothing for the others
        let ids = Indices::new(vec![0, 3, 3, 2], &[2, 2]);
        for config in [e.config.clone(), EmbeddingConfig::new(4, 3)] {
            let r = gradcheck(
                |v| Embedding { config: config.clone(), weight: v[0].clone() }.forward_ids(&ids).tanh(),
                &[e.weight.value()],
                1e-6,
                1e-7,
                1e-5,
            );
            assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }

    #[test]
    fn tiny_overfit() {
        // each of 4 ids learns its own target vector; the padding row stays zero
        let e: Embedding<f64> = EmbeddingConfig { padding_idx: Some(0), ..EmbeddingConfig::new(5, 2) }.build().unwrap();
        let ids = Indices::new(vec![1, 2, 3, 4, 0], &[5]);
        let target = Var::constant(Tensor::from_vec(vec![1.0, -1.0, 0.5, 0.5, -2.0, 0.0, 0.0, 3.0, 0.0, 0.0], &[5, 2]));
        let loss = descend(&e.parameters(), 1.0, 200, || {
            let d = e.forward_ids(&ids).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "{loss}");
        assert_eq!(e.weight.value().select(0, 0).to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn golden_embedding_padding_idx() {
        let Some(c) = golden::load("layers/embedding_padding_idx") else { return };
        let kw = &c.json["constructor_kwargs"];
        let mut e: Embedding<f64> = EmbeddingConfig {
            padding_idx: kw["padding_idx"].as_u64().map(|p| p as usize),
            ..EmbeddingConfig::new(int(&kw["num_embeddings"], 0), int(&kw["embedding_dim"], 0))
        }
        .build()
        .unwrap();
        let mut sd = crate::StateDict::new();
        sd.insert("weight".into(), c.t("param.weight"));
        e.load_state_dict(&sd, true).unwrap();
        let (ids, shape) = c.ints.get("input.ids").expect("int64 ids").clone();
        let ids = Indices::new(ids.into_iter().map(|i| i as usize).collect(), &shape);
        let y = e.forward_ids(&ids);
        let tol = c.tol("float64");
        golden::assert_close("output", &y.value(), &c.t("output.output"), tol);
        y.backward_with(&c.t("upstream.output"));
        golden::assert_close("grad weight", &e.weight.grad().unwrap(), &c.t("grad_param.weight"), tol);
        // the Forward path over float ids agrees
        let yf = e.forward(&Var::constant(c.t("input.ids")));
        golden::assert_close("output via Forward", &yf.value(), &c.t("output.output"), tol);
    }
}
