//! Cross-module behaviour: loaders → transforms → DataLoader → tensors.

use std::path::PathBuf;

use kiln_data::datasets::{Digits, Mnist, Split};
use kiln_data::transforms::{Compose, Normalize, RandomAffine, RandomCrop, RandomErasing};
use kiln_data::{random_split, Batch, DataLoader, Dataset, DatasetExt};

fn shared(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("KILN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")));
    let dir = root.join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: no real data at {} (set KILN_DATA_DIR)", dir.display());
        None
    }
}

#[test]
fn digits_quick_start_batches_cover_a_split_once() {
    let parts = random_split(Digits::load(), &[1497, 300], 0);
    let train = parts[0].clone();
    let loader = DataLoader::new(train, 100).shuffle(true).seed(1).num_workers(2);
    assert_eq!(loader.len(), 15);
    let mut seen = 0;
    for batch in &loader {
        assert_eq!(batch.inputs.shape()[1], 64);
        seen += batch.len();
    }
    assert_eq!(seen, 1497);
}

#[test]
fn mnist_augmented_loader_is_worker_independent() {
    let Some(dir) = shared("mnist") else { return };
    let test = Mnist::new(dir, Split::Test).unwrap();
    // 600 samples keep this fast; the augmentations are random per sample.
    let subset = test.subset((0..600).collect());
    let augment = Compose::new(RandomCrop::new(28, 28).padding(2), RandomAffine::new(10.0).translate(0.1, 0.1))
        .then(RandomErasing::new(0.5))
        .then(Normalize::new(vec![0.1307], vec![0.3081]));
    let ds = std::sync::Arc::new(subset.map_input(augment));
    let run = |workers: usize| -> Vec<Batch> {
        DataLoader::from_arc(ds.clone(), 64).shuffle(true).seed(5).num_workers(workers).iter_epoch(3).collect()
    };
    let base = run(0);
    let two = run(2);
    assert_eq!(base.len(), 10);
    for (a, b) in base.iter().zip(&two) {
        assert_eq!(a.inputs.shape(), b.inputs.shape());
        assert_eq!(a.inputs.to_vec(), b.inputs.to_vec());
        assert_eq!(a.targets.classes(), b.targets.classes());
    }
    assert_eq!(base[0].inputs.shape(), &[64, 1, 28, 28]);
    let mut labels: Vec<usize> = base.iter().flat_map(|b| b.targets.classes().to_vec()).collect();
    assert_eq!(labels.len(), 600);
    labels.sort();
    let mut expected: Vec<usize> = (0..600).map(|i| ds.get(i).1).collect();
    expected.sort();
    assert_eq!(labels, expected);
}
