//! The TC capture programs: on ingress and egress, copy the metadata and the payload (up to the
//! snap length) of TCP segments on the configured HTTP ports into a ring buffer for the
//! userspace reassembler. Filtering happens here, so only HTTP traffic crosses to userspace; pure
//! ACKs (no payload, no SYN/FIN/RST) are not copied.
//!
//! IP fragments: the kernel reassembles them only after TC, so a request split over fragments
//! would pass unseen. A first fragment of TCP on the HTTP ports is captured whole (from its IP
//! header), and so is every later fragment of TCP (IPv6: every later fragment), whatever its
//! datagram: only the first fragment holds the ports, and it may come last (Linux reassembles a
//! datagram sent last fragment first; a map of first fragments seen would miss it, and could be
//! flushed). Userspace reassembles them and drops the datagrams whose first fragment is not
//! captured when they time out. Unfragmented TCP never reaches this path (the fast path
//! declines fragments by the same test as before).
//!
//! The programs never change a packet's fate: they always return `TC_ACT_OK`. Failures (ring
//! full, a copy that fails, unparseable headers) are counted in `SN_CAP_COUNTERS`.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use sentinel_common::{
    CAP_FLAG_EGRESS, CAP_FLAG_IP_PACKET, CAP_FLAG_TS_REALTIME, CaptureConfig, CaptureCounter,
    CaptureHeader, DEFAULT_RING_BYTES, MAX_COALESCED_RECORDS, MAX_SNAP_LEN,
};

use crate::parse::{self, FRAG_FIRST, FRAG_NONE, IPPROTO_TCP, IPPROTO_UDP, Packet, ptr_at};

#[map]
static SN_CAPTURE: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static SN_CAP_PORTS: Array<u8> = Array::with_max_entries(65536, 0);
#[map]
static SN_CAP_CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);
#[map]
static SN_CAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CaptureCounter::COUNT, 0);

/// Wake the consumer once per 2^17 bytes (128 KiB) of payload written by one CPU when userspace
/// did not say (`CaptureConfig::wakeup_shift`). A wakeup per record (the ring buffer's default)
/// costs an irq_work and a context switch per segment, which under load is most of the capture's
/// cost.
const DEFAULT_WAKEUP_SHIFT: u32 = 17;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// `__sk_buff::tstamp_type` values (`enum skb_tstamp_type` in the kernel).
const BPF_SKB_CLOCK_REALTIME: u8 = 0;
const BPF_SKB_CLOCK_MONOTONIC: u8 = 1;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;

/// A ring buffer record of one size class: the header and up to `N` payload bytes.
#[repr(C)]
struct Record<const N: usize> {
    hdr: CaptureHeader,
    data: [u8; N],
}

/// Capture on ingress (requests arriving at a protected server).
#[classifier]
pub fn sentinel_tc_ingress(ctx: TcContext) -> i32 {
    capture(&ctx, 0);
    TC_ACT_OK
}

/// Capture on egress (responses leaving a protected server).
#[classifier]
pub fn sentinel_tc_egress(ctx: TcContext) -> i32 {
    capture(&ctx, CAP_FLAG_EGRESS);
    TC_ACT_OK
}

/// Benchmark reference: reserves, copies and submits the same bytes as the capture programs
/// would for a plain Ethernet + IPv4 + TCP (no options) frame, and does nothing else.
#[classifier]
pub fn sentinel_tc_reference(ctx: TcContext) -> i32 {
    const OFF: u32 = 14 + 20 + 20;
    let len = ctx.len();
    if len > OFF {
        let snap = capture_config().0;
        let n = len - OFF;
        let n = if n > snap { snap } else { n };
        let hdr = CaptureHeader {
            wire_len: len - OFF,
            // SAFETY: reading a field of the context the kernel passed in.
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            ..CaptureHeader::default()
        };
        emit_class(&ctx, &hdr, OFF, n, 0);
    }
    TC_ACT_OK
}

#[inline(always)]
fn count(c: CaptureCounter, n: u64) {
    if let Some(v) = SN_CAP_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *v += n };
    }
}

/// The snap length and the wakeup shift (0 when capture is not configured).
#[inline(always)]
fn capture_config() -> (u32, u32) {
    match SN_CAP_CONFIG.get(0) {
        Some(c) => {
            let snap = if c.snap_len > MAX_SNAP_LEN {
                MAX_SNAP_LEN
            } else {
                c.snap_len
            };
            let shift = if c.wakeup_shift == 0 || c.wakeup_shift > 40 {
                DEFAULT_WAKEUP_SHIFT
            } else {
                c.wakeup_shift
            };
            (snap, shift)
        }
        None => (0, DEFAULT_WAKEUP_SHIFT),
    }
}

#[inline(always)]
fn port_wanted(port: u16) -> bool {
    SN_CAP_PORTS.get(port as u32).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn capture(ctx: &TcContext, cap_flags: u8) {
    // Uninitialised: the fast path writes every field, so only the slow path zeroes it first
    // (`Packet::zeroed_in`).
    let mut pkt = MaybeUninit::<Packet>::uninit();
    if !parse_v4_tcp(ctx.data(), ctx.data_end(), pkt.as_mut_ptr()) && !parse_slow(ctx, &mut pkt) {
        return;
    }
    // SAFETY: one of the two parsers initialised every field.
    let pkt = unsafe { pkt.assume_init_ref() };
    if pkt.frag != FRAG_NONE {
        fragment(ctx, pkt, cap_flags);
        return;
    }
    if pkt.proto != IPPROTO_TCP {
        if pkt.l4_truncated && pkt.proto != IPPROTO_UDP {
            // An IPv6 extension chain not followed to its end: TCP, perhaps (a UDP header cut
            // short is not).
            count(CaptureCounter::Unfollowed, 1);
        }
        return;
    }
    if pkt.l4_off == 0 {
        // A header out of reach: on which port is unknown, so counted for every TCP packet (a
        // request would otherwise go unseen without a trace).
        count(CaptureCounter::Unfollowed, 1);
        return;
    }
    if !port_wanted(pkt.dst_port) && !port_wanted(pkt.src_port) {
        return;
    }
    // The offset came back through memory from an out-of-line function: bound it again so the
    // verifier accepts the pointer arithmetic (the parser never returns more than this).
    let l4_off = pkt.l4_off;
    if l4_off > parse::MAX_L4_OFFSET {
        return;
    }
    // The TCP header: the parser checked that 20 bytes are there, but pull_data may have moved
    // the buffer, so check again against the current bounds.
    let Some(tcp) = ptr_at::<[u8; 20]>(ctx.data(), ctx.data_end(), l4_off) else {
        count(CaptureCounter::Malformed, 1);
        return;
    };
    // SAFETY: `ptr_at` bounds-checked the 20 bytes.
    let tcp = unsafe { core::ptr::read_unaligned(tcp) };
    let doff = ((tcp[12] >> 4) as usize) * 4;
    if doff < 20 {
        count(CaptureCounter::Malformed, 1);
        return;
    }
    let flags = tcp[13];
    let payload_off = l4_off + doff;
    let wire_len = packet_end(ctx, pkt, l4_off).saturating_sub(payload_off) as u32;
    if wire_len == 0 && flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return;
    }
    let (snap, shift) = capture_config();
    let hdr = CaptureHeader {
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        tcp_flags: flags,
        ..header(ctx, pkt, (pkt.src_port, pkt.dst_port), cap_flags, wire_len)
    };
    let mut cap = wire_len;
    if wire_len > snap {
        // Several wire segments in one skb: its segment size is set and smaller than it.
        // (`gso_segs` is not enough: packets from a virtio or tap header, a VM's TSO, come
        // with a segment size and a count of 0 that the kernel fills in later.)
        // SAFETY: reading a field of the context the kernel passed in.
        let segment = unsafe { (*ctx.skb.skb).gso_size };
        if segment != 0 && wire_len > segment {
            coalesced(ctx, &hdr, payload_off as u32, snap, shift);
            return;
        }
        count(CaptureCounter::Truncated, 1);
        cap = snap;
    }
    emit_class(ctx, &hdr, payload_off as u32, cap, shift);
}

/// A coalesced packet (GSO on egress, GRO on ingress: several wire segments in one skb) longer
/// than the snap length, split back into records as a capture on the wire would see it: the
/// snap length applies to each wire segment (`gso_size` bytes), and when it holds a whole one
/// the payload is copied whole, in records of the largest class. At most
/// [`MAX_COALESCED_RECORDS`]; bytes past them are cut (the last record says how many the wire
/// held). SYN stays on the first record and FIN, RST and PSH on the last, so the reassembler
/// sees one segment's flags where the packet had them.
///
/// The records are written by `bpf_loop`, whose callback the verifier walks once: an unrolled
/// or bounded loop over the record classes is past its million-instruction budget.
#[inline(never)]
fn coalesced(ctx: &TcContext, first: &CaptureHeader, off: u32, snap: u32, shift: u32) {
    // Read again rather than passed: a BPF function takes at most five arguments.
    // SAFETY: reading a field of the context the kernel passed in.
    let segment = unsafe { (*ctx.skb.skb).gso_size };
    let (stride, keep) = if snap >= segment {
        (MAX_SNAP_LEN, MAX_SNAP_LEN)
    } else {
        (segment, snap)
    };
    count(CaptureCounter::Coalesced, 1);
    let mut split = Split {
        skb: ctx.skb.skb,
        first: *first,
        off,
        stride,
        keep,
        shift,
        done: 0,
        cut: 0,
    };
    // SAFETY: the callback reads and writes only `split`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_COALESCED_RECORDS,
            split_record as *mut c_void,
            core::ptr::addr_of_mut!(split) as *mut c_void,
            0,
        );
    }
    if split.cut != 0 {
        count(CaptureCounter::Truncated, 1);
    }
}

/// The state of [`coalesced`]'s loop.
#[repr(C)]
struct Split {
    skb: *mut __sk_buff,
    first: CaptureHeader,
    /// Where the payload starts in the skb.
    off: u32,
    /// Payload bytes per record, and of them copied.
    stride: u32,
    keep: u32,
    shift: u32,
    /// Payload bytes already recorded.
    done: u32,
    /// Non-zero once a record was cut.
    cut: u32,
}

/// One record of a coalesced packet: `bpf_loop`'s callback; 1 stops the loop.
extern "C" fn split_record(i: u32, state: *mut c_void) -> i64 {
    // SAFETY: `coalesced` passes its `Split`, alive for the whole loop.
    let s = unsafe { &mut *(state as *mut Split) };
    let total = s.first.wire_len;
    if s.done >= total {
        return 1;
    }
    let left = total - s.done;
    let last = i >= MAX_COALESCED_RECORDS - 1 || left <= s.stride;
    let len = if last { left } else { s.stride };
    let cap = if len > s.keep { s.keep } else { len };
    if cap < len {
        s.cut = 1;
    }
    let mut flags = s.first.tcp_flags;
    // SYN takes a sequence number before the payload.
    let mut seq = s.first.seq;
    if i > 0 {
        seq = seq.wrapping_add(s.done + ((flags & TCP_SYN) >> 1) as u32);
        flags &= !TCP_SYN;
    }
    if !last {
        flags &= !(TCP_FIN | TCP_RST | TCP_PSH);
    }
    let hdr = CaptureHeader {
        seq,
        tcp_flags: flags,
        wire_len: len,
        ..s.first
    };
    emit_class(&TcContext::new(s.skb), &hdr, s.off + s.done, cap, s.shift);
    s.done += len;
    last as i64
}

/// A record's header for `pkt`, without TCP fields (an IP fragment's): its addresses, `ports`,
/// the time, the interface and the lengths.
#[inline(always)]
fn header(
    ctx: &TcContext,
    pkt: &Packet,
    (src_port, dst_port): (u16, u16),
    cap_flags: u8,
    wire_len: u32,
) -> CaptureHeader {
    let (ts_ns, ts_flags) = timestamp(ctx);
    CaptureHeader {
        ts_ns,
        src: *parse::key(&pkt.src),
        dst: *parse::key(&pkt.dst),
        src_port,
        dst_port,
        seq: 0,
        ack: 0,
        tcp_flags: 0,
        cap_flags: cap_flags | ts_flags,
        _pad: 0,
        // SAFETY: reading a field of the context the kernel passed in.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        wire_len,
        cap_len: 0,
        _pad2: 0,
    }
}

/// Where the IP packet ends in the skb: by the IP length field (frames may be padded: a pure ACK
/// of 54 bytes arrives as 60, and its 6 bytes of padding are no payload), or by the skb length
/// for GSO packets whose length field is 0 (so that it ends before `header`, the offset of the
/// header the copy starts from or after).
#[inline(always)]
fn packet_end(ctx: &TcContext, pkt: &Packet, header: usize) -> usize {
    let skb_len = ctx.len() as usize;
    if pkt.ip_end <= header {
        skb_len
    } else {
        pkt.ip_end.min(skb_len)
    }
}

/// The bytes to copy of `wire_len` (at most the snap length; a cut is counted) and the wakeup
/// shift.
#[inline(always)]
fn snapped(wire_len: u32) -> (u32, u32) {
    let (snap, shift) = capture_config();
    if wire_len > snap {
        count(CaptureCounter::Truncated, 1);
        (snap, shift)
    } else {
        (wire_len, shift)
    }
}

/// An IP fragment (never taken by the fast path), captured whole: a first fragment of TCP on the
/// HTTP ports, and any later fragment of TCP. IPv4 keys a datagram by its protocol, so a later
/// fragment of another protocol is another datagram; IPv6's later fragments carry no
/// upper-layer protocol the receiver reads (the Fragment header's Next Header is the first
/// fragment's), so all of them are taken.
#[inline(never)]
fn fragment(ctx: &TcContext, pkt: &Packet, cap_flags: u8) {
    let (src_port, dst_port) = if pkt.frag == FRAG_FIRST {
        // Ports are never 0 in TCP: 0 and 0 is a header the parser did not reach (an IPv6
        // chain not followed to its end, a first fragment too short), which userspace reads
        // once the datagram is whole.
        let ports_known = pkt.src_port != 0 || pkt.dst_port != 0;
        let wanted = port_wanted(pkt.dst_port) || port_wanted(pkt.src_port);
        if ports_known && (pkt.proto != IPPROTO_TCP || !wanted)
            || !ports_known && !pkt.ipv6 && pkt.proto != IPPROTO_TCP
        {
            return;
        }
        (pkt.src_port, pkt.dst_port)
    } else {
        if !pkt.ipv6 && pkt.proto != IPPROTO_TCP {
            return;
        }
        (0, 0)
    };
    let l3_off = pkt.l3_off as usize;
    let wire_len = packet_end(ctx, pkt, l3_off).saturating_sub(l3_off) as u32;
    if wire_len == 0 {
        return;
    }
    let (cap, shift) = snapped(wire_len);
    let hdr = header(
        ctx,
        pkt,
        (src_port, dst_port),
        cap_flags | CAP_FLAG_IP_PACKET,
        wire_len,
    );
    count(CaptureCounter::Fragments, 1);
    emit_class(ctx, &hdr, l3_off as u32, cap, shift);
}

/// The segment's time: the skb's own timestamp when it has one in a clock userspace can map
/// (monotonic: TCP's earliest departure time on egress, kept across a veth into the peer's
/// ingress; realtime: the RX timestamp, when something enabled them), else the monotonic clock
/// now. `bpf_ktime_get_ns` costs about 30 ns here (a serialising TSC read in a VM), a third
/// of the program on small segments; the skb's stamp costs two loads.
///
/// What it costs in precision: a paced socket's departure time can lie ahead of the moment TC
/// sees the segment by its pacing delay, and a veth peer's stamp is taken microseconds before
/// the segment crosses; both below the latency's microsecond resolution in the common case.
#[inline(always)]
fn timestamp(ctx: &TcContext) -> (u64, u8) {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the context the kernel passed in. Reading `tstamp_type` makes
    // the verifier give the raw `tstamp` on ingress too (kernel 5.18, "bpf: Keep the (rcv)
    // timestamp behavior for the existing tc-bpf@ingress"), with its clock in `tstamp_type`.
    let (ts, clock) = unsafe { ((*skb).tstamp, (*skb).tstamp_type) };
    if ts != 0 {
        if clock == BPF_SKB_CLOCK_MONOTONIC {
            return (ts, 0);
        }
        if clock == BPF_SKB_CLOCK_REALTIME {
            return (ts, CAP_FLAG_TS_REALTIME);
        }
    }
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_ns() }, 0)
}

/// Anything [`parse_v4_tcp`] does not take: the full parser, pulling the headers into the
/// linear part of the skb once when they are not there. False when there is nothing to capture.
#[inline(always)]
fn parse_slow(ctx: &TcContext, out: &mut MaybeUninit<Packet>) -> bool {
    let pkt = Packet::zeroed_in(out);
    let parsed = parse::parse_into(ctx.data(), ctx.data_end(), pkt) == parse::PARSE_OK;
    // Headers cut off by the end of the linear part (not by the packet's) parse as truncated:
    // a TCP header, or an IPv6 extension chain judged on its addresses, needs the pull as much
    // as a failed parse does.
    if parsed && !pkt.l4_truncated {
        return true;
    }
    // Headers may sit outside the linear part of the skb: pull them in once and retry, as far
    // as the parser reads (its transport offset bound and a TCP header with options).
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if len <= linear {
        return parsed;
    }
    const PULL: u32 = (parse::MAX_L4_OFFSET + 60) as u32;
    let _ = ctx.pull_data(if len > PULL { PULL } else { len });
    let pkt = Packet::zeroed_in(out);
    parse::parse_into(ctx.data(), ctx.data_end(), pkt) == parse::PARSE_OK
}

/// The common case without a function call: Ethernet, IPv4 without options, TCP, not a
/// fragment, all 54 header bytes in the linear part. Fills every field of `pkt` (which may be
/// uninitialised) as [`parse::parse_into`] would; false for anything else (the full parser then
/// runs).
#[inline(always)]
fn parse_v4_tcp(data: usize, data_end: usize, pkt: *mut Packet) -> bool {
    const L4: usize = 14 + 20;
    let Some(h) = ptr_at::<[u8; L4 + 20]>(data, data_end, 0) else {
        return false;
    };
    let h = h as *const u8;
    // SAFETY: `ptr_at` checked that the 54 bytes are inside the packet.
    unsafe {
        let at = |i: usize| *h.add(i);
        // EtherType IPv4, version 4 with a 20-byte header, protocol TCP, not a fragment (no
        // offset, no More Fragments: first fragments go to the full parser too).
        if at(12) != 0x08 || at(13) != 0x00 || at(14) != 0x45 || at(23) != IPPROTO_TCP {
            return false;
        }
        if at(20) & 0x3f != 0 || at(21) != 0 {
            return false;
        }
        // Every field is written: `pkt` may be uninitialised (assignments of `Copy` fields
        // through the raw pointer read nothing).
        (*pkt).src = parse::v4_words([at(26), at(27), at(28), at(29)]);
        (*pkt).dst = parse::v4_words([at(30), at(31), at(32), at(33)]);
        (*pkt).proto = IPPROTO_TCP;
        (*pkt).ip_end = 14 + u16::from_be_bytes([at(16), at(17)]) as usize;
        (*pkt).src_port = u16::from_be_bytes([at(L4), at(L4 + 1)]);
        (*pkt).dst_port = u16::from_be_bytes([at(L4 + 2), at(L4 + 3)]);
        (*pkt).l4_off = L4;
        (*pkt).l4_truncated = false;
        (*pkt).frag = FRAG_NONE;
        (*pkt).l3_off = 14;
        (*pkt).ipv6 = false;
    }
    true
}

/// Picks the smallest record class that holds `cap` bytes.
#[inline(always)]
/// `shift`: the wakeup shift, or 0 for a plain submit (the benchmark reference).
fn emit_class(ctx: &TcContext, hdr: &CaptureHeader, off: u32, cap: u32, shift: u32) {
    if cap <= 128 {
        emit::<128>(ctx, hdr, off, cap, shift)
    } else if cap <= 512 {
        emit::<512>(ctx, hdr, off, cap, shift)
    } else if cap <= 2048 {
        emit::<2048>(ctx, hdr, off, cap, shift)
    } else {
        emit::<8192>(ctx, hdr, off, cap, shift)
    }
}

#[inline(always)]
fn emit<const N: usize>(ctx: &TcContext, hdr: &CaptureHeader, off: u32, cap: u32, shift: u32) {
    let Some(mut entry) = SN_CAPTURE.reserve::<Record<N>>(0) else {
        count(CaptureCounter::RingFull, 1);
        return;
    };
    // Bound the length for the verifier, 0 < len <= N. The volatile read keeps the compiler from
    // folding these checks into what it already knows (cap <= snap <= N), which the verifier
    // cannot see through register spills.
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&cap) };
    let len = if len > N as u32 { N as u32 } else { len };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points to a reserved record of `size_of::<Record<N>>()` bytes; the header
    // is written whole and the copy stays within `data`.
    unsafe {
        // Word stores: the reference's header is mostly zeros, which a plain assignment would
        // store with a `memset` call and make the reference slower than a hand-written one.
        parse::store_words(core::ptr::addr_of_mut!((*rec).hdr), hdr);
        (*rec).hdr.cap_len = len;
        if len > 0 && len <= N as u32 {
            let ret = bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                off,
                core::ptr::addr_of_mut!((*rec).data) as *mut c_void,
                len,
            );
            if ret != 0 {
                entry.discard(0);
                count(CaptureCounter::LoadFailed, 1);
                return;
            }
        }
    }
    if shift == 0 {
        // The benchmark reference: a plain submit, nothing else.
        entry.submit(0);
        return;
    }
    // Wake the consumer when this CPU's captured payload crosses a multiple of 2^wakeup_shift
    // bytes (userspace sets it from the ring size); otherwise the consumer's periodic drain
    // picks the records up. The per-CPU counters are updated here anyway, so this costs no
    // helper call, and each wakeup (an irq_work) is rare.
    let mut wake = BPF_RB_NO_WAKEUP;
    count(CaptureCounter::Captured, 1);
    if let Some(b) = SN_CAP_COUNTERS.get_ptr_mut(CaptureCounter::Bytes as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe {
            let old = *b;
            let new = old + len as u64;
            *b = new;
            if (old >> shift) != (new >> shift) {
                wake = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    entry.submit(wake);
}
