//! The benchmark traffic generator's contract (`cargo xtask bench datapath`): an XDP program run
//! by `BPF_PROG_RUN` with live frames in a client namespace, which rewrites the source address of
//! each frame to a random entry of a table and sends it out of the interface (`XDP_TX`); and a
//! reference blocklist program (the least an XDP hash blocklist can do) to compare against.

use core::mem::size_of;

/// Map and program names of the generator.
pub mod names {
    /// Array of [`AddrKey`](crate::AddrKey): the sources to draw from (IPv4 mapped for IPv4
    /// frames, which use the last 4 bytes).
    pub const SOURCES: &str = "SN_BENCH_SRCS";
    /// Array of one [`GenConfig`](super::GenConfig).
    pub const CONFIG: &str = "SN_BENCH_CFG";
    /// The generator program.
    pub const PROG_GENERATOR: &str = "sentinel_bench_gen";
    /// Hash of [`AddrKey`](crate::AddrKey) -> [`RuleValue`](crate::RuleValue): the reference
    /// program's blocklist.
    pub const REF_BLOCKLIST: &str = "SN_BENCH_REF";
    /// Reference XDP program: minimal parse, one hash lookup of the source, drop on a hit.
    pub const PROG_REFERENCE: &str = "sentinel_bench_ref";
}

/// Generator configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Number of valid entries at the start of the sources table (0: frames are dropped).
    pub count: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<GenConfig>() == 8);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integer fields only, explicit padding.
unsafe impl aya::Pod for GenConfig {}
