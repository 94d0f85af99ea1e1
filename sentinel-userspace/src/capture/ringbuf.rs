//! The live capture source: drains the TC programs' ring buffer without busy-waiting (epoll via
//! tokio `AsyncFd`) and decodes each record into a [`Segment`], or, for an IP fragment, hands it
//! to the defragmenter and decodes the datagram it completes.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use sentinel_common::{CAP_FLAG_IP_PACKET, CAP_FLAG_TS_REALTIME, CaptureHeader, RECORD_CLASSES};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    Segment,
    defrag::{DefragStats, Defragmenter},
    pcap::{Link, decode_frame},
};
use crate::verdict::target::addr_of;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header.
    #[error("record of {0} bytes is shorter than the {hdr}-byte header", hdr = size_of::<CaptureHeader>())]
    Short(usize),
    /// The header claims more payload than the record holds.
    #[error("record claims {claimed} payload bytes but holds {held}")]
    Overrun {
        /// `cap_len` of the header.
        claimed: u32,
        /// Bytes after the header.
        held: usize,
    },
    /// More payload than any record class carries.
    #[error("record claims {0} payload bytes, more than the largest record class")]
    TooLong(u32),
}

/// Converts the kernel's `CLOCK_MONOTONIC` stamps to wall-clock time.
///
/// Records carry stamps of either clock: `CLOCK_REALTIME` RX stamps on ingress (when something
/// on the host enabled receive timestamps, as NTP daemons do) and `CLOCK_MONOTONIC` ones (TCP's
/// departure time on egress, the clock read by the TC program). A latency is the difference of
/// a request's stamp and its response's, often one of each, so the offset between the clocks
/// must be the one in force when the stamps were taken: [`drain`] measures it again before
/// every pass (a few milliseconds apart), and a step of the realtime clock (`settimeofday`, an
/// NTP step) reaches the converted stamps on the next pass. Only exchanges in flight across the
/// step (or records left in the ring across it) get a latency off by the step. A step back
/// moves the reassembler's kept times back with it (`Reassembler::advance`), so its idle
/// timeouts and holes keep running; a step forward of more than the idle timeout closes the
/// flows as idle, and they are taken up again as they speak.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    /// Measures the offset between the realtime and monotonic clocks now: the realtime clock
    /// read between two monotonic reads, against their midpoint; of a few tries, the one whose
    /// monotonic reads lie closest (a try preempted between its reads would be off by the
    /// preemption).
    pub fn now() -> Self {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..3 {
            let before = crate::clock::monotonic_ns();
            let real = crate::clock::unix_ns() as i128;
            let after = crate::clock::monotonic_ns();
            let gap = after.saturating_sub(before);
            let offset = real - (before as i128 + after as i128) / 2;
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, offset));
            }
            if gap < 20_000 {
                break;
            }
        }
        Self {
            realtime_minus_monotonic_ns: best.map_or(0, |(_, offset)| offset),
        }
    }

    /// A fixed offset (for tests).
    pub fn with_offset(realtime_minus_monotonic_ns: i128) -> Self {
        Self {
            realtime_minus_monotonic_ns,
        }
    }

    /// Nanoseconds since the Unix epoch for a monotonic stamp.
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.realtime_minus_monotonic_ns).max(0) as u64
    }

    /// How far the realtime clock moved against the monotonic one since `earlier` was measured:
    /// a step (or a leap second); a few microseconds of measurement noise otherwise.
    pub fn step_since(&self, earlier: &Clock) -> i128 {
        self.realtime_minus_monotonic_ns - earlier.realtime_minus_monotonic_ns
    }
}

/// A change of the clocks' offset between two passes above this is reported as a step.
const STEP_REPORT_NS: i128 = 10_000_000;

/// One ring buffer record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A TCP segment.
    Segment(Segment),
    /// An IP fragment, from its IP header on (maybe cut by the snap length).
    Fragment {
        /// Capture time, nanoseconds since the Unix epoch.
        ts_ns: u64,
        /// The packet.
        packet: Bytes,
        /// The IP packet's length as received (`packet` is shorter when the snap length cut
        /// it).
        wire_len: u32,
    },
}

/// Decodes one ring buffer record (header + payload). Checks every length; never trusts the
/// record's own layout beyond what it holds.
pub fn decode(record: &[u8], clock: &Clock) -> Result<Record, DecodeError> {
    let hlen = size_of::<CaptureHeader>();
    if record.len() < hlen {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: `record` holds at least `hlen` bytes; `CaptureHeader` is plain integers (valid for
    // any bit pattern) and the read is unaligned.
    let hdr: CaptureHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let max_class = RECORD_CLASSES[RECORD_CLASSES.len() - 1];
    if hdr.cap_len as usize > max_class {
        return Err(DecodeError::TooLong(hdr.cap_len));
    }
    let held = record.len() - hlen;
    if hdr.cap_len as usize > held {
        return Err(DecodeError::Overrun {
            claimed: hdr.cap_len,
            held,
        });
    }
    let payload = Bytes::copy_from_slice(&record[hlen..hlen + hdr.cap_len as usize]);
    let ts_ns = if hdr.cap_flags & CAP_FLAG_TS_REALTIME != 0 {
        hdr.ts_ns
    } else {
        clock.to_unix_ns(hdr.ts_ns)
    };
    if hdr.cap_flags & CAP_FLAG_IP_PACKET != 0 {
        return Ok(Record::Fragment {
            ts_ns,
            packet: payload,
            wire_len: hdr.wire_len.max(hdr.cap_len),
        });
    }
    Ok(Record::Segment(Segment {
        ts_ns,
        src: SocketAddr::new(addr_of(&hdr.src), hdr.src_port),
        dst: SocketAddr::new(addr_of(&hdr.dst), hdr.dst_port),
        seq: hdr.seq,
        ack: hdr.ack,
        flags: hdr.tcp_flags,
        payload,
        wire_len: hdr.wire_len.max(hdr.cap_len),
    }))
}

/// Counters of the ring buffer consumer.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Records decoded into segments.
    pub records: AtomicU64,
    /// Records that failed to decode.
    pub decode_errors: AtomicU64,
    /// Wake-ups (epoll readiness) that drained the ring.
    pub wakeups: AtomicU64,
    /// What the defragmenter did with them (as of the last drain pass).
    pub defrag: Mutex<DefragStats>,
}

/// The consumer's state across records: the datagrams being reassembled.
#[derive(Default)]
pub struct Consumer {
    defrag: Defragmenter,
    /// Fragments taken since the defragmenter's counters were last published.
    unpublished: bool,
}

impl Consumer {
    /// Decodes one record and hands `sink` the segment it holds, or the one in the datagram a
    /// fragment completes.
    pub fn record(
        &mut self,
        record: &[u8],
        clock: &Clock,
        stats: &RingStats,
        sink: &mut impl SegmentSink,
    ) {
        match decode(record, clock) {
            Ok(Record::Segment(seg)) => {
                stats.records.fetch_add(1, Ordering::Relaxed);
                sink.segment(seg);
            }
            Ok(Record::Fragment {
                ts_ns,
                packet,
                wire_len,
            }) => {
                stats.records.fetch_add(1, Ordering::Relaxed);
                self.unpublished = true;
                if let Some(d) = self.defrag.push_captured(&packet, wire_len as usize, ts_ns)
                    && let Ok(seg) = decode_frame(Link::RawIp, &d, ts_ns)
                {
                    sink.segment(seg);
                }
            }
            Err(e) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "undecodable capture record");
            }
        }
    }

    /// Moves the defragmenter's time on (its timeouts) and publishes its counters when they
    /// changed: a fragment was taken since the last time, or a datagram timed out now. Called
    /// after every drain pass, so what is published is never behind by more than one pass; on
    /// the passes that changed nothing (most of them) the counters are not copied.
    pub fn advance(&mut self, now_unix_ns: u64, stats: &RingStats) {
        let pending = self.defrag.pending();
        self.defrag.advance(now_unix_ns);
        if self.unpublished || pending != self.defrag.pending() {
            self.unpublished = false;
            *stats.defrag.lock().expect("defrag stats lock") = self.defrag.stats();
        }
    }
}

/// How often the consumer drains without a wakeup. The TC programs only wake it when a backlog
/// builds up (a wakeup per record would cost a context switch per segment), so this bounds how
/// long a record waits under light traffic.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Where drained segments go.
pub trait SegmentSink {
    /// One decoded segment, in ring order.
    fn segment(&mut self, seg: Segment);
    /// Called after every drain pass with the wall-clock time (ns since the epoch): the place
    /// for time-driven work (idle timeouts) and for flushing what the segments produced.
    fn idle(&mut self, now_unix_ns: u64);
}

/// Collects the segments (tests, tools).
impl SegmentSink for Vec<Segment> {
    fn segment(&mut self, seg: Segment) {
        self.push(seg);
    }

    fn idle(&mut self, _now_unix_ns: u64) {}
}

/// Drains the ring buffer forever, handing each segment to `sink`: on a wakeup (backlog) and
/// every [`DRAIN_EVERY`] otherwise; it sleeps in between (no busy-waiting). Each pass converts
/// monotonic stamps with the clocks' offset measured just before it (see [`Clock`]). Returns
/// only on an I/O error.
pub async fn drain(
    ring: RingBuf<MapData>,
    stats: &RingStats,
    sink: &mut impl SegmentSink,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns the ring buffer,
    // and `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = Clock::now();
    let mut consumer = Consumer::default();
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                stats.wakeups.fetch_add(1, Ordering::Relaxed);
                clock = remeasure(&clock);
                drain_now(guard.get_inner_mut(), &clock, stats, &mut consumer, sink);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                clock = remeasure(&clock);
                drain_now(fd.get_mut(), &clock, stats, &mut consumer, sink);
            }
        }
        let now = clock.to_unix_ns(crate::clock::monotonic_ns());
        consumer.advance(now, stats);
        sink.idle(now);
    }
}

/// The clocks' offset now; says so when the realtime clock stepped since `previous`.
fn remeasure(previous: &Clock) -> Clock {
    let clock = Clock::now();
    let step = clock.step_since(previous);
    if step.abs() > STEP_REPORT_NS {
        tracing::info!(
            step_ms = (step / 1_000_000) as i64,
            "the realtime clock stepped: capture stamps follow it from now on; latencies of \
             exchanges in flight across the step are off by it"
        );
    }
    clock
}

fn drain_now(
    ring: &mut RingBuf<MapData>,
    clock: &Clock,
    stats: &RingStats,
    consumer: &mut Consumer,
    sink: &mut impl SegmentSink,
) {
    while let Some(item) = ring.next() {
        consumer.record(&item, clock, stats, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_common::v4_mapped;

    fn record(cap_len: u32, payload: &[u8], extra: usize) -> Vec<u8> {
        let hdr = CaptureHeader {
            ts_ns: 1_000,
            src: v4_mapped([198, 18, 0, 100]),
            dst: v4_mapped([198, 18, 0, 1]),
            src_port: 40000,
            dst_port: 80,
            seq: 7,
            ack: 9,
            tcp_flags: 0x18,
            cap_flags: 0,
            _pad: 0,
            ifindex: 3,
            wire_len: 100,
            cap_len,
            _pad2: 0,
        };
        let mut v = vec![0u8; size_of::<CaptureHeader>()];
        // SAFETY: `v` is exactly one header long.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), hdr) };
        v.extend_from_slice(payload);
        v.resize(v.len() + extra, 0);
        v
    }

    #[test]
    fn decodes_a_record_into_a_segment() {
        let rec = record(5, b"GET /", 123);
        let Record::Segment(s) = decode(&rec, &Clock::with_offset(1_000_000)).unwrap() else {
            panic!("a segment");
        };
        assert_eq!(s.ts_ns, 1_001_000);
        assert_eq!(s.src, "198.18.0.100:40000".parse().unwrap());
        assert_eq!(s.dst, "198.18.0.1:80".parse().unwrap());
        assert_eq!((s.seq, s.ack, s.flags), (7, 9, 0x18));
        assert_eq!(&s.payload[..], b"GET /");
        assert_eq!(s.wire_len, 100);
        assert!(s.is_truncated());
    }

    #[test]
    fn a_clock_measured_after_a_realtime_step_converts_by_the_new_offset_and_tells_the_step() {
        let before = Clock::with_offset(1_000_000);
        let after = Clock::with_offset(1_000_000 + 3_600_000_000_000);
        assert_eq!(after.step_since(&before), 3_600_000_000_000);
        // A realtime stamp taken after the step and a monotonic one converted after it agree.
        assert_eq!(after.to_unix_ns(500), 500 + 1_000_000 + 3_600_000_000_000);
        // Two measurements without a step differ by measurement noise only.
        let (a, b) = (Clock::now(), Clock::now());
        assert!(b.step_since(&a).abs() < STEP_REPORT_NS, "{a:?} {b:?}");
    }

    #[test]
    fn realtime_stamps_are_taken_as_they_are() {
        let mut rec = record(5, b"GET /", 0);
        rec[core::mem::offset_of!(CaptureHeader, cap_flags)] = CAP_FLAG_TS_REALTIME;
        let Record::Segment(s) = decode(&rec, &Clock::with_offset(1_000_000)).unwrap() else {
            panic!("a segment");
        };
        assert_eq!(s.ts_ns, 1_000);
    }

    /// The fragments of a request's IP packet as the TC programs record them, out of order:
    /// the consumer hands on the segment of the datagram they make.
    #[test]
    fn fragment_records_are_reassembled_into_their_segment() {
        use crate::capture::{
            defrag::DEFAULT_TIMEOUT_NS,
            synth::{fragments, ip_packet, seg},
        };
        for (c, s) in [
            ("198.18.0.100:40000", "198.18.0.1:80"),
            ("[2001:db8::100]:40000", "[2001:db8::1]:80"),
        ] {
            let body = b"GET /search?q=1%27%20OR%20%271%27=%271 HTTP/1.1\r\nHost: x\r\n\r\n";
            let want = seg(
                5_000,
                c.parse().unwrap(),
                s.parse().unwrap(),
                10,
                20,
                0x18,
                body,
            );
            let frags = fragments(&ip_packet(&want), 7, &[0, 32, 64]);
            let mut sink = Vec::new();
            let stats = RingStats::default();
            let mut consumer = Consumer::default();
            for k in [2, 0, 1] {
                let mut rec = record(frags[k].len() as u32, &frags[k], 0);
                rec[core::mem::offset_of!(CaptureHeader, cap_flags)] =
                    CAP_FLAG_IP_PACKET | CAP_FLAG_TS_REALTIME;
                rec[..8].copy_from_slice(&5_000u64.to_ne_bytes());
                consumer.record(&rec, &Clock::with_offset(0), &stats, &mut sink);
            }
            consumer.advance(6_000, &stats);
            assert_eq!(sink, vec![want], "{c}");
            let published = stats.defrag.lock().unwrap().clone();
            assert_eq!((published.fragments, published.reassembled), (3, 1));
            // A lone fragment is published; passes that change nothing publish nothing (the
            // reset below stays); its timeout is published.
            let mut rec = record(frags[1].len() as u32, &frags[1], 0);
            rec[core::mem::offset_of!(CaptureHeader, cap_flags)] =
                CAP_FLAG_IP_PACKET | CAP_FLAG_TS_REALTIME;
            rec[..8].copy_from_slice(&7_000u64.to_ne_bytes());
            consumer.record(&rec, &Clock::with_offset(0), &stats, &mut sink);
            consumer.advance(8_000, &stats);
            assert_eq!(stats.defrag.lock().unwrap().pending, 1);
            *stats.defrag.lock().unwrap() = DefragStats::default();
            consumer.advance(9_000, &stats);
            assert_eq!(*stats.defrag.lock().unwrap(), DefragStats::default());
            consumer.advance(7_000 + DEFAULT_TIMEOUT_NS, &stats);
            let published = stats.defrag.lock().unwrap().clone();
            assert_eq!(
                (
                    published.timed_out,
                    published.pending,
                    published.reassembled
                ),
                (1, 0, 1)
            );
        }
    }

    #[test]
    fn rejects_short_and_lying_records() {
        assert_eq!(
            decode(&[0u8; 10], &Clock::with_offset(0)),
            Err(DecodeError::Short(10))
        );
        let rec = record(50, b"abc", 0);
        assert_eq!(
            decode(&rec, &Clock::with_offset(0)),
            Err(DecodeError::Overrun {
                claimed: 50,
                held: 3
            })
        );
        let rec = record(100_000, b"", 0);
        assert_eq!(
            decode(&rec, &Clock::with_offset(0)),
            Err(DecodeError::TooLong(100_000))
        );
    }
}
