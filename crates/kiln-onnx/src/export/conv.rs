//! Convolutions: `Conv1d`, `Conv2d` -> `Conv`; `ConvTranspose2d` -> `ConvTranspose`.

use kiln_nn::{Conv1d, Conv2d, ConvTranspose2d, Layer, Padding};

use super::{attr_i, attr_ints, Exporter, Value};
use crate::error::OnnxError;

register_export!(Conv1d => conv1d, Conv2d => conv2d, ConvTranspose2d => conv_transpose2d);

/// PyTorch's `'same'` split of `dilation * (kernel - 1)` zeros: the odd one after.
fn same(kernel: usize, dilation: usize) -> (i64, i64) {
    let total = (dilation * (kernel - 1)) as i64;
    (total / 2, total - total / 2)
}

fn conv_node(
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
    weight: &kiln_autograd::Var<f32>,
    bias: Option<&kiln_autograd::Var<f32>>,
    op: &str,
    attrs: Vec<crate::proto::AttributeProto>,
) -> String {
    let w = ex.param(&format!("{prefix}weight"), weight);
    let b = bias.map(|b| ex.param(&format!("{prefix}bias"), b));
    let mut inputs = vec![x.name.as_str(), w.as_str()];
    if let Some(b) = &b {
        inputs.push(b);
    }
    ex.node(op, &inputs, attrs)
}

/// `Conv1d` -> `Conv` over one spatial axis.
pub fn conv1d(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Conv1d>()?;
    let c = &l.config;
    let (b, a) = match c.padding {
        Padding::Valid => (0, 0),
        Padding::Explicit(p) => (p as i64, p as i64),
        Padding::Same => same(c.kernel_size, c.dilation),
    };
    let attrs = vec![
        attr_ints("kernel_shape", &[c.kernel_size as i64]),
        attr_ints("strides", &[c.stride as i64]),
        attr_ints("pads", &[b, a]),
        attr_ints("dilations", &[c.dilation as i64]),
        attr_i("group", c.groups as i64),
    ];
    Some(Ok(conv_node(ex, prefix, x, &l.weight, l.bias.as_ref(), "Conv", attrs)))
}

/// `Conv2d` -> `Conv` (`pads` = `[top, left, bottom, right]`).
pub fn conv2d(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Conv2d>()?;
    let c = &l.config;
    let pads = match c.padding {
        Padding::Valid => [0; 4],
        Padding::Explicit([h, w]) => [h as i64, w as i64, h as i64, w as i64],
        Padding::Same => {
            let (hb, ha) = same(c.kernel_size[0], c.dilation[0]);
            let (wb, wa) = same(c.kernel_size[1], c.dilation[1]);
            [hb, wb, ha, wa]
        }
    };
    let i64s = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(c.kernel_size)),
        attr_ints("strides", &i64s(c.stride)),
        attr_ints("pads", &pads),
        attr_ints("dilations", &i64s(c.dilation)),
        attr_i("group", c.groups as i64),
    ];
    Some(Ok(conv_node(ex, prefix, x, &l.weight, l.bias.as_ref(), "Conv", attrs)))
}

/// `ConvTranspose2d` -> `ConvTranspose` (same weight layout `[C_in, C_out / groups, kh, kw]`).
pub fn conv_transpose2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<ConvTranspose2d>()?;
    let c = &l.config;
    let i64s = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    let [ph, pw] = i64s(c.padding);
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(c.kernel_size)),
        attr_ints("strides", &i64s(c.stride)),
        attr_ints("pads", &[ph, pw, ph, pw]),
        attr_ints("output_padding", &i64s(c.output_padding)),
        attr_ints("dilations", &i64s(c.dilation)),
        attr_i("group", c.groups as i64),
    ];
    Some(Ok(conv_node(ex, prefix, x, &l.weight, l.bias.as_ref(), "ConvTranspose", attrs)))
}
