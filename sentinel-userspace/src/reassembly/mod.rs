//! TCP stream reassembly: from [`Segment`]s in capture order (live or replayed) to the two byte
//! streams of each connection, in order, handed to a [`StreamHandler`] (the HTTP layer).
//!
//! Policies (all driven by segment timestamps, never the wall clock, so a replay is
//! deterministic):
//! - **Roles.** The sender of a SYN is the client, the sender of a SYN-ACK the server. A flow seen
//!   mid-stream is judged by its first payload (`HTTP/` comes from a server, a request method from a
//!   client) and otherwise by its ports (the lower port is the server's).
//! - **Start of a stream.** A SYN fixes the first sequence number (and a SYN-ACK fixes the
//!   client's through its acknowledgment). A direction whose SYN was not seen holds its data until
//!   the SYN shows up (capture order is not always send order), until `hold_bytes` are held or
//!   `gap_timeout` passes, and then starts at the lowest sequence number it holds.
//! - **Retransmissions and overlaps: first wins.** Bytes already delivered or already buffered are
//!   never replaced. A later copy that differs from a buffered one is counted
//!   (`overlap_conflicts`), since inconsistent retransmissions are an evasion technique; bytes
//!   already delivered are not kept, so overlaps with them are counted (`overlaps`) but not
//!   compared.
//! - **Out of order.** Segments after a hole wait in a per-direction buffer. The hole is declared
//!   a gap (the handler is told its length and resyncs) when it is older than `gap_timeout`, when
//!   the flow buffers more than `flow_cap` bytes, or when the flow ends. A segment cut short by
//!   the capture's snap length is its payload followed by a gap.
//! - **End.** FIN is delivered in sequence order (after all data before it); a flow closes when
//!   both directions finished, on RST, after `idle_timeout` without segments, when evicted, or at
//!   the end of the input ([`Reassembler::finish`]). A closed flow stays as a tombstone for
//!   `linger` so late retransmissions do not open a new, mid-stream flow; a new SYN replaces it.
//! - **Memory.** Every flow costs a fixed overhead plus its buffered bytes plus what its handler
//!   reports. Over `mem_cap` (or `max_flows`), the least recently active flows are closed and
//!   counted until the total is back under 90% of the cap.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
};

use bytes::Bytes;
use serde::Serialize;

use crate::capture::{Segment, segment::flags};

#[cfg(test)]
mod tests;

/// Direction of a byte stream within a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server (requests).
    ToServer = 0,
    /// Server to client (responses).
    ToClient = 1,
}

/// The endpoints of a connection, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    /// The side that opened the connection (or is judged to have).
    pub client: SocketAddr,
    /// The other side.
    pub server: SocketAddr,
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions sent FIN.
    Fin,
    /// A RST.
    Rst,
    /// No segment for `idle_timeout`.
    Idle,
    /// Evicted to stay under the memory or flow cap.
    Evicted,
    /// The input ended.
    End,
    /// A new connection (a SYN with another initial sequence number) took its addresses and
    /// ports before its end was seen.
    Reused,
}

/// What reassembly hands its byte streams to. One `Conn` per flow.
pub trait StreamHandler {
    /// Per-connection state.
    type Conn;
    /// A new flow.
    fn open(&mut self, flow: &FlowInfo, ts_ns: u64) -> Self::Conn;
    /// In-order bytes of one direction; `ts_ns` is the capture time of the segment they came in.
    fn data(&mut self, conn: &mut Self::Conn, flow: &FlowInfo, dir: Dir, ts_ns: u64, data: &[u8]);
    /// `len` bytes of one direction that were never seen (lost to the capture or cut by it).
    fn gap(&mut self, conn: &mut Self::Conn, flow: &FlowInfo, dir: Dir, ts_ns: u64, len: u64);
    /// One direction ended (FIN, in sequence order).
    fn fin(&mut self, conn: &mut Self::Conn, flow: &FlowInfo, dir: Dir, ts_ns: u64);
    /// The flow ended; everything buffered was delivered before this call.
    fn close(&mut self, conn: Self::Conn, flow: &FlowInfo, ts_ns: u64, reason: CloseReason);
    /// Bytes the handler holds for this connection (counted against the memory caps).
    fn mem(conn: &Self::Conn) -> usize;
    /// Bytes the handler's decoders may hold for this connection beyond [`mem`](Self::mem)
    /// (the window a brotli or zstd stream declares): counted against the global cap only,
    /// since turning the flow's held segments into gaps would not free them, only end the
    /// decoding. None by default.
    fn reserved(_conn: &Self::Conn) -> usize {
        0
    }
}

/// Reassembly limits. Times are in nanoseconds of capture time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A flow without segments for this long is closed.
    pub idle_timeout_ns: u64,
    /// A hole in a stream older than this becomes a gap.
    pub gap_timeout_ns: u64,
    /// A closed flow is remembered this long (to ignore late retransmissions).
    pub linger_ns: u64,
    /// Bytes one flow may buffer (out of order plus its handler's) before holes become gaps.
    pub flow_cap: usize,
    /// Bytes all flows together may use before the oldest are evicted.
    pub mem_cap: usize,
    /// Flows tracked at most before the oldest are evicted.
    pub max_flows: usize,
    /// Bytes a direction without a seen SYN holds before it starts at its lowest sequence number.
    pub hold_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 120_000_000_000,
            gap_timeout_ns: 1_000_000_000,
            linger_ns: 5_000_000_000,
            flow_cap: 4 << 20,
            mem_cap: 512 << 20,
            max_flows: 1 << 20,
            hold_bytes: 64 << 10,
        }
    }
}

/// Reassembly counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReassemblyStats {
    /// Segments pushed.
    pub segments: u64,
    /// Payload bytes delivered in order.
    pub bytes_delivered: u64,
    /// Flows opened.
    pub flows_opened: u64,
    /// Flows closed by FIN in both directions.
    pub closed_fin: u64,
    /// Flows closed by RST.
    pub closed_rst: u64,
    /// RSTs whose sequence number was not the sender's next byte (ignored, as the peer's
    /// kernel ignores them: a forged or stale RST must not blind the flow).
    pub rst_ignored: u64,
    /// Times capture time went back by more than a second (a realtime clock stepped back, or
    /// a capture file with a stray stamp in its future): the flows' times moved back with it.
    pub clock_steps: u64,
    /// Flows closed for being idle.
    pub closed_idle: u64,
    /// Flows evicted by the memory or flow cap.
    pub evicted: u64,
    /// Flows closed at the end of the input.
    pub closed_end: u64,
    /// Flows closed because a new connection took their addresses and ports (their end was
    /// not seen: lost, or outside the capture).
    pub closed_reused: u64,
    /// Segments without payload or SYN for no known flow, and bare ACKs for a closed one (the
    /// last ACK of a close), ignored.
    pub ignored: u64,
    /// Segments with data, FIN or RST for a flow that had closed (late retransmissions,
    /// ignored).
    pub late: u64,
    /// Segments that arrived ahead of a hole.
    pub out_of_order: u64,
    /// Segments whose bytes had all been seen (retransmissions).
    pub retransmissions: u64,
    /// Segments that partly overlapped bytes already seen.
    pub overlaps: u64,
    /// Overlapping bytes that differed from the first copy (first wins).
    pub overlap_conflicts: u64,
    /// Holes declared gaps.
    pub gaps: u64,
    /// Bytes in those gaps.
    pub gap_bytes: u64,
    /// Segments cut short by the capture's snap length.
    pub truncated_segments: u64,
    /// Flows tracked now.
    pub flows_current: u64,
    /// Bytes in use now (overheads, buffers, handlers).
    pub mem_current: u64,
    /// Most bytes in use at once.
    pub mem_peak: u64,
}

/// What a tracked flow costs besides its buffers.
pub const FLOW_OVERHEAD: usize = 512;

#[derive(Clone, Debug)]
struct Held {
    seq: u32,
    data: Bytes,
    /// Length on the wire (more than `data` when the snap length cut it).
    wire: u32,
    ts: u64,
}

impl Held {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.wire)
    }
}

#[derive(Debug, Default)]
struct Half {
    synced: bool,
    /// Next expected sequence number (when synced).
    next: u32,
    /// Segments ahead of `next` (or all held segments before sync), sorted by `seq`, not
    /// overlapping each other.
    held: Vec<Held>,
    held_bytes: usize,
    /// When the first held segment arrived (capture time).
    held_since: u64,
    fin_seq: Option<u32>,
    fin_done: bool,
    /// Something was delivered (a late SYN can no longer move the start).
    delivered: bool,
}

/// `a - b` as a signed distance in sequence space.
impl<C> Flow<C> {
    /// Whether `syn` (a SYN without ACK) opens a new connection on this flow's addresses: it
    /// comes from the client, whose stream has already delivered bytes, with an initial
    /// sequence number that is not this connection's: ahead of the stream, or far behind it.
    /// (This connection's own SYN, reordered after its first data, is a little behind.)
    fn starts_anew(&self, syn: &Segment) -> bool {
        let half = &self.halves[Dir::ToServer as usize];
        let rel = diff(syn.seq.wrapping_add(1), half.next);
        syn.src == self.info.client
            && half.delivered
            && half.synced
            && !(-(1 << 20)..=0).contains(&rel)
    }
}

/// Capture time going back by more than this is a clock step, not reordering.
const CLOCK_STEP_NS: u64 = 1_000_000_000;

fn diff(a: u32, b: u32) -> i64 {
    a.wrapping_sub(b) as i32 as i64
}

struct Flow<C> {
    info: FlowInfo,
    halves: [Half; 2],
    conn: Option<C>,
    last_ts: u64,
    mem: usize,
    /// Closed at this time (a tombstone).
    closed_at: Option<u64>,
}

/// A fast non-cryptographic hasher (FxHash); flow keys come from the network, but the map is
/// bounded by `max_flows`, so collision flooding only costs time, never memory.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FlowKey = (SocketAddr, SocketAddr);

fn key(a: SocketAddr, b: SocketAddr) -> FlowKey {
    if a <= b { (a, b) } else { (b, a) }
}

/// Judges which side of a flow seen first through `seg` is the client.
fn roles(seg: &Segment) -> FlowInfo {
    let (src, dst) = (seg.src, seg.dst);
    let client_is_src = if seg.has(flags::SYN) {
        !seg.has(flags::ACK)
    } else if seg.payload.starts_with(b"HTTP/") {
        false
    } else if looks_like_request(&seg.payload) {
        true
    } else {
        src.port() >= dst.port()
    };
    if client_is_src {
        FlowInfo {
            client: src,
            server: dst,
        }
    } else {
        FlowInfo {
            client: dst,
            server: src,
        }
    }
}

fn looks_like_request(p: &[u8]) -> bool {
    let n = p
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    n >= 3 && p.get(n) == Some(&b' ')
}

/// Per-flow TCP reassembly feeding a [`StreamHandler`].
pub struct Reassembler<H: StreamHandler> {
    /// Boxed: a flow with its HTTP parsers is about 1.4 KB, which the table would otherwise
    /// move on every insert, removal and growth.
    flows: HashMap<FlowKey, Box<Flow<H::Conn>>, BuildHasherDefault<FxHasher>>,
    handler: H,
    settings: Settings,
    stats: ReassemblyStats,
    now: u64,
    next_sweep: u64,
    mem: usize,
}

impl<H: StreamHandler> Reassembler<H> {
    /// A reassembler with these limits.
    pub fn new(handler: H, settings: Settings) -> Self {
        Self {
            flows: HashMap::default(),
            handler,
            settings,
            stats: ReassemblyStats::default(),
            now: 0,
            next_sweep: 0,
            mem: 0,
        }
    }

    /// The handler (to collect what it produced).
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The handler, read-only.
    pub fn handler_ref(&self) -> &H {
        &self.handler
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblyStats {
        let mut s = self.stats.clone();
        s.flows_current = self.flows.len() as u64;
        s.mem_current = self.mem as u64;
        s
    }

    /// The limits in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Capture time of the newest segment (or [`Reassembler::advance`]) seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Feeds one segment.
    pub fn push(&mut self, seg: Segment) {
        self.stats.segments += 1;
        self.advance(seg.ts_ns);
        let k = key(seg.src, seg.dst);
        let syn_only = seg.has(flags::SYN) && !seg.has(flags::ACK) && !seg.has(flags::RST);
        match self.flows.get(&k) {
            Some(f) if f.closed_at.is_some() => {
                if syn_only {
                    if let Some(f) = self.flows.remove(&k) {
                        self.mem -= f.mem;
                    }
                    self.open(k, &seg);
                } else if seg.payload.is_empty()
                    && !seg.has(flags::FIN)
                    && !seg.has(flags::RST)
                    && !seg.has(flags::SYN)
                {
                    // A bare ACK: the one that acknowledges the last FIN, not a retransmission.
                    self.stats.ignored += 1;
                    return;
                } else {
                    self.stats.late += 1;
                    return;
                }
            }
            Some(f) if syn_only && f.starts_anew(&seg) => {
                self.close(k, CloseReason::Reused);
                if let Some(f) = self.flows.remove(&k) {
                    self.mem -= f.mem;
                }
                self.open(k, &seg);
            }
            Some(_) => {}
            None => {
                if seg.payload.is_empty() && (!seg.has(flags::SYN) || seg.has(flags::RST)) {
                    self.stats.ignored += 1;
                    return;
                }
                self.open(k, &seg);
            }
        }
        let flow = self.flows.get_mut(&k).expect("present or just opened");
        flow.last_ts = flow.last_ts.max(seg.ts_ns);
        let dir = if seg.src == flow.info.client {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        let now = self.now;
        let s = &self.settings;
        let st = &mut self.stats;
        let h = &mut self.handler;
        let conn = flow.conn.as_mut().expect("open flows have a connection");
        let info = flow.info;

        if seg.has(flags::SYN) {
            let half = &mut flow.halves[dir as usize];
            if !half.delivered {
                half.synced = true;
                half.next = seg.seq.wrapping_add(1);
            }
            // A SYN-ACK acknowledges the client's SYN: the client's stream starts there.
            if seg.has(flags::ACK) && dir == Dir::ToClient {
                let peer = &mut flow.halves[Dir::ToServer as usize];
                if !peer.delivered && !peer.synced {
                    peer.synced = true;
                    peer.next = seg.ack;
                }
            }
        }
        let data_seq = if seg.has(flags::SYN) {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        let wire = seg.wire_len.max(seg.payload.len() as u32);
        if seg.is_truncated() {
            st.truncated_segments += 1;
        }
        let other_held = flow.halves[1 - dir as usize].held_bytes;
        let rst = seg.has(flags::RST) && {
            let ok = rst_in_sequence(&flow.halves[dir as usize], seg.seq);
            if !ok {
                st.rst_ignored += 1;
            }
            ok
        };
        {
            let half = &mut flow.halves[dir as usize];
            if seg.has(flags::FIN) && half.fin_seq.is_none() {
                half.fin_seq = Some(data_seq.wrapping_add(wire));
            }
            if wire > 0 {
                let held = Held {
                    seq: data_seq,
                    data: seg.payload,
                    wire,
                    ts: seg.ts_ns,
                };
                accept(half, held, now, st, h, conn, &info, dir);
            }
            if !half.synced
                && (half.held_bytes > s.hold_bytes
                    || (!half.held.is_empty()
                        && now.saturating_sub(half.held_since) > s.gap_timeout_ns))
            {
                sync_at_lowest(half);
                drain(half, st, h, conn, &info, dir);
            }
            // The cap is the flow's: what the other direction holds counts too.
            if half.synced && half.held_bytes + other_held + H::mem(conn) > s.flow_cap {
                while !half.held.is_empty()
                    && half.held_bytes + other_held + H::mem(conn) > s.flow_cap / 2
                {
                    skip_gap(half, st, h, conn, &info, dir);
                }
            }
            check_fin(now, half, h, conn, &info, dir);
        }
        let both_done = flow.halves.iter().all(|h| h.fin_done);
        let old_mem = flow.mem;
        flow.mem = FLOW_OVERHEAD
            + flow.halves.iter().map(|h| h.held_bytes).sum::<usize>()
            + H::mem(conn)
            + H::reserved(conn);
        self.mem = self.mem + flow.mem - old_mem;
        if rst || both_done {
            let reason = if rst {
                CloseReason::Rst
            } else {
                CloseReason::Fin
            };
            self.close(k, reason);
        }
        if self.mem > self.settings.mem_cap || self.flows.len() > self.settings.max_flows {
            self.evict();
        }
        self.stats.mem_peak = self.stats.mem_peak.max(self.mem as u64);
    }

    fn open(&mut self, k: FlowKey, seg: &Segment) {
        let info = roles(seg);
        self.stats.flows_opened += 1;
        let conn = self.handler.open(&info, seg.ts_ns);
        self.mem += FLOW_OVERHEAD;
        self.flows.insert(
            k,
            Box::new(Flow {
                info,
                halves: [Half::default(), Half::default()],
                conn: Some(conn),
                last_ts: seg.ts_ns,
                mem: FLOW_OVERHEAD,
                closed_at: None,
            }),
        );
    }

    /// Moves capture time forward (live capture calls this on a timer so idle flows close
    /// without traffic); sweeps idle flows, old holes and tombstones.
    pub fn advance(&mut self, now_ns: u64) {
        if now_ns.saturating_add(CLOCK_STEP_NS) < self.now {
            self.step_back(self.now - now_ns);
        }
        if now_ns <= self.now {
            return;
        }
        self.now = now_ns;
        if self.now >= self.next_sweep {
            self.sweep();
            // Holes the sweep made gaps deliver what was held, and the handler may keep more.
            if self.mem > self.settings.mem_cap || self.flows.len() > self.settings.max_flows {
                self.evict();
            }
            let every = (self.settings.gap_timeout_ns / 4).clamp(1_000_000, 1_000_000_000);
            self.next_sweep = self.now + every;
        }
    }

    /// Capture time went back by `delta` (more than [`CLOCK_STEP_NS`], so not segments from
    /// two CPUs out of order): every time kept moves back with it, so that idle timeouts,
    /// holes and lingering closed flows keep running on the new clock. Otherwise they would
    /// all stop until the new clock caught up with the old one (an hour, after a one-hour
    /// step back).
    fn step_back(&mut self, delta: u64) {
        self.stats.clock_steps += 1;
        self.now -= delta;
        self.next_sweep = self.next_sweep.saturating_sub(delta);
        for flow in self.flows.values_mut() {
            flow.last_ts = flow.last_ts.saturating_sub(delta);
            if let Some(at) = flow.closed_at.as_mut() {
                *at = at.saturating_sub(delta);
            }
            for half in &mut flow.halves {
                half.held_since = half.held_since.saturating_sub(delta);
                for h in &mut half.held {
                    h.ts = h.ts.saturating_sub(delta);
                }
            }
        }
    }

    fn sweep(&mut self) {
        let now = self.now;
        let s = self.settings.clone();
        let mut to_close = Vec::new();
        let mut to_drop = Vec::new();
        for (k, flow) in self.flows.iter_mut() {
            if let Some(at) = flow.closed_at {
                if now.saturating_sub(at) > s.linger_ns {
                    to_drop.push(*k);
                }
                continue;
            }
            if now.saturating_sub(flow.last_ts) > s.idle_timeout_ns {
                to_close.push(*k);
                continue;
            }
            let conn = flow.conn.as_mut().expect("open flows have a connection");
            let mut changed = false;
            for dir in [Dir::ToServer, Dir::ToClient] {
                let half = &mut flow.halves[dir as usize];
                if half.held.is_empty() || now.saturating_sub(half.held_since) <= s.gap_timeout_ns {
                    continue;
                }
                changed = true;
                if !half.synced {
                    sync_at_lowest(half);
                    drain(
                        half,
                        &mut self.stats,
                        &mut self.handler,
                        conn,
                        &flow.info,
                        dir,
                    );
                }
                if !half.held.is_empty() {
                    skip_gap(
                        half,
                        &mut self.stats,
                        &mut self.handler,
                        conn,
                        &flow.info,
                        dir,
                    );
                }
                check_fin(now, half, &mut self.handler, conn, &flow.info, dir);
            }
            if changed {
                let old = flow.mem;
                flow.mem = FLOW_OVERHEAD
                    + flow.halves.iter().map(|h| h.held_bytes).sum::<usize>()
                    + H::mem(conn)
                    + H::reserved(conn);
                self.mem = self.mem + flow.mem - old;
                if flow.halves.iter().all(|h| h.fin_done) {
                    to_close.push(*k);
                }
            }
        }
        for k in to_drop {
            if let Some(f) = self.flows.remove(&k) {
                self.mem -= f.mem;
            }
        }
        for k in to_close {
            let reason = if self
                .flows
                .get(&k)
                .is_some_and(|f| f.halves.iter().all(|h| h.fin_done))
            {
                CloseReason::Fin
            } else {
                CloseReason::Idle
            };
            self.close(k, reason);
        }
    }

    /// Closes a flow: delivers everything it holds (holes as gaps), tells the handler, and keeps
    /// a tombstone.
    fn close(&mut self, k: FlowKey, reason: CloseReason) {
        let Some(flow) = self.flows.get_mut(&k) else {
            return;
        };
        if flow.closed_at.is_some() {
            return;
        }
        let info = flow.info;
        if let Some(mut conn) = flow.conn.take() {
            for dir in [Dir::ToServer, Dir::ToClient] {
                let half = &mut flow.halves[dir as usize];
                if !half.synced && !half.held.is_empty() {
                    sync_at_lowest(half);
                }
                drain(
                    half,
                    &mut self.stats,
                    &mut self.handler,
                    &mut conn,
                    &info,
                    dir,
                );
                while !half.held.is_empty() {
                    skip_gap(
                        half,
                        &mut self.stats,
                        &mut self.handler,
                        &mut conn,
                        &info,
                        dir,
                    );
                }
                check_fin(self.now, half, &mut self.handler, &mut conn, &info, dir);
            }
            self.handler.close(conn, &info, self.now, reason);
        }
        match reason {
            CloseReason::Fin => self.stats.closed_fin += 1,
            CloseReason::Rst => self.stats.closed_rst += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Evicted => self.stats.evicted += 1,
            CloseReason::End => self.stats.closed_end += 1,
            CloseReason::Reused => self.stats.closed_reused += 1,
        }
        flow.halves = [Half::default(), Half::default()];
        flow.closed_at = Some(self.now);
        self.mem -= flow.mem;
        flow.mem = FLOW_OVERHEAD;
        self.mem += flow.mem;
        if matches!(
            reason,
            CloseReason::Evicted | CloseReason::End | CloseReason::Idle | CloseReason::Reused
        ) {
            // No tombstone: memory pressure, the end of the input, or a flow idle so long that
            // nothing late is to come (a keep-alive connection that speaks again after its idle
            // close is taken up as a new flow).
            self.mem -= flow.mem;
            self.flows.remove(&k);
        }
    }

    fn evict(&mut self) {
        let target_mem = self.settings.mem_cap / 10 * 9;
        let target_flows = self.settings.max_flows / 10 * 9;
        // Tombstones first (cheapest to lose), then the least recently active flows.
        let mut order: Vec<(bool, u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(k, f)| (f.closed_at.is_none(), f.last_ts, *k))
            .collect();
        order.sort_unstable();
        for (open, _, k) in order {
            if self.mem <= target_mem && self.flows.len() <= target_flows {
                break;
            }
            if open {
                self.close(k, CloseReason::Evicted);
            } else if let Some(f) = self.flows.remove(&k) {
                self.mem -= f.mem;
            }
        }
    }

    /// Closes every flow (the end of a replay): everything held is delivered, holes as gaps.
    pub fn finish(&mut self) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for k in keys {
            if self.flows.get(&k).is_some_and(|f| f.closed_at.is_none()) {
                self.close(k, CloseReason::End);
            } else if let Some(f) = self.flows.remove(&k) {
                self.mem -= f.mem;
            }
        }
    }
}

/// Takes one segment's bytes into a direction: delivers what is next in sequence, holds what is
/// ahead, drops what was seen (first wins).
#[expect(
    clippy::too_many_arguments,
    reason = "split borrows of the reassembler's fields"
)]
fn accept<H: StreamHandler>(
    half: &mut Half,
    seg: Held,
    now: u64,
    st: &mut ReassemblyStats,
    h: &mut H,
    conn: &mut H::Conn,
    info: &FlowInfo,
    dir: Dir,
) {
    if half.synced {
        let rel = diff(seg.seq, half.next);
        let end = rel + seg.wire as i64;
        if end <= 0 {
            st.retransmissions += 1;
            return;
        }
        if rel <= 0 && half.held.is_empty() {
            // The common case: in order (possibly overlapping what was delivered).
            if rel < 0 {
                st.overlaps += 1;
            }
            deliver(half, trim_front(seg, (-rel) as u32), st, h, conn, info, dir);
            return;
        }
        if rel > 0 {
            st.out_of_order += 1;
        }
    }
    insert(half, seg, now, st);
    if half.synced {
        drain(half, st, h, conn, info, dir);
    }
}

fn trim_front(mut seg: Held, n: u32) -> Held {
    if n == 0 {
        return seg;
    }
    let cut = (n as usize).min(seg.data.len());
    seg.data = seg.data.slice(cut..);
    seg.seq = seg.seq.wrapping_add(n);
    seg.wire -= n;
    seg
}

/// Holds a segment, keeping only the bytes no held segment already covers (first wins).
fn insert(half: &mut Half, seg: Held, now: u64, st: &mut ReassemblyStats) {
    if half.held.is_empty() {
        half.held_since = now;
    }
    // Reference point for ordering: the stream's next byte, or before sync the first held seq.
    let base = if half.synced {
        half.next
    } else {
        half.held
            .first()
            .map(|x| x.seq)
            .unwrap_or(seg.seq)
            .wrapping_sub(1 << 30)
    };
    let pos = |s: u32| diff(s, base);
    let (mut s, e) = (pos(seg.seq), pos(seg.seq) + seg.wire as i64);
    let mut pieces: Vec<Held> = Vec::new();
    let mut overlapped = false;
    for x in &half.held {
        let (xs, xe) = (pos(x.seq), pos(x.end()));
        if xe <= s {
            continue;
        }
        if xs >= e {
            break;
        }
        overlapped = true;
        // Compare the overlapping captured bytes.
        let (os, oe) = (s.max(xs), e.min(xe));
        let a = slice_rel(&seg, pos(seg.seq), os, oe);
        let b = slice_rel(x, xs, os, oe);
        let n = a.len().min(b.len());
        if a[..n] != b[..n] {
            st.overlap_conflicts += 1;
        }
        if xs > s {
            pieces.push(piece(&seg, pos(seg.seq), s, xs));
        }
        s = s.max(xe);
        if s >= e {
            break;
        }
    }
    if s < e {
        pieces.push(piece(&seg, pos(seg.seq), s, e));
    }
    if overlapped {
        if pieces.is_empty() {
            st.retransmissions += 1;
        } else {
            st.overlaps += 1;
        }
    }
    for p in pieces {
        let at = half.held.partition_point(|x| pos(x.seq) < pos(p.seq));
        half.held_bytes += p.data.len();
        half.held.insert(at, p);
    }
}

/// Captured bytes of `seg` (starting at relative position `start`) between `a` and `b`.
fn slice_rel(seg: &Held, start: i64, a: i64, b: i64) -> &[u8] {
    let lo = ((a - start) as usize).min(seg.data.len());
    let hi = ((b - start) as usize).min(seg.data.len());
    &seg.data[lo..hi]
}

fn piece(seg: &Held, start: i64, a: i64, b: i64) -> Held {
    let lo = ((a - start) as usize).min(seg.data.len());
    let hi = ((b - start) as usize).min(seg.data.len());
    Held {
        seq: seg.seq.wrapping_add((a - start) as u32),
        data: seg.data.slice(lo..hi),
        wire: (b - a) as u32,
        ts: seg.ts,
    }
}

fn sync_at_lowest(half: &mut Half) {
    if let Some(first) = half.held.first() {
        half.next = first.seq;
        half.synced = true;
    }
}

/// Delivers held segments that are now in sequence.
fn drain<H: StreamHandler>(
    half: &mut Half,
    st: &mut ReassemblyStats,
    h: &mut H,
    conn: &mut H::Conn,
    info: &FlowInfo,
    dir: Dir,
) {
    if !half.synced {
        return;
    }
    while let Some(first) = half.held.first() {
        let rel = diff(first.seq, half.next);
        if rel > 0 {
            break;
        }
        let seg = half.held.remove(0);
        half.held_bytes -= seg.data.len();
        let end = rel + seg.wire as i64;
        if end <= 0 {
            continue;
        }
        deliver(half, trim_front(seg, (-rel) as u32), st, h, conn, info, dir);
    }
    // What is still held waits for a new hole: its wait starts with the first of it, not with
    // the hole just filled.
    if let Some(first) = half.held.first() {
        half.held_since = first.ts;
    }
}

fn deliver<H: StreamHandler>(
    half: &mut Half,
    seg: Held,
    st: &mut ReassemblyStats,
    h: &mut H,
    conn: &mut H::Conn,
    info: &FlowInfo,
    dir: Dir,
) {
    // Nothing after a FIN belongs to the stream.
    let mut wire = seg.wire;
    let mut data = &seg.data[..];
    if let Some(fin) = half.fin_seq {
        let room = diff(fin, seg.seq).max(0) as u32;
        wire = wire.min(room);
        data = &data[..data.len().min(wire as usize)];
    }
    if !data.is_empty() {
        st.bytes_delivered += data.len() as u64;
        h.data(conn, info, dir, seg.ts, data);
    }
    let missing = wire as u64 - data.len() as u64;
    if missing > 0 {
        h.gap(conn, info, dir, seg.ts, missing);
    }
    half.next = seg.seq.wrapping_add(wire);
    half.delivered = true;
}

/// Declares the hole before the first held segment a gap and delivers what follows it.
fn skip_gap<H: StreamHandler>(
    half: &mut Half,
    st: &mut ReassemblyStats,
    h: &mut H,
    conn: &mut H::Conn,
    info: &FlowInfo,
    dir: Dir,
) {
    let Some(first) = half.held.first() else {
        return;
    };
    let len = diff(first.seq, half.next);
    if len > 0 {
        st.gaps += 1;
        st.gap_bytes += len as u64;
        h.gap(conn, info, dir, first.ts, len as u64);
        half.next = first.seq;
    }
    drain(half, st, h, conn, info, dir);
    if !half.held.is_empty() {
        half.held_since = half.held.first().map(|x| x.ts).unwrap_or(half.held_since);
    }
}

/// Whether an RST with sequence number `seq` ends the sender's side (`half`): at the next byte
/// expected from it (or the one after its FIN), or at the end of what it sent that is held past
/// a hole (the ring lost some of it), or when its sequence numbers are not known yet. A
/// receiving kernel acts only on an RST at its next expected byte (RFC 5961), so anything else
/// (a forged RST far out of the window) would close a flow the server keeps.
fn rst_in_sequence(half: &Half, seq: u32) -> bool {
    !half.synced
        || (0..=1).contains(&diff(seq, half.next))
        || half
            .held
            .iter()
            .any(|h| (0..=1).contains(&diff(seq, h.seq.wrapping_add(h.wire))))
}

fn check_fin<H: StreamHandler>(
    ts: u64,
    half: &mut Half,
    h: &mut H,
    conn: &mut H::Conn,
    info: &FlowInfo,
    dir: Dir,
) {
    if half.fin_done {
        return;
    }
    if let Some(fin) = half.fin_seq
        && half.synced
        && diff(half.next, fin) >= 0
    {
        half.fin_done = true;
        h.fin(conn, info, dir, ts);
    }
}
