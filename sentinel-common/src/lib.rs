//! Types shared by the kernel programs (`sentinel-ebpf`) and the userspace daemon.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, has explicit padding
//! fields and a size assertion next to it, so both sides agree on the layout byte for byte.
//! Addresses are always stored as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`), so one map serves both families and an IPv4 prefix `/n` is the mapped
//! prefix `/(96 + n)`.
#![no_std]

pub mod addr;
pub mod bench;
pub mod capture;
pub mod maps;

pub use addr::*;
pub use capture::{
    CAP_FLAG_EGRESS, CAP_FLAG_IP_PACKET, CAP_FLAG_TS_REALTIME, CaptureConfig, CaptureCounter,
    CaptureHeader, DEFAULT_RING_BYTES, DEFAULT_SNAP_LEN, MAX_COALESCED_RECORDS, MAX_SNAP_LEN,
    RECORD_CLASSES, wakeup_shift,
};
pub use maps::*;
