//! Capture: turning what the kernel copied (ring buffer) or a capture file (pcap, pcapng) holds
//! into TCP [`Segment`]s for reassembly.

pub mod defrag;
pub mod live;
pub mod pcap;
pub mod ringbuf;
pub mod segment;
pub mod synth;

pub use pcap::{CaptureReader, CaptureStats, PcapError};
pub use segment::Segment;
