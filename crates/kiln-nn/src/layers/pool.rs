//! What the pooling layers share: the check of their window settings, how their messages
//! and `Display` print sizes, and their builder setters. The layers are in `max_pool1d.rs`,
//! `max_pool2d.rs`, `avg_pool1d.rs`, `avg_pool2d.rs` and `adaptive_avg_pool2d.rs`.

use crate::error::NnError;

/// `(h, w)` as PyTorch prints a pair.
pub(super) fn tuple2(p: [usize; 2]) -> String {
    format!("({}, {})", p[0], p[1])
}

/// Checks the window settings shared by every pool (as pairs; 1-d pools pass `[1, k]` etc.
/// and `show` picks what their messages print).
pub(super) fn check_window(
    layer: &str,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    show: fn([usize; 2]) -> String,
) -> Result<(), NnError> {
    for (what, v) in [("kernel_size", kernel), ("stride", stride), ("dilation", dilation)] {
        if v.contains(&0) {
            return Err(NnError::Config(format!("{layer}: {what} must be > 0, got {}", show(v))));
        }
    }
    // PyTorch's pool shape check: pad <= kernel / 2, whatever the dilation
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(NnError::Config(format!(
            "{layer}: padding must be at most half of kernel_size, got padding={}, kernel_size={}",
            show(padding),
            show(kernel)
        )));
    }
    Ok(())
}

/// A 1-d pool's value in a message (its pairs are `[1, v]`).
pub(super) fn show1(v: [usize; 2]) -> String {
    v[1].to_string()
}

/// A 2-d pool's pair in a message.
pub(super) fn show2(v: [usize; 2]) -> String {
    format!("{v:?}")
}

/// Builder setters of a pool layer `$layer` (inside its `impl`), each from a short spec:
/// `/// doc` (the first line of its doc comment), then `name: Type => field = value;`. A setter
/// sets `field` of a copy of the layer's `config` to `value` (an expression in `name`) and
/// builds the layer again, panicking with the message of the configuration's `build`.
macro_rules! pool_setters {
    ($layer:ident; $(#[doc = $doc:literal] $name:ident: $ty:ty => $field:ident = $value:expr;)*) => {
        $(
            #[doc = concat!($doc, " (a builder:")]
            #[doc = concat!(" `", stringify!($layer), "::new(3).stride(2).padding(1)`).")]
            #[doc = ""]
            #[doc = concat!("**Panics** on a combination [`", stringify!($layer), "Config::build`] rejects.")]
            #[must_use]
            pub fn $name(self, $name: $ty) -> Self {
                let mut config = self.config;
                config.$field = $value;
                config.build().unwrap_or_else(|e| panic!("{e}"))
            }
        )*
    };
}
pub(super) use pool_setters;
