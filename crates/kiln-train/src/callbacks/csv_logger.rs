//! [`CsvLogger`]: one CSV row of figures per epoch.

use std::path::PathBuf;

use kiln_nn::Module;

use super::{Callback, EpochContext};
use crate::checkpoint::write_atomic;

/// Writes the epoch logs to a CSV file, one row per epoch, like Keras' `CSVLogger`.
///
/// The header is `epoch` followed by the first epoch's log keys in sorted order (`loss`, `lr`,
/// `time_s`, `val_loss`, metrics); `epoch` is 0-based, as Keras writes it; a key missing from a
/// later epoch is written as `NA`. Numbers use Rust's shortest round-trip form.
///
/// The file is rewritten atomically after every epoch (temporary file, fsync, rename), so it
/// is always complete. With [`append`](Self::append), the rows of an existing file are kept
/// and the new ones follow them without a second header (for resumed runs).
///
/// **Panics** (ending `fit`) when the file cannot be written.
///
/// ```
/// use kiln_train::callbacks::CsvLogger;
/// let logger = CsvLogger::new("runs/log.csv").separator(';').append(true);
/// # let _ = logger;
/// ```
pub struct CsvLogger {
    path: PathBuf,
    separator: char,
    append: bool,
    keys: Option<Vec<String>>,
    content: String,
}

impl CsvLogger {
    /// Logs to `path`, comma-separated, replacing any existing file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CsvLogger { path: path.into(), separator: ',', append: false, keys: None, content: String::new() }
    }

    /// The field separator (default `,`).
    #[must_use]
    pub fn separator(mut self, separator: char) -> Self {
        self.separator = separator;
        self
    }

    /// Keep an existing file's rows and add to them (default false).
    #[must_use]
    pub fn append(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    fn field(&self, s: &str) -> String {
        if s.contains(self.separator) || s.contains('"') || s.contains('\n') {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
}

impl Callback for CsvLogger {
    fn on_train_begin(&mut self, _model: &dyn Module<f32>) {
        self.keys = None;
        self.content.clear();
        if self.append {
            match std::fs::read_to_string(&self.path) {
                Ok(s) => {
                    self.content = s;
                    if !self.content.is_empty() && !self.content.ends_with('\n') {
                        self.content.push('\n');
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("CsvLogger: {}: {e}", self.path.display()),
            }
        }
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        let sep = self.separator.to_string();
        if self.keys.is_none() {
            let keys: Vec<String> = ctx.logs.keys().cloned().collect();
            if self.content.is_empty() {
                let header: Vec<String> =
                    std::iter::once("epoch".to_string()).chain(keys.iter().map(|k| self.field(k))).collect();
                self.content.push_str(&header.join(&sep));
                self.content.push('\n');
            }
            self.keys = Some(keys);
        }
        let keys = self.keys.as_ref().expect("set above");
        let row: Vec<String> = std::iter::once(ctx.epoch.to_string())
            .chain(keys.iter().map(|k| ctx.logs.get(k).map_or_else(|| "NA".to_string(), |v| v.to_string())))
            .collect();
        self.content.push_str(&row.join(&sep));
        self.content.push('\n');
        write_atomic(&self.path, self.content.as_bytes()).unwrap_or_else(|e| panic!("CsvLogger: {e}"));
    }
}
