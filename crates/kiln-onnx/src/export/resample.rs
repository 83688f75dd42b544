//! Resampling: `PixelShuffle` -> `DepthToSpace(mode="CRD")`, `PixelUnshuffle` -> `Reshape`,
//! `Transpose`, `Reshape`; `Upsample` -> `Resize` (as `torch.onnx.export` writes them).

use kiln_nn::functional::{InterpolateMode, Resize};
use kiln_nn::{Layer, PixelShuffle, PixelUnshuffle, Upsample};
use kiln_tensor::Tensor;

use super::{attr_i, attr_ints, attr_s, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(PixelShuffle => pixel_shuffle, PixelUnshuffle => pixel_unshuffle, Upsample => upsample);

/// `PixelShuffle` of a 4-d input -> `DepthToSpace(blocksize = r, mode = "CRD")`, whose channel
/// order `c·r² + i·r + j` is PyTorch's.
pub fn pixel_shuffle(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<PixelShuffle>()?;
    if x.example.ndim() != 4 {
        return Some(Err(unsupported(layer, prefix, format!("needs a 4-d input, got {:?}", x.example.shape()))));
    }
    let attrs = vec![attr_i("blocksize", l.upscale_factor as i64), attr_s("mode", "CRD")];
    Some(Ok(ex.node("DepthToSpace", &[&x.name], attrs)))
}

/// `PixelUnshuffle` of a 4-d input -> `Reshape [N, C, H/r, r, W/r, r]`, `Transpose` to
/// `[N, C, r, r, H/r, W/r]`, `Reshape [N, C·r², H/r, W/r]` (ONNX's `SpaceToDepth` orders the
/// channels the other way round).
pub fn pixel_unshuffle(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<PixelUnshuffle>()?;
    let s = x.example.shape();
    if s.len() != 4 {
        return Some(Err(unsupported(layer, prefix, format!("needs a 4-d input, got {s:?}"))));
    }
    let r = l.downscale_factor as i64;
    let (c, h, w) = (s[1] as i64, s[2] as i64 / r, s[3] as i64 / r);
    // 0 copies the (possibly symbolic) batch axis
    let split = ex.const_i64("unshuffle_split", &[0, c, h, r, w, r]);
    let y = ex.node("Reshape", &[&x.name, &split], vec![]);
    let y = ex.node("Transpose", &[&y], vec![attr_ints("perm", &[0, 1, 3, 5, 2, 4])]);
    let merged = ex.const_i64("unshuffle_merge", &[0, c * r * r, h, w]);
    Some(Ok(ex.node("Reshape", &[&y, &merged], vec![])))
}

/// `Upsample` -> `Resize`: nearest as `asymmetric` coordinates with `floor` rounding, linear and
/// bilinear as `pytorch_half_pixel` (or `align_corners`) coordinates. A scale factor is written
/// as `scales` (PyTorch's coordinates use it), a size as `sizes` behind the input's batch and
/// channel sizes.
pub fn upsample(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Upsample>()?;
    let opts = &l.config.options;
    let nd = x.example.ndim();
    let spatial = nd.saturating_sub(2);
    if !(3..=4).contains(&nd) {
        return Some(Err(unsupported(layer, prefix, format!("needs a 3-d or 4-d input, got {:?}", x.example.shape()))));
    }
    let mut attrs = match opts.mode {
        InterpolateMode::Nearest => vec![
            attr_s("mode", "nearest"),
            attr_s("coordinate_transformation_mode", "asymmetric"),
            attr_s("nearest_mode", "floor"),
        ],
        InterpolateMode::Linear | InterpolateMode::Bilinear => {
            let ctm = if opts.align_corners == Some(true) { "align_corners" } else { "pytorch_half_pixel" };
            vec![attr_s("mode", "linear"), attr_s("coordinate_transformation_mode", ctm)]
        }
    };
    let pick = |v: &[f64], k: usize| v[k.min(v.len() - 1)];
    let node = match &l.config.resize {
        Resize::ScaleFactor(f) if !opts.recompute_scale_factor => {
            let mut scales = vec![1.0f32; 2];
            scales.extend((0..spatial).map(|k| pick(f, k) as f32));
            let scales = ex.initializer(&format!("{prefix}scales"), &Tensor::from_vec(scales, &[nd]));
            ex.node("Resize", &[&x.name, "", &scales], std::mem::take(&mut attrs))
        }
        _ => {
            // the output's spatial size, as kiln computed it on the example
            let y = kiln_autograd::no_grad(|| {
                kiln_nn::Forward::forward(l, &kiln_autograd::Var::constant(x.example.clone())).value()
            });
            let out: Vec<i64> = y.shape()[2..].iter().map(|&d| d as i64).collect();
            let shape = ex.node("Shape", &[&x.name], vec![]);
            let (starts, ends) = (ex.const_i64("nc_start", &[0]), ex.const_i64("nc_end", &[2]));
            let nc = ex.node("Slice", &[&shape, &starts, &ends], vec![]);
            let tail = ex.const_i64("resize_sizes", &out);
            let sizes = ex.node("Concat", &[&nc, &tail], vec![attr_i("axis", 0)]);
            ex.node("Resize", &[&x.name, "", "", &sizes], std::mem::take(&mut attrs))
        }
    };
    Some(Ok(node))
}
