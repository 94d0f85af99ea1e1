//! Reading capture files (pcap and pcapng, via the `pcap-file` crate) into TCP [`Segment`]s.
//!
//! Link types: Ethernet (with 802.1Q/802.1ad tags), Linux cooked capture v1 (SLL) and v2 (SLL2),
//! and raw IP (v4 or v6). Network layers: IPv4 and IPv6 (extension headers skipped); IP
//! fragments are reassembled as the receiving Linux kernel would ([`super::defrag`]) and their
//! datagrams decoded as any other packet. Everything that is not TCP is counted and skipped.
//!
//! A regular file is mapped into memory, and segments are slices of the mapping (no copy of the
//! file's bytes); any other source (a pipe, a reader in the tests) streams through a bounded
//! buffer. Either way the reader knows the byte offset of every record, so a truncated or corrupt
//! file fails with the offset of the first bad record, after every record before it has been
//! returned.

use std::{
    fmt,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use bytes::Bytes;
use pcap_file::{
    DataLink, Endianness, PcapError as FileError, TsResolution,
    pcap::PcapHeader,
    pcapng::{
        Block, PcapNgParser,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};

use super::{
    Segment,
    defrag::{DefragStats, Defragmenter},
};

/// The largest record (pcap packet or pcapng block) accepted; anything larger is corruption.
pub const MAX_RECORD: usize = 16 << 20;

const READ_CHUNK: usize = 1 << 20;

/// Why a capture file could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("empty file: no pcap or pcapng header")]
    Empty,
    /// Neither a pcap nor a pcapng file.
    #[error("not a pcap or pcapng file (magic {magic:#010x})")]
    NotACapture {
        /// The first four bytes, big-endian.
        magic: u32,
    },
    /// A link type this reader does not decode.
    #[error("unsupported link type {0:?} (supported: Ethernet, Linux cooked v1/v2, raw IP)")]
    LinkType(DataLink),
    /// The file ends inside a record, or inside the file header (offset 0).
    #[error("truncated capture: {} is cut short by the end of the file", truncated_part(*.offset))]
    Truncated {
        /// Byte offset of the incomplete record (0: the file header).
        offset: u64,
    },
    /// A record that cannot be parsed.
    #[error("corrupt capture at byte offset {offset}: {reason}")]
    Corrupt {
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Reading failed part way.
    #[error("read error at byte offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`PcapError::Truncated`] found cut short: the file header at offset 0 (a pcap file's
/// header, or a pcapng file's first section header), else a record.
fn truncated_part(offset: u64) -> String {
    match offset {
        0 => "the file header".to_owned(),
        _ => format!("the record at byte offset {offset}"),
    }
}

/// What the reader saw, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Packet records read.
    pub packets: u64,
    /// Bytes of packet data read (captured lengths).
    pub packet_bytes: u64,
    /// TCP segments produced.
    pub tcp_segments: u64,
    /// IP packets that were not TCP (UDP, ICMP, ...).
    pub non_tcp: u64,
    /// Frames that were not IP (ARP, LLDP, ...).
    pub non_ip: u64,
    /// IP fragments (each handed to the defragmenter; its datagrams count as packets of their
    /// own in `tcp_segments`, `non_tcp`, `malformed`).
    pub ip_fragments: u64,
    /// What the defragmenter did with them.
    pub defrag: DefragStats,
    /// Frames whose headers were cut short or inconsistent.
    pub malformed: u64,
    /// pcapng packets on an interface with an unsupported link type.
    pub unsupported_link: u64,
}

/// A link-layer framing this reader decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Ethernet II, optionally with 802.1Q / 802.1ad tags.
    Ethernet,
    /// Linux cooked capture v1 (`DLT_LINUX_SLL`).
    LinuxSll,
    /// Linux cooked capture v2 (`DLT_LINUX_SLL2`).
    LinuxSll2,
    /// Raw IPv4 or IPv6 (`DLT_RAW`, `DLT_IPV4`, `DLT_IPV6`).
    RawIp,
}

impl Link {
    /// The framing of a pcap link type, if supported.
    pub fn of(dl: DataLink) -> Option<Self> {
        match dl {
            DataLink::ETHERNET => Some(Self::Ethernet),
            DataLink::LINUX_SLL => Some(Self::LinuxSll),
            DataLink::LINUX_SLL2 => Some(Self::LinuxSll2),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(Self::RawIp),
            _ => None,
        }
    }
}

/// Why one frame produced no segment (counted, never an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IP.
    NonIp,
    /// IP but not TCP.
    NonTcp,
    /// An IP fragment.
    Fragment,
    /// Headers cut short or inconsistent.
    Malformed,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::NonIp => "not IP",
            Skip::NonTcp => "not TCP",
            Skip::Fragment => "IP fragment",
            Skip::Malformed => "malformed headers",
        })
    }
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one frame of the given framing into a segment. `ts_ns` is the capture time. The
/// payload's wire length comes from the IP header, so a frame the capture cut short (snap
/// length) yields a segment whose `wire_len` exceeds its payload.
pub fn decode_frame(link: Link, frame: &[u8], ts_ns: u64) -> Result<Segment, Skip> {
    let (mut seg, payload) = decode_inner(link, frame, ts_ns)?;
    seg.payload = Bytes::copy_from_slice(payload);
    Ok(seg)
}

/// [`decode_frame`] for a frame in a shared buffer: the payload is a slice of it, not a copy.
pub fn decode_frame_shared(link: Link, frame: &Bytes, ts_ns: u64) -> Result<Segment, Skip> {
    let (mut seg, payload) = decode_inner(link, frame, ts_ns)?;
    seg.payload = frame.slice_ref(payload);
    Ok(seg)
}

/// The IP packet in `frame` (from its header to the end of the frame), if it is one.
fn ip_layer(link: Link, frame: &[u8]) -> Option<&[u8]> {
    let (ethertype, l3) = link_header(link, frame).ok()?;
    if ethertype.is_some_and(|e| e != ETH_IPV4 && e != ETH_IPV6) {
        return None;
    }
    frame.get(l3..)
}

/// The EtherType (none for raw IP) and the offset of the network header.
fn link_header(link: Link, frame: &[u8]) -> Result<(Option<u16>, usize), Skip> {
    Ok(match link {
        Link::Ethernet => {
            let mut et = be16(frame, 12).ok_or(Skip::Malformed)?;
            let mut off = 14;
            // 802.1Q, 802.1ad and the legacy QinQ tag types; at most a few nested tags.
            let mut tags = 0;
            while matches!(et, 0x8100 | 0x88a8 | 0x9100) {
                tags += 1;
                if tags > 4 {
                    return Err(Skip::Malformed);
                }
                et = be16(frame, off + 2).ok_or(Skip::Malformed)?;
                off += 4;
            }
            (Some(et), off)
        }
        Link::LinuxSll => (Some(be16(frame, 14).ok_or(Skip::Malformed)?), 16),
        Link::LinuxSll2 => (Some(be16(frame, 0).ok_or(Skip::Malformed)?), 20),
        Link::RawIp => (None, 0),
    })
}

/// The segment (with an empty payload) and its payload within `frame`.
fn decode_inner(link: Link, frame: &[u8], ts_ns: u64) -> Result<(Segment, &[u8]), Skip> {
    let (ethertype, l3) = link_header(link, frame)?;
    let ip = frame.get(l3..).ok_or(Skip::Malformed)?;
    let version = ip.first().ok_or(Skip::Malformed)? >> 4;
    match (ethertype, version) {
        (Some(ETH_IPV4) | None, 4) => ipv4(ip, ts_ns),
        (Some(ETH_IPV6) | None, 6) => ipv6(ip, ts_ns),
        (Some(ETH_IPV4 | ETH_IPV6), _) => Err(Skip::Malformed),
        (Some(_), _) => Err(Skip::NonIp),
        (None, _) => Err(Skip::Malformed),
    }
}

fn ipv4(ip: &[u8], ts_ns: u64) -> Result<(Segment, &[u8]), Skip> {
    if ip.len() < 20 {
        return Err(Skip::Malformed);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    // A total length of 0 is a segmentation-offload super-packet captured on its sender (BIG
    // TCP, or TSO before the NIC split it): its length is what was captured, as IPv6's below.
    let total = match be16(ip, 2).ok_or(Skip::Malformed)? as usize {
        0 => ip.len(),
        n => n,
    };
    if ihl < 20 || total < ihl || ip.len() < ihl {
        return Err(Skip::Malformed);
    }
    // IPv4 keys datagrams by protocol: a fragment of anything but TCP is not TCP, whole or not.
    if ip[9] != 6 {
        return Err(Skip::NonTcp);
    }
    let frag = be16(ip, 6).ok_or(Skip::Malformed)?;
    if frag & 0x3fff != 0 {
        return Err(Skip::Fragment);
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    // `total` trims Ethernet padding; the capture may hold less than `total` (snap length).
    let held = ip.len().min(total);
    tcp(&ip[ihl..held], total - ihl, src, dst, ts_ns)
}

fn ipv6(ip: &[u8], ts_ns: u64) -> Result<(Segment, &[u8]), Skip> {
    if ip.len() < 40 {
        return Err(Skip::Malformed);
    }
    let payload_len = be16(ip, 4).ok_or(Skip::Malformed)? as usize;
    let mut next = ip[6];
    let addr = |at: usize| -> IpAddr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src, dst) = (addr(8), addr(24));
    // A jumbogram (payload length 0 with a hop-by-hop option) is not supported: length 0 with
    // data is treated as what was captured.
    let end = if payload_len == 0 {
        ip.len()
    } else {
        40 + payload_len
    };
    let mut off = 40;
    loop {
        match next {
            6 => break,
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                next = *ip.get(off).ok_or(Skip::Malformed)?;
                off += (*ip.get(off + 1).ok_or(Skip::Malformed)? as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; only an unfragmented "atomic" fragment is readable.
            44 => {
                let fo = be16(ip, off + 2).ok_or(Skip::Malformed)?;
                if fo & 0xfff9 != 0 {
                    return Err(Skip::Fragment);
                }
                next = ip[off];
                off += 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                next = *ip.get(off).ok_or(Skip::Malformed)?;
                off += (*ip.get(off + 1).ok_or(Skip::Malformed)? as usize + 2) * 4;
            }
            _ => return Err(Skip::NonTcp),
        }
        if off > end {
            return Err(Skip::Malformed);
        }
    }
    if off > ip.len() {
        return Err(Skip::Malformed);
    }
    let held = ip.len().min(end);
    tcp(&ip[off..held], end - off, src, dst, ts_ns)
}

/// `seg` is the captured part of the TCP segment, `wire` its length on the wire (from the IP
/// header).
fn tcp(
    seg: &[u8],
    wire: usize,
    src: IpAddr,
    dst: IpAddr,
    ts_ns: u64,
) -> Result<(Segment, &[u8]), Skip> {
    if seg.len() < 20 {
        return Err(Skip::Malformed);
    }
    let doff = (seg[12] >> 4) as usize * 4;
    if doff < 20 || doff > seg.len() || doff > wire {
        return Err(Skip::Malformed);
    }
    let payload = &seg[doff..];
    Ok((
        Segment {
            ts_ns,
            src: SocketAddr::new(src, be16(seg, 0).ok_or(Skip::Malformed)?),
            dst: SocketAddr::new(dst, be16(seg, 2).ok_or(Skip::Malformed)?),
            seq: be32(seg, 4).ok_or(Skip::Malformed)?,
            ack: be32(seg, 8).ok_or(Skip::Malformed)?,
            flags: seg[13],
            payload: Bytes::new(),
            wire_len: (wire - doff) as u32,
        },
        payload,
    ))
}

/// A byte source with a bounded window and the file offset of its first byte. The window is a
/// shared buffer, so segments can hold slices of it instead of copies.
struct Window<R> {
    src: R,
    buf: Bytes,
    start: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: Read> Window<R> {
    fn new(src: R) -> Self {
        Self {
            src,
            buf: Bytes::new(),
            start: 0,
            base: 0,
            eof: false,
        }
    }

    /// A window over the whole source, already in memory: nothing is read from `src`.
    fn whole(src: R, all: Bytes) -> Self {
        Self {
            src,
            buf: all,
            start: 0,
            base: 0,
            eof: true,
        }
    }

    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more; false at the end of the file. What is left of the window moves to a new
    /// buffer (segments still holding slices of the old one keep it alive).
    fn fill(&mut self) -> Result<bool, PcapError> {
        if self.eof {
            return Ok(false);
        }
        let left = &self.buf[self.start..];
        let mut v = Vec::with_capacity(left.len() + READ_CHUNK);
        v.extend_from_slice(left);
        self.base += self.start as u64;
        let have = v.len();
        // `read_to_end` reads into the spare capacity without zeroing it first.
        let r = (&mut self.src).take(READ_CHUNK as u64).read_to_end(&mut v);
        let got = v.len() - have;
        self.buf = Bytes::from(v);
        self.start = 0;
        match r {
            Ok(_) => {
                if got < READ_CHUNK {
                    self.eof = true;
                }
                Ok(got > 0)
            }
            Err(source) => Err(PcapError::Io {
                offset: self.base + self.buf.len() as u64,
                source,
            }),
        }
    }

    /// Makes sure at least `n` bytes are available; false when the file ends first.
    fn need(&mut self, n: usize) -> Result<bool, PcapError> {
        while self.avail().len() < n {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct NgIface {
    link: Option<Link>,
    /// Nanoseconds per timestamp unit, or the divisor for units finer than a nanosecond.
    ts: TsUnit,
    /// `if_tsoffset`, signed.
    ts_offset_ns: i64,
}

#[derive(Clone, Copy)]
enum TsUnit {
    /// Multiply ticks by this many nanoseconds.
    Mul(u64),
    /// Divide ticks by this to get nanoseconds.
    Div(u64),
    /// Ticks are 2^-n seconds.
    Pow2(u32),
}

impl TsUnit {
    fn of(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let resol = idb
            .options
            .iter()
            .find_map(|o| match o {
                InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                _ => None,
            })
            .unwrap_or(6);
        if resol & 0x80 != 0 {
            Self::Pow2((resol & 0x7f) as u32)
        } else if resol <= 9 {
            Self::Mul(10u64.pow(9 - resol as u32))
        } else {
            Self::Div(10u64.saturating_pow(resol as u32 - 9))
        }
    }

    fn to_ns(self, ticks: u64) -> u64 {
        match self {
            Self::Mul(m) => ticks.saturating_mul(m),
            Self::Div(d) => ticks / d.max(1),
            Self::Pow2(n) => ((ticks as u128 * 1_000_000_000) >> n.min(127)) as u64,
        }
    }
}

enum Format {
    Pcap {
        header: PcapHeader,
        link: Link,
    },
    PcapNg {
        parser: Box<PcapNgParser>,
        ifaces: Vec<NgIface>,
        last_ts_ns: u64,
    },
}

/// Streams a pcap or pcapng file as TCP segments.
pub struct CaptureReader<R> {
    win: Window<R>,
    format: Format,
    stats: CaptureStats,
    defrag: Defragmenter,
    failed: bool,
}

impl CaptureReader<std::fs::File> {
    /// Opens a capture file.
    pub fn open(path: &Path) -> Result<Self, PcapError> {
        let f = std::fs::File::open(path).map_err(|source| PcapError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let meta = f.metadata().map_err(|source| PcapError::Open {
            path: path.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            return Err(PcapError::Open {
                path: path.display().to_string(),
                source: std::io::Error::other("is a directory"),
            });
        }
        if meta.is_file() && meta.len() > 0 {
            // SAFETY: the mapping is read-only and private; a file truncated by another process
            // while it is replayed would fault (SIGBUS), as with any mapped file. Capture writers
            // append, they do not truncate. A file that cannot be mapped is read instead.
            if let Ok(map) = unsafe { memmap2::Mmap::map(&f) } {
                let _ = map.advise(memmap2::Advice::Sequential);
                return Self::with_window(Window::whole(f, Bytes::from_owner(map)));
            }
        }
        Self::new(f)
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header; fails on anything that is not a pcap or pcapng file.
    pub fn new(src: R) -> Result<Self, PcapError> {
        Self::with_window(Window::new(src))
    }

    fn with_window(mut win: Window<R>) -> Result<Self, PcapError> {
        if !win.need(4)? {
            if win.avail().is_empty() {
                return Err(PcapError::Empty);
            }
            return Err(PcapError::NotACapture {
                magic: be32(&[win.avail(), &[0; 4]].concat(), 0).unwrap_or(0),
            });
        }
        let magic = be32(win.avail(), 0).unwrap_or(0);
        let format = match magic {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                if !win.need(24)? {
                    return Err(PcapError::Truncated { offset: 0 });
                }
                let (_, header) = PcapHeader::from_slice(win.avail()).map_err(|e| corrupt(0, e))?;
                win.consume(24);
                let link = Link::of(header.datalink).ok_or(PcapError::LinkType(header.datalink))?;
                Format::Pcap { header, link }
            }
            0x0a0d_0d0a => {
                let len = ng_block_len(&mut win, true)?;
                let (rest, parser) =
                    PcapNgParser::new(&win.avail()[..len]).map_err(|e| corrupt(0, e))?;
                if !rest.is_empty() {
                    return Err(PcapError::Corrupt {
                        offset: 0,
                        reason: "section header length mismatch".into(),
                    });
                }
                win.consume(len);
                Format::PcapNg {
                    parser: Box::new(parser),
                    ifaces: Vec::new(),
                    last_ts_ns: 0,
                }
            }
            _ => return Err(PcapError::NotACapture { magic }),
        };
        Ok(Self {
            win,
            format,
            stats: CaptureStats::default(),
            defrag: Defragmenter::default(),
            failed: false,
        })
    }

    /// What was read so far.
    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }

    /// The next TCP segment; `Ok(None)` at the end of the file. After an error, every later call
    /// returns `Ok(None)`.
    pub fn next_segment(&mut self) -> Result<Option<Segment>, PcapError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Segment>, PcapError> {
        loop {
            let offset = self.win.offset();
            let frame = match &mut self.format {
                Format::Pcap { header, link } => {
                    if !self.win.need(16)? {
                        if self.win.avail().is_empty() {
                            return Ok(None);
                        }
                        return Err(PcapError::Truncated { offset });
                    }
                    let h = &self.win.avail()[..16];
                    let field = |i: usize| read_u32(&h[i * 4..i * 4 + 4], header.endianness);
                    let (ts_sec, ts_frac, incl, orig) = (field(0), field(1), field(2), field(3));
                    let incl = incl as usize;
                    if incl > MAX_RECORD {
                        return Err(PcapError::Corrupt {
                            offset,
                            reason: format!("packet record claims {incl} bytes"),
                        });
                    }
                    if !self.win.need(16 + incl)? {
                        return Err(PcapError::Truncated { offset });
                    }
                    let frac_ns = match header.ts_resolution {
                        TsResolution::MicroSecond => ts_frac as u64 * 1000,
                        TsResolution::NanoSecond => ts_frac as u64,
                    };
                    if frac_ns >= 1_000_000_000 {
                        return Err(PcapError::Corrupt {
                            offset,
                            reason: "timestamp fraction out of range".into(),
                        });
                    }
                    let ts = ts_sec as u64 * 1_000_000_000 + frac_ns;
                    let r = Some((*link, ts, incl, orig as usize));
                    self.win.consume(16 + incl);
                    r
                }
                Format::PcapNg {
                    parser,
                    ifaces,
                    last_ts_ns,
                } => {
                    if !self.win.need(1)? {
                        return Ok(None);
                    }
                    let le = parser.section().endianness == Endianness::Little;
                    let len = ng_block_len(&mut self.win, le)?;
                    let block = &self.win.avail()[..len];
                    let (_, b) = parser.next_block(block).map_err(|e| corrupt(offset, e))?;
                    let r = match b {
                        Block::SectionHeader(_) => {
                            ifaces.clear();
                            None
                        }
                        Block::InterfaceDescription(idb) => {
                            let ts_offset_ns = idb
                                .options
                                .iter()
                                .find_map(|o| match o {
                                    // A signed number of seconds (pcap-file reads it
                                    // unsigned): a capture may be stamped ahead of the
                                    // time it is to be read at.
                                    InterfaceDescriptionOption::IfTsOffset(s) => {
                                        Some((*s as i64).saturating_mul(1_000_000_000))
                                    }
                                    _ => None,
                                })
                                .unwrap_or(0);
                            ifaces.push(NgIface {
                                link: Link::of(idb.linktype),
                                ts: TsUnit::of(&idb),
                                ts_offset_ns,
                            });
                            None
                        }
                        Block::EnhancedPacket(epb) => {
                            let iface = ifaces.get(epb.interface_id as usize).ok_or_else(|| {
                                PcapError::Corrupt {
                                    offset,
                                    reason: format!(
                                        "packet names interface {} which was not described",
                                        epb.interface_id
                                    ),
                                }
                            })?;
                            // pcap-file hands the raw tick count over as nanoseconds.
                            let ticks = epb.timestamp.as_nanos() as u64;
                            let ts = iface
                                .ts
                                .to_ns(ticks)
                                .saturating_add_signed(iface.ts_offset_ns);
                            *last_ts_ns = ts;
                            Some((iface.link, ts, epb.data, epb.original_len))
                        }
                        Block::SimplePacket(spb) => {
                            let iface = ifaces.first().ok_or_else(|| PcapError::Corrupt {
                                offset,
                                reason: "simple packet before any interface description".into(),
                            })?;
                            Some((iface.link, *last_ts_ns, spb.data, spb.original_len))
                        }
                        Block::Packet(pb) => {
                            let iface = ifaces.get(pb.interface_id as usize).ok_or_else(|| {
                                PcapError::Corrupt {
                                    offset,
                                    reason: format!(
                                        "packet names interface {} which was not described",
                                        pb.interface_id
                                    ),
                                }
                            })?;
                            let ts = iface
                                .ts
                                .to_ns(pb.timestamp)
                                .saturating_add_signed(iface.ts_offset_ns);
                            *last_ts_ns = ts;
                            Some((iface.link, ts, pb.data, pb.original_len))
                        }
                        _ => None,
                    };
                    match r {
                        None => {
                            self.win.consume(len);
                            continue;
                        }
                        Some((None, ..)) => {
                            self.stats.packets += 1;
                            self.stats.unsupported_link += 1;
                            self.win.consume(len);
                            continue;
                        }
                        Some((Some(link), ts, data, orig)) => {
                            self.stats.packets += 1;
                            self.stats.packet_bytes += data.len() as u64;
                            let frame = match &data {
                                std::borrow::Cow::Borrowed(b) => self.win.buf.slice_ref(b),
                                std::borrow::Cow::Owned(v) => Bytes::copy_from_slice(v),
                            };
                            drop(data);
                            self.win.consume(len);
                            match self.decode(link, &frame, ts, orig as usize) {
                                Some(s) => return Ok(Some(s)),
                                None => continue,
                            }
                        }
                    }
                }
            };
            // pcap: the frame sits just behind the window's start (consumed above).
            if let Some((link, ts, incl, orig)) = frame {
                let end = self.win.start;
                let data = self.win.buf.slice(end - incl..end);
                self.stats.packets += 1;
                self.stats.packet_bytes += incl as u64;
                if let Some(s) = self.decode(link, &data, ts, orig) {
                    return Ok(Some(s));
                }
            }
        }
    }

    /// The segment in `frame` (`orig` bytes on the wire), if any; a fragment goes to the
    /// defragmenter, and the datagram it completes, if any, is decoded in its place.
    fn decode(&mut self, link: Link, frame: &Bytes, ts: u64, orig: usize) -> Option<Segment> {
        match decode_frame_shared(link, frame, ts) {
            Err(Skip::Fragment) => {
                self.stats.ip_fragments += 1;
                let ip = ip_layer(link, frame)?;
                // The IP packet's length on the wire: the frame's less its link header.
                let wire = orig.saturating_sub(frame.len() - ip.len());
                let datagram = self.defrag.push_captured(ip, wire, ts);
                self.stats.defrag = self.defrag.stats();
                let datagram = Bytes::from(datagram?);
                self.count(decode_frame_shared(Link::RawIp, &datagram, ts))
            }
            seg => self.count(seg),
        }
    }

    fn count(&mut self, seg: Result<Segment, Skip>) -> Option<Segment> {
        match seg {
            Ok(s) => {
                self.stats.tcp_segments += 1;
                Some(s)
            }
            Err(Skip::NonIp) => {
                self.stats.non_ip += 1;
                None
            }
            Err(Skip::NonTcp) => {
                self.stats.non_tcp += 1;
                None
            }
            Err(Skip::Fragment) => {
                self.stats.ip_fragments += 1;
                None
            }
            Err(Skip::Malformed) => {
                self.stats.malformed += 1;
                None
            }
        }
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<Segment, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_segment().transpose()
    }
}

fn read_u32(b: &[u8], e: Endianness) -> u32 {
    let a: [u8; 4] = b[..4].try_into().expect("4 bytes");
    match e {
        Endianness::Big => u32::from_be_bytes(a),
        Endianness::Little => u32::from_le_bytes(a),
    }
}

/// Makes the whole pcapng block at the window's start available and returns its length.
fn ng_block_len<R: Read>(win: &mut Window<R>, section_le: bool) -> Result<usize, PcapError> {
    let offset = win.offset();
    if !win.need(12)? {
        return Err(PcapError::Truncated { offset });
    }
    let a = win.avail();
    let btype = u32::from_be_bytes(a[0..4].try_into().expect("4 bytes"));
    // The section header block carries its own byte-order magic; later blocks use the order of
    // their section, which the section header before them set.
    let le = if btype == 0x0a0d_0d0a {
        match &a[8..12] {
            [0x4d, 0x3c, 0x2b, 0x1a] => true,
            [0x1a, 0x2b, 0x3c, 0x4d] => false,
            _ => {
                return Err(PcapError::Corrupt {
                    offset,
                    reason: "bad byte-order magic in section header".into(),
                });
            }
        }
    } else {
        section_le
    };
    let a = win.avail();
    let raw: [u8; 4] = a[4..8].try_into().expect("4 bytes");
    let len = if le {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    } as usize;
    if len < 12 || !len.is_multiple_of(4) || len > MAX_RECORD {
        return Err(PcapError::Corrupt {
            offset,
            reason: format!("block length {len} is invalid"),
        });
    }
    if !win.need(len)? {
        return Err(PcapError::Truncated { offset });
    }
    Ok(len)
}

fn corrupt(offset: u64, e: FileError) -> PcapError {
    match e {
        FileError::IncompleteBuffer => PcapError::Corrupt {
            offset,
            reason: "record shorter than its own length field says".into(),
        },
        other => PcapError::Corrupt {
            offset,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synth::{Conversation, frame, write_pcap, write_pcapng};

    const LINKS: [Link; 4] = [Link::Ethernet, Link::LinuxSll, Link::LinuxSll2, Link::RawIp];

    fn conversation(v6: bool) -> Vec<Segment> {
        exchange(v6, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[4])
    }

    /// One exchange: `request` (cut into segments at `cuts`), a 200 with a 2-byte body, FINs.
    fn exchange(v6: bool, request: &[u8], cuts: &[usize]) -> Vec<Segment> {
        let (c, s) = if v6 {
            ("[2001:db8::100]:40000", "[2001:db8::1]:80")
        } else {
            ("198.18.0.100:40000", "198.18.0.1:80")
        };
        let t = 1_700_000_000_000_000_000;
        let mut conv = Conversation::open(c.parse().unwrap(), s.parse().unwrap(), t);
        conv.send(true, request, cuts, t + 1_000_000);
        conv.send(
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            &[],
            t + 2_000_000,
        );
        conv.fin(true, t + 3_000_000);
        conv.fin(false, t + 3_000_000);
        conv.segments
    }

    /// `segs` written as a pcapng file when `ng`, else as a pcap file.
    fn file(ng: bool, link: Link, segs: &[Segment], vlan: bool) -> Vec<u8> {
        if ng {
            write_pcapng(Vec::new(), link, segs, vlan).unwrap()
        } else {
            write_pcap(Vec::new(), link, segs, vlan).unwrap()
        }
    }

    fn read_all(bytes: &[u8]) -> (Vec<Segment>, Option<PcapError>, CaptureStats) {
        drain(CaptureReader::new(bytes).unwrap())
    }

    fn drain<R: Read>(mut r: CaptureReader<R>) -> (Vec<Segment>, Option<PcapError>, CaptureStats) {
        let mut out = Vec::new();
        let err = loop {
            match r.next_segment() {
                Ok(Some(s)) => out.push(s),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        (out, err, r.stats().clone())
    }

    #[test]
    fn an_offload_super_packet_with_ipv4_total_length_zero_is_read_as_captured() {
        let segs = conversation(false);
        // Long enough not to be padded to Ethernet's minimum (a super-packet never is).
        let s = segs.iter().find(|s| s.payload.len() >= 20).unwrap();
        let mut f = frame(Link::Ethernet, s, false);
        // Ethernet header, then the IPv4 total length.
        f[16] = 0;
        f[17] = 0;
        assert_eq!(decode_frame(Link::Ethernet, &f, s.ts_ns).unwrap(), *s);
    }

    #[test]
    fn a_pcapng_interfaces_time_offset_may_be_negative() {
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption as O;
        let segs = conversation(false);
        let read = |offset: i64| {
            let opts = vec![O::IfTsOffset(offset as u64)];
            let ng = crate::capture::synth::write_pcapng_with(
                Vec::new(),
                Link::Ethernet,
                &segs,
                false,
                opts,
            )
            .unwrap();
            let (got, err, _) = read_all(&ng);
            assert!(err.is_none(), "{err:?}");
            got.iter().map(|s| s.ts_ns).collect::<Vec<_>>()
        };
        let want = |shift: i64| {
            segs.iter()
                .map(|s| (s.ts_ns / 1000 * 1000).saturating_add_signed(shift * 1_000_000_000))
                .collect::<Vec<_>>()
        };
        assert_eq!(read(2), want(2));
        assert_eq!(read(-3), want(-3));
    }

    #[test]
    fn every_link_type_in_pcap_and_pcapng_reads_back() {
        for v6 in [false, true] {
            let segs = conversation(v6);
            for link in LINKS {
                for vlan in [false, true] {
                    if vlan && link != Link::Ethernet {
                        continue;
                    }
                    let pcap = write_pcap(Vec::new(), link, &segs, vlan).unwrap();
                    let (got, err, st) = read_all(&pcap);
                    assert!(err.is_none(), "{link:?} v6={v6}: {err:?}");
                    assert_eq!(got, segs, "{link:?} v6={v6} vlan={vlan}");
                    assert_eq!(st.tcp_segments, segs.len() as u64);

                    let ng = write_pcapng(Vec::new(), link, &segs, vlan).unwrap();
                    let (got, err, _) = read_all(&ng);
                    assert!(err.is_none(), "{link:?} pcapng: {err:?}");
                    let want: Vec<Segment> = segs
                        .iter()
                        .map(|s| Segment {
                            ts_ns: s.ts_ns / 1000 * 1000,
                            ..s.clone()
                        })
                        .collect();
                    assert_eq!(got, want, "{link:?} pcapng");
                }
            }
        }
    }

    #[test]
    fn non_tcp_fragments_and_junk_are_counted() {
        let segs = conversation(false);
        let mut udp = frame(Link::Ethernet, &segs[3], false);
        udp[14 + 9] = 17;
        let mut frag = frame(Link::Ethernet, &segs[3], false);
        frag[14 + 6] = 0x20; // more fragments
        let mut arp = frame(Link::Ethernet, &segs[3], false);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let short = frame(Link::Ethernet, &segs[3], false)[..30].to_vec();
        assert_eq!(decode_frame(Link::Ethernet, &udp, 0), Err(Skip::NonTcp));
        assert_eq!(decode_frame(Link::Ethernet, &frag, 0), Err(Skip::Fragment));
        assert_eq!(decode_frame(Link::Ethernet, &arp, 0), Err(Skip::NonIp));
        assert_eq!(
            decode_frame(Link::Ethernet, &short, 0),
            Err(Skip::Malformed)
        );
        assert_eq!(
            decode_frame(Link::RawIp, &[0x20, 0, 0], 0),
            Err(Skip::Malformed)
        );
        // A frame cut by the snap length: the payload is short, the wire length is not.
        let full = frame(Link::Ethernet, &segs[4], false);
        let cut = decode_frame(Link::Ethernet, &full[..full.len() - 5], 7).unwrap();
        assert_eq!(cut.wire_len as usize, segs[4].payload.len());
        assert_eq!(cut.payload.len(), segs[4].payload.len() - 5);
        assert!(cut.is_truncated());
    }

    /// A conversation whose request, with an SQL injection in its body, is one segment.
    fn injection_conversation(v6: bool) -> Vec<Segment> {
        let body = "username=admin' OR '1'='1' --&password=x";
        let req = format!(
            "POST /login HTTP/1.1\r\nHost: bank.test\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(v6, req.as_bytes(), &[])
    }

    /// `segs` as timed IP packets, the ones with a payload of more than 100 bytes split into
    /// fragments at `starts` (after reordering them by `order`).
    fn fragmented(segs: &[Segment], starts: &[usize], order: &[usize]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = crate::capture::synth::ip_packet(s);
            if s.payload.len() > 100 {
                let frags = crate::capture::synth::fragments(&ip, 1000 + i as u16, starts);
                for &k in order {
                    out.push((s.ts_ns, frags[k].clone()));
                }
            } else {
                out.push((s.ts_ns, ip));
            }
        }
        out
    }

    fn replayed(packets: &[(u64, Vec<u8>)]) -> (Vec<serde_json::Value>, CaptureStats) {
        let dir = crate::lab::TempDir::new("sentinel-pcap-frag").unwrap();
        let path = dir.path().join("c.pcap");
        let pcap =
            crate::capture::synth::write_pcap_packets(Vec::new(), Link::Ethernet, packets).unwrap();
        std::fs::write(&path, pcap).unwrap();
        let mut out = Vec::new();
        let summary = crate::replay::replay(&path, Default::default(), |t| {
            out.push(serde_json::to_value(t.record(&[])).unwrap());
            Ok(())
        })
        .unwrap();
        (out, summary.capture)
    }

    #[test]
    fn a_request_split_into_ip_fragments_replays_as_the_whole_one() {
        for v6 in [false, true] {
            let segs = injection_conversation(v6);
            let whole: Vec<(u64, Vec<u8>)> = segs
                .iter()
                .map(|s| (s.ts_ns, crate::capture::synth::ip_packet(s)))
                .collect();
            let (want, st) = replayed(&whole);
            assert_eq!(want.len(), 1);
            assert_eq!(st.ip_fragments, 0);
            // IPv4: a first fragment with 8 bytes of TCP (ports only). IPv6: the destination
            // options and the TCP header (Linux wants every header in the first fragment).
            let starts: &[usize] = if v6 {
                &[0, 32, 96, 160]
            } else {
                &[0, 8, 96, 160]
            };
            for order in [[0, 1, 2, 3], [3, 1, 2, 0], [2, 0, 3, 1]] {
                let (got, st) = replayed(&fragmented(&segs, starts, &order));
                assert_eq!(got, want, "v6={v6} order {order:?}");
                assert_eq!(st.ip_fragments, 4);
                assert_eq!(st.defrag.reassembled, 1);
                assert_eq!(st.tcp_segments, segs.len() as u64);
            }
            // An overlapping fragment: the server never gets the request, neither does replay.
            let mut packets = fragmented(&segs, starts, &[0, 1, 2, 3]);
            let i = packets
                .iter()
                .position(|(_, p)| Defragmenter::is_fragment(p))
                .unwrap();
            let over = fragmented(&segs, &[0, 16], &[0, 1]);
            let over = over
                .iter()
                .find(|(_, p)| Defragmenter::is_fragment(p))
                .unwrap();
            // Same identification, moved to [24, 40) and sent after the first fragment: over
            // its end in IPv6, under the second one's in IPv4.
            let mut o = over.1.clone();
            shift_fragment(&mut o, 24);
            packets.insert(i + 1, (over.0, o));
            let (got, st) = replayed(&packets);
            assert!(got.is_empty(), "v6={v6}: {got:?}");
            assert_eq!(st.defrag.overlaps, 1, "v6={v6}");
        }
    }

    /// Moves a fragment's offset up by `by` bytes (a multiple of 8), keeping More Fragments.
    fn shift_fragment(p: &mut [u8], by: u16) {
        if p[0] >> 4 == 4 {
            let fo = u16::from_be_bytes([p[6], p[7]]) + by / 8;
            p[6..8].copy_from_slice(&fo.to_be_bytes());
            crate::capture::defrag::set_ipv4_header_checksum(p);
        } else {
            let fo = u16::from_be_bytes([p[42], p[43]]) + by;
            p[42..44].copy_from_slice(&fo.to_be_bytes());
        }
    }

    #[test]
    fn a_truncated_file_keeps_what_came_before_and_names_the_offset() {
        let segs = conversation(false);
        for ng in [false, true] {
            let bytes = file(ng, Link::Ethernet, &segs, false);
            // Cut inside the fifth record.
            let (full, _, _) = read_all(&bytes);
            assert_eq!(full.len(), segs.len());
            let mut offsets = Vec::new();
            let mut r = CaptureReader::new(&bytes[..]).unwrap();
            loop {
                offsets.push(r.win.offset());
                if r.next_segment().unwrap().is_none() {
                    break;
                }
            }
            let fifth = offsets[4] as usize;
            let (got, err, _) = read_all(&bytes[..fifth + 10]);
            assert_eq!(got.len(), 4, "ng={ng}");
            match err {
                Some(PcapError::Truncated { offset }) => assert_eq!(offset as usize, fifth),
                other => panic!("ng={ng}: {other:?}"),
            }
        }
    }

    /// A file opened by path is mapped, not streamed: the same segments, the same stats and the
    /// same truncation error at the same offset.
    #[test]
    fn a_mapped_file_reads_as_the_stream_does() {
        let dir = crate::lab::TempDir::new("sentinel-pcap-map").unwrap();
        let segs = conversation(true);
        for ng in [false, true] {
            // Another link type for each format: cooked v2 in pcapng, tagged Ethernet in pcap.
            let (link, vlan) = if ng {
                (Link::LinuxSll2, false)
            } else {
                (Link::Ethernet, true)
            };
            let bytes = file(ng, link, &segs, vlan);
            for cut in [bytes.len(), bytes.len() - 7] {
                let path = dir.path().join(format!("c-{ng}-{cut}.pcap"));
                std::fs::write(&path, &bytes[..cut]).unwrap();
                let (got, err, st) = drain(CaptureReader::open(&path).unwrap());
                let (want, want_err, want_st) = read_all(&bytes[..cut]);
                assert_eq!(got, want, "ng={ng} cut={cut}");
                assert_eq!(format!("{err:?}"), format!("{want_err:?}"));
                assert_eq!(st.tcp_segments, want_st.tcp_segments);
                assert_eq!(want_err.is_some(), cut < bytes.len());
            }
        }
    }

    #[test]
    fn corrupt_records_and_foreign_files_are_errors() {
        let segs = conversation(false);
        let mut bytes = write_pcap(Vec::new(), Link::Ethernet, &segs, false).unwrap();
        // The third record's captured length: absurd.
        let be = bytes[0] == 0xa1;
        let u32_at = |b: &[u8], at: usize| {
            let a: [u8; 4] = b[at..at + 4].try_into().unwrap();
            if be {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let mut off = 24;
        for _ in 0..2 {
            off += 16 + u32_at(&bytes, off + 8) as usize;
        }
        bytes[off + 8..off + 12].copy_from_slice(&[0xff; 4]);
        let (got, err, _) = read_all(&bytes);
        assert_eq!(got.len(), 2);
        assert!(
            matches!(err, Some(PcapError::Corrupt { offset, .. }) if offset as usize == off),
            "{err:?}"
        );
        let msg = err.unwrap().to_string();
        assert!(msg.contains(&format!("byte offset {off}")), "{msg}");

        let mut ng = write_pcapng(Vec::new(), Link::Ethernet, &segs, false).unwrap();
        let n = ng.len();
        // The last block's trailing length: inconsistent.
        ng[n - 4..].copy_from_slice(&[7, 0, 0, 7]);
        let (got, err, _) = read_all(&ng);
        assert!(got.len() < segs.len());
        assert!(
            matches!(
                err,
                Some(PcapError::Corrupt { .. } | PcapError::Truncated { .. })
            ),
            "{err:?}"
        );

        assert!(matches!(
            CaptureReader::new(&b"GET / HTTP/1.1\r\n\r\n"[..]),
            Err(PcapError::NotACapture { .. })
        ));
        assert!(matches!(
            CaptureReader::new(&b"\xd4\xc3"[..]),
            Err(PcapError::NotACapture { .. })
        ));
        assert!(matches!(
            CaptureReader::new(&b""[..]),
            Err(PcapError::Empty)
        ));
        let mut other_link = write_pcap(Vec::new(), Link::Ethernet, &[], false).unwrap();
        if other_link[0] == 0xa1 {
            other_link[20..24].copy_from_slice(&147u32.to_be_bytes());
        } else {
            other_link[20..24].copy_from_slice(&147u32.to_le_bytes());
        }
        assert!(matches!(
            CaptureReader::new(&other_link[..]),
            Err(PcapError::LinkType(_))
        ));
    }

    #[test]
    fn pcapng_resolutions_convert_to_nanoseconds() {
        assert_eq!(TsUnit::Mul(1000).to_ns(5), 5000);
        assert_eq!(TsUnit::Div(1000).to_ns(5_000_000), 5000);
        assert_eq!(TsUnit::Pow2(10).to_ns(1024), 1_000_000_000);
    }
}
