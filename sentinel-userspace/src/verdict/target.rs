//! What a verdict applies to: an address or a CIDR prefix, IPv4 or IPv6, and its map key.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use sentinel_common::{AddrKey, IPV4_MAPPED_PREFIX, is_v4_mapped, mask_prefix, v4_mapped};

/// An address or prefix a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target(IpNet);

/// Why a target did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not an address or CIDR.
    #[error(
        "{0:?} is not an IP address or CIDR prefix (examples: 192.0.2.7, 198.51.100.0/24, 2001:db8::/48)"
    )]
    Syntax(String),
    /// The prefix has bits set past its length.
    #[error("{given} has host bits set; did you mean {suggested}?")]
    HostBits {
        /// What was given.
        given: String,
        /// The prefix with host bits cleared.
        suggested: String,
    },
    /// An IPv6 prefix that would also cover every IPv4 address (they are stored IPv4-mapped).
    #[error(
        "{0} also covers the IPv4-mapped range ::ffff:0:0/96, which would match every IPv4 source; give IPv4 and IPv6 ranges separately (for example 0.0.0.0/0 and 2000::/3)"
    )]
    CoversIpv4(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let net = if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| TargetError::Syntax(s.to_owned()))?;
            if net.trunc() != net {
                return Err(TargetError::HostBits {
                    given: s.to_owned(),
                    suggested: net.trunc().to_string(),
                });
            }
            net
        } else {
            let ip: IpAddr = s.parse().map_err(|_| TargetError::Syntax(s.to_owned()))?;
            IpNet::from(ip)
        };
        // An IPv4-mapped IPv6 address is the IPv4 address.
        let net = match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => IpNet::V4(
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix in range"),
                ),
                _ => net,
            },
            IpNet::V4(_) => net,
        };
        if let IpNet::V6(v6) = net {
            let mapped = ipnet::Ipv6Net::new("::ffff:0:0".parse().expect("valid"), 96)
                .expect("valid prefix");
            if v6.contains(&mapped) {
                return Err(TargetError::CoversIpv4(s.to_owned()));
            }
        }
        Ok(Target(net))
    }
}

impl From<IpAddr> for Target {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Target(IpNet::from(IpAddr::V4(v4))),
                None => Target(IpNet::from(ip)),
            },
            IpAddr::V4(_) => Target(IpNet::from(ip)),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_exact() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Where a target lives in the kernel: the exact-address hash or the prefix trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKey {
    /// Key of the exact-address hash.
    Exact(AddrKey),
    /// Key of the LPM trie: prefix length in the 128-bit space and the masked address.
    Prefix(u32, AddrKey),
}

impl Target {
    /// The prefix.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// True for a single address (/32 or /128).
    pub fn is_exact(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    /// True for IPv4.
    pub fn is_v4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// The key in the 128-bit address space.
    pub fn map_key(&self) -> MapKey {
        let (addr, prefix) = match self.0 {
            IpNet::V4(n) => (
                v4_mapped(n.addr().octets()),
                IPV4_MAPPED_PREFIX + n.prefix_len() as u32,
            ),
            IpNet::V6(n) => (n.addr().octets(), n.prefix_len() as u32),
        };
        if self.is_exact() {
            MapKey::Exact(addr)
        } else {
            MapKey::Prefix(prefix, mask_prefix(&addr, prefix))
        }
    }

    /// Rebuilds a target from a map key.
    pub fn from_map_key(key: MapKey) -> Self {
        let (addr, prefix) = match key {
            MapKey::Exact(a) => (a, 128),
            MapKey::Prefix(p, a) => (a, p.min(128)),
        };
        Target(net_of(&addr, prefix))
    }

    /// The aggregate prefix (in the 128-bit key space) for a family-relative prefix length:
    /// `/24` of an IPv4 target is 120.
    pub fn aggregate_prefix(&self, family_len: Option<u8>) -> u32 {
        match (family_len, self.is_v4()) {
            (None, _) => 128,
            (Some(l), true) => IPV4_MAPPED_PREFIX + l.min(32) as u32,
            (Some(l), false) => l.min(128) as u32,
        }
    }
}

/// Turns a 16-byte key and a prefix length into a network (IPv4 for mapped keys).
pub fn net_of(addr: &AddrKey, prefix: u32) -> IpNet {
    if is_v4_mapped(addr) && prefix >= IPV4_MAPPED_PREFIX {
        let v4 = std::net::Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]);
        IpNet::V4(ipnet::Ipv4Net::new(v4, (prefix - IPV4_MAPPED_PREFIX) as u8).expect("<= 32"))
    } else {
        IpNet::V6(ipnet::Ipv6Net::new((*addr).into(), prefix as u8).expect("<= 128"))
    }
}

/// The address of a 16-byte key (IPv4 for mapped keys).
pub fn addr_of(addr: &AddrKey) -> IpAddr {
    net_of(addr, 128).addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_prefixes() {
        let t: Target = "192.0.2.7".parse().unwrap();
        assert!(t.is_exact());
        assert_eq!(t.to_string(), "192.0.2.7");
        assert_eq!(t.map_key(), MapKey::Exact(v4_mapped([192, 0, 2, 7])));

        let t: Target = "198.51.100.0/24".parse().unwrap();
        assert_eq!(
            t.map_key(),
            MapKey::Prefix(120, v4_mapped([198, 51, 100, 0]))
        );
        assert_eq!(Target::from_map_key(t.map_key()), t);

        let t: Target = "2001:db8::/48".parse().unwrap();
        let MapKey::Prefix(48, _) = t.map_key() else {
            panic!("{:?}", t.map_key())
        };
        assert_eq!(Target::from_map_key(t.map_key()), t);

        let t: Target = "::ffff:192.0.2.9".parse().unwrap();
        assert!(t.is_v4());
        assert_eq!(t.to_string(), "192.0.2.9");
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(matches!(
            "10.0.0.300".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert!(matches!(
            "hello".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert!(matches!(
            "1.2.3.4/33".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert_eq!(
            "198.51.100.7/24".parse::<Target>(),
            Err(TargetError::HostBits {
                given: "198.51.100.7/24".into(),
                suggested: "198.51.100.0/24".into()
            })
        );
        assert!(matches!(
            "::/0".parse::<Target>(),
            Err(TargetError::CoversIpv4(_))
        ));
        assert!("0.0.0.0/0".parse::<Target>().is_ok());
        assert!("2000::/3".parse::<Target>().is_ok());
    }

    #[test]
    fn aggregate_prefixes_are_family_relative() {
        let v4: Target = "198.51.100.0/24".parse().unwrap();
        assert_eq!(v4.aggregate_prefix(None), 128);
        assert_eq!(v4.aggregate_prefix(Some(24)), 120);
        let v6: Target = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6.aggregate_prefix(Some(64)), 64);
    }
}
