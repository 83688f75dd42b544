//! [`OptimError`]: what can go wrong with input from outside (state dicts) and with clipping.

/// The error of everything in this crate that reads input from outside: loading an optimiser's
/// or a scheduler's state dict (which never leaves the target half-loaded), and the checked
/// [`try_clip_grad_norm_`](crate::try_clip_grad_norm_).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// The state dict was saved by another kind of optimiser.
    #[error("load_state_dict: the state dict is for optimizer {found:?}, this optimizer is {expected:?}")]
    OptimizerMismatch {
        /// This optimiser's name.
        expected: String,
        /// The name in the state dict.
        found: String,
    },
    /// The numbers of parameter groups differ.
    #[error("load_state_dict: the state dict has {found} parameter groups, the optimizer has {expected}")]
    GroupCountMismatch {
        /// Groups in the optimiser.
        expected: usize,
        /// Groups in the state dict.
        found: usize,
    },
    /// A parameter group has another number of parameters.
    #[error("load_state_dict: parameter group {group} has {found} parameters in the state dict, {expected} in the optimizer")]
    GroupSizeMismatch {
        /// Index of the group.
        group: usize,
        /// Parameters in the optimiser's group.
        expected: usize,
        /// Parameters in the state dict's group.
        found: usize,
    },
    /// A group's hyper-parameters are invalid (negative learning rate, beta outside [0, 1), ...).
    #[error("load_state_dict: parameter group {group}: {message}")]
    InvalidConfig {
        /// Index of the group.
        group: usize,
        /// What is wrong, naming the field, the expected range and the value found.
        message: String,
    },
    /// A parameter id is listed twice in the state dict's groups.
    #[error("load_state_dict: parameter id {id} is listed more than once in param_groups")]
    DuplicateParam {
        /// The repeated id.
        id: usize,
    },
    /// The state dict has state for an id that no group lists.
    #[error("load_state_dict: there is state for parameter id {id}, which no parameter group lists")]
    UnknownParam {
        /// The id.
        id: usize,
    },
    /// A parameter's state lacks an entry the optimiser needs.
    #[error("load_state_dict: state of parameter {id}: missing {key:?}")]
    MissingState {
        /// The parameter id.
        id: usize,
        /// The missing key (PyTorch's name: `exp_avg`, `momentum_buffer`, `step`, ...).
        key: String,
    },
    /// A parameter's state has an entry the optimiser does not know.
    #[error("load_state_dict: state of parameter {id}: unexpected {key:?}")]
    UnexpectedState {
        /// The parameter id.
        id: usize,
        /// The unexpected key.
        key: String,
    },
    /// A state tensor's shape differs from its parameter's.
    #[error(
        "load_state_dict: state of parameter {id}: {key:?} has shape {found:?}, the parameter has shape {expected:?}"
    )]
    StateShapeMismatch {
        /// The parameter id.
        id: usize,
        /// The state entry.
        key: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The state tensor's shape.
        found: Vec<usize>,
    },
    /// A scheduler state dict was saved by another kind of scheduler.
    #[error("load_state_dict: the state dict is for scheduler {found:?}, this scheduler is {expected:?}")]
    SchedulerMismatch {
        /// This scheduler's name.
        expected: String,
        /// The name in the state dict.
        found: String,
    },
    /// A scheduler state dict has another number of something (groups, wrapped schedulers).
    #[error("load_state_dict: {scheduler}: the state dict has {found} {what}, the scheduler has {expected}")]
    SchedulerLenMismatch {
        /// The scheduler's name.
        scheduler: String,
        /// What was counted (`"base_lrs"`, `"schedulers"`, ...).
        what: String,
        /// The count in the scheduler.
        expected: usize,
        /// The count in the state dict.
        found: usize,
    },
    /// A scheduler state dict lacks a value the scheduler needs.
    #[error("load_state_dict: {scheduler}: missing value {key:?}")]
    SchedulerMissingValue {
        /// The scheduler's name.
        scheduler: String,
        /// The missing key.
        key: String,
    },
    /// An optimiser state file that cannot be written or read, or is not a valid safetensors
    /// file ([`Optimizer::save`](crate::Optimizer::save) / [`load`](crate::Optimizer::load)).
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong (the step that failed, or what is malformed and where).
        message: String,
    },
    /// A field of an optimiser state file that is missing or holds what it must not.
    #[error("{}: `{field}`: expected {expected}, found {found}", path.display())]
    FileField {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor name or metadata field (`__metadata__.param_groups`, `state.3.step`).
        field: String,
        /// What was expected.
        expected: String,
        /// What is there.
        found: String,
    },
    /// The total gradient norm is NaN or infinite (PyTorch's `error_if_nonfinite=True`).
    #[error("clip_grad_norm_: the total norm of order {norm_type} of the gradients is non-finite ({total_norm}), so they cannot be clipped")]
    NonFiniteNorm {
        /// The norm's order.
        norm_type: f64,
        /// The norm found.
        total_norm: f64,
    },
}
