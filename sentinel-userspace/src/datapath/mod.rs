//! The kernel side of Sentinel as userspace sees it: loading the XDP object, pinning its maps and
//! links under bpffs, attaching to interfaces (and re-adopting what a previous daemon left), typed
//! map access, and unloading.

pub mod loader;
pub mod maps;
pub mod qdisc;
pub mod sys;

use std::path::PathBuf;

pub use loader::{Attachment, Datapath, LoadOptions, MapSizes, unload};
pub use maps::Maps;

/// Default directory for pinned maps and links.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sentinel";

/// Errors of the kernel interface.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The binary was built with `AYA_BUILD_SKIP=1` and carries no kernel object.
    #[error(
        "this sentinel binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it with the BPF toolchain (`cargo xtask setup`)"
    )]
    NoObject,
    /// Loading the object or a program failed (verifier, missing privileges, ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A link operation failed.
    #[error("{what}: {source}")]
    Link {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map the object should have is missing.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(String),
    /// Opening a pinned map failed.
    #[error("opening pinned map {path}: {source} (is the daemon loaded? try `sentinel run`)")]
    OpenPin {
        /// The pin.
        path: PathBuf,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A map pinned by another version of Sentinel has a layout this version cannot use.
    #[error(
        "pinned map {path} has {found} (this version needs {expected}); it was left by another version of sentinel: `sentinel unload` removes it (and its entries)"
    )]
    IncompatiblePin {
        /// The pin.
        path: PathBuf,
        /// Its key and value sizes.
        found: String,
        /// The key and value sizes this version uses.
        expected: String,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: String,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The named interface does not exist.
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    /// A filesystem or syscall error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
