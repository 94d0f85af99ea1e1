//! Synthetic TCP conversations as [`Segment`]s, and capture files made from them in every link
//! type the reader supports. For tests, fuzz targets and benchmarks: captures are generated,
//! never downloaded.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use super::{Segment, pcap::Link, segment::flags};

/// One TCP connection being written: sequence numbers per side, segments in send order.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// Client address.
    pub client: SocketAddr,
    /// Server address.
    pub server: SocketAddr,
    cseq: u32,
    sseq: u32,
    /// Segments so far.
    pub segments: Vec<Segment>,
}

impl Conversation {
    /// Opens a connection with a three-way handshake at `ts_ns`. Initial sequence numbers are
    /// chosen near the wrap-around point so tests cross it.
    pub fn open(client: SocketAddr, server: SocketAddr, ts_ns: u64) -> Self {
        let (c, s) = (0xffff_f000u32, 0x7fff_ff00u32);
        let mut me = Self {
            client,
            server,
            cseq: c.wrapping_add(1),
            sseq: s.wrapping_add(1),
            segments: Vec::new(),
        };
        me.segments
            .push(seg(ts_ns, client, server, c, 0, flags::SYN, &[]));
        me.segments.push(seg(
            ts_ns + 1_000,
            server,
            client,
            s,
            c.wrapping_add(1),
            flags::SYN | flags::ACK,
            &[],
        ));
        me.segments.push(seg(
            ts_ns + 2_000,
            client,
            server,
            c.wrapping_add(1),
            s.wrapping_add(1),
            flags::ACK,
            &[],
        ));
        me
    }

    /// A connection already open (no handshake seen), with these next sequence numbers.
    pub fn mid_stream(client: SocketAddr, server: SocketAddr, cseq: u32, sseq: u32) -> Self {
        Self {
            client,
            server,
            cseq,
            sseq,
            segments: Vec::new(),
        }
    }

    /// Sends `data` from the client (`to_server`) or the server, cut at `cuts` (offsets into
    /// `data`, any order, out-of-range ones ignored), all stamped `ts_ns`.
    pub fn send(&mut self, to_server: bool, data: &[u8], cuts: &[usize], ts_ns: u64) {
        let mut points: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < data.len())
            .collect();
        points.push(0);
        points.push(data.len());
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            let chunk = &data[w[0]..w[1]];
            let (src, dst, seq, ack) = self.dir(to_server);
            let s = seg(ts_ns, src, dst, seq, ack, flags::PSH | flags::ACK, chunk);
            self.segments.push(s);
            self.advance(to_server, chunk.len() as u32);
        }
    }

    /// Sends `data` in segments of at most `mss` bytes.
    pub fn send_mss(&mut self, to_server: bool, data: &[u8], mss: usize, ts_ns: u64) {
        let cuts: Vec<usize> = (1..)
            .map(|i| i * mss.max(1))
            .take_while(|&c| c < data.len())
            .collect();
        self.send(to_server, data, &cuts, ts_ns);
    }

    /// A pure acknowledgment from one side.
    pub fn ack(&mut self, from_client: bool, ts_ns: u64) {
        let (src, dst, seq, ack) = self.dir(from_client);
        self.segments
            .push(seg(ts_ns, src, dst, seq, ack, flags::ACK, &[]));
    }

    /// A FIN from one side.
    pub fn fin(&mut self, from_client: bool, ts_ns: u64) {
        let (src, dst, seq, ack) = self.dir(from_client);
        self.segments
            .push(seg(ts_ns, src, dst, seq, ack, flags::FIN | flags::ACK, &[]));
        self.advance(from_client, 1);
    }

    /// A RST from one side.
    pub fn rst(&mut self, from_client: bool, ts_ns: u64) {
        let (src, dst, seq, _) = self.dir(from_client);
        self.segments
            .push(seg(ts_ns, src, dst, seq, 0, flags::RST, &[]));
    }

    /// Skips `n` bytes of one side's sequence space (bytes sent but never captured).
    pub fn lose(&mut self, from_client: bool, n: u32) {
        self.advance(from_client, n);
    }

    fn dir(&self, from_client: bool) -> (SocketAddr, SocketAddr, u32, u32) {
        if from_client {
            (self.client, self.server, self.cseq, self.sseq)
        } else {
            (self.server, self.client, self.sseq, self.cseq)
        }
    }

    fn advance(&mut self, from_client: bool, n: u32) {
        if from_client {
            self.cseq = self.cseq.wrapping_add(n);
        } else {
            self.sseq = self.sseq.wrapping_add(n);
        }
    }
}

/// A segment with a full payload.
pub fn seg(
    ts_ns: u64,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    fl: u8,
    payload: &[u8],
) -> Segment {
    Segment {
        ts_ns,
        src,
        dst,
        seq,
        ack,
        flags: fl,
        payload: Bytes::copy_from_slice(payload),
        wire_len: payload.len() as u32,
    }
}

/// The IP packet (header, TCP header, payload) carrying `s`; `wire_len` beyond the payload is
/// declared in the IP length (as a snap length would leave it).
pub fn ip_packet(s: &Segment) -> Vec<u8> {
    let tcp_len = 20 + s.wire_len.max(s.payload.len() as u32) as usize;
    let mut p = Vec::with_capacity(60 + s.payload.len());
    match (s.src.ip(), s.dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let total = (20 + tcp_len) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&a.octets());
            p.extend_from_slice(&b.octets());
        }
        (a, b) => {
            let v6 = |x: IpAddr| match x {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            // With a destination-options extension header (8 bytes) to exercise the walk.
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&((tcp_len + 8) as u16).to_be_bytes());
            p.extend_from_slice(&[60, 64]);
            p.extend_from_slice(&v6(a));
            p.extend_from_slice(&v6(b));
            p.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    p.extend_from_slice(&s.src.port().to_be_bytes());
    p.extend_from_slice(&s.dst.port().to_be_bytes());
    p.extend_from_slice(&s.seq.to_be_bytes());
    p.extend_from_slice(&s.ack.to_be_bytes());
    p.extend_from_slice(&[0x50, s.flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(&s.payload);
    p
}

/// Sets the TCP checksum of `ip`, a packet as [`ip_packet`] builds it (IPv4's 20-byte header,
/// or IPv6's with 8 bytes of destination options, then TCP), for a receiver that verifies it
/// (a real kernel; [`ip_packet`] leaves it 0).
pub fn set_tcp_checksum(ip: &mut [u8]) {
    let (l4, addrs) = if ip[0] >> 4 == 4 {
        (20, 12..20)
    } else {
        (48, 8..40)
    };
    ip[l4 + 16..l4 + 18].fill(0);
    let tcp = &ip[l4..];
    // The pseudo-header in IPv6's form (RFC 8200 8.1); as 16-bit words it sums as IPv4's.
    let mut sum = Vec::with_capacity(40 + tcp.len());
    sum.extend_from_slice(&ip[addrs]);
    sum.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    sum.extend_from_slice(&[0, 0, 0, 6]);
    sum.extend_from_slice(tcp);
    let ck = super::defrag::internet_checksum(&sum);
    ip[l4 + 16..l4 + 18].copy_from_slice(&ck.to_be_bytes());
}

/// The frame carrying `s` in the framing of `link` (Ethernet frames carry an 802.1Q tag when
/// `vlan`).
pub fn frame(link: Link, s: &Segment, vlan: bool) -> Vec<u8> {
    wrap(link, &ip_packet(s), vlan)
}

/// The IP packet `ip` in the framing of `link` (Ethernet frames carry an 802.1Q tag when
/// `vlan`).
pub fn wrap(link: Link, ip: &[u8], vlan: bool) -> Vec<u8> {
    let et: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut f = Vec::with_capacity(ip.len() + 24);
    match link {
        Link::Ethernet => {
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
            if vlan {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
            }
            f.extend_from_slice(&et.to_be_bytes());
        }
        Link::LinuxSll => {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            f.extend_from_slice(&et.to_be_bytes());
        }
        Link::LinuxSll2 => {
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
        Link::RawIp => {}
    }
    f.extend_from_slice(ip);
    // Ethernet pads short frames to 60 bytes; the reader must trim by the IP length.
    if link == Link::Ethernet && f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The IP packet `ip` (IPv4, or IPv6 whose unfragmentable part is its fixed header) split into
/// fragments with identification `id`, one starting at each of `starts` (offsets into the data
/// after the header, multiples of 8, the first 0); the last runs to the end of the packet.
pub fn fragments(ip: &[u8], id: u16, starts: &[usize]) -> Vec<Vec<u8>> {
    let v6 = ip[0] >> 4 == 6;
    let hlen = if v6 { 40 } else { (ip[0] & 0x0f) as usize * 4 };
    let data = &ip[hlen..];
    let mut out = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        assert!(
            start.is_multiple_of(8),
            "fragment offsets are multiples of 8"
        );
        let end = starts.get(i + 1).copied().unwrap_or(data.len());
        let more = i + 1 < starts.len();
        let piece = &data[start..end];
        let mut f = ip[..hlen].to_vec();
        if v6 {
            f[4..6].copy_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
            f[6] = 44;
            let fo = start as u16 | more as u16;
            f.extend_from_slice(&[ip[6], 0]);
            f.extend_from_slice(&fo.to_be_bytes());
            f.extend_from_slice(&(id as u32).to_be_bytes());
        } else {
            f[2..4].copy_from_slice(&((hlen + piece.len()) as u16).to_be_bytes());
            f[4..6].copy_from_slice(&id.to_be_bytes());
            let fo = (start / 8) as u16 | if more { 0x2000 } else { 0 };
            f[6..8].copy_from_slice(&fo.to_be_bytes());
            crate::capture::defrag::set_ipv4_header_checksum(&mut f);
        }
        f.extend_from_slice(piece);
        out.push(f);
    }
    out
}

/// Writes IP packets, each with its capture time, as a pcap file in the framing of `link`.
pub fn write_pcap_packets<W: Write>(
    out: W,
    link: Link,
    packets: &[(u64, Vec<u8>)],
) -> std::io::Result<W> {
    let frames = packets.iter().map(|(ts, ip)| (*ts, wrap(link, ip, false)));
    write_frames(out, link, frames)
}

/// Writes timed frames of the framing of `link` as a pcap file (nanosecond timestamps).
fn write_frames<W: Write>(
    out: W,
    link: Link,
    frames: impl Iterator<Item = (u64, Vec<u8>)>,
) -> std::io::Result<W> {
    let header = PcapHeader {
        datalink: datalink(link),
        ts_resolution: pcap_file::TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(out, header).map_err(std::io::Error::other)?;
    for (ts, f) in frames {
        w.write_packet(&PcapPacket::new(
            Duration::from_nanos(ts),
            f.len() as u32,
            &f,
        ))
        .map_err(std::io::Error::other)?;
    }
    Ok(w.into_writer())
}

/// The pcap link type for a framing.
pub fn datalink(link: Link) -> DataLink {
    match link {
        Link::Ethernet => DataLink::ETHERNET,
        Link::LinuxSll => DataLink::LINUX_SLL,
        Link::LinuxSll2 => DataLink::LINUX_SLL2,
        Link::RawIp => DataLink::RAW,
    }
}

/// Writes `segs` as a pcap file (nanosecond timestamps).
pub fn write_pcap<W: Write>(
    out: W,
    link: Link,
    segs: &[Segment],
    vlan: bool,
) -> std::io::Result<W> {
    let frames = segs.iter().map(|s| (s.ts_ns, frame(link, s, vlan)));
    write_frames(out, link, frames)
}

/// Writes `segs` as a pcapng file: one interface with microsecond timestamps (the pcapng
/// default resolution, so stamps are rounded down to microseconds).
pub fn write_pcapng<W: Write>(
    out: W,
    link: Link,
    segs: &[Segment],
    vlan: bool,
) -> std::io::Result<W> {
    write_pcapng_with(out, link, segs, vlan, Vec::new())
}

/// [`write_pcapng`] with more options on the interface (`if_tsoffset`, ...).
pub fn write_pcapng_with<W: Write>(
    out: W,
    link: Link,
    segs: &[Segment],
    vlan: bool,
    options: Vec<InterfaceDescriptionOption<'static>>,
) -> std::io::Result<W> {
    let mut w = PcapNgWriter::new(out).map_err(std::io::Error::other)?;
    let mut idb = InterfaceDescriptionBlock::new(datalink(link), 0xffff);
    idb.options
        .push(InterfaceDescriptionOption::IfName("veth0".into()));
    idb.options.extend(options);
    w.write_pcapng_block(idb).map_err(std::io::Error::other)?;
    for s in segs {
        let f = frame(link, s, vlan);
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            // pcap-file writes the tick count as given: microsecond ticks here.
            timestamp: Duration::from_nanos(s.ts_ns / 1000),
            original_len: f.len() as u32,
            data: f.into(),
            options: vec![],
        };
        w.write_pcapng_block(epb).map_err(std::io::Error::other)?;
    }
    Ok(w.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_checksums_are_those_computed_elsewhere() {
        // Values from an independent computation (Python, each family's own pseudo-header) over
        // these packets; an odd payload, so the padding byte counts too.
        for (c, s, want) in [
            ("198.18.0.100:40000", "198.18.0.1:80", 0xc249),
            ("[2001:db8::100]:40000", "[2001:db8::1]:80", 0xf260),
        ] {
            let s = seg(
                0,
                c.parse().unwrap(),
                s.parse().unwrap(),
                1,
                2,
                0x18,
                b"abc",
            );
            let mut ip = ip_packet(&s);
            let l4 = ip.len() - 23;
            ip[l4 + 16] = 0xaa; // whatever was there is replaced
            set_tcp_checksum(&mut ip);
            assert_eq!(u16::from_be_bytes([ip[l4 + 16], ip[l4 + 17]]), want, "{c}");
        }
    }
}
