//! Capture: turning what the kernel copied (ring buffer) or a capture file (pcap, pcapng) holds
//! into TCP [`Segment`]s for reassembly.

pub mod live;
pub mod ringbuf;
pub mod segment;

pub use segment::Segment;
