//! Attention: `scaled_dot_product_attention` and `MultiheadAttention`,
//! `softmax(Q Kᵀ / √d + M) V` (Vaswani et al., 2017, "Attention is all you need").
//!
//! Heads are never looped over: the projections are split into heads by reshape/permute views
//! (`[B, L, E]` → `[B, H, L, E/H]`) and every head of every batch element goes through one
//! batched matrix product for the scores and one for the output.

use std::fmt;
use std::sync::Mutex;

use kiln_autograd::Var;
use kiln_tensor::{Float, Rng, Tensor};

use crate::error::NnError;
use crate::init;
use crate::layers::linear::{Linear, LinearConfig};
use crate::{Forward, Module};

// ---------------------------------------------------------------------------------------------
// Masks

/// An attention mask: boolean (stored as 0/1, any nonzero value is `true`) or additive.
///
/// What a boolean `true` means depends on who reads the mask, exactly as in PyTorch:
/// - [`scaled_dot_product_attention`]: `true` = the position **takes part** in attention;
/// - [`MultiheadAttention`] and the Transformer layers: `true` = the position is **masked
///   out** (padding, the future).
///
/// A [`Float`](AttnMask::Float) mask is added to the scores before the softmax everywhere
/// (0 keeps a position, `-inf` removes it, other values bias it), so it means the same to
/// every reader; [`causal_mask`] returns one.
///
/// Masks are data: no gradient flows into them.
///
/// ```
/// use kiln_nn::AttnMask;
/// let m: AttnMask<f32> = AttnMask::from_bools(&[true, false, true, true], &[2, 2]);
/// assert_eq!(m.shape(), &[2, 2]);
/// // as an additive mask where `true` means "masked out"
/// assert_eq!(m.to_additive(true).to_vec(), vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
/// ```
#[derive(Clone, Debug)]
pub enum AttnMask<E: Float = f32> {
    /// A boolean mask as 0/1 values (nonzero = `true`).
    Bool(Tensor<E>),
    /// An additive mask, added to the attention scores.
    Float(Tensor<E>),
}

impl<E: Float> AttnMask<E> {
    /// A boolean mask of `shape` from row-major `values`.
    ///
    /// **Panics** if `values.len()` is not the product of `shape`.
    pub fn from_bools(values: &[bool], shape: &[usize]) -> Self {
        let data = values.iter().map(|&b| if b { E::one() } else { E::zero() }).collect();
        AttnMask::Bool(Tensor::from_vec(data, shape))
    }

    /// The mask's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            AttnMask::Bool(t) | AttnMask::Float(t) => t.shape(),
        }
    }

    /// The additive form: a float mask as it is; a boolean one as `-inf` where the mask is
    /// `true` (when `true_masks_out`, [`MultiheadAttention`]'s convention) or where it is
    /// `false` (otherwise, [`scaled_dot_product_attention`]'s convention), 0 elsewhere.
    #[must_use]
    pub fn to_additive(&self, true_masks_out: bool) -> Tensor<E> {
        match self {
            AttnMask::Float(t) => t.clone(),
            AttnMask::Bool(t) => {
                let removed = if true_masks_out { t.ne_scalar(E::zero()) } else { t.eq_scalar(E::zero()) };
                Tensor::zeros(t.shape()).masked_fill(&removed, E::neg_infinity())
            }
        }
    }
}

/// The causal ("square subsequent") mask `[n, n]`: 0 on and below the diagonal, `-inf` above,
/// so that position `i` attends to positions `0..=i` only, like
/// `nn.Transformer.generate_square_subsequent_mask(n)`.
///
/// It is an additive mask, so it means the same to [`scaled_dot_product_attention`] and to
/// [`MultiheadAttention`] / the Transformer layers (whose boolean conventions differ).
///
/// ```
/// use kiln_nn::causal_mask;
/// let m = causal_mask::<f64>(3);
/// let inf = f64::NEG_INFINITY;
/// assert_eq!(m.to_additive(true).to_vec(), vec![0.0, inf, inf, 0.0, 0.0, inf, 0.0, 0.0, 0.0]);
/// ```
pub fn causal_mask<E: Float>(n: usize) -> AttnMask<E> {
    AttnMask::Float(causal_bias(n, n))
}

/// `[l, s]`: 0 where `j <= i` (top-left aligned lower triangle), `-inf` elsewhere.
fn causal_bias<E: Float>(l: usize, s: usize) -> Tensor<E> {
    let data = (0..l).flat_map(|i| (0..s).map(move |j| if j <= i { E::zero() } else { E::neg_infinity() })).collect();
    Tensor::from_vec(data, &[l, s])
}

/// Whether `shape` broadcasts to `target` (numpy rules, `shape` may have fewer dims).
fn broadcasts_to(shape: &[usize], target: &[usize]) -> bool {
    shape.len() <= target.len() && shape.iter().rev().zip(target.iter().rev()).all(|(&a, &b)| a == b || a == 1)
}

// ---------------------------------------------------------------------------------------------
// scaled dot-product attention

/// `softmax(q kᵀ / √d + mask)` (then dropout) times `v`, returning the output and the
/// attention weights. `mask` is additive and broadcasts to the scores `[.., L, S]`.
fn attention<E: Float>(
    q: &Var<E>,
    k: &Var<E>,
    v: &Var<E>,
    mask: Option<Tensor<E>>,
    dropout_p: f64,
    rng: Option<&mut Rng>,
) -> (Var<E>, Var<E>) {
    let d = q.size(-1);
    // Scaling q (L·d elements) rather than the scores (L·S) as PyTorch's math path does.
    let scale = E::from_f64(1.0 / (d as f64).sqrt());
    let mut scores = q.mul_scalar(scale).matmul(&k.transpose(-2, -1));
    if let Some(m) = mask {
        scores = scores.add(&Var::constant(m));
    }
    let mut weights = scores.softmax(-1);
    if dropout_p > 0.0 {
        weights = match rng {
            Some(r) => weights.dropout(dropout_p, true, r),
            None => init::with_rng(|r| weights.dropout(dropout_p, true, r)),
        };
    }
    (weights.matmul(v), weights)
}

/// Scaled dot-product attention, like `torch.nn.functional.scaled_dot_product_attention`:
///
/// `softmax(q kᵀ / √E + M) v`
///
/// where `E` is the query/key size and `M` the mask: a boolean `attn_mask` removes the
/// positions where it is **false** (`true` = may attend; note that [`MultiheadAttention`]'s
/// boolean masks mean the opposite), a float one is added to the scores, and `is_causal`
/// lets query `i` see keys `0..=i` only (top-left aligned, `tril(ones(L, S))`). Dropout with
/// probability `dropout_p` is applied to the attention weights (whenever `dropout_p > 0`, as
/// in PyTorch), drawing from `rng`, or from the process-wide generator when `rng` is `None`.
///
/// A query whose every key is masked out gets NaN, as in PyTorch.
///
/// # Shapes
/// - `q`: `[*, L, E]`, `k`: `[*, S, E]`, `v`: `[*, S, Ev]` (the leading dims broadcast;
///   usually `[batch, heads, ..]`)
/// - `attn_mask`: broadcastable to the scores `[*, L, S]`
/// - Output: `[*, L, Ev]`
///
/// **Panics** if the sizes of `q`, `k`, `v` disagree, `attn_mask` does not broadcast to the
/// scores (naming both shapes), both `attn_mask` and `is_causal` are given, or `dropout_p` is
/// outside `[0, 1]`.
///
/// ```
/// use kiln_nn::{scaled_dot_product_attention, AttnMask};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let q = Var::constant(Tensor::<f64>::ones(&[1, 2, 3, 4])); // [batch, heads, L, E]
/// let k = Var::constant(Tensor::<f64>::ones(&[1, 2, 5, 4]));
/// let v = Var::constant(Tensor::from_vec((0..5).map(|i| i as f64).collect(), &[5, 1]).expand(&[1, 2, 5, 1]));
/// let y = scaled_dot_product_attention(&q, &k, &v, None, false, 0.0, None);
/// assert_eq!(y.shape().as_slice(), &[1, 2, 3, 1]);
/// assert!((y.value().get(&[0, 0, 0, 0]) - 2.0).abs() < 1e-12); // equal scores: the mean of v
/// // a boolean mask: true = may attend; here only keys 0 and 1
/// let mask = AttnMask::from_bools(&[true, true, false, false, false], &[1, 5]);
/// let y = scaled_dot_product_attention(&q, &k, &v, Some(&mask), false, 0.0, None);
/// assert!((y.value().get(&[0, 1, 2, 0]) - 0.5).abs() < 1e-12);
/// // causal: query i sees keys 0..=i
/// let y = scaled_dot_product_attention(&q, &k, &v, None, true, 0.0, None);
/// assert_eq!(y.value().select(1, 0).to_vec(), vec![0.0, 0.5, 1.0]);
/// ```
#[must_use]
pub fn scaled_dot_product_attention<E: Float>(
    q: &Var<E>,
    k: &Var<E>,
    v: &Var<E>,
    attn_mask: Option<&AttnMask<E>>,
    is_causal: bool,
    dropout_p: f64,
    rng: Option<&mut Rng>,
) -> Var<E> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let op = "scaled_dot_product_attention";
    assert!(
        qs.len() >= 2 && ks.len() >= 2 && vs.len() >= 2,
        "{op}: query {:?}, key {:?} and value {:?} need at least 2 dims",
        qs.as_slice(),
        ks.as_slice(),
        vs.as_slice()
    );
    let (l, e) = (qs[qs.len() - 2], qs[qs.len() - 1]);
    let (s, ek) = (ks[ks.len() - 2], ks[ks.len() - 1]);
    assert!(
        e == ek,
        "{op}: query {:?} and key {:?}: embedding sizes {e} and {ek} differ",
        qs.as_slice(),
        ks.as_slice()
    );
    assert!(
        vs[vs.len() - 2] == s,
        "{op}: key {:?} and value {:?}: sequence lengths {s} and {} differ",
        ks.as_slice(),
        vs.as_slice(),
        vs[vs.len() - 2]
    );
    assert!((0.0..=1.0).contains(&dropout_p), "{op}: dropout_p must be in [0, 1], got {dropout_p}");
    let mask = match (attn_mask, is_causal) {
        (Some(_), true) => panic!("{op}: give attn_mask or is_causal, not both"),
        (None, true) => Some(causal_bias(l, s)),
        (None, false) => None,
        (Some(m), false) => {
            let mut scores = kiln_tensor::broadcast_shapes(&qs[..qs.len() - 2], &ks[..ks.len() - 2], op).to_vec();
            scores.extend_from_slice(&[l, s]);
            assert!(
                broadcasts_to(m.shape(), &scores),
                "{op}: attn_mask {:?} does not broadcast to the attention scores {scores:?}",
                m.shape()
            );
            Some(m.to_additive(false))
        }
    };
    attention(q, k, v, mask, dropout_p, rng).0
}

// ---------------------------------------------------------------------------------------------
// MultiheadAttention

/// Configuration of a [`MultiheadAttention`] layer (PyTorch's defaults: no dropout, with
/// biases, sequence-first inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiheadAttentionConfig {
    /// Model size `E` (of queries, keys, values and the output).
    pub embed_dim: usize,
    /// Number of heads `H`; each works on `E / H` features.
    pub num_heads: usize,
    /// Dropout probability on the attention weights (training only).
    pub dropout: f64,
    /// Whether the input and output projections have biases.
    pub bias: bool,
    /// Inputs and outputs are `[batch, seq, E]` when true, `[seq, batch, E]` otherwise.
    pub batch_first: bool,
}

impl MultiheadAttentionConfig {
    /// PyTorch's defaults for `embed_dim` and `num_heads`.
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        MultiheadAttentionConfig { embed_dim, num_heads, dropout: 0.0, bias: true, batch_first: false }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero, `embed_dim` is not divisible by `num_heads`,
    /// or `dropout` is outside `[0, 1]`.
    pub fn build<E: Float>(&self) -> Result<MultiheadAttention<E>, NnError> {
        self.check()?;
        let e = self.embed_dim;
        // (before out_proj, whose own build draws too)
        let drawn = init::Drawn::start();
        let mut m = MultiheadAttention {
            config: self.clone(),
            in_proj_weight: Var::param(Tensor::zeros(&[3 * e, e])),
            in_proj_bias: self.bias.then(|| Var::param(Tensor::zeros(&[3 * e]))),
            out_proj: LinearConfig { bias: self.bias, ..LinearConfig::new(e, e) }.build()?,
            training: true,
            rng: Mutex::new(init::with_rng(|r| r.fork())),
            drawn,
        };
        m.reset_parameters();
        m.drawn.finish();
        Ok(m)
    }

    /// The checks of [`MultiheadAttentionConfig::build`], also run by the layer's builder setters.
    fn check(&self) -> Result<(), NnError> {
        for (what, v) in [("embed_dim", self.embed_dim), ("num_heads", self.num_heads)] {
            if v == 0 {
                return Err(NnError::Config(format!("MultiheadAttention: {what} must be > 0, got 0")));
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(NnError::Config(format!(
                "MultiheadAttention: embed_dim must be divisible by num_heads, got embed_dim={}, num_heads={}",
                self.embed_dim, self.num_heads
            )));
        }
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(NnError::Config(format!(
                "MultiheadAttention: dropout must be in [0, 1], got {}",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// Multi-head attention, like `torch.nn.MultiheadAttention`:
///
/// `MultiHead(Q, K, V) = Concat(head_1, …, head_H) W_Oᵀ + b_O`,
/// `head_h = softmax((Q W_Q,hᵀ + b_Q,h)(K W_K,hᵀ + b_K,h)ᵀ / √(E/H) + M) (V W_V,hᵀ + b_V,h)`
///
/// with the three input projections packed in `in_proj_weight = [W_Q; W_K; W_V]` (head `h`
/// uses rows `h·E/H .. (h+1)·E/H` of each) so that a PyTorch `state_dict` loads unchanged.
/// Self-attention (`query`, `key` and `value` the same `Var`) projects with one `[3E, E]`
/// product.
///
/// Masks follow PyTorch's MultiheadAttention convention: a **boolean** mask is **true where
/// attention is not allowed** (the opposite of [`scaled_dot_product_attention`]'s); a float
/// mask is added to the scores.
///
/// # Shapes
/// - `query`: `[N, L, E]` with `batch_first`, else `[L, N, E]`; or `[L, E]` unbatched
/// - `key`, `value`: `[N, S, E]` / `[S, N, E]` / `[S, E]`
/// - `key_padding_mask`: `[N, S]` (or `[S]` unbatched); `true` = that key is padding
/// - `attn_mask`: `[L, S]`, or `[N·H, L, S]` (one per batch element and head)
/// - Output: like `query`; weights `[N, L, S]` averaged over heads, else `[N, H, L, S]`
///   (without `N` unbatched)
///
/// # Parameters
/// - `in_proj_weight`: `[3E, E]`, Glorot uniform U(-√(6/4E), √(6/4E)) (`xavier_uniform_`)
/// - `in_proj_bias`: `[3E]`, zeros
/// - `out_proj.weight`: `[E, E]`, U(-1/√E, 1/√E) (as [`Linear`])
/// - `out_proj.bias`: `[E]`, zeros
///
/// ```
/// use kiln_nn::{causal_mask, Module, MultiheadAttention, MultiheadAttentionConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let mha: MultiheadAttention<f64> =
///     MultiheadAttentionConfig { batch_first: true, ..MultiheadAttentionConfig::new(8, 2) }.build().unwrap();
/// let x = Var::constant(Tensor::ones(&[3, 5, 8])); // [batch, seq, embed]
/// let (y, w) = mha.forward(&x, &x, &x, None, true, Some(&causal_mask(5)), true);
/// assert_eq!(y.shape().as_slice(), &[3, 5, 8]);
/// let w = w.unwrap().value(); // [batch, L, S], averaged over heads
/// assert_eq!(w.shape(), &[3, 5, 5]);
/// assert_eq!(w.get(&[0, 0, 1]), 0.0); // the first position cannot see the second
/// assert!((w.sum(&[2], false).get(&[1, 3]) - 1.0).abs() < 1e-12);
/// assert_eq!(
///     mha.to_string(),
///     "MultiheadAttention(embed_dim=8, num_heads=2, dropout=0.0, bias=true, batch_first=true) [288 parameters]"
/// );
/// assert_eq!(mha.num_parameters(), 4 * 8 * 8 + 4 * 8);
/// ```
#[derive(Module)]
pub struct MultiheadAttention<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: MultiheadAttentionConfig,
    /// `[3E, E]`: `[W_Q; W_K; W_V]` stacked on rows.
    pub in_proj_weight: Var<E>,
    /// `[3E]`: `[b_Q; b_K; b_V]`, when configured.
    pub in_proj_bias: Option<Var<E>>,
    /// The output projection `E → E`.
    pub out_proj: Linear<E>,
    training: bool,
    #[module(skip)]
    rng: Mutex<Rng>,
    /// Where the parameters were drawn from, for [`bias`](Self::bias), which changes them.
    #[module(skip)]
    drawn: init::Drawn,
}

impl MultiheadAttention<f32> {
    /// A layer with PyTorch's defaults (sequence-first, no dropout, biases).
    ///
    /// **Panics** if a size is zero or `embed_dim` is not divisible by `num_heads` (use
    /// [`MultiheadAttentionConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`MultiheadAttention::new_generic`].
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        Self::new_generic(embed_dim, num_heads)
    }
}

impl<E: Float> MultiheadAttention<E> {
    /// [`MultiheadAttention::new`] in any element type: `MultiheadAttention::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`MultiheadAttention::new`] does.
    pub fn new_generic(embed_dim: usize, num_heads: usize) -> Self {
        MultiheadAttentionConfig::new(embed_dim, num_heads).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets the dropout probability on the attention weights, keeping the parameters (a
    /// builder: `MultiheadAttention::new(64, 8).dropout(0.1).batch_first(true)`).
    ///
    /// **Panics** on a combination [`MultiheadAttentionConfig::build`] rejects
    /// (`MultiheadAttention: dropout must be in [0, 1], got 1.5`).
    #[must_use]
    pub fn dropout(mut self, dropout: f64) -> Self {
        self.config.dropout = dropout;
        self.config.check().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Sets the `[batch, seq, E]` layout of inputs and outputs, keeping the parameters (a
    /// builder: `MultiheadAttention::new(64, 8).dropout(0.1).batch_first(true)`).
    #[must_use]
    pub fn batch_first(mut self, batch_first: bool) -> Self {
        self.config.batch_first = batch_first;
        self
    }

    /// Sets whether the input and output projections have biases (a builder:
    /// `MultiheadAttention::new(64, 8).bias(false)`).
    ///
    /// The parameters change, so all of them are drawn again, from the init generator's state
    /// when the layer was first built: the result equals [`MultiheadAttentionConfig::build`]
    /// with the same options after the same [`init::manual_seed`]. The mode is kept.
    #[must_use]
    pub fn bias(self, bias: bool) -> Self {
        let config = MultiheadAttentionConfig { bias, ..self.config.clone() };
        let mut m = self.drawn.redo(|| config.build()).unwrap_or_else(|e| panic!("{e}"));
        m.training = self.training;
        m
    }

    /// Re-draws the parameters with PyTorch's init (`_reset_parameters`): Glorot uniform on
    /// `in_proj_weight`, zero biases, `out_proj.weight` as a [`Linear`]'s.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| {
            init::xavier_uniform_(&self.in_proj_weight, 1.0, rng);
            init::default_weight_bias(&self.out_proj.weight, None, rng);
        });
        if let Some(b) = &self.in_proj_bias {
            init::zeros_(b);
        }
        if let Some(b) = &self.out_proj.bias {
            init::zeros_(b);
        }
    }

    /// Size of one head, `E / H`.
    pub fn head_dim(&self) -> usize {
        self.config.embed_dim / self.config.num_heads
    }

    /// Attends from `query` to `key`/`value`, like PyTorch's `forward(query, key, value,
    /// key_padding_mask, need_weights, attn_mask, average_attn_weights)`.
    ///
    /// Returns the output and, when `need_weights`, the attention weights (after dropout, as
    /// PyTorch returns them), averaged over heads when `average_attn_weights`. Boolean masks
    /// are **true where attention is not allowed**; see the type's documentation for shapes.
    ///
    /// **Panics** when the inputs' dims or sizes disagree with each other or with
    /// `embed_dim`, or a mask has the wrong shape (naming the mask's shape and the expected
    /// one).
    #[must_use]
    pub fn forward(
        &self,
        query: &Var<E>,
        key: &Var<E>,
        value: &Var<E>,
        key_padding_mask: Option<&AttnMask<E>>,
        need_weights: bool,
        attn_mask: Option<&AttnMask<E>>,
        average_attn_weights: bool,
    ) -> (Var<E>, Option<Var<E>>) {
        let c = &self.config;
        let (e, h, d) = (c.embed_dim, c.num_heads, self.head_dim());
        let (qs, ks, vs) = (query.shape(), key.shape(), value.shape());
        let batched = qs.len() == 3;
        assert!(
            (qs.len() == 3 || qs.len() == 2) && ks.len() == qs.len() && vs.len() == qs.len(),
            "MultiheadAttention: query {:?}, key {:?} and value {:?} must all be 3-D (batched) or all 2-D (unbatched)",
            qs.as_slice(),
            ks.as_slice(),
            vs.as_slice()
        );
        assert!(
            qs[qs.len() - 1] == e && ks[ks.len() - 1] == e && vs[vs.len() - 1] == e,
            "MultiheadAttention: query {:?}, key {:?} and value {:?} must end in embed_dim {e}",
            qs.as_slice(),
            ks.as_slice(),
            vs.as_slice()
        );
        // Work batch-first: [N, L, E] (views only).
        let to_bf = |x: &Var<E>| {
            if !batched {
                x.unsqueeze(0)
            } else if c.batch_first {
                x.clone()
            } else {
                x.transpose(0, 1)
            }
        };
        let (q, k, v) = (to_bf(query), to_bf(key), to_bf(value));
        let (n, l, s) = (q.size(0), q.size(1), k.size(1));
        assert!(
            k.size(0) == n && v.size(0) == n && v.size(1) == s,
            "MultiheadAttention: query {:?}, key {:?} and value {:?} disagree in batch size or key/value length",
            qs.as_slice(),
            ks.as_slice(),
            vs.as_slice()
        );

        // Input projections from the row blocks of the packed weight `[W_Q; W_K; W_V]`. Where
        // the inputs coincide PyTorch runs one packed product and slices its output; so does the
        // fused self-attention path below, whose op reads the `[N, L, 3E]` blocks in place and
        // returns their gradient whole. Otherwise separate products over the weight's row
        // blocks do the same arithmetic but give contiguous q, k, v (the head split stays a
        // view) and put the slicing backward on the small weight instead of the activation.
        let w = &self.in_proj_weight;
        let b = self.in_proj_bias.as_ref();
        let project = |x: &Var<E>, block: usize| {
            let wb = w.narrow(0, block * e, e);
            let bb = b.map(|b| b.narrow(0, block * e, e));
            x.linear(&wb, bb.as_ref())
        };
        let mask = self.merged_mask(key_padding_mask, attn_mask, batched, n, l, s);
        let p = if self.training { c.dropout } else { 0.0 };
        let fused = mask.is_none() && p == 0.0 && !need_weights;
        // [N, L, E] back to the caller's layout
        let to_caller = |out: Var<E>| {
            if !batched {
                out.squeeze_dim(0)
            } else if c.batch_first {
                out
            } else {
                out.transpose(0, 1)
            }
        };
        if fused && query.same(key) && key.same(value) {
            // Self-attention: one product with the packed weight, as PyTorch runs it, and the
            // per-head op reading the three column blocks in place (no slicing backward).
            let qkv = q.linear(w, b);
            return (to_caller(self.out_proj.forward(&qkv.packed_self_attention(h))), None);
        }
        let (q, k, v) = (project(&q, 0), project(&k, 1), project(&v, 2));
        let (out, weights) = if fused {
            // No mask, no dropout, no weights returned: the fused per-head op (no copies for
            // the head split and merge, the softmax done per head in cache).
            (q.multi_head_attention(&k, &v, h), None)
        } else {
            // [N, T, E] -> [N, H, T, D], a view
            let heads = |x: &Var<E>, t: usize| x.reshape(&[n, t, h, d]).permute(&[0, 2, 1, 3]);
            let (q, k, v) = (heads(&q, l), heads(&k, s), heads(&v, s));
            let (out, weights) = {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                attention(&q, &k, &v, mask, p, Some(&mut rng))
            };
            // [N, H, L, D] -> [N, L, E]
            (out.permute(&[0, 2, 1, 3]).reshape(&[n, l, e]), Some(weights))
        };
        let out = to_caller(self.out_proj.forward(&out));
        let weights = weights.filter(|_| need_weights).map(|weights| {
            let w = if average_attn_weights { weights.mean(&[1], false) } else { weights };
            if batched {
                w
            } else {
                w.squeeze_dim(0)
            }
        });
        (out, weights)
    }

    /// The key-padding and attention masks as one additive mask broadcasting to the scores
    /// `[N, H, L, S]`.
    fn merged_mask(
        &self,
        key_padding_mask: Option<&AttnMask<E>>,
        attn_mask: Option<&AttnMask<E>>,
        batched: bool,
        n: usize,
        l: usize,
        s: usize,
    ) -> Option<Tensor<E>> {
        let h = self.config.num_heads;
        let am = attn_mask.map(|m| {
            let shape = m.shape();
            if shape == [l, s] {
                m.to_additive(true)
            } else if shape == [n * h, l, s] {
                m.to_additive(true).reshape(&[n, h, l, s])
            } else {
                panic!(
                    "MultiheadAttention: attn_mask {shape:?} must be [L, S] = {:?} or [N*num_heads, L, S] = {:?}",
                    [l, s],
                    [n * h, l, s]
                )
            }
        });
        let kpm = key_padding_mask.map(|m| {
            let expected: Vec<usize> = if batched { vec![n, s] } else { vec![s] };
            assert!(
                m.shape() == expected.as_slice(),
                "MultiheadAttention: key_padding_mask {:?} must be [N, S] = {expected:?} (N batch size, S key length)",
                m.shape()
            );
            m.to_additive(true).reshape(&[n, 1, 1, s])
        });
        match (am, kpm) {
            (Some(a), Some(k)) => Some(a.add(&k)),
            (a, k) => a.or(k),
        }
    }
}

impl<E: Float> fmt::Display for MultiheadAttention<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "MultiheadAttention(embed_dim={}, num_heads={}, dropout={:?}, bias={}, batch_first={}) [{} parameters]",
            c.embed_dim,
            c.num_heads,
            c.dropout,
            c.bias,
            c.batch_first,
            self.num_parameters()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    fn sdpa(q: &Var<f64>, k: &Var<f64>, v: &Var<f64>, m: Option<&AttnMask<f64>>, causal: bool) -> Var<f64> {
        scaled_dot_product_attention(q, k, v, m, causal, 0.0, None)
    }

    // ------------------------------------------------------------------ sdpa

    #[test]
    fn builder_setters_equal_the_config_build() {
        init::manual_seed(41);
        let a = MultiheadAttention::<f64>::new_generic(8, 2).dropout(0.3).batch_first(true).bias(false);
        let next_a = init::with_rng(|g| g.next_u64());
        init::manual_seed(41);
        let b: MultiheadAttention<f64> = MultiheadAttentionConfig {
            dropout: 0.3,
            batch_first: true,
            bias: false,
            ..MultiheadAttentionConfig::new(8, 2)
        }
        .build()
        .unwrap();
        let next_b = init::with_rng(|g| g.next_u64());
        assert_eq!(a.config, b.config);
        assert_eq!(a.state_dict(), b.state_dict());
        assert_eq!(next_a, next_b);
        // the same dropout generator: the same masks
        let x = Var::constant(rand(&[2, 3, 8], 1));
        let run = |m: &MultiheadAttention<f64>| m.forward(&x, &x, &x, None, false, None, true).0.value();
        assert_eq!(run(&a), run(&b));
    }

    #[test]
    #[should_panic(expected = "MultiheadAttention: dropout must be in [0, 1], got 1.5")]
    fn setter_panics_with_the_config_message() {
        let _ = MultiheadAttention::new(8, 2).dropout(1.5);
    }

    #[test]
    fn sdpa_masks_agree() {
        let (q, k, v) = (rand(&[2, 3, 4, 5], 1), rand(&[2, 3, 6, 5], 2), rand(&[2, 3, 6, 7], 3));
        let (q, k, v) = (Var::constant(q), Var::constant(k), Var::constant(v));
        let bools: Vec<bool> = (0..24).map(|i| i % 6 <= i / 6 + 1).collect();
        let bm = AttnMask::from_bools(&bools, &[4, 6]);
        let fm = AttnMask::Float(bm.to_additive(false));
        let a = sdpa(&q, &k, &v, Some(&bm), false).value();
        let b = sdpa(&q, &k, &v, Some(&fm), false).value();
        assert_eq!(a.to_vec(), b.to_vec());
        assert_eq!(a.shape(), &[2, 3, 4, 7]);
        // is_causal is the lower-triangular boolean mask
        let tri: Vec<bool> = (0..4).flat_map(|i| (0..6).map(move |j| j <= i)).collect();
        let c = sdpa(&q, &k, &v, None, true).value();
        let d = sdpa(&q, &k, &v, Some(&AttnMask::from_bools(&tri, &[4, 6])), false).value();
        assert_eq!(c.to_vec(), d.to_vec());
    }

    #[test]
    #[should_panic(expected = "attn_mask [4, 5] does not broadcast to the attention scores [2, 3, 4, 6]")]
    fn sdpa_wrong_mask_shape_panics() {
        let q = Var::constant(rand(&[2, 3, 4, 5], 1));
        let k = Var::constant(rand(&[2, 3, 6, 5], 2));
        let m = AttnMask::Float(Tensor::zeros(&[4, 5]));
        let _ = sdpa(&q, &k, &k, Some(&m), false);
    }

    #[test]
    #[should_panic(expected = "query [2, 4, 5] and key [2, 6, 3]: embedding sizes 5 and 3 differ")]
    fn sdpa_size_mismatch_panics() {
        let q = Var::constant(rand(&[2, 4, 5], 1));
        let k = Var::constant(rand(&[2, 6, 3], 2));
        let _ = sdpa(&q, &k, &k, None, false);
    }

    #[test]
    fn sdpa_dropout_is_reproducible_and_unbiased_in_shape() {
        let q = Var::constant(rand(&[1, 2, 4, 3], 1));
        let v = Var::constant(rand(&[1, 2, 4, 3], 2));
        let a = scaled_dot_product_attention(&q, &q, &v, None, false, 0.5, Some(&mut Rng::new(7))).value();
        let b = scaled_dot_product_attention(&q, &q, &v, None, false, 0.5, Some(&mut Rng::new(7))).value();
        let c = scaled_dot_product_attention(&q, &q, &v, None, false, 0.0, None).value();
        assert_eq!(a.to_vec(), b.to_vec());
        assert_ne!(a.to_vec(), c.to_vec());
    }

    #[test]
    fn sdpa_gradcheck() {
        let bools: Vec<bool> = (0..12).map(|i| i % 4 != 3 || i < 4).collect();
        let m = AttnMask::from_bools(&bools, &[3, 4]);
        for (mask, causal) in [(None, false), (Some(&m), false), (None, true)] {
            let inputs = [rand(&[2, 3, 2], 11), rand(&[2, 4, 2], 12), rand(&[1, 4, 3], 13)];
            let r = gradcheck(|x| sdpa(&x[0], &x[1], &x[2], mask, causal), &inputs, 1e-6, 1e-8, 1e-6);
            assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }

    fn golden_sdpa(name: &str) {
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let tol = c.tol("float64");
        let (q, k, v) = (Var::param(c.t("input.q")), Var::param(c.t("input.k")), Var::param(c.t("input.v")));
        let kw = &c.json["call_kwargs"];
        let causal = kw["is_causal"].as_bool().unwrap_or(false);
        assert_eq!(kw["dropout_p"].as_f64(), Some(0.0));
        let mask = c.tensors.get("input.attn_mask").map(|t| {
            if c.json["tensors"]["input.attn_mask"]["dtype"] == "bool" {
                AttnMask::Bool(t.clone())
            } else {
                AttnMask::Float(t.clone())
            }
        });
        let y = scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), causal, 0.0, None);
        golden::assert_close(&format!("{name} output"), &y.value(), &c.t("output.output"), tol);
        y.backward_with(&c.t("upstream.output"));
        for (x, var) in [("q", &q), ("k", &k), ("v", &v)] {
            golden::assert_close(
                &format!("{name} grad {x}"),
                &var.grad().unwrap(),
                &c.t(&format!("grad_input.{x}")),
                tol,
            );
        }
    }

    #[test]
    fn golden_sdpa_cases() {
        for name in ["sdpa_no_mask", "sdpa_bool_mask", "sdpa_float_mask", "sdpa_causal"] {
            golden_sdpa(name);
        }
    }

    // ------------------------------------------------------------------ MultiheadAttention

    fn mha64(e: usize, h: usize, batch_first: bool) -> MultiheadAttention<f64> {
        MultiheadAttentionConfig { batch_first, ..MultiheadAttentionConfig::new(e, h) }.build().unwrap()
    }

    #[test]
    fn shapes_layouts_and_config_errors() {
        let m = mha64(6, 3, true);
        let q = Var::constant(rand(&[2, 4, 6], 1));
        let kv = Var::constant(rand(&[2, 5, 6], 2));
        let (y, w) = m.forward(&q, &kv, &kv, None, true, None, false);
        assert_eq!(y.shape().as_slice(), &[2, 4, 6]);
        assert_eq!(w.unwrap().shape().as_slice(), &[2, 3, 4, 5]);
        let (_, w) = m.forward(&q, &kv, &kv, None, false, None, true);
        assert!(w.is_none());
        // sequence-first gives the same numbers transposed
        let mut sf = mha64(6, 3, false);
        sf.load_state_dict(&m.state_dict(), true).unwrap();
        let (ys, ws) = sf.forward(&q.transpose(0, 1), &kv.transpose(0, 1), &kv.transpose(0, 1), None, true, None, true);
        assert_eq!(ys.shape().as_slice(), &[4, 2, 6]);
        golden::assert_close("seq-first", &ys.value().transpose(0, 1), &y.value(), (1e-12, 1e-14));
        assert_eq!(ws.unwrap().shape().as_slice(), &[2, 4, 5]);
        // unbatched
        let (yu, wu) = m.forward(&q.select(0, 1), &kv.select(0, 1), &kv.select(0, 1), None, true, None, true);
        assert_eq!(wu.unwrap().shape().as_slice(), &[4, 5]);
        golden::assert_close("unbatched", &yu.value(), &y.value().select(0, 1), (1e-12, 1e-14));
        // eval mode changes nothing without dropout
        sf.eval();
        assert!(!Module::<f64>::is_training(&sf));

        let err = |c: MultiheadAttentionConfig| c.build::<f32>().err().unwrap().to_string();
        assert_eq!(
            err(MultiheadAttentionConfig::new(6, 4)),
            "MultiheadAttention: embed_dim must be divisible by num_heads, got embed_dim=6, num_heads=4"
        );
        assert_eq!(err(MultiheadAttentionConfig::new(0, 1)), "MultiheadAttention: embed_dim must be > 0, got 0");
        assert_eq!(
            err(MultiheadAttentionConfig { dropout: 1.5, ..MultiheadAttentionConfig::new(4, 2) }),
            "MultiheadAttention: dropout must be in [0, 1], got 1.5"
        );
        let nb: MultiheadAttention =
            MultiheadAttentionConfig { bias: false, ..MultiheadAttentionConfig::new(4, 2) }.build().unwrap();
        let keys: Vec<String> = nb.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["in_proj_weight", "out_proj.weight"]);
        assert_eq!(
            nb.to_string(),
            "MultiheadAttention(embed_dim=4, num_heads=2, dropout=0.0, bias=false, batch_first=false) [64 parameters]"
        );
    }

    #[test]
    fn key_padding_hides_padded_keys() {
        let m = mha64(4, 2, true);
        let q = Var::constant(rand(&[1, 3, 4], 1));
        let kv = rand(&[1, 5, 4], 2);
        let pad = AttnMask::from_bools(&[false, false, false, true, true], &[1, 5]);
        let (y, w) =
            m.forward(&q, &Var::constant(kv.clone()), &Var::constant(kv.clone()), Some(&pad), true, None, true);
        let w = w.unwrap().value();
        assert!((0..3).all(|i| w.get(&[0, i, 3]) == 0.0 && w.get(&[0, i, 4]) == 0.0));
        // changing the padded keys changes nothing
        let kv2 = Var::constant(kv.narrow(1, 0, 3).contiguous());
        let (y2, _) = m.forward(&q, &kv2, &kv2, None, true, None, true);
        golden::assert_close("padding", &y.value(), &y2.value(), (1e-12, 1e-14));
    }

    #[test]
    #[should_panic(expected = "key_padding_mask [2, 4] must be [N, S] = [2, 5]")]
    fn wrong_key_padding_mask_panics() {
        let m = mha64(4, 2, true);
        let q = Var::constant(rand(&[2, 3, 4], 1));
        let kv = Var::constant(rand(&[2, 5, 4], 2));
        let _ = m.forward(&q, &kv, &kv, Some(&AttnMask::Bool(Tensor::zeros(&[2, 4]))), false, None, true);
    }

    #[test]
    #[should_panic(expected = "attn_mask [3, 3] must be [L, S] = [3, 5] or [N*num_heads, L, S] = [4, 3, 5]")]
    fn wrong_attn_mask_panics() {
        let m = mha64(4, 2, true);
        let q = Var::constant(rand(&[2, 3, 4], 1));
        let kv = Var::constant(rand(&[2, 5, 4], 2));
        let _ = m.forward(&q, &kv, &kv, None, false, Some(&causal_mask(3)), true);
    }

    #[test]
    fn per_head_attn_mask_matches_shared_mask() {
        let m = mha64(4, 2, true);
        let x = Var::constant(rand(&[2, 3, 4], 1));
        let shared = causal_mask::<f64>(3);
        let per_head = AttnMask::Float(shared.to_additive(true).unsqueeze(0).expand(&[4, 3, 3]).contiguous());
        let (a, _) = m.forward(&x, &x, &x, None, false, Some(&shared), true);
        let (b, _) = m.forward(&x, &x, &x, None, false, Some(&per_head), true);
        assert_eq!(a.value().to_vec(), b.value().to_vec());
    }

    #[test]
    fn init_matches_pytorch() {
        let m: MultiheadAttention<f64> = MultiheadAttentionConfig::new(64, 4).build().unwrap();
        let xb = (6.0f64 / (64.0 + 192.0)).sqrt();
        let w = m.in_proj_weight.value();
        assert!(w.abs().max_all() <= xb && w.abs().max_all() > 0.99 * xb);
        let std = w.std(&[], 1, false).item();
        assert!((std - xb / 3f64.sqrt()).abs() < 2e-3, "{std}");
        let ob = m.out_proj.weight.value().abs().max_all();
        assert!(ob <= 0.125 && ob > 0.12);
        assert_eq!(m.in_proj_bias.as_ref().unwrap().value().abs().max_all(), 0.0);
        assert_eq!(m.out_proj.bias.as_ref().unwrap().value().abs().max_all(), 0.0);
        let Some(c) = golden::load("init/multihead_attention") else { return };
        crate::layers::conv::testing::check_init(&c, &mha_from::<f64>(&c));
    }

    /// A MultiheadAttention from the case's constructor arguments (PyTorch's defaults where
    /// absent).
    fn mha_from<E: Float>(c: &golden::Case) -> MultiheadAttention<E> {
        for unsupported in ["add_bias_kv", "add_zero_attn"] {
            let key = format!("constructor_kwargs/{unsupported}");
            assert!(!c.bool_or(&key, false), "{}: {unsupported} is not supported", c.name);
        }
        assert!(c.opt("constructor_kwargs/kdim").is_none() && c.opt("constructor_kwargs/vdim").is_none());
        MultiheadAttentionConfig {
            dropout: c.f64_or("constructor_kwargs/dropout", 0.0),
            bias: c.bool_or("constructor_kwargs/bias", true),
            batch_first: c.bool_or("constructor_kwargs/batch_first", false),
            ..MultiheadAttentionConfig::new(
                c.usize("constructor_kwargs/embed_dim"),
                c.usize("constructor_kwargs/num_heads"),
            )
        }
        .build()
        .unwrap()
    }

    /// The module with its parameters replaced by `vars` (in `named_parameters` order).
    fn with_params(m: &MultiheadAttention<f64>, vars: &[Var<f64>]) -> MultiheadAttention<f64> {
        MultiheadAttention {
            config: m.config.clone(),
            in_proj_weight: vars[0].clone(),
            in_proj_bias: Some(vars[1].clone()),
            out_proj: Linear {
                config: m.out_proj.config.clone(),
                weight: vars[2].clone(),
                bias: Some(vars[3].clone()),
            },
            training: true,
            rng: Mutex::new(Rng::new(0)),
            drawn: m.drawn.clone(),
        }
    }

    #[test]
    fn gradcheck_every_parameter_and_input() {
        init::manual_seed(5);
        let m = mha64(4, 2, true);
        let mut inputs: Vec<Tensor<f64>> = m.parameters().iter().map(|p| p.value()).collect();
        // perturb the zero biases so their gradients are exercised away from 0
        inputs[1] = rand(&[12], 9).mul_scalar(0.1);
        inputs[3] = rand(&[4], 10).mul_scalar(0.1);
        inputs.extend([rand(&[2, 3, 4], 1), rand(&[2, 2, 4], 2)]);
        let pad = AttnMask::from_bools(&[false, false, false, true], &[2, 2]);
        let r = gradcheck(
            |v| {
                let mm = with_params(&m, &v[..4]);
                let (y, w) = mm.forward(&v[4], &v[5], &v[5], Some(&pad), true, None, true);
                y.sum(&[2], false).add(&w.unwrap().sum(&[2], false))
            },
            &inputs,
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit_attends_to_the_marked_key() {
        // Each query must return the value stored at the key carrying a marker feature.
        init::manual_seed(2);
        let m = mha64(4, 1, true);
        let mut keys = Vec::new();
        let mut targets = Vec::new();
        let mut rng = Rng::new(3);
        for b in 0..8 {
            for j in 0..3 {
                let marked = j == b % 3;
                let val = rng.next_f64() * 2.0 - 1.0;
                keys.extend([if marked { 1.0 } else { 0.0 }, val, 0.0, 0.0]);
                if marked {
                    targets.extend([val, 0.0, 0.0, 0.0]);
                }
            }
        }
        let kv = Var::constant(Tensor::from_vec(keys, &[8, 3, 4]));
        let q = Var::constant(Tensor::from_vec([0.0, 0.0, 1.0, 0.0].repeat(8), &[8, 1, 4]));
        let t = Var::constant(Tensor::from_vec(targets, &[8, 1, 4]));
        let mut loss = f64::MAX;
        let params = m.parameters();
        let mut state: Vec<(Tensor<f64>, Tensor<f64>)> =
            params.iter().map(|p| (p.value().zeros_like(), p.value().zeros_like())).collect();
        for step in 1..=600 {
            m.zero_grad();
            let (y, _) = m.forward(&q, &kv, &kv, None, false, None, true);
            let d = y.sub(&t);
            let lv = d.mul(&d).mean(&[], false);
            loss = lv.item();
            lv.backward();
            adam_step(&params, &mut state, step, 0.02);
        }
        assert!(loss < 1e-3, "{loss}");
    }

    /// Adam (β = 0.9, 0.999), enough for the overfit tests (kiln-optim sits above this crate).
    pub(crate) fn adam_step(params: &[Var<f64>], state: &mut [(Tensor<f64>, Tensor<f64>)], t: i32, lr: f64) {
        for (p, (m, v)) in params.iter().zip(state.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            m.scale_add_(0.9, 0.1, &g);
            v.scale_add_(0.999, 0.001, &g.mul(&g));
            let mh = m.mul_scalar(1.0 / (1.0 - 0.9f64.powi(t)));
            let vh = v.mul_scalar(1.0 / (1.0 - 0.999f64.powi(t)));
            let step = mh.div(&vh.map(|x| x.sqrt() + 1e-8));
            p.update_value(|x| x.axpy_(-lr, &step));
        }
    }

    /// The case's `param.*` tensors keyed by their PyTorch `state_dict` keys.
    pub(crate) fn golden_state_dict(c: &golden::Case) -> crate::StateDict<f64> {
        c.tensors.iter().filter_map(|(k, t)| k.strip_prefix("param.").map(|k| (k.to_string(), t.clone()))).collect()
    }

    /// Every parameter's gradient against the case's `grad_param.*`, and the key lists equal.
    pub(crate) fn assert_param_grads<M: Module<f64>>(name: &str, m: &M, c: &golden::Case, tol: (f64, f64)) {
        let keys: Vec<String> =
            c.json["state_dict_keys"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let ours: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(ours, keys, "{name}: parameter keys");
        for (k, p) in m.named_parameters() {
            let g = p.grad().unwrap_or_else(|| p.value().zeros_like());
            golden::assert_close(&format!("{name} grad {k}"), &g, &c.t(&format!("grad_param.{k}")), tol);
        }
    }

    /// Runs an `nn.MultiheadAttention` case in `E` at the case's tolerance for `dtype`: the
    /// module, the call arguments (`need_weights`, `average_attn_weights`), the masks and which
    /// inputs are the query, key and value all come from the case.
    fn golden_mha<E: Float>(name: &str, dtype: &str) {
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let tol = c.tol(dtype);
        let mut m: MultiheadAttention<E> = mha_from(&c);
        let sd: crate::StateDict<E> = golden_state_dict(&c).into_iter().map(|(k, t)| (k, t.cast())).collect();
        m.load_state_dict(&sd, true).unwrap();
        let need = c.bool_or("call_kwargs/need_weights", true);
        let avg = c.bool_or("call_kwargs/average_attn_weights", true);
        let mask = |n: &str| {
            c.get(n).map(|t| {
                if c.str(&format!("tensors/{n}/dtype")) == "bool" {
                    AttnMask::Bool(t.cast())
                } else {
                    AttnMask::Float(t.cast())
                }
            })
        };
        let (kpm, am) = (mask("input.key_padding_mask"), mask("input.attn_mask"));
        let inputs: Vec<String> =
            c.field("grad_inputs").as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let vars: Vec<Var<E>> = inputs.iter().map(|n| Var::param(c.t(&format!("input.{n}")).cast())).collect();
        // self-attention passes one tensor as query, key and value
        let (q, k, v) = match vars.len() {
            1 => (&vars[0], &vars[0], &vars[0]),
            3 => (&vars[0], &vars[1], &vars[2]),
            n => panic!("{name}: {n} grad_inputs"),
        };
        let (y, w) = m.forward(q, k, v, kpm.as_ref(), need, am.as_ref(), avg);
        let outputs: Vec<&str> = c.field("outputs").as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let mut scalar = y.mul(&Var::constant(c.t("upstream.output").cast())).sum_all();
        golden::assert_close(&format!("{name} {dtype} output"), &y.value().cast(), &c.t("output.output"), tol);
        assert_eq!(w.is_some(), outputs.contains(&"attn_weights"), "{name}: attn_weights returned iff need_weights");
        if let Some(w) = w {
            golden::assert_close(
                &format!("{name} {dtype} attn_weights"),
                &w.value().cast(),
                &c.t("output.attn_weights"),
                tol,
            );
            scalar = scalar.add(&w.mul(&Var::constant(c.t("upstream.attn_weights").cast())).sum_all());
        }
        scalar.backward();
        for (n, x) in inputs.iter().zip(&vars) {
            golden::assert_close(
                &format!("{name} {dtype} grad {n}"),
                &x.grad().unwrap().cast(),
                &c.t(&format!("grad_input.{n}")),
                tol,
            );
        }
        let keys: Vec<String> =
            c.field("state_dict_keys").as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let ours: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(ours, keys, "{name}: parameter keys");
        for (k, p) in m.named_parameters() {
            let g = p.grad().unwrap_or_else(|| p.value().zeros_like());
            golden::assert_close(&format!("{name} {dtype} grad {k}"), &g.cast(), &c.t(&format!("grad_param.{k}")), tol);
        }
    }

    #[test]
    fn golden_mha_in_f32() {
        // The f32 path against the same fixtures, at their float32 tolerance.
        golden_mha::<f32>("mha_self_causal", "float32");
        golden_mha::<f32>("mha_key_padding_mask", "float32");
    }

    #[test]
    fn golden_mha_cases() {
        golden_mha::<f64>("mha_key_padding_mask", "float64");
        golden_mha::<f64>("mha_self_causal", "float64");
    }
}
