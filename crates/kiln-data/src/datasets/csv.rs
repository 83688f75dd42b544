//! CSV tables: numeric feature columns and one target column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_tensor::Rng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::io::read_text;

/// Which column holds the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetColumn {
    /// The last column (the default).
    Last,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this header name (needs a header).
    Name(String),
}

/// How to read a CSV file.
#[derive(Clone, Debug)]
pub struct CsvOptions {
    /// Whether the first line is a header (default true).
    pub has_header: bool,
    /// The field separator (default `,`).
    pub delimiter: char,
    /// The target column (default the last one).
    pub target: TargetColumn,
    /// Class targets only: map the target column's distinct strings, sorted, to class indices
    /// 0, 1, ... instead of parsing integers (default false).
    pub categorical_target: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { has_header: true, delimiter: ',', target: TargetColumn::Last, categorical_target: false }
    }
}

/// A target type a CSV column can be parsed into: `usize` for classes, `f32` for regression.
pub trait CsvTarget: Clone + Send + Sync + Sized {
    /// What a valid cell looks like, for error messages.
    const EXPECTED: &'static str;
    /// Parses one cell.
    fn parse_cell(cell: &str) -> Option<Self>;
}

impl CsvTarget for usize {
    const EXPECTED: &'static str = "a non-negative integer class label";
    fn parse_cell(cell: &str) -> Option<usize> {
        cell.parse().ok()
    }
}

impl CsvTarget for f32 {
    const EXPECTED: &'static str = "a number";
    fn parse_cell(cell: &str) -> Option<f32> {
        cell.parse().ok()
    }
}

/// A table read from a CSV file: the numeric feature columns as `Vec<f32>` inputs and one target
/// column, `Y = usize` (class index) or `f32` (regression value). Items are `(features, target)`.
///
/// With a header, the column names come from it when it has as many fields as the rows (otherwise
/// it is skipped and the columns are named `column_K`, which reads scikit-learn's bundled tables).
/// The file may be gzip (`.gz`). Quoted fields (`"a,b"`, `""` for a quote) are understood within a
/// line; empty lines are skipped.
///
/// ```no_run
/// use kiln_data::datasets::{CsvDataset, CsvOptions};
/// let iris: CsvDataset<usize> = CsvDataset::new("iris.csv", CsvOptions::default())?;
/// # Ok::<(), kiln_data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct CsvDataset<Y = usize> {
    features: Vec<f32>,
    n_features: usize,
    targets: Vec<Y>,
    feature_names: Vec<String>,
    target_name: String,
    class_names: Option<Vec<String>>,
}

/// Splits one CSV line into fields, honouring double quotes.
fn split_fields(line: &str, delimiter: char) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == delimiter && !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

impl<Y: CsvTarget> CsvDataset<Y> {
    /// Reads `path`.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] / [`DataError::NotFound`] for the file, [`DataError::Parse`] (with line and
    /// column, both 1-based) for a cell that is not a number or a valid target, or a row with the
    /// wrong number of fields, and [`DataError::InvalidArgument`] for a target column that is not in
    /// the table.
    pub fn new(path: impl AsRef<Path>, options: CsvOptions) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(DataError::NotFound { path: path.to_path_buf(), what: "a CSV file".into() });
        }
        let text = read_text(path)?;
        Self::parse(path, &text, &options)
    }

    /// Parses CSV `text`; `path` is only used to name errors.
    ///
    /// # Errors
    ///
    /// As [`CsvDataset::new`].
    pub fn parse(path: &Path, text: &str, options: &CsvOptions) -> Result<Self> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let parse_err = |line: usize, column: usize, expected: &str, found: &str| DataError::Parse {
            path: PathBuf::from(path),
            line: line as u64 + 1,
            column: column as u64 + 1,
            expected: expected.to_string(),
            found: found.to_string(),
        };
        let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
        let header: Option<Vec<String>> = if options.has_header {
            lines
                .next()
                .map(|(_, l)| split_fields(l, options.delimiter).into_iter().map(|f| f.trim().to_string()).collect())
        } else {
            None
        };
        for (i, line) in lines {
            rows.push((i, split_fields(line, options.delimiter)));
        }
        // The width comes from the first data row; a header of another width (scikit-learn's
        // "n_samples,n_features,class names" first line) is skipped but not used for names.
        let width = match (rows.first(), &header) {
            (Some((_, r)), _) => r.len(),
            (None, Some(h)) => h.len(),
            (None, None) => 0,
        };
        let names: Vec<String> = match &header {
            Some(h) if h.len() == width => h.clone(),
            _ => (0..width).map(|k| format!("column_{k}")).collect(),
        };
        let target = match &options.target {
            TargetColumn::Last => width.checked_sub(1),
            TargetColumn::Index(k) => (*k < width).then_some(*k),
            TargetColumn::Name(name) => names.iter().position(|n| n == name),
        }
        .ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "{}: target column {:?} not found among {} columns {:?}",
                path.display(),
                options.target,
                width,
                names
            ))
        })?;
        let n_features = width - 1;
        let mut features = Vec::with_capacity(rows.len() * n_features);
        let mut targets = Vec::with_capacity(rows.len());
        let class_names = if options.categorical_target {
            let set: BTreeSet<&str> = rows.iter().filter_map(|(_, r)| r.get(target)).map(|s| s.trim()).collect();
            Some(set.into_iter().map(String::from).collect::<Vec<_>>())
        } else {
            None
        };
        for (line, fields) in &rows {
            if fields.len() != width {
                return Err(parse_err(
                    *line,
                    fields.len().min(width),
                    &format!("{width} fields"),
                    &format!("{} fields", fields.len()),
                ));
            }
            for (col, cell) in fields.iter().enumerate() {
                let cell = cell.trim();
                if col == target {
                    let y = match &class_names {
                        Some(classes) => {
                            let k = classes.iter().position(|c| c == cell).expect("collected above");
                            Y::parse_cell(&k.to_string())
                        }
                        None => Y::parse_cell(cell),
                    };
                    targets.push(y.ok_or_else(|| parse_err(*line, col, Y::EXPECTED, cell))?);
                } else {
                    let v: f32 = cell.parse().map_err(|_| parse_err(*line, col, "a number", cell))?;
                    features.push(v);
                }
            }
        }
        let target_name = names[target].clone();
        let feature_names = names.into_iter().enumerate().filter(|&(k, _)| k != target).map(|(_, n)| n).collect();
        Ok(CsvDataset { features, n_features, targets, feature_names, target_name, class_names })
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// All features, row-major `[len, n_features]`.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// All targets.
    pub fn targets(&self) -> &[Y] {
        &self.targets
    }

    /// The features of row `index`.
    ///
    /// **Panics** if `index >= len()`.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.features[index * self.n_features..(index + 1) * self.n_features]
    }

    /// The feature columns' names (from the header, or `column_K`).
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The target column's name.
    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// With [`CsvOptions::categorical_target`], the class names in index order.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }
}

impl<Y: CsvTarget> Dataset for CsvDataset<Y> {
    type Item = (Vec<f32>, Y);
    fn len(&self) -> usize {
        self.targets.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Vec<f32>, Y) {
        assert!(index < self.len(), "CsvDataset: index {index} out of range for {} rows", self.len());
        (self.row(index).to_vec(), self.targets[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{real_data, TempDir};

    #[test]
    fn parses_header_target_and_quotes() {
        let text = "a,\"b,x\",label\n1,2,cat\n\n3,\"4\",dog\n";
        let opts = CsvOptions { categorical_target: true, ..Default::default() };
        let ds: CsvDataset<usize> = CsvDataset::parse(Path::new("t.csv"), text, &opts).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.feature_names(), &["a", "b,x"]);
        assert_eq!(ds.get(1), (vec![3.0, 4.0], 1));
        assert_eq!(ds.class_names().unwrap(), &["cat", "dog"]);
        let opts = CsvOptions { target: TargetColumn::Name("a".into()), ..Default::default() };
        let text = "a,b\n1.5,2\n";
        let reg: CsvDataset<f32> = CsvDataset::parse(Path::new("t.csv"), text, &opts).unwrap();
        assert_eq!(reg.get(0), (vec![2.0], 1.5));
        assert_eq!(reg.target_name(), "a");
    }

    #[test]
    fn bad_cell_names_line_and_column() {
        let dir = TempDir::new("csv");
        let p = dir.write("t.csv", b"x,y,label\n1,2,0\n3,oops,1\n");
        let err = CsvDataset::<usize>::new(&p, CsvOptions::default()).unwrap_err();
        match &err {
            DataError::Parse { line: 3, column: 2, found, .. } => assert_eq!(found, "oops"),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("t.csv: line 3, column 2"), "{err}");
        let p = dir.write("u.csv", b"x,label\n1,2\n3,-1\n");
        assert!(matches!(
            CsvDataset::<usize>::new(&p, CsvOptions::default()),
            Err(DataError::Parse { line: 3, column: 2, .. })
        ));
        let p = dir.write("v.csv", b"x,label\n1,2\n3\n");
        assert!(matches!(CsvDataset::<usize>::new(&p, CsvOptions::default()), Err(DataError::Parse { line: 3, .. })));
        let opts = CsvOptions { target: TargetColumn::Name("nope".into()), ..Default::default() };
        assert!(matches!(CsvDataset::<usize>::new(&p, opts), Err(DataError::InvalidArgument(_))));
    }

    #[test]
    fn real_sklearn_tables() {
        let Some(dir) = real_data("sklearn-small") else {
            return;
        };
        // scikit-learn's files start with "n_samples,n_features,class names", read here as a header.
        let iris: CsvDataset<usize> = CsvDataset::new(dir.join("iris.csv"), CsvOptions::default()).unwrap();
        assert_eq!((iris.len(), iris.n_features()), (150, 4));
        assert_eq!(iris.get(0), (vec![5.1, 3.5, 1.4, 0.2], 0));
        let wine: CsvDataset<usize> = CsvDataset::new(dir.join("wine_data.csv"), CsvOptions::default()).unwrap();
        assert_eq!((wine.len(), wine.n_features()), (178, 13));
        let cancer: CsvDataset<usize> = CsvDataset::new(dir.join("breast_cancer.csv"), CsvOptions::default()).unwrap();
        assert_eq!((cancer.len(), cancer.n_features()), (569, 30));
        assert_eq!(cancer.targets().iter().filter(|&&y| y == 0).count(), 212);
    }
}
