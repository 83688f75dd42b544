//! IMDB movie reviews (Maas et al. 2011): raw labelled text, and Keras-style integer sequences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_tensor::Rng;

use super::{data_dir, Split};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::io::{find_file, read_text};
use crate::text::keras_tokenize;

/// The labelled IMDB reviews as text: items are `(review, label)` with label 1 = positive
/// (rating >= 7) and 0 = negative (rating <= 4).
///
/// Read from `imdb_{train,test}.tsv[.gz]` (`label<TAB>text` per line, split at the first tab) or,
/// when those are absent, from the upstream `aclImdb/{train,test}/{pos,neg}/ID_RATING.txt` folders
/// (in the same order: positive then negative review of each id).
#[derive(Clone, Debug)]
pub struct ImdbReviews {
    texts: Vec<String>,
    labels: Vec<u8>,
}

impl ImdbReviews {
    /// Loads `split` from `dir` (the TSV files, or an `aclImdb` folder in or at `dir`).
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] when neither layout is there, [`DataError::Parse`] for a TSV line
    /// without a tab or with a label other than 0/1 (line and column named), and the I/O, gzip and
    /// UTF-8 errors of the files.
    pub fn new(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        if split == Split::Valid {
            return Err(DataError::InvalidArgument(
                "IMDB has no validation split; use random_split".into(),
            ));
        }
        let tsv = format!("imdb_{}.tsv", split.name());
        match find_file(dir, &[&tsv], "IMDB reviews") {
            Ok(path) => Self::from_tsv(&path),
            Err(not_found) => {
                for root in [dir.join("aclImdb"), dir.to_path_buf()] {
                    if root.join(split.name()).join("pos").is_dir() {
                        return Self::from_acl_imdb(&root, split);
                    }
                }
                Err(not_found)
            }
        }
    }

    /// Loads `split` from `data_dir()/imdb`.
    ///
    /// # Errors
    ///
    /// As [`ImdbReviews::new`].
    pub fn from_data_dir(split: Split) -> Result<Self> {
        Self::new(data_dir().join("imdb"), split)
    }

    /// Reads a `label<TAB>text` file (plain or gzip).
    ///
    /// # Errors
    ///
    /// As [`ImdbReviews::new`].
    pub fn from_tsv(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let err = |column: u64, expected: &str, found: &str| DataError::Parse {
                path: path.to_path_buf(),
                line: i as u64 + 1,
                column,
                expected: expected.into(),
                found: found.chars().take(40).collect(),
            };
            let (label, review) = line
                .split_once('\t')
                .ok_or_else(|| err(1, "label<TAB>text", line))?;
            let label = match label {
                "0" => 0,
                "1" => 1,
                other => return Err(err(1, "label 0 or 1", other)),
            };
            labels.push(label);
            texts.push(review.to_string());
        }
        Ok(ImdbReviews { texts, labels })
    }

    /// Reads the upstream folder layout `root/{split}/{pos,neg}/ID_RATING.txt`.
    ///
    /// # Errors
    ///
    /// As [`ImdbReviews::new`]; a file name that is not `ID_RATING.txt` is a [`DataError::Format`].
    pub fn from_acl_imdb(root: &Path, split: Split) -> Result<Self> {
        let list = |label: &str| -> Result<Vec<PathBuf>> {
            let folder = root.join(split.name()).join(label);
            let entries = std::fs::read_dir(&folder).map_err(|e| DataError::io(&folder, e))?;
            let mut files = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| DataError::io(&folder, e))?.path();
                if path.extension().is_some_and(|e| e == "txt") {
                    let stem = path
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    let id: u64 = stem
                        .split('_')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            DataError::format(&path, 0, "a file name ID_RATING.txt", stem.clone())
                        })?;
                    files.push((id, path));
                }
            }
            files.sort();
            Ok(files.into_iter().map(|(_, p)| p).collect())
        };
        let (pos, neg) = (list("pos")?, list("neg")?);
        let mut texts = Vec::with_capacity(pos.len() + neg.len());
        let mut labels = Vec::with_capacity(pos.len() + neg.len());
        for k in 0..pos.len().max(neg.len()) {
            for (files, label) in [(&pos, 1u8), (&neg, 0u8)] {
                if let Some(p) = files.get(k) {
                    texts.push(read_text(p)?);
                    labels.push(label);
                }
            }
        }
        Ok(ImdbReviews { texts, labels })
    }

    /// The reviews.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// The labels (1 positive, 0 negative).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl Dataset for ImdbReviews {
    type Item = (String, usize);
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (String, usize) {
        assert!(
            index < self.len(),
            "ImdbReviews: index {index} out of range for {} reviews",
            self.len()
        );
        (self.texts[index].clone(), self.labels[index] as usize)
    }
}

/// Keras' IMDB word index (`imdb_word_index.json`): word → rank by frequency (1 = "the").
#[derive(Clone, Debug, Default)]
pub struct WordIndex {
    ranks: HashMap<String, usize>,
}

impl WordIndex {
    /// Reads the JSON object `{word: rank}`.
    ///
    /// # Errors
    ///
    /// [`DataError::Json`] when it does not parse or a value is not a positive integer.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let json: HashMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| DataError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut ranks = HashMap::with_capacity(json.len());
        for (word, v) in json {
            let rank = v
                .as_u64()
                .filter(|&r| r > 0)
                .ok_or_else(|| DataError::Json {
                    path: path.to_path_buf(),
                    message: format!(
                        "the rank of {word:?} should be a positive integer, found {v}"
                    ),
                })?;
            ranks.insert(word, rank as usize);
        }
        Ok(WordIndex { ranks })
    }

    /// The rank of `word`.
    pub fn rank(&self, word: &str) -> Option<usize> {
        self.ranks.get(word).copied()
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    /// rank → word (for decoding), as a vector indexed by rank (index 0 unused).
    pub fn reverse(&self) -> Vec<String> {
        let max = self.ranks.values().copied().max().unwrap_or(0);
        let mut words = vec![String::new(); max + 1];
        for (w, &r) in &self.ranks {
            words[r] = w.clone();
        }
        words
    }
}

/// The options of `keras.datasets.imdb.load_data`, with Keras' defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdbConfig {
    /// Keep the words of rank `< num_words` (after the `index_from` shift); others become
    /// `oov_char`. `None`: keep all.
    pub num_words: Option<usize>,
    /// Indices below this become `oov_char` (Keras applies it to the start mark too).
    pub skip_top: usize,
    /// Drop reviews longer than this (counting the start mark), as Keras does; `None`: keep all.
    pub maxlen: Option<usize>,
    /// The index that starts every sequence (default 1); `None`: no start mark.
    pub start_char: Option<usize>,
    /// The index of out-of-vocabulary words (default 2); `None`: drop them.
    pub oov_char: Option<usize>,
    /// Added to every word rank (default 3: 0 is padding, 1 start, 2 OOV).
    pub index_from: usize,
}

impl Default for ImdbConfig {
    fn default() -> Self {
        ImdbConfig {
            num_words: None,
            skip_top: 0,
            maxlen: None,
            start_char: Some(1),
            oov_char: Some(2),
            index_from: 3,
        }
    }
}

/// IMDB as Keras gives it: each review a sequence of word indices (`rank + index_from` from Keras'
/// word index, after a start mark), with Keras' `num_words`, `skip_top`, `maxlen`, `start_char`,
/// `oov_char` and `index_from`. Items are `(indices, label)`.
///
/// The text is tokenised with [`keras_tokenize`] (Keras' `text_to_word_sequence`). Keras' own
/// `imdb.npz` was tokenised by Keras before its release, so a few sequences differ from it; words
/// missing from the index become `oov_char`. The reviews keep the file order (pos/neg
/// alternating); shuffle before training (the [`crate::DataLoader`] does).
#[derive(Clone, Debug)]
pub struct Imdb {
    sequences: Vec<Vec<usize>>,
    labels: Vec<usize>,
}

impl Imdb {
    /// Loads `split` and `imdb_word_index.json` from `dir` and encodes the reviews.
    ///
    /// # Errors
    ///
    /// The errors of [`ImdbReviews::new`] and [`WordIndex::load`].
    pub fn new(dir: impl AsRef<Path>, split: Split, config: &ImdbConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let reviews = ImdbReviews::new(dir, split)?;
        let index = WordIndex::load(find_file(
            dir,
            &["imdb_word_index.json"],
            "Keras' IMDB word index",
        )?)?;
        Ok(Self::encode(&reviews, &index, config))
    }

    /// Loads `split` from `data_dir()/imdb`.
    ///
    /// # Errors
    ///
    /// As [`Imdb::new`].
    pub fn from_data_dir(split: Split, config: &ImdbConfig) -> Result<Self> {
        Self::new(data_dir().join("imdb"), split, config)
    }

    /// Encodes `reviews` through `index` with Keras' conventions.
    pub fn encode(reviews: &ImdbReviews, index: &WordIndex, config: &ImdbConfig) -> Self {
        let mut sequences = Vec::with_capacity(reviews.len());
        let mut labels = Vec::with_capacity(reviews.len());
        for (text, &label) in reviews.texts.iter().zip(&reviews.labels) {
            let mut seq: Vec<usize> = config.start_char.into_iter().collect();
            for word in keras_tokenize(text) {
                match (index.rank(&word), config.oov_char) {
                    (Some(r), _) => seq.push(r + config.index_from),
                    (None, Some(oov)) => seq.push(oov),
                    (None, None) => {}
                }
            }
            if config.maxlen.is_some_and(|m| seq.len() > m) {
                continue;
            }
            let keep = |w: usize| config.skip_top <= w && config.num_words.is_none_or(|n| w < n);
            seq = match config.oov_char {
                Some(oov) => seq
                    .into_iter()
                    .map(|w| if keep(w) { w } else { oov })
                    .collect(),
                None => seq.into_iter().filter(|&w| keep(w)).collect(),
            };
            sequences.push(seq);
            labels.push(label as usize);
        }
        Imdb { sequences, labels }
    }

    /// The encoded reviews.
    pub fn sequences(&self) -> &[Vec<usize>] {
        &self.sequences
    }

    /// The labels.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
}

impl Dataset for Imdb {
    type Item = (Vec<usize>, usize);
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Vec<usize>, usize) {
        assert!(
            index < self.len(),
            "Imdb: index {index} out of range for {} reviews",
            self.len()
        );
        (self.sequences[index].clone(), self.labels[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{gzip, real_data, TempDir};

    fn small_index() -> WordIndex {
        let ranks = [("the", 1), ("movie", 2), ("was", 3), ("great", 4)];
        WordIndex {
            ranks: ranks.iter().map(|&(w, r)| (w.to_string(), r)).collect(),
        }
    }

    #[test]
    fn keras_conventions() {
        let reviews = ImdbReviews {
            texts: vec!["The movie was GREAT!".into(), "the unknownword".into()],
            labels: vec![1, 0],
        };
        let idx = small_index();
        let all = Imdb::encode(&reviews, &idx, &ImdbConfig::default());
        assert_eq!(all.sequences(), &[vec![1, 4, 5, 6, 7], vec![1, 4, 2]]);
        let limited = Imdb::encode(
            &reviews,
            &idx,
            &ImdbConfig {
                num_words: Some(6),
                skip_top: 0,
                ..Default::default()
            },
        );
        assert_eq!(limited.sequences()[0], vec![1, 4, 5, 2, 2]);
        let skipped = Imdb::encode(
            &reviews,
            &idx,
            &ImdbConfig {
                skip_top: 5,
                ..Default::default()
            },
        );
        assert_eq!(skipped.sequences()[0], vec![2, 2, 5, 6, 7]);
        let short = Imdb::encode(
            &reviews,
            &idx,
            &ImdbConfig {
                maxlen: Some(3),
                ..Default::default()
            },
        );
        assert_eq!((short.len(), short.labels()), (1, &[0][..]));
        let bare = Imdb::encode(
            &reviews,
            &idx,
            &ImdbConfig {
                start_char: None,
                oov_char: None,
                index_from: 0,
                ..Default::default()
            },
        );
        assert_eq!(bare.sequences(), &[vec![1, 2, 3, 4], vec![1]]);
    }

    #[test]
    fn tsv_and_acl_imdb_layouts_and_errors() {
        let dir = TempDir::new("imdb");
        dir.write("imdb_train.tsv.gz", &gzip(b"1\tGood\tfilm\n0\tBad film\n"));
        let r = ImdbReviews::new(&dir.0, Split::Train).unwrap();
        assert_eq!(r.texts(), &["Good\tfilm", "Bad film"]);
        assert_eq!(r.labels(), &[1, 0]);
        dir.write("aclImdb/test/pos/1_8.txt", b"fine");
        dir.write("aclImdb/test/pos/0_10.txt", b"best");
        dir.write("aclImdb/test/neg/0_1.txt", b"worst");
        let t = ImdbReviews::new(&dir.0, Split::Test).unwrap();
        assert_eq!(t.texts(), &["best", "worst", "fine"]);
        assert_eq!(t.labels(), &[1, 0, 1]);
        let p = dir.write("bad.tsv", b"1\tok\n2\tnope\n");
        assert!(matches!(
            ImdbReviews::from_tsv(&p),
            Err(DataError::Parse {
                line: 2,
                column: 1,
                ..
            })
        ));
        let p = dir.write("bad2.tsv", b"no tab here\n");
        assert!(matches!(
            ImdbReviews::from_tsv(&p),
            Err(DataError::Parse { line: 1, .. })
        ));
        let p = dir.write("idx.json", b"{\"a\": -1}");
        assert!(matches!(WordIndex::load(&p), Err(DataError::Json { .. })));
    }

    #[test]
    fn real_imdb_test_split() {
        let Some(dir) = real_data("imdb") else { return };
        let cfg = ImdbConfig {
            num_words: Some(10_000),
            ..Default::default()
        };
        let ds = Imdb::new(&dir, Split::Test, &cfg).unwrap();
        assert_eq!(ds.len(), 25_000);
        assert_eq!(ds.labels().iter().filter(|&&l| l == 1).count(), 12_500);
        assert_eq!(&ds.labels()[..4], &[1, 0, 1, 0]);
        assert!(ds
            .sequences()
            .iter()
            .all(|s| s[0] == 1 && s.iter().all(|&w| w < 10_000)));
        let idx = WordIndex::load(dir.join("imdb_word_index.json")).unwrap();
        assert_eq!(
            (idx.len(), idx.rank("the"), idx.rank("and")),
            (88_584, Some(1), Some(2))
        );
        // test/neg/0_2.txt (row 1) starts "Once again Mr. Costner has dragged out a movie".
        let once = idx.rank("once").unwrap() + 3;
        assert_eq!(ds.sequences()[1][1], once);
        let oov = ds.sequences().iter().flatten().filter(|&&w| w == 2).count();
        let total: usize = ds.sequences().iter().map(Vec::len).sum();
        eprintln!(
            "IMDB test: {} reviews, {total} tokens, {oov} OOV with num_words=10000",
            ds.len()
        );
    }
}
