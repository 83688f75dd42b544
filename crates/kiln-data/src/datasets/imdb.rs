//! IMDB movie reviews (Maas et al. 2011): raw labelled text, and Keras-style integer sequences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_tensor::Rng;

use super::{data_dir, Split};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::io::{find_file, read_text};
use crate::npy::{member_path, NpyArray, NpyData, Npz};
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
            return Err(DataError::InvalidArgument("IMDB has no validation split; use random_split".into()));
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
            let (label, review) = line.split_once('\t').ok_or_else(|| err(1, "label<TAB>text", line))?;
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
                    let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    let id: u64 = stem
                        .split('_')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| DataError::format(&path, 0, "a file name ID_RATING.txt", stem.clone()))?;
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
        assert!(index < self.len(), "ImdbReviews: index {index} out of range for {} reviews", self.len());
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
        let json: HashMap<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| DataError::Json { path: path.to_path_buf(), message: e.to_string() })?;
        let mut ranks = HashMap::with_capacity(json.len());
        for (word, v) in json {
            let rank = v.as_u64().filter(|&r| r > 0).ok_or_else(|| DataError::Json {
                path: path.to_path_buf(),
                message: format!("the rank of {word:?} should be a positive integer, found {v}"),
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
    /// Keep only the reviews shorter than this (counting the start mark): Keras'
    /// `len(x) < maxlen`; `None`: keep all.
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
        ImdbConfig { num_words: None, skip_top: 0, maxlen: None, start_char: Some(1), oov_char: Some(2), index_from: 3 }
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
///
/// When the folder has neither the TSV files nor `aclImdb/` but has Keras' `imdb.npz`,
/// [`Imdb::new`] reads that instead ([`Imdb::from_npz`]): its sequences are word ranks, which get
/// the same `start_char` / `index_from` / `maxlen` / `num_words` / `skip_top` / `oov_char`
/// treatment as in Keras' `load_data` (but no shuffle: the archive's order is kept).
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
    ///
    /// When neither text layout is there but `dir/imdb.npz` is, reads that ([`Imdb::from_npz`]).
    pub fn new(dir: impl AsRef<Path>, split: Split, config: &ImdbConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let reviews = match ImdbReviews::new(dir, split) {
            Ok(reviews) => reviews,
            Err(DataError::NotFound { .. }) if dir.join("imdb.npz").is_file() => {
                return Self::from_npz(dir.join("imdb.npz"), split, config);
            }
            Err(e) => return Err(e),
        };
        let index = WordIndex::load(find_file(dir, &["imdb_word_index.json"], "Keras' IMDB word index")?)?;
        Ok(Self::encode(&reviews, &index, config))
    }

    /// Reads `split` from Keras' `imdb.npz` (`x_train.npy`, `y_train.npy`, `x_test.npy`,
    /// `y_test.npy`; see [`crate::npy`] for the formats read) and applies Keras' `load_data`
    /// conventions to its word ranks: `[start_char] + [w + index_from for w in x]`, then `maxlen`,
    /// then `num_words` / `skip_top` with `oov_char`.
    ///
    /// The `x_*` member is a 1-D object array of integer lists (what Keras ships), or a 2-D
    /// integer array (one row per review, what `np.save` makes of equal-length lists); `y_*` a
    /// 1-D integer or boolean array of 0/1 labels.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when the file cannot be read, and the errors of [`Imdb::from_npz_archive`].
    pub fn from_npz(path: impl AsRef<Path>, split: Split, config: &ImdbConfig) -> Result<Self> {
        Self::from_npz_archive(&Npz::open(path)?, split, config)
    }

    /// [`Imdb::from_npz`] on an archive already opened (e.g. with [`Npz::from_bytes`]).
    ///
    /// # Errors
    ///
    /// [`DataError::InvalidArgument`] for [`Split::Valid`]; [`DataError::MissingMember`] when a
    /// member is missing; the zip, `.npy` and pickle errors of [`Npz::array`]; a
    /// [`DataError::Format`] naming `imdb.npz[member]` for a wrong dtype or shape, a negative word
    /// id or a label other than 0/1; [`DataError::CountMismatch`] when `x` and `y` disagree.
    pub fn from_npz_archive(npz: &Npz, split: Split, config: &ImdbConfig) -> Result<Self> {
        if split == Split::Valid {
            return Err(DataError::InvalidArgument("IMDB has no validation split; use random_split".into()));
        }
        let (x_name, y_name) = (format!("x_{}.npy", split.name()), format!("y_{}.npy", split.name()));
        let x = npz.array(&x_name)?;
        let y = npz.array(&y_name)?;
        let x_path = member_path(npz.path(), &x_name);
        let y_path = member_path(npz.path(), &y_name);
        let labels = match (y.to_i64(), y.shape.as_slice()) {
            (Some(labels), [_]) => labels,
            _ => {
                return Err(DataError::format(
                    &y_path,
                    0,
                    "a 1-D integer array of labels",
                    format!("dtype {:?} with shape {:?}", y.descr, y.shape),
                ))
            }
        };
        let wrong_x = |x: &NpyArray| {
            DataError::format(
                &x_path,
                0,
                "a 1-D object array of integer lists, or a 2-D integer array",
                format!("dtype {:?} with shape {:?}", x.descr, x.shape),
            )
        };
        let rows = match (&x.data, x.shape.as_slice()) {
            (NpyData::Sequences(_), &[rows]) => rows,
            (NpyData::Bool(_) | NpyData::Int(_) | NpyData::UInt(_), &[rows, _]) => rows,
            _ => return Err(wrong_x(&x)),
        };
        // Before building any row: a forged shape like (2^40, 0) has no data bytes to refute it,
        // but the labels (which do take bytes) must agree with it.
        if rows != labels.len() {
            return Err(DataError::CountMismatch {
                what: "reviews".into(),
                left_path: x_path,
                left: rows as u64,
                right_path: y_path,
                right: labels.len() as u64,
            });
        }
        let raw: Vec<Vec<i64>> = match x.shape.as_slice() {
            &[rows, cols] => {
                let flat = x.to_i64().ok_or_else(|| wrong_x(&x))?;
                (0..rows)
                    .map(|r| {
                        (0..cols).map(|c| flat[if x.fortran_order { c * rows + r } else { r * cols + c }]).collect()
                    })
                    .collect()
            }
            _ => match x.data {
                NpyData::Sequences(items) => items,
                _ => unreachable!("checked above"),
            },
        };
        if let Some(i) = labels.iter().position(|&l| l != 0 && l != 1) {
            return Err(DataError::format(
                &y_path,
                y.data_offset,
                "labels 0 or 1",
                format!("{} at index {i}", labels[i]),
            ));
        }
        let mut sequences = Vec::with_capacity(raw.len());
        let mut kept = Vec::with_capacity(raw.len());
        for (k, (words, &label)) in raw.iter().zip(&labels).enumerate() {
            let mut seq: Vec<usize> = Vec::with_capacity(words.len() + 1);
            seq.extend(config.start_char);
            for (j, &w) in words.iter().enumerate() {
                let id = usize::try_from(w).ok().and_then(|w| w.checked_add(config.index_from)).ok_or_else(|| {
                    DataError::format(
                        &x_path,
                        x.data_offset,
                        "non-negative word ranks",
                        format!("{w} at review {k}, position {j}"),
                    )
                })?;
                seq.push(id);
            }
            if let Some(seq) = keras_filter(seq, config) {
                sequences.push(seq);
                kept.push(label as usize);
            }
        }
        Ok(Imdb { sequences, labels: kept })
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
            if let Some(seq) = keras_filter(seq, config) {
                sequences.push(seq);
                labels.push(label as usize);
            }
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

/// Keras' `load_data` after the start mark and `index_from` shift: drop a sequence that is not
/// shorter than `maxlen` (`None` when dropped), then map the ids outside
/// `skip_top..num_words` to `oov_char` (or drop them when there is none).
fn keras_filter(seq: Vec<usize>, config: &ImdbConfig) -> Option<Vec<usize>> {
    if config.maxlen.is_some_and(|m| seq.len() >= m) {
        return None;
    }
    let keep = |w: usize| config.skip_top <= w && config.num_words.is_none_or(|n| w < n);
    Some(match config.oov_char {
        Some(oov) => seq.into_iter().map(|w| if keep(w) { w } else { oov }).collect(),
        None => seq.into_iter().filter(|&w| keep(w)).collect(),
    })
}

impl Dataset for Imdb {
    type Item = (Vec<usize>, usize);
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Vec<usize>, usize) {
        assert!(index < self.len(), "Imdb: index {index} out of range for {} reviews", self.len());
        (self.sequences[index].clone(), self.labels[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{gzip, real_data, TempDir};

    fn small_index() -> WordIndex {
        let ranks = [("the", 1), ("movie", 2), ("was", 3), ("great", 4)];
        WordIndex { ranks: ranks.iter().map(|&(w, r)| (w.to_string(), r)).collect() }
    }

    #[test]
    fn keras_conventions() {
        let reviews =
            ImdbReviews { texts: vec!["The movie was GREAT!".into(), "the unknownword".into()], labels: vec![1, 0] };
        let idx = small_index();
        let all = Imdb::encode(&reviews, &idx, &ImdbConfig::default());
        assert_eq!(all.sequences(), &[vec![1, 4, 5, 6, 7], vec![1, 4, 2]]);
        let limited =
            Imdb::encode(&reviews, &idx, &ImdbConfig { num_words: Some(6), skip_top: 0, ..Default::default() });
        assert_eq!(limited.sequences()[0], vec![1, 4, 5, 2, 2]);
        let skipped = Imdb::encode(&reviews, &idx, &ImdbConfig { skip_top: 5, ..Default::default() });
        assert_eq!(skipped.sequences()[0], vec![2, 2, 5, 6, 7]);
        // Keras keeps `len(x) < maxlen`: the 3-id review survives maxlen 4, not maxlen 3.
        let short = Imdb::encode(&reviews, &idx, &ImdbConfig { maxlen: Some(4), ..Default::default() });
        assert_eq!((short.len(), short.labels()), (1, &[0][..]));
        let none = Imdb::encode(&reviews, &idx, &ImdbConfig { maxlen: Some(3), ..Default::default() });
        assert_eq!(none.len(), 0);
        let bare = Imdb::encode(
            &reviews,
            &idx,
            &ImdbConfig { start_char: None, oov_char: None, index_from: 0, ..Default::default() },
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
        assert!(matches!(ImdbReviews::from_tsv(&p), Err(DataError::Parse { line: 2, column: 1, .. })));
        let p = dir.write("bad2.tsv", b"no tab here\n");
        assert!(matches!(ImdbReviews::from_tsv(&p), Err(DataError::Parse { line: 1, .. })));
        let p = dir.write("idx.json", b"{\"a\": -1}");
        assert!(matches!(WordIndex::load(&p), Err(DataError::Json { .. })));
    }

    #[test]
    fn real_imdb_test_split() {
        let Some(dir) = real_data("imdb") else { return };
        let cfg = ImdbConfig { num_words: Some(10_000), ..Default::default() };
        let ds = Imdb::new(&dir, Split::Test, &cfg).unwrap();
        assert_eq!(ds.len(), 25_000);
        assert_eq!(ds.labels().iter().filter(|&&l| l == 1).count(), 12_500);
        assert_eq!(&ds.labels()[..4], &[1, 0, 1, 0]);
        assert!(ds.sequences().iter().all(|s| s[0] == 1 && s.iter().all(|&w| w < 10_000)));
        let idx = WordIndex::load(dir.join("imdb_word_index.json")).unwrap();
        assert_eq!((idx.len(), idx.rank("the"), idx.rank("and")), (88_584, Some(1), Some(2)));
        // test/neg/0_2.txt (row 1) starts "Once again Mr. Costner has dragged out a movie".
        let once = idx.rank("once").unwrap() + 3;
        assert_eq!(ds.sequences()[1][1], once);
        let oov = ds.sequences().iter().flatten().filter(|&&w| w == 2).count();
        let total: usize = ds.sequences().iter().map(Vec::len).sum();
        eprintln!("IMDB test: {} reviews, {total} tokens, {oov} OOV with num_words=10000", ds.len());
    }
}
