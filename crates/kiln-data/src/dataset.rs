//! The [`Dataset`] trait and the ways to combine data sets: [`Subset`], [`ConcatDataset`],
//! [`random_split`], [`MapDataset`] / [`MapInput`] and the in-memory [`VecDataset`].

use std::sync::Arc;

use kiln_tensor::Rng;

use crate::transforms::Transform;

/// A map-style data set: `len` items, each fetched by index, like `torch.utils.data.Dataset`.
///
/// Items are produced on demand and must be `Send`, so that [`crate::DataLoader`] workers can
/// fetch them on other threads. Loaders in this crate read (and check) their files when they are
/// built, so `get` itself does not fail.
///
/// Random augmentation draws from the `rng` passed to [`Dataset::get_with_rng`]; the
/// [`crate::DataLoader`] seeds it from (seed, epoch, index), which keeps a sample's augmentation
/// the same whatever the number of workers.
///
/// ```
/// use kiln_data::{Dataset, VecDataset};
/// let ds = VecDataset::new(vec![(1.0f32, 0usize), (2.0, 1)]);
/// assert_eq!(ds.len(), 2);
/// assert_eq!(ds.get(1), (2.0, 1));
/// ```
pub trait Dataset: Send + Sync {
    /// What one sample is, e.g. `(Image, usize)`.
    type Item: Send;

    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`, with the randomness of any transform drawn from a generator seeded by
    /// `index` alone (use [`Dataset::get_with_rng`] to control it).
    ///
    /// **Panics** if `index >= len()`.
    fn get(&self, index: usize) -> Self::Item {
        self.get_with_rng(index, &mut sample_rng(0, 0, index))
    }

    /// Sample `index`, with random transforms drawing from `rng`.
    ///
    /// **Panics** if `index >= len()`.
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> Self::Item;
}

/// The generator for sample `index` in `epoch` of a run seeded with `seed`: a SplitMix64 mix of
/// the three, so that a sample's randomness depends on nothing else (not on the worker thread that
/// fetches it, nor on the order of fetching).
#[must_use]
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> Rng {
    let mut h = mix64(seed ^ 0x6b69_6c6e_6461_7461);
    h = mix64(h ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    h = mix64(h ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    Rng::new(h)
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn check_index(what: &str, index: usize, len: usize) {
    assert!(index < len, "{what}: index {index} out of range for a data set of {len} samples");
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    type Item = D::Item;
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> Self::Item {
        (**self).get_with_rng(index, rng)
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    type Item = D::Item;
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> Self::Item {
        (**self).get_with_rng(index, rng)
    }
}

impl<D: Dataset + ?Sized> Dataset for &D {
    type Item = D::Item;
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> Self::Item {
        (**self).get_with_rng(index, rng)
    }
}

/// Combinators on every [`Dataset`].
pub trait DatasetExt: Dataset + Sized {
    /// Applies `transform` to every whole item (like a torchvision `transform` on the sample).
    fn map<T: Transform<Self::Item>>(self, transform: T) -> MapDataset<Self, T> {
        MapDataset { dataset: self, transform }
    }

    /// Applies `transform` to the input of `(input, target)` items, leaving the target alone.
    fn map_input<X, Y, T>(self, transform: T) -> MapInput<Self, T>
    where
        Self: Dataset<Item = (X, Y)>,
        T: Transform<X>,
    {
        MapInput { dataset: self, transform }
    }

    /// The samples at `indices`, in that order.
    fn subset(self, indices: Vec<usize>) -> Subset<Self> {
        Subset::new(self, indices)
    }
}

impl<D: Dataset> DatasetExt for D {}

/// An in-memory data set of cloneable items.
#[derive(Clone, Debug, Default)]
pub struct VecDataset<T> {
    items: Vec<T>,
}

impl<T> VecDataset<T> {
    /// A data set of `items`.
    pub fn new(items: Vec<T>) -> Self {
        VecDataset { items }
    }

    /// The items.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The items, by value.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

impl<T: Clone + Send + Sync> Dataset for VecDataset<T> {
    type Item = T;
    fn len(&self) -> usize {
        self.items.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> T {
        check_index("VecDataset", index, self.items.len());
        self.items[index].clone()
    }
}

impl<T> FromIterator<T> for VecDataset<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        VecDataset { items: iter.into_iter().collect() }
    }
}

/// The samples of a data set at a list of indices, like `torch.utils.data.Subset`.
#[derive(Clone, Debug)]
pub struct Subset<D> {
    dataset: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// The samples of `dataset` at `indices` (repeats allowed).
    ///
    /// **Panics** if an index is out of range.
    pub fn new(dataset: D, indices: Vec<usize>) -> Self {
        let n = dataset.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            panic!("Subset: index {bad} out of range for a data set of {n} samples");
        }
        Subset { dataset, indices }
    }

    /// The indices into the underlying data set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The underlying data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    type Item = D::Item;
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> D::Item {
        check_index("Subset", index, self.indices.len());
        self.dataset.get_with_rng(self.indices[index], rng)
    }
}

/// Several data sets of the same item type, one after the other, like
/// `torch.utils.data.ConcatDataset`.
#[derive(Clone, Debug)]
pub struct ConcatDataset<D> {
    datasets: Vec<D>,
    /// `ends[k]` = number of samples in datasets `0..=k`.
    ends: Vec<usize>,
}

impl<D: Dataset> ConcatDataset<D> {
    /// The concatenation of `datasets`.
    pub fn new(datasets: Vec<D>) -> Self {
        let mut total = 0;
        let ends = datasets
            .iter()
            .map(|d| {
                total += d.len();
                total
            })
            .collect();
        ConcatDataset { datasets, ends }
    }

    /// The parts.
    pub fn datasets(&self) -> &[D] {
        &self.datasets
    }
}

impl<D: Dataset> Dataset for ConcatDataset<D> {
    type Item = D::Item;
    fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> D::Item {
        check_index("ConcatDataset", index, self.len());
        let k = self.ends.partition_point(|&end| end <= index);
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        self.datasets[k].get_with_rng(index - start, rng)
    }
}

/// Splits `dataset` at random into parts of the given `lengths` (which must add up to its
/// length), like `torch.utils.data.random_split` with a seeded generator.
///
/// **Panics** if the lengths do not add up to `dataset.len()`.
///
/// ```
/// use kiln_data::{random_split, Dataset, VecDataset};
/// let ds = VecDataset::new((0..10).collect::<Vec<u32>>());
/// let parts = random_split(ds, &[7, 3], 42);
/// assert_eq!((parts[0].len(), parts[1].len()), (7, 3));
/// ```
pub fn random_split<D: Dataset>(dataset: D, lengths: &[usize], seed: u64) -> Vec<Subset<Arc<D>>> {
    let n = dataset.len();
    let total: usize = lengths.iter().sum();
    assert_eq!(total, n, "random_split: lengths {lengths:?} add up to {total}, but the data set has {n} samples");
    let perm = Rng::new(seed).permutation(n);
    let dataset = Arc::new(dataset);
    let mut start = 0;
    lengths
        .iter()
        .map(|&len| {
            let part = Subset { dataset: Arc::clone(&dataset), indices: perm[start..start + len].to_vec() };
            start += len;
            part
        })
        .collect()
}

/// [`random_split`] with fractions that add up to 1: each part gets `floor(n * fraction)`
/// samples and the remainder is handed out one by one from the first part on, as PyTorch does.
///
/// **Panics** if the fractions are negative or do not add up to 1 (within 1e-6).
pub fn random_split_fractions<D: Dataset>(dataset: D, fractions: &[f64], seed: u64) -> Vec<Subset<Arc<D>>> {
    let lengths = lengths_from_fractions(dataset.len(), fractions);
    random_split(dataset, &lengths, seed)
}

pub(crate) fn lengths_from_fractions(n: usize, fractions: &[f64]) -> Vec<usize> {
    let sum: f64 = fractions.iter().sum();
    assert!(
        fractions.iter().all(|&f| (0.0..=1.0).contains(&f)) && (sum - 1.0).abs() < 1e-6,
        "random_split: fractions {fractions:?} must be in [0, 1] and add up to 1"
    );
    let mut lengths: Vec<usize> = fractions.iter().map(|&f| (n as f64 * f).floor() as usize).collect();
    let mut remainder = n - lengths.iter().sum::<usize>();
    let (mut k, parts) = (0, lengths.len());
    while remainder > 0 {
        lengths[k % parts] += 1;
        remainder -= 1;
        k += 1;
    }
    lengths
}

/// A data set whose items go through a [`Transform`] (see [`DatasetExt::map`]).
#[derive(Clone, Debug)]
pub struct MapDataset<D, T> {
    dataset: D,
    transform: T,
}

impl<D: Dataset, T: Transform<D::Item>> MapDataset<D, T> {
    /// `dataset` with `transform` applied to each item.
    pub fn new(dataset: D, transform: T) -> Self {
        MapDataset { dataset, transform }
    }
}

impl<D: Dataset, T: Transform<D::Item>> Dataset for MapDataset<D, T> {
    type Item = T::Output;
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> T::Output {
        let item = self.dataset.get_with_rng(index, rng);
        self.transform.apply(item, rng)
    }
}

/// A data set of `(input, target)` whose inputs go through a [`Transform`] (see
/// [`DatasetExt::map_input`]).
#[derive(Clone, Debug)]
pub struct MapInput<D, T> {
    dataset: D,
    transform: T,
}

impl<X, Y, D, T> MapInput<D, T>
where
    D: Dataset<Item = (X, Y)>,
    T: Transform<X>,
{
    /// `dataset` with `transform` applied to each input.
    pub fn new(dataset: D, transform: T) -> Self {
        MapInput { dataset, transform }
    }
}

impl<X, Y, D, T> Dataset for MapInput<D, T>
where
    D: Dataset<Item = (X, Y)>,
    T: Transform<X>,
    Y: Send,
{
    type Item = (T::Output, Y);
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> (T::Output, Y) {
        let (x, y) = self.dataset.get_with_rng(index, rng);
        (self.transform.apply(x, rng), y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: u32) -> VecDataset<u32> {
        (0..n).collect()
    }

    #[test]
    fn subset_and_concat_index_through() {
        let s = numbers(10).subset(vec![9, 0, 4]);
        assert_eq!((0..3).map(|i| s.get(i)).collect::<Vec<_>>(), vec![9, 0, 4]);
        let c = ConcatDataset::new(vec![numbers(3), numbers(0), numbers(2)]);
        assert_eq!(c.len(), 5);
        assert_eq!((0..5).map(|i| c.get(i)).collect::<Vec<_>>(), vec![0, 1, 2, 0, 1]);
    }

    #[test]
    #[should_panic(expected = "ConcatDataset: index 5 out of range")]
    fn concat_out_of_range_panics() {
        ConcatDataset::new(vec![numbers(3), numbers(2)]).get(5);
    }

    #[test]
    fn random_split_is_a_seeded_partition() {
        let parts = random_split(numbers(100), &[70, 20, 10], 7);
        let mut all: Vec<u32> = parts.iter().flat_map(|p| (0..p.len()).map(|i| p.get(i))).collect();
        let again: Vec<u32> =
            random_split(numbers(100), &[70, 20, 10], 7).iter().flat_map(|p| (0..p.len()).map(|i| p.get(i))).collect();
        assert_eq!(all, again);
        let other: Vec<u32> =
            random_split(numbers(100), &[70, 20, 10], 8).iter().flat_map(|p| (0..p.len()).map(|i| p.get(i))).collect();
        assert_ne!(all, other);
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(lengths_from_fractions(10, &[0.33, 0.33, 0.34]), vec![4, 3, 3]);
        let parts = random_split_fractions(numbers(10), &[0.5, 0.5], 1);
        assert_eq!(parts[0].len() + parts[1].len(), 10);
    }

    #[test]
    fn map_uses_the_given_rng() {
        let ds = numbers(4).map(|x: u32, rng: &mut Rng| x as u64 * 1000 + rng.below(1000));
        let a = ds.get_with_rng(2, &mut Rng::new(5));
        let b = ds.get_with_rng(2, &mut Rng::new(5));
        assert_eq!(a, b);
        assert_eq!(a / 1000, 2);
        let pairs = VecDataset::new(vec![(1.0f32, 3usize)]).map_input(|x: f32, _: &mut Rng| x * 2.0);
        assert_eq!(pairs.get(0), (2.0, 3));
    }
}
