//! Verdicts: what Sentinel decided about a source, written into the kernel maps.

pub mod enforce;
pub mod lists;
pub mod policy;
pub mod responder;
pub mod sessions;
pub mod target;

pub use target::Target;
