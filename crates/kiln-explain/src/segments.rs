//! Segments: the parts of an input that Kernel SHAP and LIME switch on and off, and the
//! per-modality adapters (tabular features, image patches or superpixels, text tokens).

use kiln_tensor::{Float, Tensor};

use crate::model::{evaluate, DynModel};

/// A partition of an input's elements into `len()` segments, the "interpretable features" of
/// Kernel SHAP and LIME: a tabular feature, an image patch or superpixel, a token.
///
/// Elements may also belong to no segment: they keep their value in every perturbation
/// (padding of a token sequence).
///
/// ```
/// use kiln_explain::Segments;
/// // A 4x4 image in 2x2 patches: four segments, numbered row by row.
/// let s = Segments::grid(&[4, 4], [2, 2]);
/// assert_eq!(s.len(), 4);
/// assert_eq!(s.label(0), Some(0)); // (0, 0)
/// assert_eq!(s.label(4 * 3 + 3), Some(3)); // (3, 3)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    labels: Vec<Option<usize>>,
    count: usize,
}

impl Segments {
    /// Every one of `numel` elements its own segment: tabular features.
    pub fn features(numel: usize) -> Self {
        Segments { labels: (0..numel).map(Some).collect(), count: numel }
    }

    /// Rectangular `patch = [height, width]` cells over the last two dimensions of `shape`
    /// (`[H, W]`, `[C, H, W]`), numbered row by row; leading dimensions (channels) share their
    /// pixel's segment. Cells at the right and bottom edges may be smaller.
    ///
    /// **Panics** if `shape` has fewer than two dimensions or a patch side is 0.
    pub fn grid(shape: &[usize], patch: [usize; 2]) -> Self {
        assert!(shape.len() >= 2, "Segments::grid: an image needs [H, W] or [C, H, W], got {shape:?}");
        assert!(patch[0] > 0 && patch[1] > 0, "Segments::grid: patch sides must be > 0, got {patch:?}");
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let lead: usize = shape[..shape.len() - 2].iter().product();
        let (rows, cols) = (h.div_ceil(patch[0]), w.div_ceil(patch[1]));
        let mut labels = Vec::with_capacity(lead * h * w);
        for _ in 0..lead {
            for y in 0..h {
                for x in 0..w {
                    labels.push(Some((y / patch[0]) * cols + x / patch[1]));
                }
            }
        }
        Segments { labels, count: rows * cols }
    }

    /// Segments from one label per element (superpixels from SLIC or quickshift, groups of
    /// tabular features); `None` keeps an element fixed. The segments are `0..=max label`.
    pub fn from_labels(labels: Vec<Option<usize>>) -> Self {
        let count = labels.iter().flatten().max().map_or(0, |m| m + 1);
        Segments { labels, count }
    }

    /// Image segments from one label per pixel of an `[H, W]` map, shared by the `channels`
    /// planes of a `[channels, H, W]` image.
    pub fn from_label_map(map: &[usize], channels: usize) -> Self {
        let labels: Vec<Option<usize>> = (0..channels).flat_map(|_| map.iter().map(|&l| Some(l))).collect();
        Self::from_labels(labels)
    }

    /// One segment per token of a sequence, except for `pad_id` tokens, which stay as they are.
    pub fn tokens(ids: &[usize], pad_id: Option<usize>) -> Self {
        let mut count = 0;
        let labels = ids
            .iter()
            .map(|&id| {
                if Some(id) == pad_id {
                    None
                } else {
                    count += 1;
                    Some(count - 1)
                }
            })
            .collect();
        Segments { labels, count }
    }

    /// The number of segments.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The number of elements of the input.
    pub fn numel(&self) -> usize {
        self.labels.len()
    }

    /// The segment of element `i` (flat, row-major), `None` if it is kept fixed.
    ///
    /// **Panics** if `i >= numel()`.
    pub fn label(&self, i: usize) -> Option<usize> {
        self.labels[i]
    }

    /// The elements of segment `s`, in order.
    pub fn members(&self, s: usize) -> Vec<usize> {
        (0..self.labels.len()).filter(|&i| self.labels[i] == Some(s)).collect()
    }

    /// A tensor of `shape` where every element holds its segment's value (0 for fixed
    /// elements): per-segment scores drawn back onto the input, as Captum's feature masks do.
    ///
    /// **Panics** if `values.len() != len()` or `shape` does not hold `numel()` elements.
    #[must_use]
    pub fn expand<E: Float>(&self, values: &[f64], shape: &[usize]) -> Tensor<E> {
        assert_eq!(values.len(), self.count, "Segments::expand: {} values for {} segments", values.len(), self.count);
        assert_eq!(
            shape.iter().product::<usize>(),
            self.labels.len(),
            "Segments::expand: shape {shape:?} for {} elements",
            self.labels.len()
        );
        let data = self.labels.iter().map(|l| E::from_f64(l.map_or(0.0, |s| values[s]))).collect();
        Tensor::from_vec(data, shape)
    }
}

/// An input ready for Kernel SHAP and LIME: the values, their [`Segments`], and the background
/// that a switched-off segment takes its values from.
///
/// The background is one baseline with the input's shape, or `B` samples `[B, ...shape]` (a
/// background data set, as in the `shap` package): then the model's output for a coalition is
/// the mean over the samples, and Kernel SHAP's expected value is the mean output over them.
///
/// Build one with the adapter for the modality:
/// [`tabular`](Segmented::tabular), [`image`](Segmented::image), [`text`](Segmented::text).
///
/// ```
/// use kiln_explain::Segmented;
/// use kiln_tensor::Tensor;
/// let x: Tensor = Tensor::ones(&[1, 8, 8]);
/// let input = Segmented::image(&x, [4, 4], 0.0); // four 4x4 patches, hidden as black
/// assert_eq!(input.segments().len(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct Segmented<E: Float> {
    input: Tensor<E>,
    segments: Segments,
    /// `[B, ...input.shape()]`.
    background: Tensor<E>,
}

impl<E: Float> Segmented<E> {
    /// An input with its segments and background (`input`'s shape, or `[B, ...input.shape()]`).
    ///
    /// **Panics** if the segments do not cover `input.numel()` elements or the background has
    /// another shape.
    pub fn new(input: &Tensor<E>, segments: Segments, background: &Tensor<E>) -> Self {
        assert_eq!(
            segments.numel(),
            input.numel(),
            "Segmented: segments over {} elements for an input of shape {:?}",
            segments.numel(),
            input.shape()
        );
        let background = if background.shape() == input.shape() {
            background.unsqueeze(0).contiguous()
        } else {
            assert!(
                background.ndim() == input.ndim() + 1 && background.shape()[1..] == *input.shape() && background.size(0) > 0,
                "Segmented: background of shape {:?} for an input of shape {:?}; expected the input's shape or [B, ...]",
                background.shape(),
                input.shape()
            );
            background.contiguous()
        };
        Segmented { input: input.contiguous(), segments, background }
    }

    /// Tabular data: each of the features of `x` (any shape, usually `[F]`) is a segment;
    /// `background` is a baseline row (the training means) or `[B, F]` background rows.
    ///
    /// **Panics** as [`Segmented::new`].
    pub fn tabular(x: &Tensor<E>, background: &Tensor<E>) -> Self {
        Self::new(x, Segments::features(x.numel()), background)
    }

    /// An image (`[H, W]` or `[C, H, W]`) in a grid of `patch`-sized segments; a hidden patch
    /// takes the value `baseline` (0 for black, or the data set's mean).
    ///
    /// **Panics** as [`Segments::grid`].
    pub fn image(x: &Tensor<E>, patch: [usize; 2], baseline: E) -> Self {
        Self::new(x, Segments::grid(x.shape(), patch), &x.full_like(baseline))
    }

    /// A token sequence, held as integer-valued floats `[L]` (what kiln's `Embedding` reads):
    /// each token is a segment, a hidden token becomes `mask_id` (an `<unk>`/`<mask>` token,
    /// or the padding id), and `pad_id` tokens are left alone.
    pub fn text(ids: &[usize], mask_id: usize, pad_id: Option<usize>) -> Self {
        let x = Tensor::from_vec(ids.iter().map(|&i| E::from_usize(i)).collect(), &[ids.len()]);
        Self::new(&x, Segments::tokens(ids, pad_id), &x.full_like(E::from_usize(mask_id)))
    }

    /// The input.
    pub fn input(&self) -> &Tensor<E> {
        &self.input
    }

    /// The segments.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    /// The background samples, `[B, ...input.shape()]`.
    pub fn background(&self) -> &Tensor<E> {
        &self.background
    }

    /// The token ids of a text input (the input's values as integers).
    pub fn token_ids(&self) -> Vec<usize> {
        self.input.to_vec().into_iter().map(|v| v.to_f64().round().max(0.0) as usize).collect()
    }

    /// Segments whose input values equal the background's in every sample: hiding them changes
    /// nothing, so they get 0 and are left out of the regressions (as the `shap` package does).
    pub(crate) fn varying(&self) -> Vec<bool> {
        let x = self.input.as_slice().expect("contiguous");
        let bg = self.background.as_slice().expect("contiguous");
        let numel = x.len();
        let mut varying = vec![false; self.segments.len()];
        for (i, l) in self.segments.labels.iter().enumerate() {
            if let Some(s) = *l {
                if !varying[s] && bg.chunks(numel.max(1)).any(|b| b[i] != x[i]) {
                    varying[s] = true;
                }
            }
        }
        varying
    }

    /// The explained output for each coalition (`masks`, `len()` flags per coalition, `true` =
    /// segment shown), averaged over the background samples.
    pub(crate) fn evaluate_masks(
        &self,
        model: DynModel<'_, E>,
        masks: &[Vec<bool>],
        target: usize,
        batch_size: usize,
        method: &str,
    ) -> Vec<f64> {
        let x = self.input.as_slice().expect("contiguous");
        let bg = self.background.as_slice().expect("contiguous");
        let numel = x.len();
        let b = self.background.size(0);
        // Bound the memory to about `batch_size` composed inputs at a time.
        let per_chunk = (batch_size / b).max(1);
        let mut out = Vec::with_capacity(masks.len());
        for group in masks.chunks(per_chunk) {
            let mut data = Vec::with_capacity(group.len() * b * numel);
            for mask in group {
                for row in bg.chunks(numel.max(1)) {
                    data.extend(self.segments.labels.iter().enumerate().map(|(i, l)| match l {
                        Some(s) if !mask[*s] => row[i],
                        _ => x[i],
                    }));
                }
            }
            let ys = evaluate(model, &data, self.input.shape(), target, batch_size, method);
            out.extend(ys.chunks(b).map(|c| c.iter().sum::<f64>() / b as f64));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::Var;

    #[test]
    fn grid_segments_share_channels_and_allow_ragged_edges() {
        let s = Segments::grid(&[2, 5, 5], [2, 2]);
        assert_eq!(s.len(), 9);
        assert_eq!(s.numel(), 50);
        assert_eq!(s.label(0), s.label(25)); // the same pixel in both channels
        assert_eq!(s.label(4 * 5 + 4), Some(8)); // the 1x1 corner cell
        assert_eq!(s.members(8), vec![24, 49]);
    }

    #[test]
    fn token_segments_skip_padding() {
        let s = Segments::tokens(&[5, 9, 0, 0], Some(0));
        assert_eq!(s.len(), 2);
        assert_eq!((s.label(1), s.label(2)), (Some(1), None));
        let t: Tensor<f32> = s.expand(&[0.5, -1.0], &[4]);
        assert_eq!(t.to_vec(), vec![0.5, -1.0, 0.0, 0.0]);
    }

    #[test]
    fn masks_compose_input_and_background_and_average_over_samples() {
        let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3]);
        let bg = Tensor::from_vec(vec![0.0, 0.0, 0.0, 10.0, 10.0, 10.0], &[2, 3]);
        let input = Segmented::tabular(&x, &bg);
        let model = |v: &Var<f64>| v.sum(&[1], false);
        let ys = input.evaluate_masks(&model, &[vec![true, true, true], vec![false, true, false]], 0, 1, "test");
        assert_eq!(ys, vec![6.0, (2.0 + 22.0) / 2.0]);
    }

    #[test]
    fn segments_equal_to_the_background_do_not_vary() {
        let x = Tensor::from_vec(vec![1.0f64, 0.0], &[2]);
        let input = Segmented::tabular(&x, &Tensor::zeros(&[2]));
        assert_eq!(input.varying(), vec![true, false]);
    }

    #[test]
    fn text_input_hides_tokens_with_the_mask_id() {
        let input: Segmented<f32> = Segmented::text(&[4, 7, 0], 1, Some(0));
        assert_eq!(input.background().to_vec(), vec![1.0, 1.0, 1.0]);
        assert_eq!(input.segments().len(), 2);
        assert_eq!(input.token_ids(), vec![4, 7, 0]);
    }

    #[test]
    #[should_panic(expected = "background of shape [4]")]
    fn a_background_of_another_shape_panics() {
        let _ = Segmented::tabular(&Tensor::<f32>::ones(&[3]), &Tensor::ones(&[4]));
    }
}
