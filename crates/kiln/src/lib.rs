//! # kiln
//!
//! The facade of the kiln deep-learning framework: it re-exports every kiln crate, so that one
//! dependency gives the whole stack, and `kiln::prelude::*` brings the everyday names into scope.

pub use kiln_tensor as tensor;

/// The everyday names: `use kiln::prelude::*;`.
pub mod prelude {
    pub use kiln_tensor::{Float, Rng};
}
