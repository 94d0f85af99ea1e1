//! Sentinel's userspace: the daemon, the CLI and the stages of the data flow.
//!
//! - [`datapath`]: loading, pinning and attaching the kernel programs; typed map access.
//! - [`verdict`]: the block, allow and throttle lists, written into the kernel maps.
//! - [`control`]: the daemon's HTTP/JSON API on a Unix socket and its client.
//! - [`daemon`]: `sentinel run`.
//! - [`cli`]: the command line.
//! - [`lab`]: namespaces, veth pairs and bounded traffic for tests, benchmarks and the demo.
//! - [`reassembly`], [`http`], [`pipeline`]: TCP streams, HTTP/1.x messages and transactions from
//!   capture segments (live or [`replay`]ed from pcap/pcapng).

pub mod analysis;
pub mod analyze;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod enrich;
pub mod http;
pub mod lab;
pub mod metrics;
pub mod models;
pub mod notify;
pub mod pipeline;
pub mod reassembly;
pub mod redact;
pub mod replay;
pub mod verdict;
