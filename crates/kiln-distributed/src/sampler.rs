//! [`DistributedSampler`]: which samples each rank sees in an epoch, and
//! [`DistributedDataLoader`], a [`DataLoader`] over this rank's share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_data::{Batch, Collate, DataLoader, Dataset, Subset};
use kiln_tensor::Rng;
use kiln_train::BatchSource;

/// Splits the indices of a data set of `len` samples among `num_replicas` ranks, like
/// `torch.utils.data.distributed.DistributedSampler`: every rank gets the same number of
/// samples, so every rank runs the same number of steps.
///
/// Each epoch the indices are shuffled with a generator seeded by `seed + epoch` (the same on
/// every rank; call [`set_epoch`](Self::set_epoch) before each epoch, or let
/// [`DistributedDataLoader`] do it); then, as PyTorch documents, without `drop_last` the list
/// is padded by wrapping around to `total_size = ceil(len / num_replicas) * num_replicas`
/// (a few samples appear twice), with `drop_last` it is cut to
/// `floor(len / num_replicas) * num_replicas`; rank `r` takes `indices[r..total_size]` with
/// step `num_replicas`.
///
/// ```
/// use kiln_distributed::DistributedSampler;
/// // 10 samples over 3 ranks: 4 each, the last two padded from the front.
/// let shards: Vec<Vec<usize>> =
///     (0..3).map(|r| DistributedSampler::new(10, 3, r).shuffle(false).indices()).collect();
/// assert_eq!(shards, [vec![0, 3, 6, 9], vec![1, 4, 7, 0], vec![2, 5, 8, 1]]);
/// let dropped = DistributedSampler::new(10, 3, 2).shuffle(false).drop_last(true);
/// assert_eq!(dropped.indices(), [2, 5, 8]);
/// ```
#[derive(Debug)]
pub struct DistributedSampler {
    len: usize,
    num_replicas: usize,
    rank: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    epoch: AtomicU64,
}

impl Clone for DistributedSampler {
    fn clone(&self) -> Self {
        DistributedSampler { epoch: AtomicU64::new(self.epoch.load(Ordering::SeqCst)), ..*self }
    }
}

impl DistributedSampler {
    /// The share of rank `rank` of `num_replicas` in a data set of `len` samples, shuffled
    /// (seed 0), padded (PyTorch's defaults).
    ///
    /// **Panics** if `num_replicas == 0` or `rank >= num_replicas`.
    pub fn new(len: usize, num_replicas: usize, rank: usize) -> Self {
        assert!(num_replicas > 0, "DistributedSampler: num_replicas must be > 0, got 0");
        assert!(rank < num_replicas, "DistributedSampler: rank {rank} out of range for {num_replicas} replicas");
        DistributedSampler {
            len,
            num_replicas,
            rank,
            shuffle: true,
            seed: 0,
            drop_last: false,
            epoch: AtomicU64::new(0),
        }
    }

    /// Whether to shuffle each epoch (default true).
    #[must_use]
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The shuffling seed, the same on every rank (default 0).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether to drop the tail that does not divide evenly instead of padding (default
    /// false).
    #[must_use]
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Sets the epoch, which reseeds the shuffle (PyTorch's `set_epoch`).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The number of samples each rank gets per epoch (`num_samples` in PyTorch).
    pub fn num_samples(&self) -> usize {
        if self.drop_last {
            self.len / self.num_replicas
        } else {
            self.len.div_ceil(self.num_replicas)
        }
    }

    /// `num_samples * num_replicas`.
    pub fn total_size(&self) -> usize {
        self.num_samples() * self.num_replicas
    }

    /// This rank's indices for the current epoch.
    pub fn indices(&self) -> Vec<usize> {
        self.indices_for_epoch(self.epoch())
    }

    /// This rank's indices for `epoch`.
    pub fn indices_for_epoch(&self, epoch: u64) -> Vec<usize> {
        let mut all: Vec<usize> = if self.shuffle {
            Rng::new(self.seed.wrapping_add(epoch)).permutation(self.len)
        } else {
            (0..self.len).collect()
        };
        let total = self.total_size();
        if total > all.len() && !all.is_empty() {
            // Wrap around as often as needed (PyTorch repeats the list when the padding is
            // longer than the data set).
            let pad: Vec<usize> = all.iter().copied().cycle().take(total - all.len()).collect();
            all.extend(pad);
        }
        all.truncate(total);
        all.into_iter().skip(self.rank).step_by(self.num_replicas).collect()
    }
}

/// The samples of this rank, epoch by epoch: a [`DistributedSampler`] picks them and a
/// [`DataLoader`] batches them (in the sampler's order; the loader does not shuffle again).
/// Each [`batches`](BatchSource::batches) call starts the next epoch (reseeding the
/// sampler), so [`Trainer::fit`](kiln_train::Trainer::fit) gets a new shuffle every epoch.
pub struct DistributedDataLoader<D, C> {
    dataset: Arc<D>,
    collate: Arc<C>,
    batch_size: usize,
    drop_last: bool,
    num_workers: usize,
    sampler: DistributedSampler,
    next_epoch: AtomicU64,
}

impl<D: Dataset + 'static> DistributedDataLoader<D, kiln_data::DefaultCollate> {
    /// A loader of this rank's share of `dataset` (picked by `sampler`) in batches of
    /// `batch_size`, with the default collate step.
    ///
    /// **Panics** if `batch_size == 0` or the sampler was made for another length.
    pub fn new(dataset: Arc<D>, sampler: DistributedSampler, batch_size: usize) -> Self {
        assert!(batch_size > 0, "DistributedDataLoader: batch_size must be > 0, got 0");
        assert_eq!(
            sampler.len,
            dataset.len(),
            "DistributedDataLoader: the sampler covers {} samples but the data set has {}",
            sampler.len,
            dataset.len()
        );
        let next_epoch = AtomicU64::new(sampler.epoch());
        DistributedDataLoader {
            dataset,
            collate: Arc::new(kiln_data::DefaultCollate),
            batch_size,
            drop_last: false,
            num_workers: 0,
            sampler,
            next_epoch,
        }
    }
}

impl<D: Dataset + 'static, C> DistributedDataLoader<D, C> {
    /// Whether to drop a last batch smaller than `batch_size` (default false).
    #[must_use]
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Worker threads making batches (default 0).
    #[must_use]
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }

    /// The sampler.
    pub fn sampler(&self) -> &DistributedSampler {
        &self.sampler
    }

    /// Sets the epoch that the next [`batches`](BatchSource::batches) call starts.
    pub fn set_epoch(&self, epoch: u64) {
        self.next_epoch.store(epoch, Ordering::SeqCst);
    }

    /// The loader of `epoch`'s share (a [`DataLoader`] over a [`Subset`]).
    pub fn loader_for_epoch(&self, epoch: u64) -> DataLoader<Subset<SharedDataset<D>>, SharedCollate<C>> {
        self.sampler.set_epoch(epoch);
        let subset = Subset::new(SharedDataset(self.dataset.clone()), self.sampler.indices());
        DataLoader::new(subset, self.batch_size)
            .drop_last(self.drop_last)
            .num_workers(self.num_workers)
            .collate_fn(SharedCollate(self.collate.clone()))
    }
}

impl<D, C> BatchSource for DistributedDataLoader<D, C>
where
    D: Dataset + 'static,
    C: Collate<D::Item, Batch = Batch> + 'static,
{
    fn batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        Box::new(self.loader_for_epoch(epoch).iter())
    }

    fn num_batches(&self) -> usize {
        let n = self.sampler.num_samples();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }
}

/// A data set shared through an `Arc` (what [`DistributedDataLoader`] hands its per-epoch
/// [`DataLoader`]).
pub struct SharedDataset<D>(pub Arc<D>);

impl<D: Dataset> Dataset for SharedDataset<D> {
    type Item = D::Item;
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> D::Item {
        self.0.get_with_rng(index, rng)
    }
}

/// A collate step shared through an `Arc`.
pub struct SharedCollate<C>(pub Arc<C>);

impl<T, C: Collate<T>> Collate<T> for SharedCollate<C> {
    type Batch = C::Batch;
    fn collate(&self, items: Vec<T>) -> C::Batch {
        self.0.collate(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(len: usize, world: usize, drop_last: bool, epoch: u64) -> Vec<Vec<usize>> {
        (0..world)
            .map(|r| {
                let s = DistributedSampler::new(len, world, r).seed(7).drop_last(drop_last);
                s.set_epoch(epoch);
                s.indices()
            })
            .collect()
    }

    #[test]
    fn every_sample_once_per_epoch_padding_excepted() {
        for len in [1usize, 2, 5, 7, 10, 11, 97, 100] {
            for world in [1usize, 2, 3, 4, 8] {
                for epoch in 0..3 {
                    let sh = shards(len, world, false, epoch);
                    let per = len.div_ceil(world);
                    assert!(sh.iter().all(|s| s.len() == per), "len {len} world {world}: unequal shards");
                    let mut all: Vec<usize> = sh.concat();
                    all.sort_unstable();
                    let mut uniq = all.clone();
                    uniq.dedup();
                    assert_eq!(uniq, (0..len).collect::<Vec<_>>(), "len {len} world {world}: a sample is missing");
                    assert_eq!(all.len() - uniq.len(), per * world - len, "len {len} world {world}: padding");
                }
            }
        }
    }

    #[test]
    fn drop_last_gives_disjoint_shards_of_floor_size() {
        for len in [5usize, 7, 10, 11, 97] {
            for world in [2usize, 3, 4] {
                let sh = shards(len, world, true, 1);
                let per = len / world;
                assert!(sh.iter().all(|s| s.len() == per));
                let mut all: Vec<usize> = sh.concat();
                all.sort_unstable();
                let n = all.len();
                all.dedup();
                assert_eq!(all.len(), n, "len {len} world {world}: shards overlap");
                assert_eq!(n, per * world);
            }
        }
    }

    #[test]
    fn rank_takes_every_world_th_index_of_the_epoch_order() {
        // The same epoch order on every rank, strided: rank r holds order[r::world].
        let order: Vec<usize> = (0..3).flat_map(|r| shards(10, 3, false, 4)[r].clone()).collect();
        let sh = shards(10, 3, false, 4);
        for (r, s) in sh.iter().enumerate() {
            for (k, &i) in s.iter().enumerate() {
                assert_eq!(order[r * s.len() + k], i);
            }
        }
        let first = Rng::new(7 + 4).permutation(10);
        assert_eq!(sh[1][..3], [first[1], first[4], first[7]]);
    }

    #[test]
    fn set_epoch_reshuffles_and_is_reproducible() {
        assert_ne!(shards(50, 2, false, 0), shards(50, 2, false, 1));
        assert_eq!(shards(50, 2, false, 3), shards(50, 2, false, 3));
    }

    #[test]
    fn padding_longer_than_the_data_set_wraps_repeatedly() {
        let sh = shards(2, 5, false, 0);
        assert!(sh.iter().all(|s| s.len() == 1));
        let mut all = sh.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, [0, 1]);
    }

    #[test]
    fn loader_batches_this_ranks_share_each_epoch() {
        use kiln_data::VecDataset;
        use kiln_tensor::Tensor;
        let items: Vec<(Tensor<f32>, usize)> = (0..7).map(|i| (Tensor::from_vec(vec![i as f32], &[1]), i)).collect();
        let ds = Arc::new(VecDataset::new(items));
        let loader = DistributedDataLoader::new(ds, DistributedSampler::new(7, 2, 1).seed(3), 3);
        assert_eq!(loader.num_batches(), 2); // 4 samples: 3 + 1
        let e0: Vec<usize> = loader.batches().flat_map(|b| b.targets.classes().to_vec()).collect();
        let e1: Vec<usize> = loader.batches().flat_map(|b| b.targets.classes().to_vec()).collect();
        assert_eq!(e0, loader.sampler().indices_for_epoch(0));
        assert_eq!(e1, loader.sampler().indices_for_epoch(1));
    }
}
