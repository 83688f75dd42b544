//! Token attributions for text: `(token, score)` lists and their printed form.

use std::fmt;

use kiln_tensor::Float;

use crate::segments::Segmented;

/// Tokens with their attribution scores, in text order.
///
/// `Display` prints one token per line with its signed score and a bar (`+` pushes the
/// explained output up, `-` down); [`inline`](TokenScores::inline) gives the text on one line
/// with the scores in brackets.
///
/// ```
/// use kiln_explain::TokenScores;
/// let s = TokenScores::new(vec![("great".into(), 0.8), ("plot".into(), -0.2)]);
/// assert_eq!(s.top(1)[0].0, "great");
/// assert_eq!(s.inline(), "great[+0.800] plot[-0.200]");
/// let printed = s.to_string();
/// assert!(printed.contains("great") && printed.contains("+0.8000"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScores {
    /// `(token, score)` pairs in text order.
    pub tokens: Vec<(String, f64)>,
}

impl TokenScores {
    /// From `(token, score)` pairs in text order.
    pub fn new(tokens: Vec<(String, f64)>) -> Self {
        TokenScores { tokens }
    }

    /// The scores of a text input's tokens (the segments of [`Segmented::text`]), named by
    /// `vocab` (an id → word lookup); padding tokens are left out.
    ///
    /// **Panics** if `values` has not one score per segment.
    pub fn from_segments<E: Float>(input: &Segmented<E>, values: &[f64], vocab: impl Fn(usize) -> String) -> Self {
        let seg = input.segments();
        assert_eq!(values.len(), seg.len(), "TokenScores: {} values for {} tokens", values.len(), seg.len());
        let ids = input.token_ids();
        let tokens = (0..seg.numel()).filter_map(|i| seg.label(i).map(|s| (vocab(ids[i]), values[s]))).collect();
        TokenScores { tokens }
    }

    /// The `k` tokens with the largest absolute scores, largest first.
    pub fn top(&self, k: usize) -> Vec<(String, f64)> {
        let mut v = self.tokens.clone();
        v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        v.truncate(k);
        v
    }

    /// The text on one line, each token followed by its score: `great[+0.800] plot[-0.200]`.
    pub fn inline(&self) -> String {
        self.tokens.iter().map(|(t, s)| format!("{t}[{s:+.3}]")).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Display for TokenScores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BAR: usize = 20;
        let width = self.tokens.iter().map(|(t, _)| t.chars().count()).max().unwrap_or(0);
        let max = self.tokens.iter().map(|(_, s)| s.abs()).fold(0.0f64, f64::max);
        for (t, s) in &self.tokens {
            let n = if max > 0.0 { (s.abs() / max * BAR as f64).round() as usize } else { 0 };
            let bar = if *s >= 0.0 { "+".repeat(n) } else { "-".repeat(n) };
            writeln!(f, "{t:<width$}  {s:+.4}  {bar}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_segments_names_tokens_and_skips_padding() {
        let input: Segmented<f32> = Segmented::text(&[3, 5, 0, 0], 1, Some(0));
        let vocab = |id: usize| ["<pad>", "<unk>", "a", "good", "b", "film"][id].to_string();
        let s = TokenScores::from_segments(&input, &[0.5, -0.25], vocab);
        assert_eq!(s.tokens, vec![("good".to_string(), 0.5), ("film".to_string(), -0.25)]);
        assert_eq!(s.to_string(), "good  +0.5000  ++++++++++++++++++++\nfilm  -0.2500  ----------\n");
    }
}
