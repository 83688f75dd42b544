//! `Conv3d` -> `Conv` over three spatial axes.

use kiln_nn::{Conv3d, Layer, Padding};

use super::{attr_i, attr_ints, Exporter, Value};
use crate::error::OnnxError;

register_export!(Conv3d => conv3d);

/// `Conv3d` -> `Conv` (`pads` = `[d, h, w]` befores then afters; `'same'` puts the odd zero
/// after, as PyTorch does).
pub fn conv3d(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Conv3d>()?;
    let c = &l.config;
    let mut pads = [0i64; 6];
    for k in 0..3 {
        let (b, a) = match c.padding {
            Padding::Valid => (0, 0),
            Padding::Explicit(p) => (p[k], p[k]),
            Padding::Same => {
                let total = c.dilation[k] * (c.kernel_size[k] - 1);
                (total / 2, total - total / 2)
            }
        };
        pads[k] = b as i64;
        pads[k + 3] = a as i64;
    }
    let i64s = |v: [usize; 3]| v.map(|d| d as i64);
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(c.kernel_size)),
        attr_ints("strides", &i64s(c.stride)),
        attr_ints("pads", &pads),
        attr_ints("dilations", &i64s(c.dilation)),
        attr_i("group", c.groups as i64),
    ];
    let w = ex.param(&format!("{prefix}weight"), &l.weight);
    let b = l.bias.as_ref().map(|b| ex.param(&format!("{prefix}bias"), b));
    let mut inputs = vec![x.name.as_str(), w.as_str()];
    if let Some(b) = &b {
        inputs.push(b);
    }
    Some(Ok(ex.node("Conv", &inputs, attrs)))
}
