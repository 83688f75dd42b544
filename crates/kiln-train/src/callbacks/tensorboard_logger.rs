//! [`TensorBoardLogger`]: scalars, histograms and images in TensorBoard's event-file format.
//!
//! The file is a TFRecord stream: each record is the data's length (u64, little-endian), the
//! masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data
//! (mask: `((crc >> 15) | (crc << 17)) + 0xa282ead8`). Each record's data is an `Event`
//! protobuf, with TensorFlow's field numbers (`tensorflow/core/util/event.proto`,
//! `tensorflow/core/framework/summary.proto`); the first one holds `file_version =
//! "brain.Event:2"`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_nn::{Module, TensorKind};

use super::{BatchContext, Callback, EpochContext, StepContext};
use crate::error::TrainError;
use crate::history::History;

/// TensorFlow's `Event` (the fields kiln writes).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// TensorFlow's `Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// TensorFlow's `Summary.Value` (one of `simple_value`, `image`, `histo` set).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "4")]
    image: Option<SummaryImage>,
    #[prost(message, optional, tag = "5")]
    histo: Option<HistogramProto>,
}

/// TensorFlow's `Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryImage {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// TensorFlow's `HistogramProto`: bucket `i` counts the values in
/// `(bucket_limit[i - 1], bucket_limit[i]]`.
#[derive(Clone, PartialEq, prost::Message)]
struct HistogramProto {
    #[prost(double, tag = "1")]
    min: f64,
    #[prost(double, tag = "2")]
    max: f64,
    #[prost(double, tag = "3")]
    num: f64,
    #[prost(double, tag = "4")]
    sum: f64,
    #[prost(double, tag = "5")]
    sum_squares: f64,
    #[prost(double, repeated, packed = "true", tag = "6")]
    bucket_limit: Vec<f64>,
    #[prost(double, repeated, packed = "true", tag = "7")]
    bucket: Vec<f64>,
}

/// TFRecord's masked CRC-32C.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, data, the data's masked CRC.
fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The host's name, for the event file's name (as TensorFlow names it), `localhost` when unknown.
fn hostname() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect::<String>())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A histogram of the finite values of `values` in `bins` equal-width buckets between their
/// minimum and maximum (one bucket when they are all equal); `None` when none is finite.
fn histogram(values: &[f32], bins: usize) -> Option<HistogramProto> {
    let v: Vec<f64> = values.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x)).collect();
    if v.is_empty() {
        return None;
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum = v.iter().sum();
    let sum_squares = v.iter().map(|x| x * x).sum();
    let bins = if max > min { bins.max(1) } else { 1 };
    let width = (max - min) / bins as f64;
    let mut bucket_limit: Vec<f64> = (1..=bins).map(|i| min + width * i as f64).collect();
    bucket_limit[bins - 1] = max;
    let mut bucket = vec![0.0; bins];
    for &x in &v {
        // Bucket i holds (limit[i - 1], limit[i]]: the first limit >= x.
        let i = bucket_limit.partition_point(|&l| l < x).min(bins - 1);
        bucket[i] += 1.0;
    }
    Some(HistogramProto { min, max, num: v.len() as f64, sum, sum_squares, bucket_limit, bucket })
}

/// Width, height and TensorBoard colorspace (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) of a PNG
/// image, read from its IHDR chunk.
fn png_header(png: &[u8]) -> Result<(u32, u32, i32), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 26 || &png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return Err(format!(
            "not a PNG image: expected the PNG signature and an IHDR chunk in the first 26 bytes, found {:?}",
            &png[..png.len().min(16)]
        ));
    }
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    let colorspace = match png[25] {
        0 => 1,
        4 => 2,
        2 | 3 => 3,
        6 => 4,
        other => return Err(format!("PNG IHDR at offset 25: colour type {other} is not one of 0, 2, 3, 4, 6")),
    };
    if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
        return Err(format!("PNG IHDR at offset 16: invalid size {width}x{height}"));
    }
    Ok((width, height, colorspace))
}

/// The open event file.
struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    fn write(&mut self, event: &Event) -> Result<(), TrainError> {
        let data = prost::Message::encode_to_vec(event);
        self.out.write_all(&tfrecord(&data)).map_err(|e| TrainError::io(&self.path, e))
    }

    fn summary(&mut self, step: i64, values: Vec<SummaryValue>) -> Result<(), TrainError> {
        let event =
            Event { wall_time: wall_time(), step, file_version: None, summary: Some(Summary { value: values }) };
        self.write(&event)
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))?;
        self.out.get_ref().sync_data().map_err(|e| TrainError::io(&self.path, e))
    }
}

fn value(tag: &str) -> SummaryValue {
    SummaryValue { tag: tag.to_string(), simple_value: None, image: None, histo: None }
}

/// Logs training to a TensorBoard event file, like Keras' `TensorBoard` callback and
/// PyTorch's `SummaryWriter`; view it with `tensorboard --logdir runs/`.
///
/// [`new`](Self::new) creates the folder and an `events.out.tfevents.<unix time>.<hostname>`
/// file in it (with a `.1`, `.2`, ... suffix if that name is taken). As a callback it writes:
///
/// - every figure of the epoch logs (`loss`, each metric, `val_*`, `lr`, `time_s`) as a scalar
///   with the log's key as tag and the 0-based epoch as step, so the values read back are the
///   [`History`]'s (as `f32`, the event format's type);
/// - with [`batch_loss_every`](Self::batch_loss_every)`(n)`, each `n`-th batch's loss as
///   `batch_loss`, its step the count of batches since the start of `fit` (0-based);
/// - unless [`histograms`](Self::histograms)`(false)`, per epoch, a histogram of every
///   parameter (`parameters/<name>`, after the epoch) and of its gradient (`gradients/<name>`,
///   as accumulated before the epoch's last optimiser step, before clipping), `bins`
///   equal-width buckets between the finite values' minimum and maximum.
///
/// The file is flushed to disk at the end of every epoch and of training. The logger is a
/// handle: clones write to the same file, so keep one to log images
/// ([`log_image`](Self::log_image), [`log_rgb`](Self::log_rgb)) or scalars of your own after
/// [`Trainer::callback`](crate::Trainer::callback) took the other.
///
/// **Panics** (ending `fit`) when the file cannot be written.
///
/// ```
/// use kiln_train::callbacks::TensorBoardLogger;
/// let dir = std::env::temp_dir().join(format!("kiln-tb-doc-{}", std::process::id()));
/// let logger = TensorBoardLogger::new(&dir).unwrap().batch_loss_every(10);
/// logger.log_scalar("accuracy", 0, 0.5).unwrap();
/// logger.flush().unwrap();
/// let file = logger.path();
/// assert!(file.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
/// // the first record is the file-version event: 8-byte length, 4-byte CRC, then the protobuf
/// let bytes = std::fs::read(&file).unwrap();
/// assert!(bytes.windows(13).any(|w| w == b"brain.Event:2"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct TensorBoardLogger {
    writer: Arc<Mutex<EventWriter>>,
    batch_every: usize,
    histograms: bool,
    bins: usize,
    global_batch: u64,
}

impl TensorBoardLogger {
    /// Creates `log_dir` (and its parents) and a new event file in it.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the folder or file that cannot be created or written.
    pub fn new(log_dir: impl AsRef<Path>) -> Result<Self, TrainError> {
        let dir = log_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let base = format!("events.out.tfevents.{secs}.{}", hostname());
        let mut n = 0usize;
        let (path, file) = loop {
            let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(TrainError::io(path, e)),
            }
        };
        let mut writer = EventWriter { path, out: BufWriter::new(file) };
        writer.write(&Event {
            wall_time: wall_time(),
            step: 0,
            file_version: Some("brain.Event:2".to_string()),
            summary: None,
        })?;
        writer.flush()?;
        Ok(TensorBoardLogger {
            writer: Arc::new(Mutex::new(writer)),
            batch_every: 0,
            histograms: true,
            bins: 30,
            global_batch: 0,
        })
    }

    /// Log the loss of every `n`-th batch as `batch_loss` (default 0: no batch losses).
    #[must_use]
    pub fn batch_loss_every(mut self, n: usize) -> Self {
        self.batch_every = n;
        self
    }

    /// Whether to log histograms of the parameters and gradients per epoch (default true).
    #[must_use]
    pub fn histograms(mut self, yes: bool) -> Self {
        self.histograms = yes;
        self
    }

    /// The number of histogram buckets (default 30, as `tf.summary.histogram`).
    ///
    /// **Panics** if `bins` is 0.
    #[must_use]
    pub fn bins(mut self, bins: usize) -> Self {
        assert!(bins > 0, "TensorBoardLogger: bins must be > 0, got 0");
        self.bins = bins;
        self
    }

    /// The event file being written.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> MutexGuard<'_, EventWriter> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one scalar (TensorBoard's `add_scalar`).
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be written.
    pub fn log_scalar(&self, tag: &str, step: i64, value: f64) -> Result<(), TrainError> {
        self.lock().summary(step, vec![SummaryValue { simple_value: Some(value as f32), ..self::value(tag) }])
    }

    /// Writes a histogram of the finite values of `values` (`add_histogram`); nothing when none
    /// is finite.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be written.
    pub fn log_histogram(&self, tag: &str, step: i64, values: &[f32]) -> Result<(), TrainError> {
        match histogram(values, self.bins) {
            Some(h) => self.lock().summary(step, vec![SummaryValue { histo: Some(h), ..value(tag) }]),
            None => Ok(()),
        }
    }

    /// Writes a PNG image (`add_image`), e.g. the file
    /// [`plot_confusion_matrix`](crate::plot_confusion_matrix) wrote; its size and colour type
    /// are read from its header.
    ///
    /// # Errors
    /// [`TrainError::Image`] when `png` is not a PNG image; [`TrainError::Io`] when the event
    /// file cannot be written.
    pub fn log_image(&self, tag: &str, step: i64, png: &[u8]) -> Result<(), TrainError> {
        let (width, height, colorspace) =
            png_header(png).map_err(|reason| TrainError::Image { tag: tag.to_string(), reason })?;
        let image =
            SummaryImage { height: height as i32, width: width as i32, colorspace, encoded_image_string: png.to_vec() };
        self.lock().summary(step, vec![SummaryValue { image: Some(image), ..value(tag) }])
    }

    /// Reads a PNG file and writes it as [`log_image`](Self::log_image) does.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file that cannot be read; as [`log_image`](Self::log_image).
    pub fn log_image_file(&self, tag: &str, step: i64, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let path = path.as_ref();
        let png = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        self.log_image(tag, step, &png).map_err(|e| match e {
            TrainError::Image { tag, reason } => {
                TrainError::Image { tag, reason: format!("{}: {reason}", path.display()) }
            }
            other => other,
        })
    }

    /// Encodes `width * height` RGB pixels (row-major, 3 bytes each) as PNG and writes them as
    /// [`log_image`](Self::log_image) does.
    ///
    /// **Panics** if `rgb` does not hold `width * height * 3` bytes or a side is 0.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be written.
    pub fn log_rgb(&self, tag: &str, step: i64, width: u32, height: u32, rgb: &[u8]) -> Result<(), TrainError> {
        assert!(width > 0 && height > 0, "TensorBoardLogger::log_rgb: image size {width}x{height} has a zero side");
        assert_eq!(
            rgb.len(),
            width as usize * height as usize * 3,
            "TensorBoardLogger::log_rgb: {} bytes for a {width}x{height} RGB image (needs {})",
            rgb.len(),
            width as usize * height as usize * 3
        );
        let mut png = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().expect("PNG encoding into memory cannot fail");
            w.write_image_data(rgb).expect("PNG encoding into memory cannot fail");
        }
        self.log_image(tag, step, &png)
    }

    /// Writes buffered events to disk.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be written.
    pub fn flush(&self) -> Result<(), TrainError> {
        self.lock().flush()
    }

    fn log_tensors(&self, model: &dyn Module<f32>, step: i64, prefix: &str, grads: bool) -> Result<(), TrainError> {
        let mut tensors = Vec::new();
        model.visit("", &mut |name, var, kind| {
            if kind != TensorKind::Parameter {
                return;
            }
            let values = if grads { var.grad().map(|g| g.to_vec()) } else { Some(var.value().to_vec()) };
            if let Some(v) = values {
                tensors.push((name.to_string(), v));
            }
        });
        for (name, v) in tensors {
            self.log_histogram(&format!("{prefix}/{name}"), step, &v)?;
        }
        Ok(())
    }
}

fn or_panic(r: Result<(), TrainError>) {
    r.unwrap_or_else(|e| panic!("TensorBoardLogger: {e}"));
}

impl Callback for TensorBoardLogger {
    fn on_train_begin(&mut self, _model: &dyn Module<f32>) {
        self.global_batch = 0;
    }

    fn on_batch_end(&mut self, ctx: &mut BatchContext<'_>) {
        if self.batch_every > 0 && self.global_batch.is_multiple_of(self.batch_every as u64) {
            or_panic(self.log_scalar("batch_loss", self.global_batch as i64, ctx.loss));
        }
        self.global_batch += 1;
    }

    fn on_before_optimizer_step(&mut self, ctx: &StepContext<'_>) {
        if self.histograms && ctx.batch + 1 == ctx.batches {
            or_panic(self.log_tensors(ctx.model, ctx.epoch as i64, "gradients", true));
        }
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        let step = ctx.epoch as i64;
        let values: Vec<SummaryValue> =
            ctx.logs.iter().map(|(k, &v)| SummaryValue { simple_value: Some(v as f32), ..value(k) }).collect();
        or_panic(self.lock().summary(step, values));
        if self.histograms {
            or_panic(self.log_tensors(ctx.model, step, "parameters", false));
        }
        or_panic(self.flush());
    }

    fn on_train_end(&mut self, _model: &mut dyn Module<f32>, _history: &History) {
        or_panic(self.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0, so its masked form is the mask constant alone.
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283, "CRC-32C check value");
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32), computed in Python
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn histogram_counts_every_finite_value_once() {
        let v: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).chain([f32::NAN, f32::INFINITY]).collect();
        let h = histogram(&v, 7).unwrap();
        assert_eq!(h.num, 100.0);
        assert_eq!(h.bucket.iter().sum::<f64>(), 100.0);
        assert_eq!(h.bucket_limit.len(), 7);
        assert_eq!((h.min, h.max), (0.0, f64::from(9.9f32)));
        assert_eq!(*h.bucket_limit.last().unwrap(), h.max);
        // every value sits in the bucket whose (previous limit, limit] interval holds it
        for &x in v.iter().filter(|x| x.is_finite()) {
            let x = f64::from(x);
            let i = h.bucket_limit.iter().position(|&l| x <= l).unwrap();
            assert!(i == 0 || x > h.bucket_limit[i - 1]);
        }
        let constant = histogram(&[2.0; 5], 30).unwrap();
        assert_eq!((constant.bucket_limit.clone(), constant.bucket.clone()), (vec![2.0], vec![5.0]));
        assert!(histogram(&[f32::NAN], 30).is_none());
    }

    #[test]
    fn histogram_buckets_agree_with_their_limits() {
        let v: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 4.0).collect();
        let h = histogram(&v, 30).unwrap();
        let mut expected = vec![0.0; 30];
        for &x in &v {
            let x = f64::from(x);
            expected[h.bucket_limit.iter().position(|&l| x <= l).unwrap()] += 1.0;
        }
        assert_eq!(h.bucket, expected);
    }

    #[test]
    fn png_header_is_read_and_garbage_refused() {
        let mut png = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png, 3, 2);
            enc.set_color(png::ColorType::Rgba);
            enc.write_header().unwrap().write_image_data(&[0; 24]).unwrap();
        }
        assert_eq!(png_header(&png).unwrap(), (3, 2, 4));
        assert!(png_header(b"GIF89a").unwrap_err().contains("not a PNG"));
    }
}
