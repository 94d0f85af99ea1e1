//! Address helpers shared by both sides: the 16-byte key form and prefix masking.

/// An address as stored in the maps: IPv6, or IPv4 mapped into `::ffff:0:0/96`.
pub type AddrKey = [u8; 16];

/// Prefix length of the IPv4-mapped range: an IPv4 `/n` is stored as `/(IPV4_MAPPED_PREFIX + n)`.
pub const IPV4_MAPPED_PREFIX: u32 = 96;

/// Maps an IPv4 address (network byte order octets) to its 16-byte key.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> AddrKey {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// True when the key holds an IPv4-mapped address.
#[inline(always)]
pub fn is_v4_mapped(key: &AddrKey) -> bool {
    key[..10].iter().all(|b| *b == 0) && key[10] == 0xff && key[11] == 0xff
}

/// Keeps the first `prefix_len` bits of `addr` and zeroes the rest (`prefix_len` >= 128 keeps all).
///
/// Written without loops over a variable bound so the verifier accepts it in the kernel.
#[inline(always)]
pub fn mask_prefix(addr: &AddrKey, prefix_len: u32) -> AddrKey {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bit = (i as u32) * 8;
        out[i] = if prefix_len >= bit + 8 {
            addr[i]
        } else if prefix_len <= bit {
            0
        } else {
            addr[i] & (0xffu8 << (8 - (prefix_len - bit)))
        };
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapping_and_detection() {
        let k = v4_mapped([192, 0, 2, 7]);
        assert!(is_v4_mapped(&k));
        assert_eq!(&k[12..], &[192, 0, 2, 7]);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert!(!is_v4_mapped(&v6));
    }

    #[test]
    fn masking_keeps_exactly_the_prefix() {
        let k = v4_mapped([198, 51, 100, 77]);
        assert_eq!(mask_prefix(&k, 96 + 24), v4_mapped([198, 51, 100, 0]));
        assert_eq!(mask_prefix(&k, 96 + 20), v4_mapped([198, 51, 96, 0]));
        assert_eq!(mask_prefix(&k, 128), k);
        assert_eq!(mask_prefix(&k, 200), k);
        assert_eq!(mask_prefix(&k, 0), [0u8; 16]);
        let ones = [0xffu8; 16];
        let m = mask_prefix(&ones, 64);
        assert_eq!(&m[..8], &[0xff; 8]);
        assert_eq!(&m[8..], &[0; 8]);
        let m = mask_prefix(&ones, 1);
        assert_eq!(m[0], 0x80);
        assert_eq!(m[1], 0);
    }
}
