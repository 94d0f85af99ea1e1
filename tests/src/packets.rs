//! Crafted frames for the BPF_PROG_TEST_RUN tier: Ethernet with zero, one or two VLAN tags,
//! IPv4 (with options, fragments) or IPv6 (with a chain of extension headers), TCP, UDP or any
//! other protocol, plus ARP. [`Frame`] records where each layer starts so that tests can cut a
//! frame at an exact header boundary.
//!
//! The IPv4 header checksum is filled in; transport checksums are left at 0: the XDP program
//! judges a frame before anything verifies them.

use std::net::IpAddr;

use sentinel_common::{AddrKey, FlowKey, v4_mapped};

/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;
/// IP protocol number of ICMPv6 (a protocol without ports).
pub const ICMPV6: u8 = 58;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (8 bytes of PadN).
    HopByHop,
    /// Destination options of `units` 8-byte units (PadN).
    DestOpts {
        /// Length in 8-byte units (at least 1).
        units: u8,
    },
    /// A routing header (type 0 style, no addresses, segments left 0).
    Routing,
    /// A fragment header.
    Fragment {
        /// Fragment offset in 8-byte units (0: the first fragment, which carries the ports).
        offset: u16,
        /// More fragments follow.
        more: bool,
    },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::DestOpts { .. } => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Ext::DestOpts { units } => {
                let len = units.max(1) as usize * 8;
                let mut b = vec![next, (len / 8 - 1) as u8, 1, (len - 4) as u8];
                b.resize(len, 0);
                b
            }
            Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let off = (offset << 3) | more as u16;
                let [hi, lo] = off.to_be_bytes();
                vec![next, 0, hi, lo, 0, 0, 0x12, 0x34]
            }
        }
    }
}

/// A built frame and where its layers start.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The frame, from the destination MAC on.
    pub bytes: Vec<u8>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
}

impl Frame {
    /// The frame cut to its first `len` bytes.
    pub fn cut(&self, len: usize) -> Vec<u8> {
        self.bytes[..len].to_vec()
    }

    /// Length of the frame (what the XDP program counts as bytes).
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// True for an empty frame (never built by [`Packet`]).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Describes one packet; [`Packet::build`] lays it out.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Source address; its family decides IPv4 or IPv6.
    pub src: IpAddr,
    /// Destination address (same family).
    pub dst: IpAddr,
    /// IP protocol of the transport header.
    pub proto: u8,
    /// Source port (TCP and UDP).
    pub sport: u16,
    /// Destination port (TCP and UDP).
    pub dport: u16,
    /// VLAN ids, outermost first (two tags: 802.1ad outside, 802.1Q inside).
    pub vlans: Vec<u16>,
    /// IPv4 option bytes (rounded up to 4; NOPs).
    pub ipv4_options: usize,
    /// IPv4 fragment offset in 8-byte units (non-zero: a later fragment without ports).
    pub ipv4_frag_offset: u16,
    /// IPv6 extension headers, in order.
    pub v6_ext: Vec<Ext>,
    /// Payload bytes after the transport header.
    pub payload: usize,
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

impl Packet {
    /// A UDP datagram from `src` port 40000 to `dst` port 7000 with 32 bytes of payload.
    pub fn udp(src: &str, dst: &str) -> Self {
        let (src, dst) = (parse_ip(src), parse_ip(dst));
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Self {
            src,
            dst,
            proto: UDP,
            sport: 40000,
            dport: 7000,
            vlans: Vec::new(),
            ipv4_options: 0,
            ipv4_frag_offset: 0,
            v6_ext: Vec::new(),
            payload: 32,
        }
    }

    /// A TCP segment (ACK|PSH) between the same defaults as [`Packet::udp`].
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self {
            proto: TCP,
            ..Self::udp(src, dst)
        }
    }

    /// Sets the transport protocol (any number; only TCP and UDP get a port header).
    pub fn proto(mut self, proto: u8) -> Self {
        self.proto = proto;
        self
    }

    /// Sets the ports.
    pub fn ports(mut self, sport: u16, dport: u16) -> Self {
        self.sport = sport;
        self.dport = dport;
        self
    }

    /// Adds a VLAN tag inside the ones already there.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    /// Adds IPv4 options (NOPs), `bytes` rounded up to 4.
    pub fn ipv4_options(mut self, bytes: usize) -> Self {
        self.ipv4_options = bytes.div_ceil(4) * 4;
        self
    }

    /// Makes the IPv4 packet a later fragment (no transport header).
    pub fn ipv4_fragment(mut self, offset: u16) -> Self {
        self.ipv4_frag_offset = offset;
        self
    }

    /// Appends an IPv6 extension header.
    pub fn ext(mut self, ext: Ext) -> Self {
        self.v6_ext.push(ext);
        self
    }

    /// Sets the payload length.
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = len;
        self
    }

    /// The flow-kill key of this packet (ports 0 for a packet without them).
    pub fn flow_key(&self) -> FlowKey {
        let ports = self.has_ports();
        FlowKey {
            src: addr_key(self.src),
            dst: addr_key(self.dst),
            src_port: if ports { self.sport } else { 0 },
            dst_port: if ports { self.dport } else { 0 },
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    fn has_ports(&self) -> bool {
        let later_fragment = self.ipv4_frag_offset != 0
            || self
                .v6_ext
                .iter()
                .any(|e| matches!(e, Ext::Fragment { offset, .. } if *offset != 0));
        (self.proto == TCP || self.proto == UDP) && !later_fragment
    }

    fn transport(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if self.has_ports() {
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            if self.proto == TCP {
                // seq, ack, data offset 5, ACK|PSH, window, checksum, urgent.
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            } else {
                l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
        }
        l4.extend(std::iter::repeat_n(0xab, self.payload));
        l4
    }

    /// Lays the frame out.
    pub fn build(&self) -> Frame {
        let mut f = Vec::with_capacity(128 + self.payload);
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IPV4
        } else {
            ETH_P_IPV6
        };
        push_vlans(&mut f, &self.vlans);
        f.extend_from_slice(&ethertype.to_be_bytes());
        let l3 = f.len();
        let l4_bytes = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + self.ipv4_options;
                let mut ip = vec![0u8; ihl];
                ip[0] = 0x40 | (ihl / 4) as u8;
                ip[2..4].copy_from_slice(&((ihl + l4_bytes.len()) as u16).to_be_bytes());
                ip[6..8].copy_from_slice(&(self.ipv4_frag_offset & 0x1fff).to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                ip[20..].fill(1); // NOP options
                sentinel::capture::defrag::set_ipv4_header_checksum(&mut ip);
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut chain = Vec::new();
                for (i, e) in self.v6_ext.iter().enumerate() {
                    let next = self.v6_ext.get(i + 1).map_or(self.proto, |n| n.number());
                    chain.extend(e.bytes(next));
                }
                let first = self.v6_ext.first().map_or(self.proto, |e| e.number());
                let plen = (chain.len() + l4_bytes.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.extend_from_slice(&[first, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&chain);
            }
            _ => unreachable!("families checked in the constructor"),
        }
        let l4 = f.len();
        f.extend_from_slice(&l4_bytes);
        Frame { bytes: f, l3, l4 }
    }
}

fn push_vlans(f: &mut Vec<u8>, vlans: &[u16]) {
    for (i, id) in vlans.iter().enumerate() {
        let tpid = if i + 1 < vlans.len() {
            ETH_P_8021AD
        } else {
            ETH_P_8021Q
        };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
}

/// The 16-byte map key of an address (IPv4 mapped into `::ffff:0:0/96`).
pub fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An ARP request (optionally VLAN-tagged), padded to the 60-byte Ethernet minimum.
pub fn arp(vlans: &[u16]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&SRC_MAC);
    push_vlans(&mut f, vlans);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[198, 18, 0, 100]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 18, 0, 1]);
    f.resize(f.len().max(60), 0);
    f
}

/// A frame of any other EtherType (e.g. 0x88cc LLDP) with `len` bytes of payload.
pub fn ethertype(ethertype: u16, len: usize) -> Vec<u8> {
    let mut f = DST_MAC.to_vec();
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.resize(14 + len, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be16(b: &[u8], off: usize) -> u16 {
        u16::from_be_bytes([b[off], b[off + 1]])
    }

    #[test]
    fn ipv4_udp_layout_and_checksum() {
        let f = Packet::udp("198.18.0.100", "198.18.0.1").build();
        assert_eq!((f.l3, f.l4, f.bytes.len()), (14, 34, 34 + 8 + 32));
        assert_eq!(be16(&f.bytes, 12), ETH_P_IPV4);
        assert_eq!(be16(&f.bytes, 16), 20 + 8 + 32, "total length");
        assert_eq!(
            sentinel::capture::defrag::internet_checksum(&f.bytes[14..34]),
            0,
            "checksum verifies"
        );
        assert_eq!(be16(&f.bytes, 34), 40000);
        assert_eq!(be16(&f.bytes, 36), 7000);
        assert_eq!(be16(&f.bytes, 38), 8 + 32, "UDP length");
    }

    #[test]
    fn vlan_tags_and_ipv4_options() {
        let f = Packet::tcp("198.18.0.100", "198.18.0.1")
            .vlan(100)
            .vlan(200)
            .ipv4_options(5)
            .build();
        assert_eq!(be16(&f.bytes, 12), ETH_P_8021AD);
        assert_eq!(be16(&f.bytes, 14), 100);
        assert_eq!(be16(&f.bytes, 16), ETH_P_8021Q);
        assert_eq!(be16(&f.bytes, 18), 200);
        assert_eq!(be16(&f.bytes, 20), ETH_P_IPV4);
        assert_eq!(f.l3, 22);
        assert_eq!(f.bytes[22], 0x47, "IHL 7 words: 8 option bytes");
        assert_eq!(f.l4, 22 + 28);
        assert_eq!(f.bytes[f.l4 + 12], 0x50, "TCP data offset");
        assert_eq!(
            sentinel::capture::defrag::internet_checksum(&f.bytes[22..50]),
            0
        );
    }

    #[test]
    fn ipv6_extension_chain_links_next_headers() {
        let f = Packet::udp("2001:db8::100", "2001:db8::1")
            .ext(Ext::HopByHop)
            .ext(Ext::DestOpts { units: 2 })
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .build();
        let b = &f.bytes;
        assert_eq!(be16(b, 12), ETH_P_IPV6);
        assert_eq!(b[14 + 6], 0, "first next header: hop-by-hop");
        assert_eq!(b[54], 60, "hop-by-hop -> destination options");
        assert_eq!(b[62], 44, "destination options -> fragment");
        assert_eq!(b[63], 1, "destination options: 2 units");
        assert_eq!(b[78], UDP, "fragment -> UDP");
        assert_eq!(be16(b, 80) & 1, 1, "more fragments");
        assert_eq!(f.l4, 54 + 8 + 16 + 8);
        assert_eq!(be16(b, 18) as usize, b.len() - 54, "payload length");
        assert_eq!(be16(b, f.l4), 40000);
    }

    #[test]
    fn later_fragments_carry_no_ports() {
        let v4 = Packet::udp("198.18.0.100", "198.18.0.1")
            .ipv4_fragment(3)
            .payload(16)
            .build();
        assert_eq!(v4.bytes.len(), v4.l4 + 16);
        assert_eq!(be16(&v4.bytes, 14 + 6), 3);
        let v6 = Packet::tcp("2001:db8::100", "2001:db8::1")
            .ext(Ext::Fragment {
                offset: 8,
                more: false,
            })
            .payload(16)
            .build();
        assert_eq!(v6.bytes.len(), v6.l4 + 16);
    }

    #[test]
    fn arp_and_other_ethertypes() {
        let a = arp(&[7]);
        assert_eq!(be16(&a, 12), ETH_P_8021Q);
        assert_eq!(be16(&a, 16), ETH_P_ARP);
        assert_eq!(a.len(), 60);
        let l = ethertype(0x88cc, 46);
        assert_eq!((be16(&l, 12), l.len()), (0x88cc, 60));
    }
}
