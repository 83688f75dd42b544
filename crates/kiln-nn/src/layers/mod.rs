//! The layers, one file each. Registering a layer is one `mod` line and one `pub use` line.

mod linear;

pub use linear::{Linear, LinearConfig};
