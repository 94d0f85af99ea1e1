//! The capture contract: what the TC programs copy into the ring buffer for each TCP segment on
//! the HTTP ports (and for IP fragments that may belong to a datagram to those ports), and the
//! maps that configure them.
//!
//! Records come in two kinds, told apart by [`CAP_FLAG_IP_PACKET`]: a TCP segment's metadata and
//! payload, or an IP fragment whole from its IP header on. The programs and their reader are
//! built together (the programs are never pinned), so a new kind is a new flag, not a version.

use core::mem::size_of;

use crate::addr::AddrKey;

/// Map and program names of the capture half.
pub mod names {
    /// Ring buffer of [`CaptureHeader`](crate::CaptureHeader) + payload records.
    pub const RING: &str = "SN_CAPTURE";
    /// Array of 65536 `u8`: non-zero for the ports to capture (either side of the connection).
    pub const PORTS: &str = "SN_CAP_PORTS";
    /// Array of one [`CaptureConfig`](crate::CaptureConfig).
    pub const CONFIG: &str = "SN_CAP_CONFIG";
    /// Per-CPU array of `u64` indexed by [`CaptureCounter`](crate::CaptureCounter).
    pub const COUNTERS: &str = "SN_CAP_COUNTERS";
    /// TC ingress program.
    pub const PROG_INGRESS: &str = "sentinel_tc_ingress";
    /// TC egress program.
    pub const PROG_EGRESS: &str = "sentinel_tc_egress";
    /// Reference program for benchmarks: reserve, copy the same bytes, submit; nothing else.
    pub const PROG_REFERENCE: &str = "sentinel_tc_reference";

    /// Every capture map.
    pub const ALL: &[&str] = &[RING, PORTS, CONFIG, COUNTERS];
}

/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
/// Default snap length: payload bytes copied per segment.
pub const DEFAULT_SNAP_LEN: u32 = 2048;
/// Largest snap length the programs support (the biggest record class).
pub const MAX_SNAP_LEN: u32 = 8192;

/// The most records one coalesced packet (GSO or GRO: several wire segments in one skb) is
/// split into. The snap length applies to each wire segment, as a capture on the wire would
/// apply it: when it holds a whole segment (the default 2048 does at an MTU of 1500), the
/// packet is copied whole in records of [`MAX_SNAP_LEN`] bytes (64 of them hold 512 KiB, BIG
/// TCP's largest); else each segment gives a record of its first snap-length bytes. Bytes past
/// the last record are counted as cut.
pub const MAX_COALESCED_RECORDS: u32 = 64;

/// Payload sizes of the record classes: a record reserves the smallest class that holds the
/// copied bytes (the ring buffer needs constant reservation sizes).
pub const RECORD_CLASSES: [usize; 4] = [128, 512, 2048, 8192];

/// Direction flag: the segment was seen on egress (else ingress).
pub const CAP_FLAG_EGRESS: u8 = 1;
/// `ts_ns` is `CLOCK_REALTIME` (ns since the Unix epoch), not `CLOCK_MONOTONIC`: it is the
/// skb's receive timestamp, which the kernel takes in that clock when RX timestamps are on.
pub const CAP_FLAG_TS_REALTIME: u8 = 2;
/// The record holds an IP fragment, not a TCP segment: `cap_len` bytes of the IP packet from its
/// header on, for userspace to reassemble. `wire_len` is the IP packet's length; `seq`, `ack`
/// and `tcp_flags` are 0; the ports are the TCP ports of a first fragment, 0 for a later one.
pub const CAP_FLAG_IP_PACKET: u8 = 4;

/// Per-segment metadata, followed in the record by `cap_len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHeader {
    /// When the segment was seen, in `CLOCK_MONOTONIC` ns (or `CLOCK_REALTIME` with
    /// [`CAP_FLAG_TS_REALTIME`]): the skb's own timestamp when it carries one (TCP's departure
    /// time on egress and over veth, the RX timestamp when enabled), else `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// Source address (IPv4 mapped).
    pub src: AddrKey,
    /// Destination address.
    pub dst: AddrKey,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number.
    pub ack: u32,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// `CAP_FLAG_*` bits.
    pub cap_flags: u8,
    /// Explicit padding.
    pub _pad: u16,
    /// Interface index.
    pub ifindex: u32,
    /// TCP payload length on the wire.
    pub wire_len: u32,
    /// Payload bytes that follow this header in the record.
    pub cap_len: u32,
    /// Explicit padding (keeps the size a multiple of 8).
    pub _pad2: u32,
}
const _: () = assert!(size_of::<CaptureHeader>() == 72);

/// Capture configuration written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Payload bytes to copy per segment (at most [`MAX_SNAP_LEN`]; 0 disables capture).
    pub snap_len: u32,
    /// The consumer is woken each time one CPU's captured payload crosses a multiple of
    /// `1 << wakeup_shift` bytes (see [`wakeup_shift`]); 0: the kernel's default, 2^17.
    pub wakeup_shift: u32,
}
const _: () = assert!(size_of::<CaptureConfig>() == 8);

/// The wakeup threshold for a ring of `ring_bytes` filled by `cpus` CPUs: a quarter of the ring
/// shared among the CPUs (so the ring cannot fill up before a wakeup), as a power of two between
/// 2^12 and 2^24. Each wakeup is an irq_work (a self-IPI, costly in a VM), so the fewer the
/// better; between wakeups the consumer's periodic drain picks records up.
pub const fn wakeup_shift(ring_bytes: u32, cpus: u32) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus };
    let per_cpu = ring_bytes / 4 / cpus;
    let shift = if per_cpu == 0 {
        0
    } else {
        31 - per_cpu.leading_zeros()
    };
    if shift < 12 {
        12
    } else if shift > 24 {
        24
    } else {
        shift
    }
}

/// Capture counters (index into the counters map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureCounter {
    /// Segments written to the ring buffer.
    Captured = 0,
    /// Segments lost because the ring buffer had no room (reservation failed).
    RingFull = 1,
    /// Segments whose payload was longer than the snap length (cut), and coalesced packets cut
    /// at [`MAX_COALESCED_RECORDS`].
    Truncated = 2,
    /// Packets on the HTTP ports whose headers could not be parsed.
    Malformed = 3,
    /// Payload copies that failed.
    LoadFailed = 4,
    /// Payload bytes written to the ring buffer.
    Bytes = 5,
    /// TCP packets the capture cannot follow: without a readable transport header (past what
    /// the parser reads, even after pulling the headers into the skb's linear part). Their
    /// bytes never reach the reassembler. (IP fragments are captured whole instead:
    /// [`CaptureCounter::Fragments`].)
    Unfollowed = 6,
    /// IP fragments captured whole for userspace to reassemble: first fragments of TCP on the
    /// HTTP ports, and every later fragment of TCP (IPv6: every later fragment), whose ports
    /// only the first fragment holds (also counted in `Captured`).
    Fragments = 7,
    /// Coalesced packets (GSO on egress, GRO on ingress: several wire segments in one skb, up
    /// to 64 KiB and more) split back into records of wire segments; see
    /// [`MAX_COALESCED_RECORDS`].
    Coalesced = 8,
}

impl CaptureCounter {
    /// Every counter in index order.
    pub const ALL: [CaptureCounter; 9] = [
        CaptureCounter::Captured,
        CaptureCounter::RingFull,
        CaptureCounter::Truncated,
        CaptureCounter::Malformed,
        CaptureCounter::LoadFailed,
        CaptureCounter::Bytes,
        CaptureCounter::Unfollowed,
        CaptureCounter::Fragments,
        CaptureCounter::Coalesced,
    ];
    /// Size of the counters array.
    pub const COUNT: u32 = 9;

    /// Stable label for JSON and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            CaptureCounter::Captured => "captured",
            CaptureCounter::RingFull => "ring_full",
            CaptureCounter::Truncated => "truncated",
            CaptureCounter::Malformed => "malformed",
            CaptureCounter::LoadFailed => "load_failed",
            CaptureCounter::Bytes => "bytes",
            CaptureCounter::Unfollowed => "unfollowed",
            CaptureCounter::Fragments => "fragments",
            CaptureCounter::Coalesced => "coalesced",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, explicit padding, integer fields only.
    unsafe impl aya::Pod for CaptureHeader {}
    unsafe impl aya::Pod for CaptureConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeups_come_at_a_quarter_of_the_ring_shared_by_the_cpus() {
        // 16 MiB over 2 CPUs: every 2 MiB per CPU.
        assert_eq!(wakeup_shift(16 << 20, 2), 21);
        // Not a power of two per CPU: rounded down, so the ring never fills first.
        assert_eq!(wakeup_shift(16 << 20, 3), 20);
        assert_eq!(wakeup_shift(4096, 64), 12);
        assert_eq!(wakeup_shift(u32::MAX, 1), 24);
        assert_eq!(wakeup_shift(1 << 20, 0), 18);
    }
}
