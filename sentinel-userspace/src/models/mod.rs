//! Models: streaming detectors over [`Observation`]s that raise [`Alert`]s, each explained.

pub mod alert;
pub mod observation;

pub use alert::{Action, Alert, AlertKind, Severity};
pub use observation::{LoginAttempt, Observation};
