//! Arbitrary IP packets through the defragmenter with small caps: whatever comes in, the bytes
//! held stay under the caps and every datagram that comes out is at most 64 KiB after its
//! header. Input: records of a 2-byte length, a 1-byte time step and the packet; packets
//! starting with a version nibble other than 4 or 6 are patched to look like fragments more
//! often than chance would make them, and IPv4 headers mostly get a right checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel::capture::defrag::{DefragSettings, Defragmenter, set_ipv4_header_checksum};

fuzz_target!(|data: &[u8]| {
    let settings = DefragSettings {
        mem_cap: 16 << 10,
        datagram_cap: 8 << 10,
        timeout_ns: 1_000_000,
    };
    let mut d = Defragmenter::new(settings);
    let mut rest = data;
    let mut ts = 0u64;
    while rest.len() >= 3 {
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize % 2048;
        ts += rest[2] as u64 * 10_000;
        rest = &rest[3..];
        let mut p = rest[..len.min(rest.len())].to_vec();
        rest = &rest[p.len()..];
        if let Some(first) = p.first_mut()
            && *first >> 4 != 4
            && *first >> 4 != 6
        {
            // An IPv4 header of 20 bytes with More Fragments, from the same two addresses.
            *first = 0x45;
            if p.len() >= 20 {
                p[6] |= 0x20;
                p[12..20].copy_from_slice(&[198, 18, 0, 100, 198, 18, 0, 1]);
            }
        }
        // IPv4 header checksums made right (most of the time), or nothing gets past them.
        if p.first().is_some_and(|b| b >> 4 == 4) && rest.len() % 8 != 0 {
            let ihl = (p[0] & 0x0f) as usize * 4;
            if ihl >= 20 && p.len() >= ihl {
                set_ipv4_header_checksum(&mut p);
            }
        }
        if let Some(out) = d.push(&p, ts) {
            assert!(out.len() <= 60 + 40 + 65535, "{} bytes", out.len());
        }
        let st = d.stats();
        // A pool each for IPv4 and IPv6.
        assert!(st.pending_bytes as usize <= 2 * settings.mem_cap, "{st:?}");
    }
});
