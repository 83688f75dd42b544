//! `Bf16Embedding`: a lookup table of bfloat16 rows.

use std::fmt;

use half::bf16;

use kiln_autograd::Var;
use kiln_nn::{Embedding, Forward, Module, TensorKind};
use kiln_tensor::{Bf16Tensor, Indices, Tensor};

use super::{widen, BF16_BYTES};

/// An [`Embedding`] in bfloat16 (`embedding.to(torch.bfloat16)`): the table is stored as
/// bfloat16 and a lookup copies rows (no arithmetic, so no further rounding). Inference only.
///
/// # Shapes
/// - Input: ids of any shape `[*]`
/// - Output: `[*, embedding_dim]`
///
/// # Parameters
/// - `weight`: `[num_embeddings, embedding_dim]`, the float table rounded to bfloat16
///
/// ```
/// use kiln_nn::{Embedding, EmbeddingConfig};
/// use kiln_quant::Bf16Embedding;
/// use kiln_tensor::Indices;
/// let emb: Embedding = EmbeddingConfig { padding_idx: Some(0), ..EmbeddingConfig::new(10, 3) }.build().unwrap();
/// let h = Bf16Embedding::from_embedding(&emb);
/// let ids = Indices::new(vec![1, 0, 4, 9], &[2, 2]);
/// let y = h.forward_ids(&ids);
/// assert_eq!(y.shape(), &[2, 2, 3]);
/// // the rows are the float rows rounded to bfloat16
/// assert_eq!(y.to_f32().to_vec(), emb.forward_ids(&ids).value().to_bf16().to_f32().to_vec());
/// assert_eq!(h.param_bytes(), 10 * 3 * 2);
/// ```
#[derive(Clone, Debug)]
pub struct Bf16Embedding {
    weight: Bf16Tensor,
    padding_idx: Option<usize>,
}

impl Bf16Embedding {
    /// Rounds a float table to bfloat16.
    #[must_use]
    pub fn from_embedding(layer: &Embedding) -> Self {
        Self::from_weight(&layer.weight.value(), layer.config.padding_idx)
    }

    /// Rounds a `[num_embeddings, embedding_dim]` table; `padding_idx` is only displayed (its
    /// row is looked up like any other, as in PyTorch's inference).
    ///
    /// **Panics** if `weight` is not 2-d.
    #[must_use]
    pub fn from_weight(weight: &Tensor<f32>, padding_idx: Option<usize>) -> Self {
        assert_eq!(
            weight.ndim(),
            2,
            "Bf16Embedding: weight must be [num_embeddings, embedding_dim], got {:?}",
            weight.shape()
        );
        Bf16Embedding { weight: weight.to_bf16(), padding_idx }
    }

    /// Rows of the table.
    #[must_use]
    pub fn num_embeddings(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Values per row.
    #[must_use]
    pub fn embedding_dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// The table, `[num_embeddings, embedding_dim]`.
    #[must_use]
    pub fn weight(&self) -> &Bf16Tensor {
        &self.weight
    }

    /// Bytes of the table (2 per value).
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        BF16_BYTES * self.weight.numel()
    }

    /// Looks up `ids` (each below `num_embeddings`): `[*] -> [*, embedding_dim]`.
    ///
    /// **Panics** if an id is out of range.
    #[must_use]
    pub fn forward_ids(&self, ids: &Indices) -> Bf16Tensor {
        let (n, d) = (self.num_embeddings(), self.embedding_dim());
        let table = self.weight.as_slice();
        let mut out = Vec::with_capacity(ids.as_slice().len() * d);
        for &id in ids.as_slice() {
            assert!(id < n, "Bf16Embedding: id {id} out of range for num_embeddings = {n}");
            out.extend_from_slice(&table[id * d..(id + 1) * d]);
        }
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        Bf16Tensor::from_vec(out, &shape)
    }

    /// Looks up ids held as integer-valued floats (the input a `Sequential` passes on).
    ///
    /// **Panics** if a value is not a non-negative integer, or is out of range.
    #[must_use]
    pub fn forward_tensor(&self, ids: &Tensor<f32>) -> Bf16Tensor {
        self.forward_ids(&Indices::new(ids.to_vec().into_iter().map(id_of).collect(), ids.shape()))
    }

    /// Looks up ids held as bfloat16 values (exact up to 256 only: bfloat16 has 8 significant
    /// bits; pass larger ids through [`forward_ids`](Self::forward_ids) or
    /// [`forward_tensor`](Self::forward_tensor)).
    ///
    /// **Panics** if a value is not a non-negative integer, or is out of range.
    #[must_use]
    pub fn forward_bf16(&self, ids: &Bf16Tensor) -> Bf16Tensor {
        let values: Vec<usize> = ids.as_slice().iter().map(|&v: &bf16| id_of(widen(v))).collect();
        self.forward_ids(&Indices::new(values, ids.shape()))
    }
}

fn id_of(f: f32) -> usize {
    assert!(f >= 0.0 && f.fract() == 0.0, "Bf16Embedding: ids must be non-negative integers, got {f}");
    f as usize
}

/// Looks up the ids held (as integer-valued floats) in `x`; the rows come out widened to `f32`.
impl Forward<f32> for Bf16Embedding {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v).to_f32()))
    }
}

/// No `f32` parameters or buffers: the bfloat16 table is not a variable.
impl Module<f32> for Bf16Embedding {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for Bf16Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bf16Embedding({}, {}", self.num_embeddings(), self.embedding_dim())?;
        if let Some(p) = self.padding_idx {
            write!(f, ", padding_idx={p}")?;
        }
        write!(f, ") [{} bytes]", self.param_bytes())
    }
}
