//! [`DataLoader`]: batches of a [`Dataset`], shuffled with a seed, optionally fetched by worker
//! threads ahead of the consumer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use kiln_tensor::Rng;

use crate::batch::DefaultCollate;
use crate::dataset::{sample_rng, Dataset};

/// Turns the samples of one batch into the batch value (tensors, padded sequences, ...), like
/// PyTorch's `collate_fn`. Any `Fn(Vec<T>) -> B + Send + Sync` is one.
pub trait Collate<T>: Send + Sync {
    /// The batch type.
    type Batch: Send;
    /// Collates `items` (in batch order) into one batch.
    fn collate(&self, items: Vec<T>) -> Self::Batch;
}

impl<T, B: Send, F: Fn(Vec<T>) -> B + Send + Sync> Collate<T> for F {
    type Batch = B;
    fn collate(&self, items: Vec<T>) -> B {
        self(items)
    }
}

/// A collate step that keeps the samples as they are: each batch is a `Vec` of items.
#[derive(Clone, Copy, Debug, Default)]
pub struct VecCollate;

impl<T: Send> Collate<T> for VecCollate {
    type Batch = Vec<T>;
    fn collate(&self, items: Vec<T>) -> Vec<T> {
        items
    }
}

/// Batches of a [`Dataset`], like `torch.utils.data.DataLoader`.
///
/// - `batch_size` samples per batch; the last batch is smaller unless `drop_last` is set.
/// - `shuffle`: each epoch visits the samples in a random order drawn from `(seed, epoch)`, so
///   the same seed gives the same order, and each epoch a different one.
/// - `num_workers` threads fetch and collate whole batches ahead of the consumer, each holding at
///   most `prefetch_factor` finished batches (bounded by `sync_channel`); batches still come out in
///   order. Random transforms draw from a generator seeded by `(seed, epoch, sample index)`, so the
///   batches are the same whatever the number of workers.
/// - the collate step (by default [`DefaultCollate`], which stacks `(input, target)` samples into a
///   [`crate::Batch`]) can be replaced by any [`Collate`], e.g. a closure.
///
/// Each call of [`DataLoader::iter`] (or `for batch in &loader`) starts the next epoch; use
/// [`DataLoader::iter_epoch`] to ask for one in particular.
///
/// ```
/// use kiln_data::{DataLoader, VecCollate, VecDataset};
/// let ds = VecDataset::new((0..10u32).collect());
/// let loader = DataLoader::new(ds, 4).shuffle(true).seed(7).collate_fn(VecCollate);
/// let batches: Vec<Vec<u32>> = loader.iter().collect();
/// assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
/// let mut seen: Vec<u32> = batches.concat();
/// seen.sort();
/// assert_eq!(seen, (0..10).collect::<Vec<_>>());
/// // Same seed and epoch, same order:
/// assert_eq!(loader.iter_epoch(0).collect::<Vec<_>>(), batches);
/// ```
pub struct DataLoader<D, C = DefaultCollate> {
    dataset: Arc<D>,
    collate: Arc<C>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    num_workers: usize,
    prefetch_factor: usize,
    epoch: AtomicU64,
}

impl<D: Dataset> DataLoader<D, DefaultCollate> {
    /// A loader of `dataset` in batches of `batch_size`, in order, on the calling thread, with the
    /// default collate step.
    ///
    /// **Panics** if `batch_size == 0`.
    pub fn new(dataset: D, batch_size: usize) -> Self {
        Self::from_arc(Arc::new(dataset), batch_size)
    }

    /// [`DataLoader::new`] for a data set that is shared with other code.
    ///
    /// **Panics** if `batch_size == 0`.
    pub fn from_arc(dataset: Arc<D>, batch_size: usize) -> Self {
        assert!(batch_size > 0, "DataLoader: batch_size must be > 0, got 0");
        DataLoader {
            dataset,
            collate: Arc::new(DefaultCollate),
            batch_size,
            shuffle: false,
            seed: 0,
            drop_last: false,
            num_workers: 0,
            prefetch_factor: 2,
            epoch: AtomicU64::new(0),
        }
    }
}

impl<D: Dataset, C> DataLoader<D, C> {
    /// Whether to visit the samples in a new random order each epoch (default false).
    #[must_use]
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The seed of the shuffling order and of the random transforms (default 0).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether to drop a last batch smaller than `batch_size` (default false).
    #[must_use]
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Number of worker threads (default 0: batches are made on the thread that iterates).
    #[must_use]
    pub fn num_workers(mut self, num_workers: usize) -> Self {
        self.num_workers = num_workers;
        self
    }

    /// Finished batches each worker may hold ahead of the consumer (default 2, as in PyTorch).
    ///
    /// **Panics** if `prefetch_factor == 0`.
    #[must_use]
    pub fn prefetch_factor(mut self, prefetch_factor: usize) -> Self {
        assert!(prefetch_factor > 0, "DataLoader: prefetch_factor must be > 0, got 0");
        self.prefetch_factor = prefetch_factor;
        self
    }

    /// Replaces the collate step.
    #[must_use]
    pub fn collate_fn<C2>(self, collate: C2) -> DataLoader<D, C2> {
        DataLoader {
            dataset: self.dataset,
            collate: Arc::new(collate),
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            seed: self.seed,
            drop_last: self.drop_last,
            num_workers: self.num_workers,
            prefetch_factor: self.prefetch_factor,
            epoch: self.epoch,
        }
    }

    /// Sets the epoch that the next [`DataLoader::iter`] starts.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Whether an epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dataset indices of each batch of `epoch`, in order.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.dataset.len();
        let order: Vec<usize> =
            if self.shuffle { sample_rng(self.seed, epoch, usize::MAX).permutation(n) } else { (0..n).collect() };
        let mut batches: Vec<Vec<usize>> = order.chunks(self.batch_size).map(<[usize]>::to_vec).collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < self.batch_size) {
            batches.pop();
        }
        batches
    }
}

impl<D, C> DataLoader<D, C>
where
    D: Dataset + 'static,
    C: Collate<D::Item> + 'static,
{
    /// The batches of the next epoch (starting from 0, or from [`DataLoader::set_epoch`]).
    pub fn iter(&self) -> DataLoaderIter<D, C> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        self.iter_epoch(epoch)
    }

    /// The batches of `epoch` (does not change the epoch counter).
    pub fn iter_epoch(&self, epoch: u64) -> DataLoaderIter<D, C> {
        let batches = Arc::new(self.batch_indices(epoch));
        let mut it = DataLoaderIter {
            dataset: Arc::clone(&self.dataset),
            collate: Arc::clone(&self.collate),
            seed: self.seed,
            epoch,
            batches: Arc::clone(&batches),
            next: 0,
            workers: Vec::new(),
        };
        let w = self.num_workers.min(batches.len());
        for worker in 0..w {
            let (tx, rx) = sync_channel(self.prefetch_factor);
            let dataset = Arc::clone(&self.dataset);
            let collate = Arc::clone(&self.collate);
            let batches = Arc::clone(&batches);
            let seed = self.seed;
            let handle = std::thread::Builder::new()
                .name(format!("kiln-data-worker-{worker}"))
                .spawn(move || {
                    for k in (worker..batches.len()).step_by(w) {
                        let batch = make_batch(&*dataset, &*collate, &batches[k], seed, epoch);
                        if tx.send(batch).is_err() {
                            return; // the iterator was dropped
                        }
                    }
                })
                .expect("DataLoader: cannot spawn a worker thread");
            it.workers.push(Worker { rx: Some(rx), handle: Some(handle) });
        }
        it
    }
}

impl<D, C> IntoIterator for &DataLoader<D, C>
where
    D: Dataset + 'static,
    C: Collate<D::Item> + 'static,
{
    type Item = C::Batch;
    type IntoIter = DataLoaderIter<D, C>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

fn make_batch<D: Dataset, C: Collate<D::Item>>(
    dataset: &D,
    collate: &C,
    indices: &[usize],
    seed: u64,
    epoch: u64,
) -> C::Batch {
    let items = indices
        .iter()
        .map(|&i| {
            let mut rng: Rng = sample_rng(seed, epoch, i);
            dataset.get_with_rng(i, &mut rng)
        })
        .collect();
    collate.collate(items)
}

struct Worker<B> {
    rx: Option<Receiver<B>>,
    handle: Option<JoinHandle<()>>,
}

/// The batches of one epoch of a [`DataLoader`]; an [`ExactSizeIterator`].
///
/// Dropping it early stops the workers (after the batch each is making).
pub struct DataLoaderIter<D: Dataset, C: Collate<D::Item>> {
    dataset: Arc<D>,
    collate: Arc<C>,
    seed: u64,
    epoch: u64,
    batches: Arc<Vec<Vec<usize>>>,
    next: usize,
    workers: Vec<Worker<C::Batch>>,
}

impl<D: Dataset, C: Collate<D::Item>> Iterator for DataLoaderIter<D, C> {
    type Item = C::Batch;

    fn next(&mut self) -> Option<C::Batch> {
        if self.next >= self.batches.len() {
            return None;
        }
        let k = self.next;
        self.next += 1;
        if self.workers.is_empty() {
            return Some(make_batch(&*self.dataset, &*self.collate, &self.batches[k], self.seed, self.epoch));
        }
        let w = self.workers.len();
        let worker = &mut self.workers[k % w];
        match worker.rx.as_ref().expect("receiver present until drop").recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                // The worker ended without sending: it panicked. Re-raise its panic here.
                if let Some(handle) = worker.handle.take() {
                    if let Err(payload) = handle.join() {
                        std::panic::resume_unwind(payload);
                    }
                }
                panic!("DataLoader: worker {} stopped before batch {k}", k % w);
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len() - self.next;
        (left, Some(left))
    }
}

impl<D: Dataset, C: Collate<D::Item>> ExactSizeIterator for DataLoaderIter<D, C> {}

impl<D: Dataset, C: Collate<D::Item>> Drop for DataLoaderIter<D, C> {
    fn drop(&mut self) {
        // Drop the receivers first so that blocked workers see a closed channel and stop.
        for worker in &mut self.workers {
            worker.rx.take();
        }
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetExt, VecDataset};

    fn numbers(n: u32) -> VecDataset<u32> {
        (0..n).collect()
    }

    fn epoch_batches(n: u32, bs: usize, drop_last: bool, workers: usize, seed: u64, epoch: u64) -> Vec<Vec<u32>> {
        DataLoader::new(numbers(n), bs)
            .shuffle(true)
            .seed(seed)
            .drop_last(drop_last)
            .num_workers(workers)
            .collate_fn(VecCollate)
            .iter_epoch(epoch)
            .collect()
    }

    #[test]
    fn every_sample_once_per_epoch() {
        for &(n, bs) in &[(10u32, 3usize), (9, 3), (1, 5), (0, 2), (100, 7)] {
            for &workers in &[0usize, 1, 3] {
                let batches = epoch_batches(n, bs, false, workers, 1, 0);
                let mut all: Vec<u32> = batches.concat();
                all.sort();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} bs={bs} workers={workers}");
                assert_eq!(batches.len(), (n as usize).div_ceil(bs));

                let dropped = epoch_batches(n, bs, true, workers, 1, 0);
                assert_eq!(dropped.len(), n as usize / bs);
                assert!(dropped.iter().all(|b| b.len() == bs));
                let mut kept: Vec<u32> = dropped.concat();
                let len = kept.len();
                kept.sort();
                kept.dedup();
                assert_eq!(kept.len(), len, "no sample twice with drop_last");
                assert_eq!(len, n as usize / bs * bs);
            }
        }
    }

    #[test]
    fn seed_and_epoch_determine_the_order() {
        let a = epoch_batches(50, 8, false, 0, 3, 0);
        assert_eq!(a, epoch_batches(50, 8, false, 0, 3, 0));
        assert_ne!(a, epoch_batches(50, 8, false, 0, 4, 0));
        assert_ne!(a, epoch_batches(50, 8, false, 0, 3, 1));
        let unshuffled: Vec<Vec<u32>> = DataLoader::new(numbers(5), 2).collate_fn(VecCollate).iter().collect();
        assert_eq!(unshuffled, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn worker_count_does_not_change_batches_with_random_transforms() {
        let ds = numbers(40).map(|x: u32, rng: &mut Rng| (x, rng.next_u64()));
        let run = |workers: usize| -> Vec<Vec<(u32, u64)>> {
            DataLoader::new(ds.clone(), 6)
                .shuffle(true)
                .seed(9)
                .num_workers(workers)
                .prefetch_factor(1)
                .collate_fn(VecCollate)
                .iter_epoch(2)
                .collect()
        };
        let base = run(0);
        assert_eq!(base, run(1));
        assert_eq!(base, run(2));
        assert_eq!(base, run(4));
    }

    #[test]
    fn iter_advances_epochs_and_is_exact_size() {
        let loader = DataLoader::new(numbers(10), 4).shuffle(true).collate_fn(VecCollate);
        let mut it = loader.iter();
        assert_eq!(it.len(), 3);
        it.next();
        assert_eq!(it.len(), 2);
        drop(it);
        let e1: Vec<Vec<u32>> = loader.iter().collect();
        assert_eq!(e1, loader.iter_epoch(1).collect::<Vec<_>>());
        loader.set_epoch(1);
        assert_eq!(e1, loader.iter().collect::<Vec<_>>());
        assert_eq!(loader.len(), 3);
    }

    #[test]
    fn dropping_early_stops_workers() {
        let loader = DataLoader::new(numbers(1000), 1).num_workers(2).collate_fn(VecCollate);
        let mut it = loader.iter();
        assert_eq!(it.next(), Some(vec![0]));
        assert_eq!(it.next(), Some(vec![1]));
        drop(it); // must not hang
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn worker_panic_reaches_the_consumer() {
        let ds = numbers(10).map(|x: u32, _: &mut Rng| if x == 7 { panic!("boom") } else { x });
        let loader = DataLoader::new(ds, 2).num_workers(2).collate_fn(VecCollate);
        for _ in loader.iter() {}
    }
}
