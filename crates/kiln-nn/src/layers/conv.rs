//! What the convolution layers share: [`Padding`], the checks of their configurations, the
//! tail of their `Display`, and how their `padding` argument is described. The layers are
//! in `conv1d.rs`, `conv2d.rs`, `conv3d.rs` and `conv_transpose2d.rs`.

use serde_json::{json, Value};

use crate::error::NnError;
use crate::registry::Args;

/// The golden-test helpers, at the path the layer files use (`crate::layers::conv::testing`).
#[cfg(test)]
pub(crate) use super::testing;

/// How a convolution pads its input, like PyTorch's `padding` argument: `P` is `usize` for
/// [`Conv1d`] and `[usize; 2]` (`[height, width]`) for [`Conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding<P = [usize; 2]> {
    /// No padding (`padding='valid'`, or `0`).
    Valid,
    /// This many zeros on both sides of each spatial axis (`padding=1`, `padding=(1, 2)`).
    Explicit(P),
    /// Pads so that the output has the input's size (`padding='same'`): each axis gets
    /// `dilation * (kernel - 1)` zeros in total, half of them before and the rest (one more
    /// when the total is odd) after, i.e. on the bottom/right. Needs stride 1.
    Same,
}

impl From<usize> for Padding<usize> {
    fn from(p: usize) -> Self {
        Padding::Explicit(p)
    }
}

impl From<usize> for Padding<[usize; 2]> {
    fn from(p: usize) -> Self {
        Padding::Explicit([p, p])
    }
}

impl From<[usize; 2]> for Padding<[usize; 2]> {
    fn from(p: [usize; 2]) -> Self {
        Padding::Explicit(p)
    }
}

/// `(before, after)` zeros on one axis for `'same'` padding: PyTorch pads
/// `total = dilation * (kernel - 1)`, putting the odd one after.
pub(super) fn same_pads(kernel: usize, dilation: usize) -> (usize, usize) {
    let total = dilation * (kernel - 1);
    (total / 2, total - total / 2)
}

fn check_pos(layer: &str, what: &str, v: usize) -> Result<(), NnError> {
    if v == 0 {
        return Err(NnError::Config(format!("{layer}: {what} must be > 0, got 0")));
    }
    Ok(())
}

/// A per-axis setting as the messages write it: a number for one axis, a list for more.
fn axes_text<const N: usize>(v: [usize; N]) -> String {
    if N == 1 {
        v[0].to_string()
    } else {
        format!("{v:?}")
    }
}

/// The checks of an `N`-d convolution's configuration, run by `build` and the builder setters
/// of every convolution layer: positive `[in_channels, out_channels, groups]` with `groups`
/// dividing both channel counts, a positive kernel size, stride and dilation on every axis,
/// and, with `same_padding`, stride 1 (PyTorch rejects `padding='same'` on strided
/// convolutions). `layer` starts each message.
pub(super) fn check_conv<const N: usize>(
    layer: &str,
    [in_channels, out_channels, groups]: [usize; 3],
    kernel_size: [usize; N],
    stride: [usize; N],
    dilation: [usize; N],
    same_padding: bool,
) -> Result<(), NnError> {
    check_pos(layer, "in_channels", in_channels)?;
    check_pos(layer, "out_channels", out_channels)?;
    check_pos(layer, "groups", groups)?;
    if !in_channels.is_multiple_of(groups) {
        return Err(NnError::Config(format!(
            "{layer}: in_channels must be divisible by groups, got in_channels={in_channels}, groups={groups}"
        )));
    }
    if !out_channels.is_multiple_of(groups) {
        return Err(NnError::Config(format!(
            "{layer}: out_channels must be divisible by groups, got out_channels={out_channels}, groups={groups}"
        )));
    }
    for (what, v) in [("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)] {
        if v.contains(&0) {
            return Err(NnError::Config(format!("{layer}: {what} must be > 0, got {}", axes_text(v))));
        }
    }
    if same_padding && stride != [1; N] {
        return Err(NnError::Config(format!(
            "{layer}: padding='same' needs stride 1, got stride {}",
            axes_text(stride)
        )));
    }
    Ok(())
}

/// PyTorch's `extra_repr` tail shared by the convolutions: non-default settings only.
pub(super) fn repr_tail(padding: Option<String>, dilation: Option<String>, groups: usize, bias: bool) -> String {
    let mut s = String::new();
    if let Some(p) = padding {
        s += &format!(", padding={p}");
    }
    if let Some(d) = dilation {
        s += &format!(", dilation={d}");
    }
    if groups != 1 {
        s += &format!(", groups={groups}");
    }
    if !bias {
        s += ", bias=false";
    }
    s
}

/// `(h, w)` as PyTorch prints a pair.
pub(super) fn tuple2(p: [usize; 2]) -> String {
    format!("({}, {})", p[0], p[1])
}

/// `padding` as PyTorch writes it: `"valid"`, `"same"`, or the explicit amount.
pub(super) fn padding_json<P: serde::Serialize>(p: &Padding<P>) -> Value {
    match p {
        Padding::Valid => json!("valid"),
        Padding::Same => json!("same"),
        Padding::Explicit(p) => json!(p),
    }
}

/// `padding` read the way PyTorch takes it (`"valid"`, `"same"`, or an amount read by `amount`).
pub(super) fn padding_arg<P>(
    a: &mut Args,
    amount: fn(&Args, &str, &Value) -> Result<P, NnError>,
) -> Result<Padding<P>, NnError> {
    Ok(match a.take("padding") {
        None => Padding::Valid,
        Some(Value::String(s)) if s == "same" => Padding::Same,
        Some(Value::String(s)) if s == "valid" => Padding::Valid,
        Some(v) => Padding::Explicit(amount(a, "padding", &v)?),
    })
}
