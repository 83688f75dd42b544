//! `#[derive(Module)]` as a user of the facade writes it: `use kiln::prelude::*`, no
//! `#[module(crate = ..)]` attribute (the derive finds kiln-nn from the crate's `Cargo.toml`:
//! `kiln_nn` where it is a dependency, else `kiln::nn`), and the attribute still accepted.

use kiln::nn::{Conv2d, Conv2dConfig, Dropout, Flatten};
use kiln::prelude::*;

/// A small CNN, derived without any attribute.
#[derive(Module)]
struct Cnn<E: Float = f32> {
    conv: Conv2d<E>,
    drop: Dropout,
    flatten: Flatten,
    fc: Linear<E>,
}

/// The same through the facade path named explicitly, as before the derive found it itself.
#[derive(Module)]
#[module(crate = "kiln::nn")]
struct Wrapper {
    features: Cnn,
    scale: Var,
}

fn cnn() -> Cnn {
    Cnn {
        conv: Conv2dConfig::new(1, 2, 3).build().unwrap(),
        drop: Dropout::new(0.5),
        flatten: Flatten::default(),
        fc: Linear::new(2 * 2 * 2, 3),
    }
}

#[test]
fn derived_from_the_prelude_names_keys_and_modes() {
    let mut m = Wrapper { features: cnn(), scale: Var::param(Tensor::ones(&[1])) };
    let keys: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["features.conv.weight", "features.conv.bias", "features.fc.weight", "features.fc.bias", "scale"]);
    assert_eq!(m.num_parameters(), (2 * 9 + 2) + (8 * 3 + 3) + 1);
    m.eval();
    assert!(!m.is_training() && !m.features.is_training() && !m.features.drop.is_training());
    m.train();
    assert!(m.is_training() && m.features.drop.is_training());

    let x = Var::constant(Tensor::ones(&[4, 1, 4, 4]));
    let f = &m.features;
    let y = f.fc.forward(&f.flatten.forward(&f.drop.forward(&f.conv.forward(&x))));
    assert_eq!(y.shape().as_slice(), &[4, 3]);
}
