//! Splits for model selection: [`KFold`], [`StratifiedKFold`], [`train_test_split`].
//!
//! They work on indices `0..n`, as scikit-learn's, so they apply to any [`crate::Dataset`]
//! through [`crate::Subset`].

use kiln_tensor::Rng;

/// One fold: the training indices (ascending) and the validation indices.
pub type Fold = (Vec<usize>, Vec<usize>);

/// K-fold cross-validation, like scikit-learn's `KFold`: the (optionally shuffled) indices are cut
/// into `n_splits` consecutive folds, the first `n % n_splits` one longer; each fold is the
/// validation set once.
///
/// ```
/// use kiln_data::split::KFold;
/// let folds = KFold::new(3).split(7);
/// assert_eq!(folds[0], (vec![3, 4, 5, 6], vec![0, 1, 2]));
/// assert_eq!(folds[2].1, vec![5, 6]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KFold {
    n_splits: usize,
    shuffle: Option<u64>,
}

impl KFold {
    /// `n_splits` folds, no shuffling.
    ///
    /// **Panics** if `n_splits < 2`.
    pub fn new(n_splits: usize) -> Self {
        assert!(n_splits >= 2, "KFold: n_splits must be >= 2, got {n_splits}");
        KFold { n_splits, shuffle: None }
    }

    /// Shuffle the indices first, with this seed.
    #[must_use]
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// The folds of `n` samples.
    ///
    /// **Panics** if `n < n_splits`.
    pub fn split(&self, n: usize) -> Vec<Fold> {
        assert!(n >= self.n_splits, "KFold: cannot make {} folds of {n} samples", self.n_splits);
        let order = match self.shuffle {
            Some(seed) => Rng::new(seed).permutation(n),
            None => (0..n).collect(),
        };
        let mut fold_of = vec![0usize; n];
        let mut folds = Vec::with_capacity(self.n_splits);
        let mut start = 0;
        for k in 0..self.n_splits {
            let size = n / self.n_splits + usize::from(k < n % self.n_splits);
            let test: Vec<usize> = order[start..start + size].to_vec();
            test.iter().for_each(|&i| fold_of[i] = k);
            folds.push(test);
            start += size;
        }
        folds.into_iter().enumerate().map(|(k, test)| ((0..n).filter(|&i| fold_of[i] != k).collect(), test)).collect()
    }
}

/// K-fold cross-validation keeping each class's proportion in every fold, like scikit-learn's
/// `StratifiedKFold`: the samples are ordered by class (shuffled within each class when asked)
/// and dealt to the folds in turn, so fold sizes and per-class counts differ by at most one.
#[derive(Clone, Copy, Debug)]
pub struct StratifiedKFold {
    n_splits: usize,
    shuffle: Option<u64>,
}

impl StratifiedKFold {
    /// `n_splits` folds, no shuffling.
    ///
    /// **Panics** if `n_splits < 2`.
    pub fn new(n_splits: usize) -> Self {
        assert!(n_splits >= 2, "StratifiedKFold: n_splits must be >= 2, got {n_splits}");
        StratifiedKFold { n_splits, shuffle: None }
    }

    /// Shuffle within each class first, with this seed.
    #[must_use]
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// The folds for samples with class `labels`; validation indices ascending.
    ///
    /// **Panics** if there are fewer samples than folds.
    pub fn split(&self, labels: &[usize]) -> Vec<Fold> {
        let n = labels.len();
        assert!(n >= self.n_splits, "StratifiedKFold: cannot make {} folds of {n} samples", self.n_splits);
        let mut order: Vec<usize> = (0..n).collect();
        if let Some(seed) = self.shuffle {
            Rng::new(seed).shuffle(&mut order);
        }
        order.sort_by_key(|&i| labels[i]); // stable: keeps the shuffled order within a class
        let mut fold_of = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            fold_of[i] = p % self.n_splits;
        }
        (0..self.n_splits)
            .map(|k| {
                let (test, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == k);
                (train, test)
            })
            .collect()
    }
}

/// A shuffled train/validation split of `n` samples, like scikit-learn's `train_test_split`:
/// `ceil(test_fraction * n)` validation samples, the rest for training.
///
/// **Panics** if `test_fraction` is not in `[0, 1]`.
///
/// ```
/// let (train, test) = kiln_data::split::train_test_split(10, 0.25, 0);
/// assert_eq!((train.len(), test.len()), (7, 3));
/// ```
pub fn train_test_split(n: usize, test_fraction: f64, seed: u64) -> Fold {
    assert!(
        (0.0..=1.0).contains(&test_fraction),
        "train_test_split: test_fraction must be in [0, 1], got {test_fraction}"
    );
    let n_test = (test_fraction * n as f64).ceil() as usize;
    let perm = Rng::new(seed).permutation(n);
    (perm[n_test..].to_vec(), perm[..n_test].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_partition(folds: &[Fold], n: usize) {
        let mut all_test: Vec<usize> = folds.iter().flat_map(|f| f.1.clone()).collect();
        all_test.sort();
        assert_eq!(all_test, (0..n).collect::<Vec<_>>());
        for (train, test) in folds {
            assert_eq!(train.len() + test.len(), n);
            assert!(train.iter().all(|i| !test.contains(i)));
        }
    }

    #[test]
    fn kfold_partitions_and_shuffles_reproducibly() {
        let folds = KFold::new(4).split(10);
        check_partition(&folds, 10);
        assert_eq!(folds.iter().map(|f| f.1.len()).collect::<Vec<_>>(), vec![3, 3, 2, 2]);
        let a = KFold::new(3).shuffle(5).split(20);
        check_partition(&a, 20);
        assert_eq!(a, KFold::new(3).shuffle(5).split(20));
        assert_ne!(a, KFold::new(3).shuffle(6).split(20));
    }

    #[test]
    fn stratified_kfold_balances_classes() {
        let labels: Vec<usize> = (0..30).map(|i| usize::from(i % 3 == 0)).collect(); // 10 ones, 20 zeros
        let folds = StratifiedKFold::new(5).shuffle(1).split(&labels);
        check_partition(&folds, 30);
        for (_, test) in &folds {
            assert_eq!(test.len(), 6);
            assert_eq!(test.iter().filter(|&&i| labels[i] == 1).count(), 2);
        }
        assert_eq!(folds, StratifiedKFold::new(5).shuffle(1).split(&labels));
    }

    #[test]
    fn train_test_split_sizes() {
        let (train, test) = train_test_split(101, 0.2, 3);
        assert_eq!((train.len(), test.len()), (80, 21));
        let mut all = [train, test].concat();
        all.sort();
        assert_eq!(all, (0..101).collect::<Vec<_>>());
    }
}
