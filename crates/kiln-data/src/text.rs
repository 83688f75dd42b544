//! Text utilities: tokenizers, a [`Vocab`], Keras-style [`pad_sequences`] and a padding
//! collate step for token sequences.

use std::collections::HashMap;

use crate::dataloader::Collate;

/// torchtext's `basic_english` tokenizer: lower-cases, drops `"`, `;`, `:` and `<br />`, puts
/// spaces around `'`, `.`, `,`, `(`, `)`, `!`, `?`, then splits on whitespace.
///
/// ```
/// assert_eq!(kiln_data::text::basic_english("Hello, World!<br />It's"),
///            vec!["hello", ",", "world", "!", "it", "'", "s"]);
/// ```
#[must_use]
pub fn basic_english(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace("<br />", " ");
    let mut out = String::with_capacity(lower.len() + 16);
    for ch in lower.chars() {
        match ch {
            '\'' | '.' | ',' | '(' | ')' | '!' | '?' => {
                out.push(' ');
                out.push(ch);
                out.push(' ');
            }
            '"' => {}
            ';' | ':' => out.push(' '),
            c => out.push(c),
        }
    }
    out.split_whitespace().map(String::from).collect()
}

/// The characters Keras' `text_to_word_sequence` replaces by spaces (its default `filters`).
const KERAS_FILTERS: &str = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n";

/// Keras' `text_to_word_sequence` with its defaults: lower-cases, turns the filter characters
/// ``!"#$%&()*+,-./:;<=>?@[\]^_`{|}~`` (and tab, newline) into spaces, splits on spaces. This is
/// the tokenisation behind Keras' IMDB word index (apostrophes stay inside words).
///
/// ```
/// assert_eq!(kiln_data::text::keras_tokenize("Don't STOP.<br />Now"), vec!["don't", "stop", "br", "now"]);
/// ```
#[must_use]
pub fn keras_tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| if KERAS_FILTERS.contains(c) { ' ' } else { c })
        .collect::<String>()
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// A vocabulary: token ↔ index, with special tokens first and an optional index for unknown
/// tokens, like torchtext's `build_vocab_from_iterator`.
///
/// ```
/// use kiln_data::text::Vocab;
/// let docs = vec![vec!["a", "b", "a"], vec!["c", "a", "b"]];
/// let vocab = Vocab::builder().specials(&["<unk>", "<pad>"]).min_freq(2).build(docs);
/// assert_eq!(vocab.tokens(), &["<unk>", "<pad>", "a", "b"]);
/// assert_eq!(vocab.index("c"), 0); // unknown -> "<unk>"
/// ```
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, usize>,
    unk: Option<usize>,
}

/// Options of [`Vocab::builder`].
#[derive(Clone, Debug)]
pub struct VocabBuilder {
    min_freq: usize,
    max_size: Option<usize>,
    specials: Vec<String>,
    unk: Option<String>,
}

impl Vocab {
    /// Options for building a vocabulary from token counts: `min_freq` 1, no size limit, no
    /// specials; `"<unk>"` becomes the unknown index when it is among the specials.
    pub fn builder() -> VocabBuilder {
        VocabBuilder { min_freq: 1, max_size: None, specials: Vec::new(), unk: Some("<unk>".into()) }
    }

    /// A vocabulary of `tokens` in order of first appearance (duplicates ignored), with
    /// `unk` (if given and present) as the index of unknown tokens.
    pub fn from_tokens<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>, unk: Option<&str>) -> Self {
        let mut v = Vocab::default();
        for t in tokens {
            v.add(t.as_ref());
        }
        v.unk = unk.and_then(|u| v.get(u));
        v
    }

    /// Adds `token` if new; returns its index.
    pub fn add(&mut self, token: &str) -> usize {
        if let Some(&i) = self.index.get(token) {
            return i;
        }
        let i = self.tokens.len();
        self.tokens.push(token.to_string());
        self.index.insert(token.to_string(), i);
        i
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The index of `token`, if known.
    pub fn get(&self, token: &str) -> Option<usize> {
        self.index.get(token).copied()
    }

    /// The index of `token`, or the unknown index.
    ///
    /// **Panics** if the token is unknown and there is no unknown index.
    pub fn index(&self, token: &str) -> usize {
        self.get(token)
            .or(self.unk)
            .unwrap_or_else(|| panic!("Vocab: token {token:?} is not in the vocabulary and there is no unknown index"))
    }

    /// The indices of `tokens` (unknown ones mapped to the unknown index).
    ///
    /// **Panics** as [`Vocab::index`].
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<usize> {
        tokens.iter().map(|t| self.index(t.as_ref())).collect()
    }

    /// The token at `index`.
    ///
    /// **Panics** if out of range.
    pub fn token(&self, index: usize) -> &str {
        &self.tokens[index]
    }

    /// All tokens, in index order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The index used for unknown tokens.
    pub fn unk_index(&self) -> Option<usize> {
        self.unk
    }

    /// Sets (or clears) the index used for unknown tokens, like torchtext's `set_default_index`.
    pub fn set_unk_index(&mut self, index: Option<usize>) {
        self.unk = index;
    }
}

impl VocabBuilder {
    /// Drop tokens seen fewer than `min_freq` times.
    #[must_use]
    pub fn min_freq(mut self, min_freq: usize) -> Self {
        self.min_freq = min_freq;
        self
    }

    /// Keep at most `max_size` tokens besides the specials (the most frequent).
    #[must_use]
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = Some(max_size);
        self
    }

    /// Special tokens, placed first in this order.
    #[must_use]
    pub fn specials(mut self, specials: &[&str]) -> Self {
        self.specials = specials.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The token whose index unknown tokens get (default `"<unk>"`; `None` for none). It must be one
    /// of the specials or of the counted tokens to take effect.
    #[must_use]
    pub fn unk(mut self, unk: Option<&str>) -> Self {
        self.unk = unk.map(String::from);
        self
    }

    /// Counts the tokens of `docs` and builds the vocabulary: specials, then the other tokens by
    /// decreasing count, ties in lexicographic order (as torchtext).
    pub fn build<D, S>(self, docs: impl IntoIterator<Item = D>) -> Vocab
    where
        D: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for doc in docs {
            for t in doc {
                *counts.entry(t.as_ref().to_string()).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, usize)> =
            counts.into_iter().filter(|(t, c)| *c >= self.min_freq && !self.specials.contains(t)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if let Some(max) = self.max_size {
            ranked.truncate(max);
        }
        let mut v = Vocab::from_tokens(
            self.specials.iter().map(String::as_str).chain(ranked.iter().map(|(t, _)| t.as_str())),
            None,
        );
        v.unk = self.unk.as_deref().and_then(|u| v.get(u));
        v
    }
}

/// Where [`pad_sequences`] pads or truncates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Side {
    /// At the start (Keras' default `"pre"`).
    #[default]
    Pre,
    /// At the end (`"post"`).
    Post,
}

/// Keras' `pad_sequences`: makes every sequence `maxlen` long (default: the longest), padding
/// with `value` and cutting long ones, each at the chosen side (`Pre` by default in Keras, for
/// both). Returns the rows, each `maxlen` long.
///
/// ```
/// use kiln_data::text::{pad_sequences, Side};
/// let seqs = vec![vec![1, 2, 3], vec![4]];
/// assert_eq!(pad_sequences(&seqs, Some(2), Side::Pre, Side::Pre, 0), vec![vec![2, 3], vec![0, 4]]);
/// assert_eq!(pad_sequences(&seqs, None, Side::Post, Side::Post, 0), vec![vec![1, 2, 3], vec![4, 0, 0]]);
/// ```
#[must_use]
pub fn pad_sequences<T: Copy>(
    sequences: &[Vec<T>],
    maxlen: Option<usize>,
    padding: Side,
    truncating: Side,
    value: T,
) -> Vec<Vec<T>> {
    let maxlen = maxlen.unwrap_or_else(|| sequences.iter().map(Vec::len).max().unwrap_or(0));
    sequences
        .iter()
        .map(|s| {
            let kept: &[T] = if s.len() <= maxlen {
                s
            } else if truncating == Side::Pre {
                &s[s.len() - maxlen..]
            } else {
                &s[..maxlen]
            };
            let pad = std::iter::repeat_n(value, maxlen - kept.len());
            match padding {
                Side::Pre => pad.chain(kept.iter().copied()).collect(),
                Side::Post => kept.iter().copied().chain(pad).collect(),
            }
        })
        .collect()
}

/// A batch of token sequences padded to one length, with their class labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceBatch {
    /// Token indices, row-major `[batch, seq_len]`.
    pub tokens: Vec<usize>,
    /// `[batch, seq_len]`.
    pub shape: [usize; 2],
    /// Each sequence's length before padding (after truncation).
    pub lengths: Vec<usize>,
    /// The class labels.
    pub targets: Vec<usize>,
}

/// A collate step for `(tokens, label)` samples: pads (or cuts) with [`pad_sequences`] to
/// `maxlen` (or the longest in the batch).
#[derive(Clone, Copy, Debug)]
pub struct PadCollate {
    /// Target length (`None`: the batch's longest).
    pub maxlen: Option<usize>,
    /// Where to pad.
    pub padding: Side,
    /// Where to cut.
    pub truncating: Side,
    /// The padding index.
    pub pad_index: usize,
}

impl Default for PadCollate {
    fn default() -> Self {
        PadCollate { maxlen: None, padding: Side::Pre, truncating: Side::Pre, pad_index: 0 }
    }
}

impl Collate<(Vec<usize>, usize)> for PadCollate {
    type Batch = SequenceBatch;
    fn collate(&self, items: Vec<(Vec<usize>, usize)>) -> SequenceBatch {
        let (seqs, targets): (Vec<Vec<usize>>, Vec<usize>) = items.into_iter().unzip();
        let rows = pad_sequences(&seqs, self.maxlen, self.padding, self.truncating, self.pad_index);
        let len = rows.first().map_or(self.maxlen.unwrap_or(0), Vec::len);
        let lengths = seqs.iter().map(|s| s.len().min(len)).collect();
        SequenceBatch { shape: [rows.len(), len], tokens: rows.concat(), lengths, targets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_sequences_follows_keras() {
        let seqs = vec![vec![1, 2, 3, 4], vec![5, 6], vec![]];
        assert_eq!(
            pad_sequences(&seqs, Some(3), Side::Pre, Side::Post, 0),
            vec![vec![1, 2, 3], vec![0, 5, 6], vec![0, 0, 0]]
        );
        assert_eq!(
            pad_sequences(&seqs, Some(3), Side::Post, Side::Pre, 9),
            vec![vec![2, 3, 4], vec![5, 6, 9], vec![9, 9, 9]]
        );
        assert_eq!(pad_sequences::<u8>(&[], None, Side::Pre, Side::Pre, 0), Vec::<Vec<u8>>::new());
        let batch =
            PadCollate { maxlen: Some(3), ..Default::default() }.collate(vec![(vec![1, 2, 3, 4], 1), (vec![5], 0)]);
        assert_eq!(batch.tokens, vec![2, 3, 4, 0, 0, 5]);
        assert_eq!((batch.shape, batch.lengths, batch.targets), ([2, 3], vec![3, 1], vec![1, 0]));
    }

    #[test]
    fn vocab_orders_by_count_then_token_and_limits() {
        let docs = ["b a c a b a d"];
        let v = Vocab::builder().specials(&["<unk>"]).max_size(2).build(docs.iter().map(|d| d.split(' ')));
        assert_eq!(v.tokens(), &["<unk>", "a", "b"]);
        assert_eq!(v.encode(&["a", "zzz"]), vec![1, 0]);
        let no_unk = Vocab::builder().unk(None).build(vec![vec!["x"]]);
        assert_eq!(no_unk.get("y"), None);
        assert_eq!(keras_tokenize("a--b  c"), vec!["a", "b", "c"]);
        assert_eq!(basic_english("A (test); \"quoted\""), vec!["a", "(", "test", ")", "quoted"]);
    }
}
