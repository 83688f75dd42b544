//! The README's first command: train a small MLP on the 8x8 handwritten digits embedded in
//! kiln-data (1,797 real samples, no download) and print the held-out accuracy.
//!
//!     cargo run --release --example quickstart

use kiln::data::datasets::Digits;
use kiln::data::{random_split, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{CrossEntropyLoss, Linear, Module, ReLU, Sequential};
use kiln::optim::{Adam, AdamConfig};
use kiln::train::Trainer;

fn main() -> Result<(), kiln::train::TrainError> {
    kiln::nn::init::manual_seed(0);
    // Pixels are 0..16; scale them to [0, 1].
    let digits = Digits::load()
        .map_input(|x: Vec<f32>, _: &mut kiln::tensor::Rng| x.into_iter().map(|v| v / 16.0).collect::<Vec<f32>>());
    let n = digits.len();
    let n_test = n / 5;
    let mut parts = random_split(digits, &[n - n_test, n_test], 42).into_iter();
    let (train, test) = (parts.next().unwrap(), parts.next().unwrap());
    println!("digits: {} training and {} held-out samples, 64 features, 10 classes", train.len(), test.len());

    let train = DataLoader::new(train, 32).shuffle(true).seed(1);
    let test = DataLoader::new(test, 256);

    let mut model = Sequential::new().add(Linear::new(64, 128)).add(ReLU).add(Linear::new(128, 10));
    println!("{model}");
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let mut trainer = Trainer::new(30).metric("accuracy", || Accuracy::multiclass(10));
    let loss = CrossEntropyLoss::default();
    let started = std::time::Instant::now();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test))?;
    let eval = trainer.evaluate(&mut model, &loss, &test)?;
    println!(
        "held-out accuracy: {:.2}% (loss {:.4}) after {:.1} s",
        100.0 * eval["accuracy"],
        eval["loss"],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
