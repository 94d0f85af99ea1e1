//! Sentinel's root tests and benchmarks. The harness (namespaces, veth pairs, the daemon in a
//! namespace, bounded traffic) lives in `sentinel::lab` so that `sentinel demo` uses the same code.

pub mod bench;
pub mod bench_report;
pub mod fault;
pub mod packets;
pub mod tc;

pub use sentinel::lab::*;
