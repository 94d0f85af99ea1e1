//! Deterministic source lists drawn from the benchmarking ranges.
//!
//! IPv4 sources come from 198.18.0.0/15 minus 198.18.0.0/24 (where the lab's own addresses
//! live): 130,816 addresses, enough for the 1k and 100k lists. A 1M list cannot be IPv4 inside
//! the allowed ranges, so it is IPv6 from 2001:db8::/32 (minus the lab's 2001:db8::/64). The
//! sentinel stores both families as the same 16-byte hash key, so its datapath is the same; the
//! peers get an `ipv6_addr` set and a `hash:ip family inet6` set.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sentinel::lab::sim::Rng;
use sentinel_common::{AddrKey, v4_mapped};

/// First address of the IPv4 pool (198.18.1.0).
const V4_POOL_START: u32 = u32::from_be_bytes([198, 18, 1, 0]);
/// Size of the IPv4 pool: 198.18.1.0 .. 198.19.255.255.
pub const V4_POOL: usize = (1 << 17) - 256;

/// `n` distinct IPv4 addresses from the pool, in random order.
pub fn v4(n: usize, seed: u64) -> Vec<Ipv4Addr> {
    assert!(n <= V4_POOL, "the IPv4 pool holds {V4_POOL} addresses");
    let mut pool: Vec<u32> = (0..V4_POOL as u32).map(|i| V4_POOL_START + i).collect();
    let mut rng = Rng::new(seed);
    // Partial Fisher-Yates: the first n are a uniform sample.
    for i in 0..n {
        let j = i + rng.below((pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool.into_iter().map(Ipv4Addr::from).collect()
}

/// `n` distinct IPv6 addresses in 2001:db8::/32 outside 2001:db8::/64, in random order.
pub fn v6(n: usize, seed: u64) -> Vec<Ipv6Addr> {
    let mut rng = Rng::new(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    // Bounded: collisions in 96 random bits are vanishingly rare.
    for _ in 0..n * 2 {
        if out.len() == n {
            break;
        }
        let hi = rng.next_u64() as u32 as u128; // bits 32..63 (the /64's subnet part)
        if hi == 0 {
            continue;
        }
        let lo = rng.next_u64() as u128;
        let a = (0x2001_0db8u128 << 96) | (hi << 64) | lo;
        if seen.insert(a) {
            out.push(Ipv6Addr::from(a));
        }
    }
    assert_eq!(out.len(), n, "drew {n} distinct IPv6 addresses");
    out
}

/// The map key of an address (IPv4 mapped into IPv6).
pub fn key(a: IpAddr) -> AddrKey {
    match a {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_distinct_deterministic_and_in_range() {
        let a = v4(1000, 7);
        assert_eq!(a, v4(1000, 7));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 1000);
        for x in &a {
            let o = x.octets();
            assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19));
            assert!(!(o[1] == 18 && o[2] == 0), "{x} is in the lab's /24");
        }
        let b = v6(1000, 7);
        assert_eq!(b.iter().collect::<HashSet<_>>().len(), 1000);
        for x in &b {
            let s = x.segments();
            assert_eq!((s[0], s[1]), (0x2001, 0x0db8));
            assert!(s[2] != 0 || s[3] != 0);
        }
    }
}
