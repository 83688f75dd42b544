//! Training-state checkpoints: model, optimiser, scheduler, epoch, RNG state and history in one
//! file, so that a resumed run continues exactly as an uninterrupted one would.
//!
//! # File format (version 1)
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic bytes `KILNCKPT` |
//! | 8 | 4 | format version, `u32` little-endian (1) |
//! | 12 | 8 | payload length in bytes, `u64` little-endian |
//! | 20 | 4 | CRC-32 (IEEE) of the payload, `u32` little-endian |
//! | 24 | payload length | the [`Checkpoint`] in bincode's standard configuration (serde) |
//!
//! A later kiln reads this version or refuses it with [`TrainError::UnsupportedVersion`]; a
//! file that is cut short, damaged or not a checkpoint gives a typed error naming the file.
//! The loader reads the file once and never allocates more than the file holds, whatever its
//! header claims.
//!
//! Files are written atomically ([`write_atomic_with`]): a temporary file in the same folder,
//! fsync, rename over the target, so a crash or an error mid-write leaves the previous file
//! intact.
//!
//! # Resuming
//!
//! ```
//! use kiln_data::Targets;
//! use kiln_nn::{Linear, MSELoss, Module};
//! use kiln_optim::{Optimizer, SGDConfig, SGD};
//! use kiln_tensor::Tensor;
//! use kiln_train::checkpoint::{load_checkpoint, save_checkpoint, Checkpoint};
//! use kiln_train::{tensor_batches, Trainer, Verbosity};
//! let dir = std::env::temp_dir().join(format!("kiln-ckpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
//! let data = tensor_batches(&x, &Targets::Values(x.clone()), 2);
//! // train 2 epochs and save
//! let mut model: Linear = Linear::new(1, 1);
//! let cfg = SGDConfig { lr: 0.05, momentum: 0.9, ..Default::default() };
//! let mut opt = SGD::new(model.parameters(), cfg.clone());
//! let history = Trainer::new(2).verbosity(Verbosity::Silent).fit(&mut model, &mut opt, &MSELoss::new(), &data, None).unwrap();
//! let ckpt = Checkpoint::new(2, &model).with_optimizer(&opt).with_history(history);
//! save_checkpoint(dir.join("run.ckpt"), &ckpt).unwrap();
//! // later: rebuild the same objects, restore, and go on from epoch 2
//! let mut model2: Linear = Linear::new(1, 1);
//! let mut opt2 = SGD::new(model2.parameters(), cfg);
//! let ckpt = load_checkpoint(dir.join("run.ckpt")).unwrap();
//! ckpt.restore(&mut model2, &mut opt2).unwrap();
//! assert_eq!(model2.state_dict(), model.state_dict());
//! Trainer::new(4).initial_epoch(ckpt.epoch).verbosity(Verbosity::Silent)
//!     .fit(&mut model2, &mut opt2, &MSELoss::new(), &data, None).unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! What must be restored for an exact resume, and how:
//! - the model's parameters and buffers, and the optimiser's state (momentum buffers, step
//!   counts, learning rates): [`Checkpoint::restore`];
//! - a scheduler: build it on the restored-to optimiser as the first run did, then
//!   [`Checkpoint::restore_scheduler`] (before handing it to [`Trainer::scheduler`](crate::Trainer::scheduler));
//! - the data order: a [`DataLoader`](kiln_data::DataLoader) draws each epoch's order from
//!   `(seed, epoch)`, so call `loader.set_epoch(ckpt.epoch as u64)` and keep the seed;
//! - the epoch counter: [`Trainer::initial_epoch`](crate::Trainer::initial_epoch)`(ckpt.epoch)`
//!   (the `History` that `fit` returns then holds the resumed epochs only; `ckpt.history` has
//!   the earlier ones);
//! - the process-wide generator of [`kiln_nn::init`] (restored by [`Checkpoint::restore`]).
//!   Layers that own a generator of their own (dropout) are not covered: their masks after a
//!   resume differ from an uninterrupted run's.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_nn::{Module, StateDict};
use kiln_optim::lr_scheduler::{LRScheduler, SchedulerStateDict};
use kiln_optim::{Optimizer, OptimizerStateDict};
use kiln_tensor::Rng;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::history::History;

/// The first eight bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"KILNCKPT";
/// The format version this kiln writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the payload: magic, version, payload length, CRC-32.
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// An optimiser's state dict, encoded so that a [`Checkpoint`] can hold any optimiser's state
/// (their state dicts differ in type by their hyper-parameter struct).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// The optimiser's (PyTorch class) name: `"SGD"`, `"Adam"`, ...
    pub name: String,
    /// Its [`OptimizerStateDict`] in bincode.
    pub bytes: Vec<u8>,
}

impl OptimizerState {
    /// A deep copy of `optimizer`'s state (hyper-parameters, step counts, buffers).
    ///
    /// **Panics** if the state dict cannot be encoded (it always can: it is tensors, numbers
    /// and strings).
    pub fn capture<O: Optimizer<f32> + ?Sized>(optimizer: &O) -> Self {
        let sd = optimizer.state_dict();
        let bytes = bincode::serde::encode_to_vec(&sd, bincode_config())
            .unwrap_or_else(|e| panic!("OptimizerState::capture: cannot encode the {} state dict: {e}", sd.optimizer));
        OptimizerState { name: sd.optimizer, bytes }
    }

    /// The state dict, decoded for an optimiser whose hyper-parameters are `O::Config`.
    ///
    /// # Errors
    /// [`TrainError::Optimizer`] when the state is another optimiser's, [`TrainError::Corrupt`]
    /// when it does not decode.
    pub fn decode<O: Optimizer<f32> + ?Sized>(
        &self,
        optimizer: &O,
    ) -> Result<OptimizerStateDict<f32, O::Config>, TrainError> {
        match bincode::serde::decode_from_slice::<OptimizerStateDict<f32, O::Config>, _>(&self.bytes, bincode_config())
        {
            Ok((sd, used)) if used == self.bytes.len() => Ok(sd),
            other => {
                let expected = optimizer.state_dict().optimizer;
                if expected != self.name {
                    return Err(kiln_optim::OptimError::OptimizerMismatch { expected, found: self.name.clone() }.into());
                }
                let reason = match other {
                    Ok((_, used)) => format!("{} trailing bytes after the state dict", self.bytes.len() - used),
                    Err(e) => e.to_string(),
                };
                Err(TrainError::Corrupt {
                    path: PathBuf::from("<optimizer state>"),
                    offset: 0,
                    reason: format!("the {} state dict does not decode: {reason}", self.name),
                })
            }
        }
    }

    /// Loads this state into `optimizer` (same kind, parameters of the same shapes in the same
    /// groups). On error nothing has been changed.
    ///
    /// # Errors
    /// As [`decode`](Self::decode), and [`TrainError::Optimizer`] when the state does not fit.
    pub fn restore<O: Optimizer<f32> + ?Sized>(&self, optimizer: &mut O) -> Result<(), TrainError> {
        let sd = self.decode(optimizer)?;
        optimizer.load_state_dict(&sd)?;
        Ok(())
    }
}

/// The state of the training loop that a [`Callback`](crate::Callback) cannot read from the
/// model: the optimiser's and the scheduler's. The trainer captures it at the end of an epoch
/// for the callbacks that ask for it ([`Callback::wants_training_state`](crate::Callback::wants_training_state)).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingState {
    /// The optimiser's state.
    pub optimizer: OptimizerState,
    /// The trainer's scheduler's state, when it has one.
    pub scheduler: Option<SchedulerStateDict>,
}

impl TrainingState {
    /// Captures `optimizer`'s and `scheduler`'s states.
    pub fn capture<O: Optimizer<f32> + ?Sized>(optimizer: &O, scheduler: Option<&dyn LRScheduler>) -> Self {
        TrainingState { optimizer: OptimizerState::capture(optimizer), scheduler: scheduler.map(|s| s.state_dict()) }
    }
}

/// Everything needed to resume training: the model's state dict, the optimiser's and the
/// scheduler's states, the number of epochs done, the process-wide RNG state and the history.
///
/// Build one with [`Checkpoint::new`] and the `with_*` methods (or let
/// [`ModelCheckpoint`](crate::callbacks::ModelCheckpoint) do it), write it with
/// [`save_checkpoint`], read it with [`load_checkpoint`] and put it back with
/// [`restore`](Checkpoint::restore).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Epochs completed: the epoch (0-based) a resumed run starts with.
    pub epoch: usize,
    /// The model's parameters and buffers by PyTorch key.
    pub model: StateDict<f32>,
    /// The optimiser's state; `None` in a weights-only checkpoint.
    pub optimizer: Option<OptimizerState>,
    /// The LR scheduler's state, when there is one.
    pub scheduler: Option<SchedulerStateDict>,
    /// The process-wide generator of [`kiln_nn::init`] when the checkpoint was made.
    pub rng: Option<Rng>,
    /// The figures of the epochs completed.
    pub history: History,
}

impl Checkpoint {
    /// A checkpoint of `model` after `epoch` completed epochs, with the current state of the
    /// process-wide generator of [`kiln_nn::init`], and no optimiser, scheduler or history.
    pub fn new(epoch: usize, model: &dyn Module<f32>) -> Self {
        Checkpoint {
            epoch,
            model: model.state_dict(),
            optimizer: None,
            scheduler: None,
            rng: Some(kiln_nn::init::with_rng(|r| r.clone())),
            history: History::default(),
        }
    }

    /// Adds `optimizer`'s state.
    #[must_use]
    pub fn with_optimizer<O: Optimizer<f32> + ?Sized>(mut self, optimizer: &O) -> Self {
        self.optimizer = Some(OptimizerState::capture(optimizer));
        self
    }

    /// Adds `scheduler`'s state.
    #[must_use]
    pub fn with_scheduler(mut self, scheduler: &dyn LRScheduler) -> Self {
        self.scheduler = Some(scheduler.state_dict());
        self
    }

    /// Adds the optimiser's and scheduler's states captured by the trainer.
    #[must_use]
    pub fn with_training_state(mut self, state: &TrainingState) -> Self {
        self.optimizer = Some(state.optimizer.clone());
        self.scheduler = state.scheduler.clone();
        self
    }

    /// Sets the history.
    #[must_use]
    pub fn with_history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// Loads the model state (strictly: every key must match). On error the model is unchanged.
    ///
    /// # Errors
    /// [`TrainError::Model`] naming the missing, unexpected and mis-shaped keys.
    pub fn restore_model(&self, model: &mut dyn Module<f32>) -> Result<(), TrainError> {
        model.load_state_dict(&self.model, true)?;
        Ok(())
    }

    /// Loads the optimiser state. On error the optimiser is unchanged.
    ///
    /// # Errors
    /// [`TrainError::Missing`] for a weights-only checkpoint; [`TrainError::Optimizer`] when
    /// the state is another optimiser's or does not fit its parameters.
    pub fn restore_optimizer<O: Optimizer<f32> + ?Sized>(&self, optimizer: &mut O) -> Result<(), TrainError> {
        self.optimizer.as_ref().ok_or(TrainError::Missing { what: "optimizer state" })?.restore(optimizer)
    }

    /// Loads the scheduler state into a scheduler built as the saved one was (same kind and
    /// arguments, on the restored optimiser). On error the scheduler is unchanged.
    ///
    /// # Errors
    /// [`TrainError::Missing`] when the checkpoint has no scheduler state;
    /// [`TrainError::Optimizer`] when it is another scheduler's.
    pub fn restore_scheduler(&self, scheduler: &mut dyn LRScheduler) -> Result<(), TrainError> {
        let sd = self.scheduler.as_ref().ok_or(TrainError::Missing { what: "scheduler state" })?;
        scheduler.load_state_dict(sd)?;
        Ok(())
    }

    /// Puts back the process-wide generator of [`kiln_nn::init`] (nothing happens when the
    /// checkpoint has none).
    pub fn restore_rng(&self) {
        if let Some(rng) = &self.rng {
            kiln_nn::init::with_rng(|r| *r = rng.clone());
        }
    }

    /// Restores the model, the optimiser and the process-wide generator. Nothing is
    /// half-loaded: when the optimiser state does not fit, the model is put back as it was.
    ///
    /// # Errors
    /// As [`restore_model`](Self::restore_model) and [`restore_optimizer`](Self::restore_optimizer).
    pub fn restore<O: Optimizer<f32> + ?Sized>(
        &self,
        model: &mut dyn Module<f32>,
        optimizer: &mut O,
    ) -> Result<(), TrainError> {
        let before = model.state_dict();
        self.restore_model(model)?;
        if let Err(e) = self.restore_optimizer(optimizer) {
            model.load_state_dict(&before, true)?;
            return Err(e);
        }
        self.restore_rng();
        Ok(())
    }

    /// Writes the checkpoint to `path` atomically ([`save_checkpoint`]): a crash or an error
    /// mid-write leaves the previous file intact.
    ///
    /// ```
    /// use kiln_nn::{Linear, Module};
    /// use kiln_train::{Checkpoint, TrainError};
    /// let dir = std::env::temp_dir().join(format!("kiln-doc-ckpt-save-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let model: Linear = Linear::new(3, 2);
    /// let path = dir.join("epoch3.ckpt");
    /// Checkpoint::new(3, &model).save(&path).unwrap();
    ///
    /// let back = Checkpoint::load(&path).unwrap();
    /// assert_eq!(back.epoch, 3);
    /// assert_eq!(back.model, model.state_dict());
    /// // A folder that does not exist: a typed error naming the file.
    /// let err = Checkpoint::new(3, &model).save(dir.join("no/such/folder/x.ckpt")).unwrap_err();
    /// assert!(matches!(err, TrainError::Io { .. }) && err.to_string().contains("x.ckpt"), "{err}");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`save_checkpoint`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        save_checkpoint(path, self)
    }

    /// Reads a checkpoint ([`load_checkpoint`]).
    ///
    /// # Errors
    /// As [`load_checkpoint`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        load_checkpoint(path)
    }
}

/// The checkpoint's file content: header and payload.
///
/// # Errors
/// [`TrainError::Encode`] (with `path` for the message) if bincode refuses a value.
pub fn encode_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<Vec<u8>, TrainError> {
    let payload = bincode::serde::encode_to_vec(checkpoint, bincode_config()).map_err(|e| TrainError::Encode {
        path: path.to_path_buf(),
        what: "the checkpoint",
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses a checkpoint file's content (`path` names it in errors).
///
/// # Errors
/// [`TrainError::BadMagic`], [`TrainError::UnsupportedVersion`], [`TrainError::Truncated`] or
/// [`TrainError::Corrupt`].
pub fn decode_checkpoint(path: &Path, bytes: &[u8]) -> Result<Checkpoint, TrainError> {
    let path_buf = || path.to_path_buf();
    let len = bytes.len() as u64;
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        return Err(TrainError::BadMagic { path: path_buf(), found: head.to_vec() });
    }
    if bytes.len() < HEADER_LEN {
        return Err(TrainError::Truncated {
            path: path_buf(),
            what: "the header",
            expected: HEADER_LEN as u64,
            found: len,
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(TrainError::UnsupportedVersion { path: path_buf(), found: version, supported: FORMAT_VERSION });
    }
    let payload_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN as u64).saturating_add(payload_len);
    if expected > len {
        return Err(TrainError::Truncated { path: path_buf(), what: "the payload", expected, found: len });
    }
    if expected < len {
        return Err(TrainError::Corrupt {
            path: path_buf(),
            offset: expected,
            reason: format!("{} bytes after the end of the payload the header announces", len - expected),
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let (stored, actual) = (u32_at(20), crc32(payload));
    if stored != actual {
        return Err(TrainError::Corrupt {
            path: path_buf(),
            offset: HEADER_LEN as u64,
            reason: format!("payload checksum is {actual:#010x}, the header says {stored:#010x}"),
        });
    }
    match bincode::serde::decode_from_slice::<Checkpoint, _>(payload, bincode_config()) {
        Ok((c, used)) if used == payload.len() => Ok(c),
        Ok((_, used)) => Err(TrainError::Corrupt {
            path: path_buf(),
            offset: (HEADER_LEN + used) as u64,
            reason: format!("{} bytes left over after the checkpoint", payload.len() - used),
        }),
        Err(e) => Err(TrainError::Corrupt {
            path: path_buf(),
            offset: HEADER_LEN as u64,
            reason: format!("the payload does not decode as a checkpoint: {e}"),
        }),
    }
}

/// Writes `checkpoint` to `path` atomically (temporary file in the same folder, fsync, rename):
/// if anything fails the previous file at `path`, if any, is left intact.
///
/// # Errors
/// [`TrainError::Io`] naming the file, or [`TrainError::Encode`].
pub fn save_checkpoint(path: impl AsRef<Path>, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    let path = path.as_ref();
    let bytes = encode_checkpoint(path, checkpoint)?;
    write_atomic(path, &bytes)
}

/// Reads a checkpoint written by [`save_checkpoint`].
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be read; [`TrainError::BadMagic`],
/// [`TrainError::UnsupportedVersion`], [`TrainError::Truncated`] or [`TrainError::Corrupt`]
/// when its content is not a checkpoint this kiln reads.
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint, TrainError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    decode_checkpoint(path, &bytes)
}

/// Writes `bytes` to `path` atomically ([`write_atomic_with`]).
///
/// # Errors
/// [`TrainError::Io`] naming the file.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), TrainError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes a file atomically through kiln's one atomic writer,
/// [`kiln_tensor::fs::write_atomic`]: `write` fills a new temporary file in `path`'s folder,
/// which is flushed, fsynced, given the target's permission bits and renamed over `path`
/// (through a symbolic link, the file it points to), and the folder fsynced. If `write` or any
/// step fails, the temporary file is removed and the previous file at `path` is left as it
/// was; temporaries of killed writers of the same target are removed by the next save.
///
/// # Errors
/// [`TrainError::Io`] naming `path`, with the error of the step that failed.
pub fn write_atomic_with<F>(path: impl AsRef<Path>, write: F) -> Result<(), TrainError>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    kiln_tensor::fs::write_atomic(path, write).map_err(|e| {
        let message = format!("{}: {}", e.action, e.source);
        TrainError::io(e.path, std::io::Error::new(e.source.kind(), message))
    })
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tensor::Tensor;

    /// A writer that fails once it has accepted `left` bytes: a disk that fills up mid-write.
    struct FailAfter<'a> {
        inner: &'a mut dyn Write,
        left: usize,
    }

    impl Write for FailAfter<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::other("injected failure: no space left"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            self.inner.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    fn sample() -> Checkpoint {
        let mut model = StateDict::new();
        model.insert("weight".into(), Tensor::from_vec(vec![1.0f32, -2.5, 3.25], &[3, 1]));
        let mut h = History::default();
        h.epochs.push([("loss".to_string(), 0.5)].into_iter().collect());
        Checkpoint { epoch: 3, model, optimizer: None, scheduler: None, rng: Some(Rng::new(9)), history: h }
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn failure_mid_write_leaves_the_previous_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.ckpt");
        let old = sample();
        save_checkpoint(&path, &old).unwrap();
        let before = std::fs::read(&path).unwrap();

        let mut new = sample();
        new.epoch = 4;
        let bytes = encode_checkpoint(&path, &new).unwrap();
        let err =
            write_atomic_with(&path, |w| FailAfter { inner: w, left: bytes.len() / 2 }.write_all(&bytes)).unwrap_err();
        assert!(matches!(&err, TrainError::Io { path: p, .. } if p == &path), "{err}");
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(load_checkpoint(&path).unwrap(), old);
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.ckpt")]);

        // and a write that succeeds replaces it
        save_checkpoint(&path, &new).unwrap();
        assert_eq!(load_checkpoint(&path).unwrap().epoch, 4);
    }

    #[test]
    fn failure_before_any_file_exists_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        assert!(write_atomic_with(&path, |_| Err(std::io::Error::other("boom"))).is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn round_trip_in_memory() {
        let c = sample();
        let p = Path::new("mem.ckpt");
        let bytes = encode_checkpoint(p, &c).unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(decode_checkpoint(p, &bytes).unwrap(), c);
    }
}
