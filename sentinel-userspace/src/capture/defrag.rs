//! IP defragmentation before TCP reassembly, for IPv4 and IPv6 (Fragment extension header).
//!
//! A server's kernel reassembles IP fragments before its TCP stack sees them, so a request split
//! over fragments (a classic way past an IDS) is served. To see what the server sees, this
//! module reassembles as the Linux receiver does (`net/ipv4/inet_fragment.c`,
//! `ip_fragment.c`, `ipv6/reassembly.c`):
//!
//! - a datagram is keyed by source, destination, identification and (IPv4) protocol; it is
//!   reassembled from the first fragment's header (IPv6: its unfragmentable part) once the
//!   first and last fragments are in and no byte is missing;
//! - a fragment that overlaps what is held drops the whole datagram (Linux since the
//!   FragmentSmack fixes; RFC 5722 for IPv6); one that only repeats bytes inside a run of
//!   fragments already held is a duplicate and is dropped alone, as Linux does (runs: fragments
//!   that arrived each right behind the one before);
//! - two different ends, data past the end, an empty fragment or a datagram over 65535 bytes
//!   drop the datagram; an IPv4 fragment that is not the last is cut to a multiple of 8 bytes,
//!   an IPv6 one that is not a multiple of 8 is dropped;
//! - a datagram not complete 33 s (stream time) after its first fragment is dropped: Linux's
//!   30 s timer can fire up to about 2 s late, so this keeps a datagram at least as long as the
//!   server may (see [`DEFAULT_TIMEOUT_NS`]).
//!
//! Memory is bounded as Linux bounds it: the bytes held (data plus a fixed charge per fragment
//! and per datagram) are capped per address family (IPv4 and IPv6 have a pool each), and a
//! fragment that would take its pool over the cap is refused, whatever datagram it is for: no
//! datagram held is evicted for it (else junk could push out a datagram the server still
//! holds, and a second copy of its fragments would start a new one here). A per-datagram cap
//! (above what any legal datagram needs) bounds one datagram's share. Every drop is
//! counted in [`DefragStats`].
//!
//! Ways in which this is not the server's kernel: its pools are charged by buffer sizes
//! (`truesize`) and refuse fragments once over the cap rather than before, so when a pool is
//! near full the two refuse at slightly different points (and the kernel's pools hold traffic
//! this process does not capture); and Linux restarts a queue that fell 64 fragments of its
//! source behind (`ipfrag_max_dist`), which depends on traffic this process does not see whole.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use serde::Serialize;

/// The largest IP datagram (IPv4 total length, IPv6 payload length; no jumbograms).
pub const MAX_DATAGRAM: usize = 65535;
/// A datagram is given up this long after its first fragment: 33 s. Linux's `ipfrag_time` is
/// 30 s, but its timer is on the timer wheel, which rounds an expiry up to its level's
/// granule: 30 s is 7500 jiffies at HZ=250, in the level of 512-jiffy granules, so the timer
/// fires up to 2.048 s late (1.7 s at HZ=300, 0.64 s at HZ=100, 0.5 s at HZ=1000), more under
/// softirq load, and until it fires a fragment that completes the datagram is served. The
/// rest is margin for that and for capture timestamps against the kernel's jiffies. Keeping a
/// datagram longer than the server can errs toward analysing one it may not have served (or
/// joining a fragment the server put in a fresh datagram) rather than missing one it did.
pub const DEFAULT_TIMEOUT_NS: u64 = 33_000_000_000;
/// Linux's `ipfrag_high_thresh` (4 MiB).
pub const DEFAULT_MEM_CAP: usize = 4 << 20;
/// Bytes one datagram may hold: any legal datagram, however fragmented (Linux has no
/// per-datagram cap): its charge, an IPv6 fixed header, 65535 bytes and the charge of the most
/// fragments it can come in (8 bytes each but the last: 8192).
pub const DEFAULT_DATAGRAM_CAP: usize =
    DATAGRAM_CHARGE + 40 + MAX_DATAGRAM + (MAX_DATAGRAM / 8 + 1) * FRAGMENT_CHARGE;

/// Bytes charged for each fragment held, on top of its data.
const FRAGMENT_CHARGE: usize = 64;
/// Bytes charged for each datagram held, on top of its header and fragments.
const DATAGRAM_CHARGE: usize = 128;

const PROTO_FRAGMENT: u8 = 44;

/// Limits of the defragmenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefragSettings {
    /// Bytes held over the datagrams in progress of one address family (each has its own
    /// pool); a fragment that would take its pool past it is refused.
    pub mem_cap: usize,
    /// Bytes one datagram may hold; past it the datagram is dropped.
    pub datagram_cap: usize,
    /// Nanoseconds of stream time after its first fragment that a datagram is given up.
    pub timeout_ns: u64,
}

impl Default for DefragSettings {
    fn default() -> Self {
        Self {
            mem_cap: DEFAULT_MEM_CAP,
            datagram_cap: DEFAULT_DATAGRAM_CAP,
            timeout_ns: DEFAULT_TIMEOUT_NS,
        }
    }
}

/// What the defragmenter did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DefragStats {
    /// Fragments taken in.
    pub fragments: u64,
    /// Datagrams reassembled.
    pub reassembled: u64,
    /// Datagrams dropped whole for an overlapping fragment.
    pub overlaps: u64,
    /// Fragments dropped as duplicates of bytes held (the datagram kept).
    pub duplicates: u64,
    /// Datagrams given up incomplete after the timeout.
    pub timed_out: u64,
    /// Fragments refused because their family's pool was full (no datagram held is evicted).
    pub refused: u64,
    /// Datagrams dropped for being larger than 65535 bytes or the per-datagram cap.
    pub too_big: u64,
    /// Datagrams (or fragments) dropped for inconsistent lengths or headers.
    pub invalid: u64,
    /// IPv4 fragments dropped for a bad header checksum (Linux drops them before reassembly).
    pub bad_checksum: u64,
    /// Fragments dropped for an IP length past the end of the packet as received (Linux:
    /// "truncated packet"; a capture's snap length is not that: it is told the wire length).
    pub truncated: u64,
    /// Datagrams dropped for fragments with Not-ECT mixed with ECT or CE (RFC 3168; Linux's
    /// `ip_frag_ecn_table`).
    pub ecn: u64,
    /// Datagrams in progress now.
    pub pending: u64,
    /// Bytes held now, both pools together (as charged against the memory caps).
    pub pending_bytes: u64,
}

/// How the status line groups a [`DefragStats`] counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefragGroup {
    /// What was taken in, reassembled or is held.
    Seen,
    /// Datagrams dropped whole.
    DatagramsDropped,
    /// Fragments dropped alone.
    FragmentsDropped,
}

/// One [`DefragStats`] counter, as the status reports it.
#[derive(Clone, Copy, Debug)]
pub struct DefragField {
    /// Its field name, as serialized.
    pub name: &'static str,
    /// Where the status line puts it.
    pub group: DefragGroup,
    /// What the status line calls it, after its value.
    pub says: &'static str,
}

const fn field(name: &'static str, group: DefragGroup, says: &'static str) -> DefragField {
    DefragField { name, group, says }
}

impl DefragStats {
    /// What the status line says of each counter, in the struct's order (a test checks that
    /// it names every serialized field).
    pub const FIELDS: [DefragField; 13] = {
        use DefragGroup::*;
        [
            field("fragments", Seen, "fragments taken"),
            field("reassembled", Seen, "datagrams reassembled"),
            field("overlaps", DatagramsDropped, "overlapping"),
            field("duplicates", FragmentsDropped, "duplicate"),
            field("timed_out", DatagramsDropped, "timed out"),
            field("refused", FragmentsDropped, "refused (memory cap)"),
            field("too_big", DatagramsDropped, "too big"),
            field("invalid", DatagramsDropped, "invalid"),
            field("bad_checksum", FragmentsDropped, "bad checksum"),
            field("truncated", FragmentsDropped, "truncated"),
            field("ecn", DatagramsDropped, "mixed ECN"),
            field("pending", Seen, "pending"),
            field("pending_bytes", Seen, "bytes held"),
        ]
    };

    /// Every counter by its serialized field name: what the status JSON reports.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        let serde_json::Value::Object(fields) = serde_json::to_value(self).expect("serialisable")
        else {
            unreachable!("a struct serializes to an object");
        };
        fields
            .into_iter()
            .map(|(k, v)| (k, v.as_u64().expect("counters are u64")))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    /// IPv4's protocol; 0 for IPv6 (its key is addresses and identification).
    proto: u8,
}

/// One fragment, parsed.
struct Fragment<'a> {
    key: Key,
    /// Byte offset of its data in the datagram.
    offset: usize,
    /// Offset of the end of its data, by the IP header's lengths.
    end: usize,
    /// More fragments follow.
    more: bool,
    /// Its data as captured (shorter than `end - offset` when the capture cut it).
    data: &'a [u8],
    /// The header to rebuild the datagram with (only read from the first fragment): IPv4's
    /// header, IPv6's unfragmentable part with the Fragment header's next header patched in.
    head: &'a [u8],
    /// IPv6: where in `head` the next-header byte to patch is, and its value.
    patch: Option<(usize, u8)>,
    /// IPv6: a first fragment that does not hold every header through the upper-layer one
    /// (RFC 8200 4.5: discarded).
    head_incomplete: bool,
    /// Its ECN codepoint as Linux's `IPFRAG_ECN_*` bit.
    ecn: u8,
    /// The IP packet's length by its header (IPv4 total length, IPv6 40 + payload length).
    ip_len: usize,
}

/// What an IP packet is to the defragmenter.
enum Parsed<'a> {
    /// Not a fragment (or not an IP packet, or one cut before it could tell).
    Whole,
    /// A fragment it can take.
    Fragment(Fragment<'a>),
    /// A fragment whose headers do not hold together (or were cut by the capture before its
    /// identification): dropped and counted invalid.
    Malformed,
}

/// Parses `ip` (an IP packet from its header on) as a fragment.
fn parse(ip: &[u8]) -> Parsed<'_> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => parse_v4(ip),
        Some(6) => parse_v6(ip),
        _ => Parsed::Whole,
    }
}

struct Piece {
    end: usize,
    data: Bytes,
}

struct Datagram {
    /// Creation order (timeouts go oldest first).
    seq: u64,
    created_ns: u64,
    /// Linux's `q.len`: the end of the datagram's data as known so far.
    len: usize,
    last_in: bool,
    /// The first fragment's header, once it is in.
    head: Option<Vec<u8>>,
    /// Bytes of data held (by the IP lengths).
    meat: usize,
    /// Fragments by offset.
    pieces: BTreeMap<usize, Piece>,
    /// Runs of fragments (start -> end): fragments that each arrived right behind the last one.
    runs: BTreeMap<usize, usize>,
    /// Bytes charged against the caps.
    charged: usize,
    /// The `IPFRAG_ECN_*` bits of the fragments taken.
    ecn: u8,
}

/// Where an inserted fragment goes.
enum Insert {
    Added,
    Duplicate,
    Overlap,
}

impl Datagram {
    fn new(seq: u64, created_ns: u64) -> Self {
        Self {
            seq,
            created_ns,
            len: 0,
            last_in: false,
            head: None,
            meat: 0,
            pieces: BTreeMap::new(),
            runs: BTreeMap::new(),
            charged: DATAGRAM_CHARGE,
            ecn: 0,
        }
    }

    /// `inet_frag_queue_insert`: appended to the last run, a run of its own, a duplicate (all
    /// inside one run) or an overlap (anything else that touches a run).
    fn insert(&mut self, offset: usize, end: usize) -> Insert {
        // Runs never overlap, so the last run (highest start) is the one that ends highest:
        // Linux's `fragments_tail`.
        match self.runs.last_key_value().map(|(&s, &e)| (s, e)) {
            None => {
                self.runs.insert(offset, end);
            }
            Some((run, tail_end)) if end > tail_end => {
                if offset < tail_end {
                    return Insert::Overlap;
                }
                if offset == tail_end {
                    self.runs.insert(run, end);
                } else {
                    self.runs.insert(offset, end);
                }
            }
            Some(_) => {
                // The run with the highest start before `end` is the one that can touch it.
                if let Some((&start, &run_end)) = self.runs.range(..end).next_back()
                    && run_end > offset
                {
                    return if offset >= start && end <= run_end {
                        Insert::Duplicate
                    } else {
                        Insert::Overlap
                    };
                }
                self.runs.insert(offset, end);
            }
        }
        Insert::Added
    }

    /// The datagram: the first fragment's header with its lengths set, then the data up to the
    /// first byte the capture did not keep.
    fn assemble(&self) -> Vec<u8> {
        let head = self.head.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(head.len() + self.len);
        out.extend_from_slice(head);
        for (offset, p) in &self.pieces {
            out.extend_from_slice(&p.data);
            if p.data.len() < p.end - offset {
                break;
            }
        }
        if head.first().is_some_and(|b| b >> 4 == 4) {
            let total = (head.len() + self.len) as u16;
            out[2..4].copy_from_slice(&total.to_be_bytes());
            // Flags and fragment offset: none; the checksum redone (`ip_send_check`).
            out[6] = 0;
            out[7] = 0;
            set_ipv4_header_checksum(&mut out);
        } else if head.len() >= 40 {
            let payload = (head.len() - 40 + self.len) as u16;
            out[4..6].copy_from_slice(&payload.to_be_bytes());
        }
        out
    }
}

/// Reassembles IP fragments into datagrams (see the module's documentation).
pub struct Defragmenter {
    settings: DefragSettings,
    datagrams: HashMap<Key, Datagram>,
    /// Creation order -> key.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    /// Bytes held by the IPv4 and the IPv6 pool.
    held: [usize; 2],
    stats: DefragStats,
}

impl Default for Defragmenter {
    fn default() -> Self {
        Self::new(DefragSettings::default())
    }
}

/// Why a datagram is dropped.
#[derive(Clone, Copy)]
enum Drop {
    Overlap,
    TimedOut,
    TooBig,
    Invalid,
    Ecn,
}

impl Defragmenter {
    /// A defragmenter with these limits (a per-datagram cap above the global one is the global
    /// one).
    pub fn new(mut settings: DefragSettings) -> Self {
        settings.datagram_cap = settings.datagram_cap.min(settings.mem_cap);
        Self {
            settings,
            datagrams: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            held: [0; 2],
            stats: DefragStats::default(),
        }
    }

    /// Counters (with the datagrams and bytes held now).
    pub fn stats(&self) -> DefragStats {
        DefragStats {
            pending: self.pending() as u64,
            pending_bytes: (self.held[0] + self.held[1]) as u64,
            ..self.stats.clone()
        }
    }

    /// Datagrams in progress now (what [`Self::stats`] reports as `pending`, without copying the
    /// counters).
    pub fn pending(&self) -> usize {
        self.datagrams.len()
    }

    /// True when `ip` (an IP packet from its header on) is a fragment: IPv4 with More Fragments
    /// or an offset, IPv6 with a Fragment header that is not an atomic fragment.
    /// A malformed one (which [`Self::push`] counts invalid) is a fragment too. (For tests: the
    /// readers hand every packet to [`Self::push_captured`], which tells.)
    #[cfg(test)]
    pub(crate) fn is_fragment(ip: &[u8]) -> bool {
        !matches!(parse(ip), Parsed::Whole)
    }

    /// Moves stream time on: datagrams whose first fragment came `timeout` or longer before
    /// `now_ns` are given up.
    pub fn advance(&mut self, now_ns: u64) {
        while let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            let d = &self.datagrams[&key];
            if now_ns < d.created_ns.saturating_add(self.settings.timeout_ns) {
                break;
            }
            self.drop_datagram(&key, Drop::TimedOut);
        }
    }

    /// Takes one IP packet, whole as received (from its header on; link padding after it is
    /// fine), at `ts_ns`: [`Self::push_captured`] with nothing cut by the capture.
    pub fn push(&mut self, ip: &[u8], ts_ns: u64) -> Option<Vec<u8>> {
        self.push_captured(ip, ip.len(), ts_ns)
    }

    /// Takes one IP packet (from its header on) captured at `ts_ns`, of which the capture kept
    /// `ip` and the wire held `wire_len` bytes (pcap's original length, the ring buffer
    /// record's wire length, less the link header). Returns the reassembled datagram when this
    /// fragment completed one. A packet that is not a fragment is ignored.
    ///
    /// A fragment whose IP length is past `wire_len` is dropped, as Linux drops it before
    /// reassembly. One only the capture cut (its IP length within `wire_len`) is what Linux
    /// took whole: it holds its whole range (a later copy of those bytes is a duplicate, as
    /// for Linux), and the datagram it completes is given back up to the first byte the
    /// capture did not keep, with the header's full lengths: the segment decoded from it has
    /// a wire length past its payload, as a segment cut by the snap length has, and the TCP
    /// reassembly treats it as such.
    pub fn push_captured(&mut self, ip: &[u8], wire_len: usize, ts_ns: u64) -> Option<Vec<u8>> {
        self.advance(ts_ns);
        let mut f = match parse(ip) {
            Parsed::Whole => return None,
            Parsed::Malformed => {
                self.stats.fragments += 1;
                self.stats.invalid += 1;
                return None;
            }
            Parsed::Fragment(f) => f,
        };
        self.stats.fragments += 1;
        let v6 = f.patch.is_some();
        // `ip_rcv_core` / `ipv6_rcv`: the header checksum, then the length as received.
        if !v6 && internet_checksum(&ip[..f.head.len()]) != 0 {
            self.stats.bad_checksum += 1;
            return None;
        }
        if f.ip_len > wire_len.max(ip.len()) {
            self.stats.truncated += 1;
            return None;
        }
        if !v6 && f.more && f.end & 7 != 0 {
            // IPv4: a fragment that is not the last is cut to a multiple of 8 bytes.
            f.end &= !7;
            f.data = &f.data[..f.data.len().min(f.end.saturating_sub(f.offset))];
        }
        if v6 && f.more && f.end & 7 != 0 {
            // IPv6: dropped alone (Linux answers with a parameter problem).
            self.stats.invalid += 1;
            return None;
        }
        if v6 && (f.end > MAX_DATAGRAM || f.head_incomplete) {
            self.stats.invalid += 1;
            return None;
        }
        let key = f.key;
        let pool = v6 as usize;
        let head_len = if f.offset == 0 { f.head.len() } else { 0 };
        let charge = FRAGMENT_CHARGE + f.data.len() + head_len;
        let new = !self.datagrams.contains_key(&key);
        let new_charge = if new { DATAGRAM_CHARGE } else { 0 };
        if self.held[pool] + new_charge + charge > self.settings.mem_cap {
            // `inet_frag_find`: a full pool takes no fragment, for a new datagram or not.
            self.stats.refused += 1;
            return None;
        }
        if new {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.datagrams.insert(key, Datagram::new(seq, ts_ns));
            self.order.insert(seq, key);
            self.held[pool] += DATAGRAM_CHARGE;
        }
        let d = self.datagrams.get_mut(&key).expect("inserted above");
        // The ends: the last fragment sets it; nothing may lie past it or disagree with it.
        if !f.more {
            if f.end < d.len || (d.last_in && f.end != d.len) {
                self.drop_datagram(&key, Drop::Invalid);
                return None;
            }
            d.last_in = true;
            d.len = f.end;
        } else if f.end > d.len {
            if d.last_in {
                self.drop_datagram(&key, Drop::Invalid);
                return None;
            }
            d.len = f.end;
        }
        if f.end == f.offset {
            self.drop_datagram(&key, Drop::Invalid);
            return None;
        }
        match d.insert(f.offset, f.end) {
            Insert::Added => {}
            Insert::Duplicate => {
                self.stats.duplicates += 1;
                return None;
            }
            Insert::Overlap => {
                self.drop_datagram(&key, Drop::Overlap);
                return None;
            }
        }
        if d.charged + charge > self.settings.datagram_cap {
            self.drop_datagram(&key, Drop::TooBig);
            return None;
        }
        d.charged += charge;
        d.ecn |= f.ecn;
        d.meat += f.end - f.offset;
        d.pieces.insert(
            f.offset,
            Piece {
                end: f.end,
                data: Bytes::copy_from_slice(f.data),
            },
        );
        if f.offset == 0 {
            let mut head = f.head.to_vec();
            if let Some((at, nh)) = f.patch {
                head[at] = nh;
            }
            d.head = Some(head);
        }
        let complete = d.head.is_some() && d.last_in && d.meat == d.len;
        let ecn_mixed = d.ecn & ECN_NOT_ECT != 0 && d.ecn & !ECN_NOT_ECT != 0;
        let size = d.head.as_ref().map_or(0, Vec::len) + d.len;
        let v6_head = d.head.as_ref().map_or(0, |h| h.len().saturating_sub(40));
        self.held[pool] += charge;
        if complete {
            // IPv4's total length covers the header; IPv6's payload length the extension
            // headers, not the fixed 40 bytes.
            let over = if v6 {
                v6_head + d.len > MAX_DATAGRAM
            } else {
                size > MAX_DATAGRAM
            };
            if over {
                self.drop_datagram(&key, Drop::TooBig);
                return None;
            }
            if ecn_mixed {
                // `ip_frag_reasm`: Not-ECT with ECT or CE is not reassembled.
                self.drop_datagram(&key, Drop::Ecn);
                return None;
            }
            let out = d.assemble();
            self.remove(&key);
            self.stats.reassembled += 1;
            return Some(out);
        }
        None
    }

    fn remove(&mut self, key: &Key) -> Option<Datagram> {
        let d = self.datagrams.remove(key)?;
        self.order.remove(&d.seq);
        self.held[key.src.is_ipv6() as usize] -= d.charged;
        Some(d)
    }

    fn drop_datagram(&mut self, key: &Key, why: Drop) {
        if self.remove(key).is_none() {
            return;
        }
        let c = match why {
            Drop::Overlap => &mut self.stats.overlaps,
            Drop::TimedOut => &mut self.stats.timed_out,
            Drop::TooBig => &mut self.stats.too_big,
            Drop::Invalid => &mut self.stats.invalid,
            Drop::Ecn => &mut self.stats.ecn,
        };
        *c += 1;
    }
}

/// Sets the checksum of the IPv4 header at the start of `ip` (its length from its IHL) right,
/// as `ip_send_check` does.
pub fn set_ipv4_header_checksum(ip: &mut [u8]) {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = internet_checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of `data`: the ones' complement of the ones' complement
/// sum of its 16-bit big-endian words (an odd last byte padded with a zero). 0 when `data`
/// holds its own right checksum; with the checksum field zeroed, the value to put there. For
/// TCP and UDP, `data` is the pseudo-header followed by the segment (see
/// [`super::synth::set_tcp_checksum`]).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Linux's `IPFRAG_ECN_NOT_ECT`; ECT(1), ECT(0) and CE are the next three bits.
const ECN_NOT_ECT: u8 = 1;

/// The `IPFRAG_ECN_*` bit of an ECN codepoint (the low two bits of TOS / traffic class).
fn ecn_bit(codepoint: u8) -> u8 {
    1 << (codepoint & 3)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// An IPv4 fragment (More Fragments or an offset): malformed when its header length or total
/// length cannot be, or the capture cut its header.
fn parse_v4(ip: &[u8]) -> Parsed<'_> {
    if ip.len() < 20 {
        return Parsed::Whole;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = be16(ip, 2) as usize;
    let frag = be16(ip, 6);
    if frag & 0x3fff == 0 {
        return Parsed::Whole;
    }
    if ihl < 20 || total < ihl || ip.len() < ihl {
        return Parsed::Malformed;
    }
    let offset = (frag & 0x1fff) as usize * 8;
    let held = ip.len().min(total);
    Parsed::Fragment(Fragment {
        key: Key {
            src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
            dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
            id: be16(ip, 4) as u32,
            proto: ip[9],
        },
        offset,
        end: offset + total - ihl,
        more: frag & 0x2000 != 0,
        data: &ip[ihl..held],
        head: &ip[..ihl],
        patch: None,
        head_incomplete: false,
        ecn: ecn_bit(ip[1]),
        ip_len: total,
    })
}

/// An IPv6 fragment (a Fragment header that is not an atomic fragment): malformed when the
/// Fragment header is in a jumbogram or past the packet's payload length (Linux's
/// `ipv6_frag_rcv` drops either whatever its offset says), or the capture cut it after its
/// offset and before its identification.
fn parse_v6(ip: &[u8]) -> Parsed<'_> {
    if ip.len() < 40 {
        return Parsed::Whole;
    }
    let payload_len = be16(ip, 4) as usize;
    let end_of_packet = 40 + payload_len;
    // A jumbogram's (payload length 0) headers are walked to the end of what was captured: a
    // Fragment header among them is malformed (RFC 2675; Linux drops it).
    let chain_end = if payload_len == 0 {
        ip.len()
    } else {
        end_of_packet
    };
    let mut nh = ip[6];
    // Where the byte naming the current header sits.
    let mut nh_at = 6;
    let mut off = 40;
    loop {
        match nh {
            // Hop-by-hop, routing, destination options: (len + 1) * 8; AH: (len + 2) * 4.
            0 | 43 | 60 | 51 => {
                if off + 8 > chain_end {
                    return Parsed::Whole;
                }
                let Some(&len) = ip.get(off + 1) else {
                    return Parsed::Whole;
                };
                let size = if nh == 51 {
                    (len as usize + 2) * 4
                } else {
                    (len as usize + 1) * 8
                };
                nh = ip[off];
                nh_at = off;
                off += size;
            }
            PROTO_FRAGMENT => break,
            _ => return Parsed::Whole,
        }
    }
    if payload_len == 0 || off + 8 > end_of_packet {
        return Parsed::Malformed;
    }
    let Some(fo) = ip.get(off + 2..off + 4).map(|b| be16(b, 0)) else {
        // Cut by the capture before its offset: whether it is a fragment is not known.
        return Parsed::Whole;
    };
    if fo & 0xfff9 == 0 {
        // An atomic fragment: a whole datagram.
        return Parsed::Whole;
    }
    let Some(fh) = ip.get(off..off + 8) else {
        return Parsed::Malformed;
    };
    let offset = (fo & 0xfff8) as usize;
    let data_start = off + 8;
    let held = ip.len().min(end_of_packet);
    let addr = |at: usize| {
        let a: [u8; 16] = ip[at..at + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(a))
    };
    Parsed::Fragment(Fragment {
        key: Key {
            src: addr(8),
            dst: addr(24),
            id: u32::from_be_bytes(fh[4..8].try_into().expect("4 bytes")),
            proto: 0,
        },
        offset,
        end: offset + end_of_packet - data_start,
        more: fo & 1 != 0,
        data: ip.get(data_start..held).unwrap_or_default(),
        head: &ip[..off],
        patch: Some((nh_at, fh[0])),
        head_incomplete: offset == 0 && upper_layer_cut(ip, data_start, fh[0], end_of_packet),
        ecn: ecn_bit(ip[1] >> 4),
        ip_len: end_of_packet,
    })
}

/// True when the headers from `off` on (the first of them `nh`) end in an upper-layer header
/// that does not fit before `end`: Linux's `ipv6frag_thdr_truncated` (TCP needs its 20 bytes,
/// UDP 8, ICMPv6 4, anything else one). A chain it cannot walk is not judged.
fn upper_layer_cut(ip: &[u8], mut off: usize, mut nh: u8, end: usize) -> bool {
    for _ in 0..64 {
        let size = match nh {
            0 | 43 | 60 => (*ip.get(off + 1).unwrap_or(&0) as usize + 1) * 8,
            51 => (*ip.get(off + 1).unwrap_or(&0) as usize + 2) * 4,
            PROTO_FRAGMENT => {
                if ip.len() < off + 4 || be16(ip, off + 2) & 0xfff8 != 0 {
                    return false;
                }
                8
            }
            // No next header.
            59 => return false,
            6 => return off + 20 > end,
            17 => return off + 8 > end,
            58 => return off + 4 > end,
            _ => return off + 1 > end,
        };
        let Some(&next) = ip.get(off) else {
            return false;
        };
        nh = next;
        off += size;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synth::fragments;

    const T0: u64 = 1_700_000_000_000_000_000;

    /// An IPv4 datagram (protocol TCP, arbitrary bytes) with `len` bytes after its header.
    fn v4_datagram(len: usize) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 100, 198, 18, 0, 1,
        ];
        let total = (20 + len) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend((0..len).map(|i| (i % 251) as u8));
        p
    }

    /// An IPv6 or IPv4 datagram ([`v6_datagram`], [`v4_datagram`]).
    fn datagram(v6: bool, len: usize) -> Vec<u8> {
        if v6 {
            v6_datagram(len)
        } else {
            v4_datagram(len)
        }
    }

    fn v6_datagram(len: usize) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((8 + len) as u16).to_be_bytes());
        // Destination options, then TCP; fragmented, both are in the fragmentable part.
        p.extend_from_slice(&[60, 64]);
        p.extend_from_slice(&"2001:db8::100".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        p.extend((0..len).map(|i| (i % 251) as u8));
        p
    }

    /// `dgram` as reassembled from fragments with identification `id`: IPv4 keeps the first
    /// fragment's header, with its identification and without flags; IPv6 is as it was.
    fn whole(dgram: &[u8], id: u16) -> Vec<u8> {
        let mut d = dgram.to_vec();
        if d[0] >> 4 == 4 {
            d[4..6].copy_from_slice(&id.to_be_bytes());
            d[6..8].copy_from_slice(&[0, 0]);
            set_ipv4_header_checksum(&mut d);
        }
        d
    }

    fn push_all(d: &mut Defragmenter, frags: &[Vec<u8>]) -> Vec<Vec<u8>> {
        frags
            .iter()
            .enumerate()
            .filter_map(|(i, f)| d.push(f, T0 + i as u64))
            .collect()
    }

    #[test]
    fn the_field_list_names_every_counter_as_serialized() {
        let listed: Vec<_> = DefragStats::FIELDS.iter().map(|f| f.name).collect();
        let serialized: Vec<_> = DefragStats::default().by_name().into_keys().collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, serialized, "DefragStats::FIELDS against the struct");
        let stats = DefragStats {
            invalid: 7,
            pending_bytes: 9,
            ..DefragStats::default()
        };
        let by_name = stats.by_name();
        assert_eq!((by_name["invalid"], by_name["pending_bytes"]), (7, 9));
    }

    #[test]
    fn in_order_and_out_of_order_fragments_give_the_datagram_back() {
        for v6 in [false, true] {
            let dgram = datagram(v6, 3000);
            let frags = fragments(&dgram, 77, &[0, 1200, 2400]);
            assert_eq!(frags.len(), 3);
            assert!(frags.iter().all(|f| Defragmenter::is_fragment(f)));
            assert!(!Defragmenter::is_fragment(&dgram));
            for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
                let mut d = Defragmenter::default();
                let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| frags[i].clone()).collect();
                let out = push_all(&mut d, &shuffled);
                assert_eq!(out, vec![whole(&dgram, 77)], "v6={v6} order {order:?}");
                let st = d.stats();
                assert_eq!((st.fragments, st.reassembled, st.pending), (3, 1, 0));
                assert_eq!(st.pending_bytes, 0);
            }
        }
    }

    #[test]
    fn duplicates_inside_a_run_are_dropped_alone() {
        let dgram = v4_datagram(2400);
        let frags = fragments(&dgram, 1, &[0, 800, 1600]);
        let mut d = Defragmenter::default();
        let input = vec![
            frags[0].clone(),
            frags[0].clone(),
            frags[1].clone(),
            frags[1].clone(),
            frags[2].clone(),
        ];
        assert_eq!(push_all(&mut d, &input), vec![whole(&dgram, 1)]);
        assert_eq!(d.stats().duplicates, 2);
        assert_eq!(d.stats().overlaps, 0);
    }

    #[test]
    fn a_duplicate_with_other_bytes_is_still_a_duplicate_and_the_first_bytes_win() {
        // Linux keeps what it got first: a repeat of the same range is dropped whatever it says.
        let dgram = v4_datagram(1600);
        let frags = fragments(&dgram, 1, &[0, 800]);
        let mut evil = frags[1].clone();
        let n = evil.len();
        evil[n - 10..].copy_from_slice(b"' OR 1=1--");
        let mut d = Defragmenter::default();
        let out = push_all(&mut d, &[frags[1].clone(), evil, frags[0].clone()]);
        assert_eq!(out, vec![whole(&dgram, 1)]);
    }

    #[test]
    fn an_overlapping_fragment_drops_the_whole_datagram() {
        for v6 in [false, true] {
            let dgram = datagram(v6, 2400);
            let frags = fragments(&dgram, 9, &[0, 800, 1600]);
            // A fragment over [400, 1200): across the first fragment's end.
            let over = fragments(&dgram, 9, &[0, 400, 1200, 1600])[1].clone();
            let mut d = Defragmenter::default();
            let out = push_all(
                &mut d,
                &[frags[0].clone(), over, frags[1].clone(), frags[2].clone()],
            );
            assert!(out.is_empty(), "v6={v6}");
            let st = d.stats();
            assert_eq!(st.overlaps, 1, "v6={v6}");
            // The fragments after the drop start a datagram of their own, never completed.
            assert_eq!((st.reassembled, st.pending), (0, 1));
        }
    }

    #[test]
    fn a_repeat_inside_one_run_is_a_duplicate_across_two_runs_an_overlap() {
        let dgram = v4_datagram(2400);
        let frags = fragments(&dgram, 3, &[0, 800, 1600]);
        let wide = fragments(&dgram, 3, &[0, 1600])[0].clone();
        // In order, [0,800) and [800,1600) make one run: [0,1600) repeats it.
        let mut d = Defragmenter::default();
        let out = push_all(&mut d, &[frags[0].clone(), frags[1].clone(), wide.clone()]);
        assert!(out.is_empty());
        assert_eq!((d.stats().duplicates, d.stats().overlaps), (1, 0));
        assert!(d.push(&frags[2], T0 + 10).is_some());
        // Out of order, [0,800) is a run of its own before [800,1600)'s: Linux calls the same
        // bytes an overlap, and so does this.
        let mut d = Defragmenter::default();
        let out = push_all(&mut d, &[frags[1].clone(), frags[0].clone(), wide]);
        assert!(out.is_empty());
        assert_eq!((d.stats().duplicates, d.stats().overlaps), (0, 1));
    }

    #[test]
    fn a_datagram_completed_just_past_30_s_is_still_reassembled() {
        // Linux serves it (its timer fires up to a granule late); so must this.
        let dgram = v4_datagram(1600);
        let frags = fragments(&dgram, 5, &[0, 800]);
        for late in [30_200_000_000, 32_048_000_000] {
            let mut d = Defragmenter::default();
            assert!(d.push(&frags[0], T0).is_none());
            assert_eq!(d.push(&frags[1], T0 + late), Some(whole(&dgram, 5)));
        }
    }

    #[test]
    fn incomplete_datagrams_time_out_in_stream_time() {
        let dgram = v4_datagram(1600);
        let frags = fragments(&dgram, 5, &[0, 800]);
        let mut d = Defragmenter::default();
        assert!(d.push(&frags[0], T0).is_none());
        // 32.9 s later the datagram still completes: Linux's 30 s timer may not have fired.
        assert!(d.push(&frags[1], T0 + 32_900_000_000).is_some());
        assert!(d.push(&frags[0], T0 + 40_000_000_000).is_none());
        // 33 s after its first fragment, it is gone.
        assert!(d.push(&frags[1], T0 + 73_000_000_000).is_none());
        let st = d.stats();
        assert_eq!((st.reassembled, st.timed_out, st.pending), (1, 1, 1));
        d.advance(T0 + 106_000_000_000);
        assert_eq!((d.stats().timed_out, d.stats().pending), (2, 0));
        assert_eq!(d.stats().pending_bytes, 0);
    }

    #[test]
    fn a_full_pool_refuses_fragments_and_evicts_nothing() {
        // A datagram holding its first 1200 bytes is charged this much.
        let one = DATAGRAM_CHARGE + FRAGMENT_CHARGE + 20 + 1200;
        let mut d = Defragmenter::new(DefragSettings {
            mem_cap: 7 * one + 200,
            datagram_cap: 10_000,
            timeout_ns: DEFAULT_TIMEOUT_NS,
        });
        // A pending datagram, then junk: six more fit, four are refused.
        let pending = v4_datagram(1300);
        let a = fragments(&pending, 100, &[0, 1200]);
        assert!(d.push(&a[0], T0).is_none());
        for id in 0..10u16 {
            let f = fragments(&v4_datagram(2400), id, &[0, 1200]);
            assert!(d.push(&f[0], T0 + 1 + id as u64).is_none());
        }
        let st = d.stats();
        assert_eq!((st.pending, st.refused), (7, 4), "{st:?}");
        assert_eq!(st.pending_bytes as usize, 7 * one);
        // The pending datagram was not pushed out: its last 100 bytes fit in what is left.
        assert_eq!(d.push(&a[1], T0 + 20), Some(whole(&pending, 100)));
        // IPv6 has its own pool.
        let v6 = v6_datagram(1600);
        let out = push_all(&mut d, &fragments(&v6, 5, &[0, 800]));
        assert_eq!(out, vec![v6]);
        assert_eq!(d.stats().refused, 4);
    }

    #[test]
    fn any_legal_datagram_fits_under_the_per_datagram_cap() {
        // The largest IPv4 and IPv6 datagrams in fragments of 8 bytes (some 8190 of them),
        // and 61,600 bytes in 1100 fragments of 56.
        let v4 = v4_datagram(MAX_DATAGRAM - 20);
        let v6 = v6_datagram(MAX_DATAGRAM - 8);
        for (dgram, step) in [(&v4, 8), (&v6, 8), (&v4_datagram(1100 * 56), 56)] {
            let hlen = if dgram[0] >> 4 == 4 { 20 } else { 40 };
            // IPv6's first fragment holds the TCP header (Linux wants it whole).
            let cuts: Vec<usize> = std::iter::once(0)
                .chain((32..dgram.len() - hlen).step_by(step))
                .collect();
            let frags = fragments(dgram, 1, &cuts);
            let mut d = Defragmenter::default();
            assert_eq!(
                push_all(&mut d, &frags),
                vec![whole(dgram, 1)],
                "{}",
                frags.len()
            );
        }
    }

    #[test]
    fn the_per_datagram_cap_and_the_64k_limit_drop_a_datagram() {
        // Tiny fragments charge more than their data: 2000 fragments of 8 bytes (144,000
        // bytes charged), under a cap of 100 KiB.
        let dgram = v4_datagram(16_000);
        let cuts: Vec<usize> = (0..2000).map(|i| i * 8).collect();
        let frags = fragments(&dgram, 1, &cuts);
        let mut d = Defragmenter::new(DefragSettings {
            datagram_cap: 100 << 10,
            ..DefragSettings::default()
        });
        assert!(push_all(&mut d, &frags).is_empty());
        assert_eq!(d.stats().too_big, 1);
        // A last fragment at offset 65528 with 100 bytes: over 65535 once complete.
        let mut d = Defragmenter::default();
        let big = v4_datagram(65_528 + 100);
        let frags = fragments(&big, 2, &[0, 32_768, 65_528]);
        assert!(push_all(&mut d, &frags).is_empty());
        assert_eq!((d.stats().too_big, d.stats().pending), (1, 0));
    }

    #[test]
    fn inconsistent_ends_drop_the_datagram() {
        let dgram = v4_datagram(2400);
        let frags = fragments(&dgram, 4, &[0, 800, 1600]);
        let short = fragments(&v4_datagram(2000), 4, &[0, 800, 1600]);
        let mut d = Defragmenter::default();
        // Two last fragments that end differently.
        assert!(push_all(&mut d, &[frags[2].clone(), short[2].clone()]).is_empty());
        assert_eq!(d.stats().invalid, 1);
    }

    #[test]
    fn a_fragment_cut_by_the_capture_gives_a_datagram_cut_there() {
        let dgram = v4_datagram(2400);
        let mut frags = fragments(&dgram, 6, &[0, 800, 1600]);
        let wire = frags[1].len();
        frags[1].truncate(20 + 500);
        let mut d = Defragmenter::default();
        assert!(d.push(&frags[0], T0).is_none());
        assert!(d.push_captured(&frags[1], wire, T0 + 1).is_none());
        // A whole copy of the cut fragment is a duplicate: Linux took the first whole.
        let mut other = fragments(&v4_datagram(2400), 6, &[0, 800, 1600])[1].clone();
        other[20..30].copy_from_slice(b"XXXXXXXXXX");
        assert!(d.push(&other, T0 + 2).is_none());
        assert_eq!(d.stats().duplicates, 1);
        let out: Vec<_> = d.push(&frags[2], T0 + 3).into_iter().collect();
        assert_eq!(out.len(), 1);
        // The header says 2420 bytes; 20 + 800 + 500 were kept.
        assert_eq!(be16(&out[0], 2), 2420);
        assert_eq!(out[0].len(), 20 + 800 + 500);
        assert_eq!(&out[0][20..], &dgram[20..20 + 1300]);
    }

    #[test]
    fn ipv6_fragments_not_a_multiple_of_8_are_dropped_alone() {
        let dgram = v6_datagram(2400);
        let mut frags = fragments(&dgram, 8, &[0, 800]);
        // The first fragment four bytes short: 796 bytes, and more to come.
        let n = frags[0].len();
        frags[0].truncate(n - 4);
        let plen = be16(&frags[0], 4) - 4;
        frags[0][4..6].copy_from_slice(&plen.to_be_bytes());
        let mut d = Defragmenter::default();
        assert!(push_all(&mut d, &frags).is_empty());
        assert_eq!((d.stats().invalid, d.stats().pending), (1, 1));
    }

    #[test]
    fn a_malformed_fragment_of_either_family_is_counted_invalid() {
        let malformed = |v6: bool| -> Vec<Vec<u8>> {
            let frag = fragments(&datagram(v6, 2400), 9, &[0, 800])[1].clone();
            let mut out = Vec::new();
            if v6 {
                // A payload length that ends inside the Fragment header.
                let mut f = frag.clone();
                f[4..6].copy_from_slice(&4u16.to_be_bytes());
                out.push(f);
                // A jumbogram's payload length (0) with a Fragment header, right after the
                // base header and, as in a real jumbogram (RFC 2675), after a hop-by-hop header
                // with its Jumbo Payload option.
                let mut f = frag.clone();
                f[4..6].copy_from_slice(&[0, 0]);
                out.push(f.clone());
                f[6] = 0;
                let jumbo_len = (f.len() as u32 - 40).to_be_bytes();
                let hop_by_hop = [[PROTO_FRAGMENT, 0, 0xc2, 4], jumbo_len].concat();
                out.push([&f[..40], &hop_by_hop, &f[40..]].concat());
                // The capture cut the Fragment header after its offset.
                out.push(frag[..44].to_vec());
            } else {
                // A header length under 20 bytes.
                let mut f = frag.clone();
                f[0] = 0x44;
                set_ipv4_header_checksum(&mut f);
                out.push(f);
                // A total length under the header's.
                let mut f = frag.clone();
                f[2..4].copy_from_slice(&16u16.to_be_bytes());
                set_ipv4_header_checksum(&mut f);
                out.push(f);
            }
            out
        };
        for v6 in [false, true] {
            for (i, f) in malformed(v6).iter().enumerate() {
                assert!(Defragmenter::is_fragment(f), "v6={v6} case {i}");
                let mut d = Defragmenter::default();
                assert!(d.push(f, T0).is_none());
                let st = d.stats();
                assert_eq!(
                    (st.fragments, st.invalid, st.pending),
                    (1, 1, 0),
                    "v6={v6} case {i}"
                );
            }
        }
    }

    #[test]
    fn an_ipv6_first_fragment_without_the_whole_tcp_header_is_dropped() {
        // The destination options (8 bytes) and 12 of TCP's 20: RFC 8200 says discard, and
        // Linux does; an IPv4 first fragment of 8 bytes of TCP is taken (Linux does too).
        let dgram = v6_datagram(100);
        let frags = fragments(&dgram, 8, &[0, 24]);
        let mut d = Defragmenter::default();
        assert!(push_all(&mut d, &frags).is_empty());
        assert_eq!((d.stats().invalid, d.stats().pending), (1, 1));
        let frags = fragments(&dgram, 8, &[0, 32]);
        let mut d = Defragmenter::default();
        assert_eq!(push_all(&mut d, &frags), vec![dgram]);
        let dgram = v4_datagram(100);
        let frags = fragments(&dgram, 8, &[0, 8]);
        let mut d = Defragmenter::default();
        assert_eq!(push_all(&mut d, &frags), vec![whole(&dgram, 8)]);
    }

    #[test]
    fn ipv4_fragments_not_a_multiple_of_8_are_cut_to_one() {
        let dgram = v4_datagram(1600);
        let mut frags = fragments(&dgram, 8, &[0, 800]);
        // Four bytes more on the first fragment: cut off again, the datagram completes.
        frags[0].extend_from_slice(b"XXXX");
        let total = be16(&frags[0], 2) + 4;
        frags[0][2..4].copy_from_slice(&total.to_be_bytes());
        set_ipv4_header_checksum(&mut frags[0]);
        let mut d = Defragmenter::default();
        assert_eq!(push_all(&mut d, &frags), vec![whole(&dgram, 8)]);
    }

    #[test]
    fn an_ipv4_fragment_with_a_bad_header_checksum_is_not_taken() {
        // Linux drops it in `ip_rcv_core`: it never holds the range, so the good copy after
        // it is what the server reassembles.
        let dgram = v4_datagram(1600);
        let frags = fragments(&dgram, 9, &[0, 800]);
        let mut decoy = frags[0].clone();
        decoy[40..50].copy_from_slice(b"harmless!!");
        decoy[10] ^= 0x5a;
        let mut d = Defragmenter::default();
        let out = push_all(&mut d, &[decoy, frags[0].clone(), frags[1].clone()]);
        assert_eq!(out, vec![whole(&dgram, 9)]);
        let st = d.stats();
        assert_eq!((st.bad_checksum, st.duplicates, st.fragments), (1, 0, 3));
    }

    #[test]
    fn a_fragment_shorter_than_its_ip_length_on_the_wire_is_not_taken() {
        // The IP length says 820 bytes, 320 came: Linux drops it ("truncated packet"), so
        // the whole copy after it is taken.
        for v6 in [false, true] {
            let dgram = datagram(v6, 1600);
            let frags = fragments(&dgram, 9, &[0, 800]);
            let mut short = frags[0].clone();
            short.truncate(short.len() - 500);
            let mut d = Defragmenter::default();
            assert!(d.push(&short, T0).is_none());
            // The same bytes cut by the capture's snap length, with the wire length told, are
            // taken: this one arrives after the lie, before the whole copy.
            let mut cut = frags[0].clone();
            cut.truncate(cut.len() - 400);
            assert!(d.push_captured(&short, short.len(), T0 + 1).is_none());
            assert!(d.push(&frags[0], T0 + 2).is_none());
            assert!(d.push_captured(&cut, frags[0].len(), T0 + 3).is_none());
            let out = d.push(&frags[1], T0 + 4).expect("completes");
            assert_eq!(out, whole(&dgram, 9), "v6={v6}");
            let st = d.stats();
            assert_eq!((st.truncated, st.duplicates), (2, 1), "v6={v6}");
        }
    }

    #[test]
    fn mixed_ecn_codepoints_drop_the_datagram() {
        for v6 in [false, true] {
            let dgram = datagram(v6, 1600);
            let set_ecn = |f: &mut Vec<u8>, cp: u8| {
                if v6 {
                    f[1] = (f[1] & 0xcf) | (cp << 4);
                } else {
                    f[1] = (f[1] & 0xfc) | cp;
                    set_ipv4_header_checksum(f);
                }
            };
            // Not-ECT with CE (or ECT(0)): dropped; ECT(0) with CE: reassembled.
            for (a, b, ok) in [(0, 3, false), (2, 0, false), (2, 3, true), (1, 1, true)] {
                let mut frags = fragments(&dgram, 9, &[0, 800]);
                set_ecn(&mut frags[0], a);
                set_ecn(&mut frags[1], b);
                let mut d = Defragmenter::default();
                let out = push_all(&mut d, &frags);
                assert_eq!(out.len(), ok as usize, "v6={v6} {a} {b}");
                let st = d.stats();
                assert_eq!((st.ecn, st.pending), (!ok as u64, 0), "v6={v6} {a} {b}");
            }
        }
    }
}
