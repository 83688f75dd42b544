//! Penn Treebank, word level (Mikolov's language-modelling version).

use std::path::Path;

use super::{data_dir, Split};
use crate::error::{DataError, Result};
use crate::io::{find_file, read_text};
use crate::text::Vocab;

/// The Penn Treebank language-modelling corpus: `ptb.{train,valid,test}.txt`, one sentence per
/// line, already lower-cased with rare words as `<unk>`.
///
/// As PyTorch's `word_language_model` example: each line's words are followed by `<eos>`, and the
/// vocabulary is built from the training file in order of first appearance (10,000 words). Words
/// of the validation and test files missing from it map to `<unk>`.
///
/// ```no_run
/// use kiln_data::datasets::{PennTreebank, Split};
/// let ptb = PennTreebank::from_data_dir()?;
/// let streams = ptb.batchify(Split::Train, 20);
/// for (inputs, targets) in streams.bptt_batches(35) { /* [20, <=35] each */ }
/// # Ok::<(), kiln_data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PennTreebank {
    vocab: Vocab,
    train: Vec<usize>,
    valid: Vec<usize>,
    test: Vec<usize>,
}

impl PennTreebank {
    /// Reads the three files from `dir` (each plain or `.gz`).
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] for a missing file; [`DataError::Parse`] (line and word position)
    /// for a word of the validation or test file missing from the training vocabulary when that has
    /// no `<unk>`; the I/O, gzip and UTF-8 errors of the files.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut vocab = Vocab::default();
        let train = tokenize(dir, Split::Train, &mut vocab, true)?;
        vocab.set_unk_index(vocab.get("<unk>"));
        let valid = tokenize(dir, Split::Valid, &mut vocab, false)?;
        let test = tokenize(dir, Split::Test, &mut vocab, false)?;
        Ok(PennTreebank { vocab, train, valid, test })
    }

    /// Reads `data_dir()/ptb`.
    ///
    /// # Errors
    ///
    /// As [`PennTreebank::new`].
    pub fn from_data_dir() -> Result<Self> {
        Self::new(data_dir().join("ptb"))
    }

    /// The vocabulary (from the training file, `<eos>` included).
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The token indices of `split`, one stream.
    pub fn tokens(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    /// `split` cut into `batch_size` parallel streams (see [`TokenStreams::new`]).
    ///
    /// **Panics** if `batch_size == 0`.
    pub fn batchify(&self, split: Split, batch_size: usize) -> TokenStreams {
        TokenStreams::new(self.tokens(split), batch_size)
    }
}

fn tokenize(dir: &Path, split: Split, vocab: &mut Vocab, grow: bool) -> Result<Vec<usize>> {
    let name = format!("ptb.{}.txt", split.name());
    let path = find_file(dir, &[&name], "Penn Treebank text")?;
    let text = read_text(&path)?;
    if text.trim().is_empty() {
        return Err(DataError::format(&path, 0, "Penn Treebank text (words separated by spaces)", "an empty file"));
    }
    let mut ids = Vec::with_capacity(text.len() / 5);
    for (i, line) in text.lines().enumerate() {
        for (k, word) in line.split_whitespace().chain(std::iter::once("<eos>")).enumerate() {
            let id = if grow {
                vocab.add(word)
            } else {
                vocab.get(word).or(vocab.unk_index()).ok_or_else(|| DataError::Parse {
                    path: path.clone(),
                    line: i as u64 + 1,
                    column: k as u64 + 1,
                    expected: "a word of the training vocabulary (which has no <unk>)".into(),
                    found: word.into(),
                })?
            };
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A token stream cut into `batch_size` equal parallel streams (the tail that does not fill a
/// column is dropped), as `batchify` in PyTorch's `word_language_model` example; stored
/// row-major `[batch_size, steps]` (stream `b` is row `b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStreams {
    data: Vec<usize>,
    batch_size: usize,
    steps: usize,
}

impl TokenStreams {
    /// Cuts `tokens` into `batch_size` consecutive streams of `tokens.len() / batch_size` tokens.
    ///
    /// **Panics** if `batch_size == 0`.
    pub fn new(tokens: &[usize], batch_size: usize) -> Self {
        assert!(batch_size > 0, "TokenStreams: batch_size must be > 0, got 0");
        let steps = tokens.len() / batch_size;
        TokenStreams { data: tokens[..steps * batch_size].to_vec(), batch_size, steps }
    }

    /// Number of parallel streams.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Tokens per stream.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The streams, row-major `[batch_size, steps]`.
    pub fn data(&self) -> &[usize] {
        &self.data
    }

    /// Number of `(inputs, targets)` windows of [`TokenStreams::bptt_batches`] with this `bptt`.
    pub fn num_windows(&self, bptt: usize) -> usize {
        self.steps.saturating_sub(1).div_ceil(bptt.max(1))
    }

    /// Consecutive windows of up to `bptt` steps: `(inputs, targets)`, each row-major
    /// `[batch_size, len]`, the targets being the inputs shifted one step ahead. The last window
    /// may be shorter.
    ///
    /// **Panics** if `bptt == 0`.
    pub fn bptt_batches(&self, bptt: usize) -> impl ExactSizeIterator<Item = (Vec<usize>, Vec<usize>)> + '_ {
        assert!(bptt > 0, "TokenStreams::bptt_batches: bptt must be > 0, got 0");
        (0..self.num_windows(bptt)).map(move |w| {
            let start = w * bptt;
            let len = bptt.min(self.steps - 1 - start);
            let mut inputs = Vec::with_capacity(self.batch_size * len);
            let mut targets = Vec::with_capacity(self.batch_size * len);
            for b in 0..self.batch_size {
                let row = &self.data[b * self.steps..(b + 1) * self.steps];
                inputs.extend_from_slice(&row[start..start + len]);
                targets.extend_from_slice(&row[start + 1..start + 1 + len]);
            }
            (inputs, targets)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{real_data, TempDir};

    #[test]
    fn vocab_from_train_and_batchify() {
        let dir = TempDir::new("ptb");
        dir.write("ptb.train.txt", b" a b <unk>\n b c\n");
        dir.write("ptb.valid.txt", b" c zzz\n");
        dir.write("ptb.test.txt", b" a\n");
        let ptb = PennTreebank::new(&dir.0).unwrap();
        assert_eq!(ptb.vocab().tokens(), &["a", "b", "<unk>", "<eos>", "c"]);
        assert_eq!(ptb.tokens(Split::Train), &[0, 1, 2, 3, 1, 4, 3]);
        assert_eq!(ptb.tokens(Split::Valid), &[4, 2, 3]);
        let s = TokenStreams::new(&(0..11).collect::<Vec<_>>(), 2);
        assert_eq!((s.steps(), s.data()), (5, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9][..]));
        let windows: Vec<_> = s.bptt_batches(3).collect();
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0], (vec![0, 1, 2, 5, 6, 7], vec![1, 2, 3, 6, 7, 8]));
        assert_eq!(windows[1], (vec![3, 8], vec![4, 9]));
        dir.write("ptb.train.txt", b" a\n");
        assert!(matches!(PennTreebank::new(&dir.0), Err(DataError::Parse { line: 1, column: 1, .. })));
    }

    #[test]
    fn real_ptb() {
        let Some(dir) = real_data("ptb") else { return };
        let ptb = PennTreebank::new(&dir).unwrap();
        assert_eq!(ptb.vocab().len(), 10_000);
        let counts = [Split::Train, Split::Valid, Split::Test].map(|s| ptb.tokens(s).len());
        assert_eq!(counts, [929_589, 73_760, 82_430]);
        assert_eq!(ptb.vocab().token(ptb.tokens(Split::Train)[0]), "aer");
        let streams = ptb.batchify(Split::Train, 20);
        assert_eq!(streams.steps(), 929_589 / 20);
        let (x, y) = streams.bptt_batches(35).next().unwrap();
        assert_eq!((x.len(), y.len()), (700, 700));
        eprintln!("PTB: {counts:?} tokens, vocabulary {}", ptb.vocab().len());
    }
}
