//! Benchmark programs (`cargo xtask bench datapath`), never attached by the daemon: the traffic
//! generator and a minimal blocklist reference.
//!
//! Run with `BPF_PROG_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` in the client namespace, with the
//! client veth as the ingress interface: each frame gets a source address drawn at random from
//! `SN_BENCH_SRCS` and goes out of the veth with `XDP_TX` (the kernel turns it into a redirect
//! to the same interface, which delivers it to the peer when the peer has an XDP program).
//!
//! The frame template is Ethernet + IPv4 (20-byte header) or Ethernet + IPv6 + payload; the IPv4
//! header checksum is recomputed, so the receiving stack (netfilter arms) accepts the packet as
//! far as its hooks. Live-frame pages are recycled without being reset, which is why the
//! checksum is computed from scratch rather than updated incrementally from a known template.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, HashMap},
    programs::XdpContext,
};
use sentinel_common::{AddrKey, RuleValue, bench::GenConfig};

// Sized by the benchmark when it loads its own copy of the object; one entry by default so the
// daemon's copy costs nothing.
#[map]
static SN_BENCH_SRCS: Array<AddrKey> = Array::with_max_entries(1, 0);
#[map]
static SN_BENCH_CFG: Array<GenConfig> = Array::with_max_entries(1, 0);
/// The reference's blocklist: same key and value sizes and flags as `SN_BLOCK_HASH` (the key is
/// an `AddrKey` held as two words so it can be built with aligned stores).
#[map]
static SN_BENCH_REF: HashMap<[u64; 2], RuleValue> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Rewrites the source address and transmits; drops frames it cannot handle.
#[xdp]
pub fn sentinel_bench_gen(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let data_end = ctx.data_end();
    let Some(cfg) = SN_BENCH_CFG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = cfg.count;
    if n == 0 {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: a helper without arguments.
    let i = unsafe { bpf_get_prandom_u32() } % n;
    let Some(src) = SN_BENCH_SRCS.get(i) else {
        return xdp_action::XDP_DROP;
    };
    if data + ETH_HLEN > data_end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the 14-byte Ethernet header is inside the frame (checked above).
    let ethertype = unsafe { core::ptr::read_unaligned((data + 12) as *const [u8; 2]) };
    match u16::from_be_bytes(ethertype) {
        0x0800 => {
            if data + ETH_HLEN + IPV4_HLEN > data_end {
                return xdp_action::XDP_DROP;
            }
            let ip = (data + ETH_HLEN) as *mut [u8; IPV4_HLEN];
            // SAFETY: the 20-byte header is inside the frame (checked above).
            let mut h = unsafe { core::ptr::read_unaligned(ip) };
            h[12] = src[12];
            h[13] = src[13];
            h[14] = src[14];
            h[15] = src[15];
            h[10] = 0;
            h[11] = 0;
            let mut sum: u32 = 0;
            let mut k = 0;
            while k < IPV4_HLEN {
                sum += u16::from_be_bytes([h[k], h[k + 1]]) as u32;
                k += 2;
            }
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let csum = (!(sum as u16)).to_be_bytes();
            h[10] = csum[0];
            h[11] = csum[1];
            // SAFETY: as for the read.
            unsafe { core::ptr::write_unaligned(ip, h) };
        }
        0x86dd => {
            if data + ETH_HLEN + IPV6_HLEN > data_end {
                return xdp_action::XDP_DROP;
            }
            // A volatile read into a local: copying straight from the map value would be a
            // `memmove` call (a byte loop) with this toolchain, as source and destination might
            // overlap for all the compiler knows.
            // SAFETY: `src` is a valid map value.
            let s: AddrKey = unsafe { core::ptr::read_volatile(src) };
            // SAFETY: the source address (bytes 8..24 of the IPv6 header) is inside the frame.
            unsafe { core::ptr::write_unaligned((data + ETH_HLEN + 8) as *mut AddrKey, s) };
        }
        _ => return xdp_action::XDP_DROP,
    }
    xdp_action::XDP_TX
}

/// Reference for the drop-rate benchmark: the least a hash blocklist can do. Ethernet (no VLAN)
/// and IPv4 or IPv6, one lookup of the source in `SN_BENCH_REF`, drop on a hit; no counting, no
/// expiry, no other list.
#[xdp]
pub fn sentinel_bench_ref(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + ETH_HLEN > data_end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the Ethernet header is inside the frame (checked above).
    let ethertype = unsafe { core::ptr::read_unaligned((data + 12) as *const [u8; 2]) };
    let key: [u64; 2] = match u16::from_be_bytes(ethertype) {
        0x0800 => {
            if data + ETH_HLEN + IPV4_HLEN > data_end {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: the IPv4 source address is inside the frame (checked above).
            let a = unsafe { core::ptr::read_unaligned((data + ETH_HLEN + 12) as *const [u8; 4]) };
            [
                0,
                u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]),
            ]
        }
        0x86dd => {
            if data + ETH_HLEN + IPV6_HLEN > data_end {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: the IPv6 source address is inside the frame (checked above).
            unsafe { core::ptr::read_unaligned((data + ETH_HLEN + 8) as *const [u64; 2]) }
        }
        _ => return xdp_action::XDP_PASS,
    };
    // SAFETY: the value is not used, only whether there is one.
    if unsafe { SN_BENCH_REF.get(&key) }.is_some() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
