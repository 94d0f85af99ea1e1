//! A TCP segment as the capture stage hands it to reassembly, whatever its source: the TC
//! programs' ring buffer (live) or a pcap/pcapng file (replay).

use std::net::SocketAddr;

use bytes::Bytes;

/// TCP flag bits as on the wire (the low byte of the flags field).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// One TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number of the first payload byte (of the SYN for SYN segments).
    pub seq: u32,
    /// Acknowledgment number (valid with `flags::ACK`).
    pub ack: u32,
    /// `flags::*` bits.
    pub flags: u8,
    /// The captured payload (may be shorter than `wire_len` when a snap length cut it).
    pub payload: Bytes,
    /// Payload length on the wire.
    pub wire_len: u32,
}

impl Segment {
    /// True when `flag` (one of [`flags`]) is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// True when the capture cut the payload short.
    pub fn is_truncated(&self) -> bool {
        (self.payload.len() as u64) < self.wire_len as u64
    }
}
