//! The packet parsing core shared by the XDP and TC programs: Ethernet (with up to two 802.1Q /
//! 802.1ad tags), IPv4, IPv6 (skipping extension headers) and the TCP/UDP ports.
//!
//! Every read is bounds-checked against `data_end` through [`ptr_at`], which is what the verifier
//! needs to see. Offsets are kept small and bounded so that variable-offset packet accesses verify.

use core::mem::{MaybeUninit, size_of};

use sentinel_common::AddrKey;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;

/// IP protocol numbers the parser knows.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers followed before giving up (more is treated as "no transport header").
const MAX_IPV6_EXT: usize = 6;
/// Bound on the L4 offset, so the verifier can see every later access is in range.
pub const MAX_L4_OFFSET: usize = 512;

/// [`Packet::frag`]: not a fragment (an IPv6 atomic fragment included).
pub const FRAG_NONE: u8 = 0;
/// [`Packet::frag`]: the first fragment of a datagram (offset 0, more to come).
pub const FRAG_FIRST: u8 = 1;
/// [`Packet::frag`]: a later fragment (no transport header).
pub const FRAG_LATER: u8 = 2;

/// What the parser found in a packet.
///
/// Addresses are held as two native-endian words of the 16-byte key (see [`key`]): built and
/// copied with word moves, where `[u8; 16]` fields cost byte loops (`memset`/`memcpy` calls with
/// this toolchain). Made with [`Packet::zeroed_in`].
pub struct Packet {
    /// Source address (IPv4 mapped into IPv6), as key words.
    pub src: [u64; 2],
    /// Destination address, as key words.
    pub dst: [u64; 2],
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Source port in host order (0 when there is none).
    pub src_port: u16,
    /// Destination port in host order (0 when there is none).
    pub dst_port: u16,
    /// Offset of the transport header from `data` (0 when there is none).
    pub l4_off: usize,
    /// Offset of the end of the IP packet according to its length field (frames can carry
    /// link-layer padding past it).
    pub ip_end: usize,
    /// The transport header should be there but is cut short.
    pub l4_truncated: bool,
    /// `FRAG_*`: whether the packet is an IP fragment, and which.
    pub frag: u8,
    /// Offset of the IP header from `data`.
    pub l3_off: u8,
    /// The packet is IPv6.
    pub ipv6: bool,
}

impl Packet {
    /// Every field zero (no ports, no transport header), written into `out` with word stores:
    /// how the XDP program and TC's slow path start a packet (TC's IPv4 fast path fills every
    /// field itself). `Packet` has no `Default` on purpose: where a packet lives in memory (one
    /// an out-of-line function fills, as TC's slow path does), the compiler turns an all-zero
    /// struct literal into a `memset` call, a byte loop
    /// with this toolchain that costs more than the parse. In the XDP program's inline parse,
    /// where a default value stayed in registers, the seven stores cost the same within the
    /// noise of `cargo xtask bench datapath`'s cost part, and the program is smaller.
    #[inline(always)]
    pub fn zeroed_in(out: &mut MaybeUninit<Packet>) -> &mut Packet {
        const WORDS: usize = size_of::<Packet>() / 8;
        const { assert!(size_of::<Packet>() % 8 == 0) };
        // SAFETY: `out` is valid for writes of a `Packet` and 8-byte aligned (`Packet` holds
        // `u64`s); all-zero bytes are a valid `Packet` (zero integers, `false`).
        unsafe {
            store_words(out.as_mut_ptr().cast::<[u64; WORDS]>(), &[0; WORDS]);
            out.assume_init_mut()
        }
    }
}

/// `v` written into `out` with word stores (see [`store_words`]): a struct literal with zero
/// fields built on the stack otherwise becomes a `memset` call, a byte loop.
///
/// # Safety
/// As [`store_words`]: `T` is plain data without implicit padding.
#[inline(always)]
pub unsafe fn init_words<'a, T: Copy>(out: &'a mut MaybeUninit<T>, v: &T) -> &'a mut T {
    // SAFETY: `out` is valid for writes of a `T`; the rest is the caller's promise.
    unsafe {
        store_words(out.as_mut_ptr(), v);
        out.assume_init_mut()
    }
}

/// Copies `*src` to `*dst` one 8-byte word at a time, with stores that the compiler may neither
/// merge nor turn into a `memset`/`memcpy` call (both are byte loops with this toolchain): a
/// value that is mostly zeros, or a whole struct copied at once, becomes a call otherwise.
///
/// # Safety
/// `dst` is valid for writes of a `T`; `T` is plain data without implicit padding (its bytes
/// read as words).
#[inline(always)]
pub unsafe fn store_words<T: Copy>(dst: *mut T, src: &T) {
    const { assert!(size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let from = (src as *const T).cast::<u64>();
    let to = dst.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: both are `size_of::<T>()` bytes and 8-byte aligned (`T`'s alignment, asserted
        // above), and every byte of a `T` is initialised (the caller's promise).
        unsafe { core::ptr::write_volatile(to.add(i), *from.add(i)) };
    }
}

/// The map key held in two words.
#[inline(always)]
pub fn key(words: &[u64; 2]) -> &AddrKey {
    // SAFETY: `[u64; 2]` and `AddrKey` (`[u8; 16]`) have the same size, every bit pattern is valid
    // for both, and the byte array's alignment (1) is satisfied by any address.
    unsafe { &*(words as *const [u64; 2]).cast::<AddrKey>() }
}

/// The key words of an IPv4 address (network-order octets as read from the packet): the
/// IPv4-mapped `::ffff:a.b.c.d`.
#[inline(always)]
pub fn v4_words(octets: [u8; 4]) -> [u64; 2] {
    [
        0,
        ((u32::from_ne_bytes(octets) as u64) << 32)
            | u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]),
    ]
}

/// Why a packet could not be parsed.
enum ParseError {
    /// Not IPv4 or IPv6.
    NonIp,
    /// A header is truncated or inconsistent.
    Malformed,
}

/// Returns a pointer to a `T` at `off` bytes into the packet when all of it is inside the packet.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*const T> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `off` are inside the packet; packet
    // data has no alignment guarantee, hence the unaligned read.
    ptr_at::<T>(data, data_end, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn read_be16(data: usize, data_end: usize, off: usize) -> Option<u16> {
    read::<[u8; 2]>(data, data_end, off).map(u16::from_be_bytes)
}

/// Parses the headers of the frame in `[data, data_end)` into `out`; returns one of the
/// `PARSE_*` codes.
///
/// Kept out of line (its own BPF stack frame) and writing straight into `out`: building `Packet`
/// values per branch and returning them in a `Result` costs hundreds of bytes of stack, and a
/// `Result` in a BPF function signature produces BTF the kernel rejects.
#[inline(never)]
pub fn parse_into(data: usize, data_end: usize, out: &mut Packet) -> u32 {
    parse_inline(data, data_end, out)
}

/// [`parse_into`] inlined into the caller: no call, and the caller's code can use the fields it
/// just wrote without reloading them. The XDP program uses this; its stack stays small as the
/// list lookups run in a function of their own.
#[inline(always)]
pub fn parse_inline(data: usize, data_end: usize, out: &mut Packet) -> u32 {
    match parse(data, data_end, out) {
        Ok(()) => PARSE_OK,
        Err(ParseError::NonIp) => PARSE_NON_IP,
        Err(ParseError::Malformed) => PARSE_MALFORMED,
    }
}

/// [`parse_into`] found IPv4 or IPv6.
pub const PARSE_OK: u32 = 0;
/// [`parse_into`] found neither IPv4 nor IPv6.
pub const PARSE_NON_IP: u32 = 1;
/// [`parse_into`] found truncated or inconsistent headers.
pub const PARSE_MALFORMED: u32 = 2;

#[inline(always)]
fn parse(data: usize, data_end: usize, pkt: &mut Packet) -> Result<(), ParseError> {
    let mut ethertype = read_be16(data, data_end, 12).ok_or(ParseError::Malformed)?;
    let mut l3_off = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = read_be16(data, data_end, l3_off + 2).ok_or(ParseError::Malformed)?;
        l3_off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = read_be16(data, data_end, l3_off + 2).ok_or(ParseError::Malformed)?;
            l3_off += 4;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(data, data_end, l3_off, pkt),
        ETH_P_IPV6 => parse_ipv6(data, data_end, l3_off, pkt),
        _ => Err(ParseError::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(
    data: usize,
    data_end: usize,
    off: usize,
    pkt: &mut Packet,
) -> Result<(), ParseError> {
    // Bytes 0..10 of the header: version/IHL, ..., fragment offset, TTL, protocol.
    let head = read::<[u8; 10]>(data, data_end, off).ok_or(ParseError::Malformed)?;
    if head[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = ((head[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    let src = read::<[u8; 4]>(data, data_end, off + 12).ok_or(ParseError::Malformed)?;
    let dst = read::<[u8; 4]>(data, data_end, off + 16).ok_or(ParseError::Malformed)?;
    pkt.src = v4_words(src);
    pkt.dst = v4_words(dst);
    pkt.proto = head[9];
    pkt.ip_end = off + u16::from_be_bytes([head[2], head[3]]) as usize;
    pkt.l3_off = off as u8;
    let frag = u16::from_be_bytes([head[6], head[7]]);
    if frag & 0x3fff != 0 {
        pkt.frag = if frag & 0x1fff != 0 {
            FRAG_LATER
        } else {
            FRAG_FIRST
        };
    }
    // A non-first fragment carries no transport header.
    if frag & 0x1fff == 0 {
        parse_ports(data, data_end, off + ihl, pkt);
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(
    data: usize,
    data_end: usize,
    off: usize,
    pkt: &mut Packet,
) -> Result<(), ParseError> {
    let head = read::<[u8; 8]>(data, data_end, off).ok_or(ParseError::Malformed)?;
    if head[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    // Bytes 8..40 of the header, both addresses. Read as words: a 16-byte array read is a
    // `memmove` call with this toolchain.
    if ptr_at::<[u8; 32]>(data, data_end, off + 8).is_none() {
        return Err(ParseError::Malformed);
    }
    let a = data + off + 8;
    // SAFETY: the 32 bytes at `a` are inside the packet (checked above); unaligned reads.
    unsafe {
        pkt.src = [
            core::ptr::read_unaligned(a as *const u64),
            core::ptr::read_unaligned((a + 8) as *const u64),
        ];
        pkt.dst = [
            core::ptr::read_unaligned((a + 16) as *const u64),
            core::ptr::read_unaligned((a + 24) as *const u64),
        ];
    }
    pkt.ip_end = off + IPV6_HLEN + u16::from_be_bytes([head[4], head[5]]) as usize;
    pkt.l3_off = off as u8;
    pkt.ipv6 = true;
    let mut l4 = off + IPV6_HLEN;
    let mut nh = head[6];
    // From here on the addresses are known: an extension header chain this parser cannot
    // follow (cut short, longer than it reads, or more headers than it walks) leaves the ports
    // unknown (`l4_truncated`) but never makes the packet malformed, so that the lists still
    // see its source. A routing header of 464 bytes with no segments left, which Linux skips,
    // otherwise carried a blocked source's whole TCP session past every list.
    for _ in 0..MAX_IPV6_EXT {
        let ext_len = match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(e) = read::<[u8; 2]>(data, data_end, l4) else {
                    return chain_unknown(pkt, nh);
                };
                nh = e[0];
                (e[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let Some(e) = read::<[u8; 2]>(data, data_end, l4) else {
                    return chain_unknown(pkt, nh);
                };
                nh = e[0];
                (e[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = read::<[u8; 4]>(data, data_end, l4) else {
                    return chain_unknown(pkt, nh);
                };
                nh = e[0];
                let fo = u16::from_be_bytes([e[2], e[3]]);
                if fo & 0xfff9 != 0 {
                    if fo & 0xfff8 != 0 {
                        // A later fragment: what follows is data, not headers.
                        pkt.frag = FRAG_LATER;
                        pkt.proto = nh;
                        return Ok(());
                    }
                    pkt.frag = FRAG_FIRST;
                }
                8
            }
            _ => break,
        };
        l4 += ext_len;
        if l4 > MAX_L4_OFFSET {
            return chain_unknown(pkt, nh);
        }
    }
    if matches!(
        nh,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    ) {
        // More headers than the parser walks.
        return chain_unknown(pkt, nh);
    }
    pkt.proto = nh;
    parse_ports(data, data_end, l4, pkt);
    Ok(())
}

/// An IPv6 extension header chain not followed to its end: the packet keeps its addresses,
/// its ports are unknown.
#[inline(always)]
fn chain_unknown(pkt: &mut Packet, nh: u8) -> Result<(), ParseError> {
    pkt.proto = nh;
    pkt.l4_truncated = true;
    Ok(())
}

#[inline(always)]
fn parse_ports(data: usize, data_end: usize, off: usize, pkt: &mut Packet) {
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return;
    }
    if off > MAX_L4_OFFSET {
        pkt.l4_truncated = true;
        return;
    }
    let need = if pkt.proto == IPPROTO_TCP { 20 } else { 8 };
    match read::<[u8; 4]>(data, data_end, off) {
        Some(p) => {
            // The ports are the header's first four bytes: read even when the rest is cut (a
            // first IPv4 fragment carrying 8 bytes of TCP, which Linux reassembles, must still
            // meet a flow kill).
            pkt.src_port = u16::from_be_bytes([p[0], p[1]]);
            pkt.dst_port = u16::from_be_bytes([p[2], p[3]]);
            if off + need <= data_end - data {
                pkt.l4_off = off;
            } else {
                pkt.l4_truncated = true;
            }
        }
        None => pkt.l4_truncated = true,
    }
}
