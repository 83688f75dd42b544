//! Occlusion: slide a window of baseline values over the input and watch the output drop.

use kiln_tensor::{Float, Tensor};

use crate::model::{evaluate, Model, DEFAULT_BATCH_SIZE};

/// Occlusion (Zeiler & Fergus 2014): for each position of a `window` slid with `stride`, the
/// drop `f(x) − f(x with the window set to baseline)`; each element's attribution is the mean
/// drop over the windows that cover it (as Captum's `Occlusion`).
///
/// `window` and `stride` name the **trailing** dimensions of `x`; leading dimensions are
/// occluded whole. So for an image `[C, H, W]`, `window = [4, 4]` hides a 4×4 patch in every
/// channel at once; for features `[F]`, `window = [1]` hides one feature at a time. Windows
/// start at 0, every `stride`; when the last one does not reach the end of a dimension one more
/// is placed flush with the end, so that with `stride <= window` every element is covered (a
/// larger stride leaves gaps, whose attribution is 0).
///
/// **Panics** if `window` and `stride` differ in length, name more dimensions than `x` has, hold
/// a zero, or a window is larger than its dimension; or as [`saliency`](crate::saliency).
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// // A model that only looks at the top-left 2x2 patch of a 4x4 image.
/// let model = |x: &Var<f32>| x.narrow(1, 0, 2).narrow(2, 0, 2).sum(&[1, 2], false);
/// let x = Tensor::ones(&[4, 4]);
/// let a = kiln_explain::occlusion(&model, &x, 0, &[2, 2], &[2, 2], 0.0);
/// assert_eq!(a.get(&[0, 0]), 4.0); // hiding the patch removes all of f(x) = 4
/// assert_eq!(a.get(&[3, 3]), 0.0);
/// ```
#[must_use]
pub fn occlusion<E: Float, V>(
    model: &(impl Model<E, V> + ?Sized),
    x: &Tensor<E>,
    target: usize,
    window: &[usize],
    stride: &[usize],
    baseline: E,
) -> Tensor<E> {
    let shape = x.shape().to_vec();
    assert_eq!(
        window.len(),
        stride.len(),
        "occlusion: window {window:?} and stride {stride:?} name different numbers of dimensions"
    );
    assert!(window.len() <= shape.len(), "occlusion: window {window:?} has more dimensions than the input {shape:?}");
    let lead = shape.len() - window.len();
    // Full windows over the leading dimensions.
    let win: Vec<usize> = shape[..lead].iter().copied().chain(window.iter().copied()).collect();
    let strd: Vec<usize> = shape[..lead].iter().copied().chain(stride.iter().copied()).collect();
    for (d, (&w, &s)) in win.iter().zip(&strd).enumerate() {
        assert!(w > 0 && s > 0, "occlusion: window {window:?} and stride {stride:?} must be > 0");
        assert!(w <= shape[d], "occlusion: window {window:?} does not fit in the input {shape:?}");
    }
    let starts: Vec<Vec<usize>> = shape
        .iter()
        .zip(win.iter().zip(&strd))
        .map(|(&n, (&w, &s))| {
            let mut v: Vec<usize> = (0..=n - w).step_by(s).collect();
            if *v.last().expect("at least one window") != n - w {
                v.push(n - w);
            }
            v
        })
        .collect();

    let numel = x.numel();
    let strides: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
    // Every window position, as the list of flat indices it covers.
    let mut windows: Vec<Vec<usize>> = Vec::new();
    let mut pos = vec![0usize; shape.len()];
    loop {
        let origin: Vec<usize> = pos.iter().enumerate().map(|(d, &p)| starts[d][p]).collect();
        windows.push(box_indices(&origin, &win, &strides));
        // Odometer over the start lists.
        let mut d = shape.len();
        loop {
            if d == 0 {
                break;
            }
            d -= 1;
            pos[d] += 1;
            if pos[d] < starts[d].len() {
                break;
            }
            pos[d] = 0;
        }
        if pos.iter().all(|&p| p == 0) {
            break;
        }
    }

    let base = x.to_vec();
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let f_x = evaluate(&f, &base, &shape, target, 1, "occlusion")[0];
    let mut sum = vec![0.0f64; numel];
    let mut count = vec![0u32; numel];
    for group in windows.chunks(DEFAULT_BATCH_SIZE) {
        let mut data = Vec::with_capacity(group.len() * numel);
        for idx in group {
            let start = data.len();
            data.extend_from_slice(&base);
            for &i in idx {
                data[start + i] = baseline;
            }
        }
        let out = evaluate(&f, &data, &shape, target, DEFAULT_BATCH_SIZE, "occlusion");
        for (idx, y) in group.iter().zip(out) {
            for &i in idx {
                sum[i] += f_x - y;
                count[i] += 1;
            }
        }
    }
    let attr = sum.iter().zip(&count).map(|(&s, &c)| E::from_f64(if c > 0 { s / c as f64 } else { 0.0 })).collect();
    Tensor::from_vec(attr, &shape)
}

/// The flat indices of the box at `origin` of size `size`, under row-major `strides`.
fn box_indices(origin: &[usize], size: &[usize], strides: &[usize]) -> Vec<usize> {
    let mut out = vec![0usize];
    for d in 0..origin.len() {
        let mut next = Vec::with_capacity(out.len() * size[d]);
        for &o in &out {
            for k in 0..size[d] {
                next.push(o + (origin[d] + k) * strides[d]);
            }
        }
        out = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::Var;

    /// A model that only looks at the 4x4 patch at rows 4..8, columns 8..12 of a [1, 16, 16]
    /// image: the sum of that patch's pixels.
    fn patch_model(x: &Var<f64>) -> Var<f64> {
        x.narrow(2, 4, 4).narrow(3, 8, 4).sum(&[1, 2, 3], false)
    }

    fn image() -> Tensor<f64> {
        Tensor::from_vec((0..256).map(|i| 1.0 + (i % 7) as f64).collect(), &[1, 16, 16])
    }

    #[test]
    fn occlusion_finds_the_one_patch_the_model_looks_at() {
        let x = image();
        let a = occlusion(&patch_model, &x, 0, &[4, 4], &[4, 4], 0.0);
        assert_eq!(a.shape(), &[1, 16, 16]);
        let patch_sum: f64 = x.narrow(1, 4, 4).narrow(2, 8, 4).sum_all().item();
        for r in 0..16 {
            for c in 0..16 {
                let inside = (4..8).contains(&r) && (8..12).contains(&c);
                let want = if inside { patch_sum } else { 0.0 };
                assert!((a.get(&[0, r, c]) - want).abs() < 1e-9, "({r}, {c}): {}", a.get(&[0, r, c]));
            }
        }
    }

    #[test]
    fn overlapping_windows_average_and_the_edge_is_covered() {
        // Stride 3 with window 4 over 16: starts 0, 3, ..., 12 -- 12 is flush with the end.
        let x = image();
        let a = occlusion(&patch_model, &x, 0, &[4, 4], &[3, 5], 0.0);
        // Columns: starts 0, 5, 10 and 12 (flush with the end); column 9 lies in no window.
        // Pixels far from the patch get 0, pixels in a window that overlaps it are positive.
        assert_eq!(a.get(&[0, 15, 0]), 0.0);
        assert!(a.get(&[0, 5, 8]) > 0.0);
        assert!(a.get(&[0, 15, 15]) == 0.0);
        assert_eq!(a.get(&[0, 5, 9]), 0.0);
    }

    #[test]
    fn occlusion_of_a_linear_model_with_unit_windows_is_w_times_x_minus_baseline() {
        let w = vec![1.0, -2.0, 0.5];
        let wv = Var::constant(Tensor::from_vec(w.clone(), &[3, 1]));
        let model = |x: &Var<f64>| x.matmul(&wv).add_scalar(3.0);
        let x = Tensor::from_vec(vec![2.0, 1.0, -4.0], &[3]);
        let a = occlusion(&model, &x, 0, &[1], &[1], 0.5);
        let want: Vec<f64> = w.iter().zip(x.to_vec()).map(|(w, x)| w * (x - 0.5)).collect();
        for (a, b) in a.to_vec().iter().zip(&want) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_window_larger_than_the_input_panics() {
        let _ = occlusion(&patch_model, &image(), 0, &[17, 1], &[1, 1], 0.0);
    }
}
