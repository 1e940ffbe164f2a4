//! Which addresses a validation may connect to: none in IANA's special-purpose address
//! registries, nor multicast.
//!
//! A validation connects wherever the subscriber's DNS points: without this check an account
//! could make the CA send HTTP requests and TLS handshakes into its own network (10.0.0.0/8,
//! 169.254.169.254 — cloud metadata — or 127.0.0.1). As Let's Encrypt's validation authority
//! does, every address in the IPv4 and IPv6 Special-Purpose Address Registries is refused,
//! whatever the registry's "globally reachable" column says (the Baseline Requirements' "Reserved
//! IP Address" is any address in those registries), and multicast, which they do not list. An
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is refused as such, and named by the IPv4 block its
//! embedded address is in when there is one, so the detail says what it really points at.
//!
//! The table is a transcription of the registries (iana-ipv4-special-registry, updated
//! 2024-03; iana-ipv6-special-registry, updated 2025-04), one row per address block, with the
//! registry's name and RFC. Keep it in step with them: [`tests`] checks a sample of each row.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One block of a special-purpose registry: refused for validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// The block, as the registry writes it (`10.0.0.0/8`).
    pub block: &'static str,
    /// The registry's name for it (`Private-Use`).
    pub name: &'static str,
    /// Where it is defined (`RFC 1918`).
    pub rfc: &'static str,
}

impl std::fmt::Display for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}, {}", self.block, self.name, self.rfc)
    }
}

const fn r(block: &'static str, name: &'static str, rfc: &'static str) -> Reserved {
    Reserved { block, name, rfc }
}

/// IANA IPv4 Special-Purpose Address Registry, and multicast (RFC 5771).
const IPV4: &[(Ipv4Addr, u8, Reserved)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        r("0.0.0.0/8", "\"This network\"", "RFC 791"),
    ),
    (
        Ipv4Addr::new(10, 0, 0, 0),
        8,
        r("10.0.0.0/8", "Private-Use", "RFC 1918"),
    ),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        r("100.64.0.0/10", "Shared Address Space", "RFC 6598"),
    ),
    (
        Ipv4Addr::new(127, 0, 0, 0),
        8,
        r("127.0.0.0/8", "Loopback", "RFC 1122"),
    ),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        r("169.254.0.0/16", "Link Local", "RFC 3927"),
    ),
    (
        Ipv4Addr::new(172, 16, 0, 0),
        12,
        r("172.16.0.0/12", "Private-Use", "RFC 1918"),
    ),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        r("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890"),
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        r("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737"),
    ),
    (
        Ipv4Addr::new(192, 31, 196, 0),
        24,
        r("192.31.196.0/24", "AS112-v4", "RFC 7535"),
    ),
    (
        Ipv4Addr::new(192, 52, 193, 0),
        24,
        r("192.52.193.0/24", "AMT", "RFC 7450"),
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        r(
            "192.88.99.0/24",
            "Deprecated (6to4 Relay Anycast)",
            "RFC 7526",
        ),
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        r("192.168.0.0/16", "Private-Use", "RFC 1918"),
    ),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        r(
            "192.175.48.0/24",
            "Direct Delegation AS112 Service",
            "RFC 7534",
        ),
    ),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        r("198.18.0.0/15", "Benchmarking", "RFC 2544"),
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        r("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737"),
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        r("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737"),
    ),
    (
        Ipv4Addr::new(224, 0, 0, 0),
        4,
        r("224.0.0.0/4", "Multicast", "RFC 5771"),
    ),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        r("240.0.0.0/4", "Reserved", "RFC 1112"),
    ),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        r("255.255.255.255/32", "Limited Broadcast", "RFC 919"),
    ),
];

/// IANA IPv6 Special-Purpose Address Registry, and multicast (RFC 4291).
const IPV6: &[(Ipv6Addr, u8, Reserved)] = &[
    (
        Ipv6Addr::LOCALHOST,
        128,
        r("::1/128", "Loopback Address", "RFC 4291"),
    ),
    (
        Ipv6Addr::UNSPECIFIED,
        128,
        r("::/128", "Unspecified Address", "RFC 4291"),
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        r("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291"),
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        r("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052"),
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        r("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215"),
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        r("100::/64", "Discard-Only Address Block", "RFC 6666"),
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        r("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780"),
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        r("2001::/23", "IETF Protocol Assignments", "RFC 2928"),
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        r("2001:db8::/32", "Documentation", "RFC 3849"),
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        r("2002::/16", "6to4", "RFC 3056"),
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        r(
            "2620:4f:8000::/48",
            "Direct Delegation AS112 Service",
            "RFC 7534",
        ),
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        r("3fff::/20", "Documentation", "RFC 9637"),
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        r("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602"),
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        r("fc00::/7", "Unique-Local", "RFC 4193"),
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        r("fe80::/10", "Link-Local Unicast", "RFC 4291"),
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        r("ff00::/8", "Multicast", "RFC 4291"),
    ),
];

/// `validation.allow_private_addresses`: `false` (the default: none), `true` (every address: the
/// dev stack), or a list of the special-purpose addresses allowed (tests that need one loopback
/// address reachable and another refused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum AllowPrivate {
    All(bool),
    Only(Vec<IpAddr>),
}

impl AllowPrivate {
    /// Whether this setting lets a validation connect to `ip`, which is in a special-purpose block.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            AllowPrivate::All(all) => *all,
            AllowPrivate::Only(list) => list.contains(&ip),
        }
    }

    /// Whether anything is allowed at all (start-up warns then).
    pub fn any(&self) -> bool {
        !matches!(self, AllowPrivate::All(false)) && *self != AllowPrivate::Only(Vec::new())
    }
}

impl Default for AllowPrivate {
    fn default() -> Self {
        AllowPrivate::All(false)
    }
}

fn in_v4(ip: Ipv4Addr, base: Ipv4Addr, bits: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(base) & mask
}

fn in_v6(ip: Ipv6Addr, base: Ipv6Addr, bits: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(base) & mask
}

/// The special-purpose block `ip` is in, most specific first; `None`: a validation may connect.
pub fn reserved(ip: IpAddr) -> Option<Reserved> {
    match ip {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => {
            // `::ffff:10.0.0.1` reaches 10.0.0.1: name the block it really is in.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Some(reserved_v4(v4).map_or(IPV6[2].2, |inner| Reserved {
                    block: inner.block,
                    name: inner.name,
                    rfc: inner.rfc,
                }));
            }
            IPV6.iter()
                .filter(|(base, bits, _)| in_v6(v6, *base, *bits))
                .max_by_key(|(_, bits, _)| *bits)
                .map(|(_, _, r)| *r)
        }
    }
}

fn reserved_v4(ip: Ipv4Addr) -> Option<Reserved> {
    IPV4.iter()
        .filter(|(base, bits, _)| in_v4(ip, *base, *bits))
        .max_by_key(|(_, bits, _)| *bits)
        .map(|(_, _, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ip: &str) -> Option<&'static str> {
        reserved(ip.parse().expect("address")).map(|r| r.block)
    }

    #[test]
    fn every_row_is_its_own_block() {
        // The table's written block agrees with its base and length, and the base is in it.
        for (base, bits, r) in IPV4 {
            assert_eq!(r.block, format!("{base}/{bits}"));
            assert_eq!(reserved_v4(*base).map(|x| x.block), Some(r.block));
        }
        for (base, bits, r) in IPV6 {
            let (address, length) = r.block.split_once('/').expect("a/len");
            assert_eq!(address.parse::<Ipv6Addr>().ok(), Some(*base), "{}", r.block);
            assert_eq!(length.parse::<u8>().ok(), Some(*bits), "{}", r.block);
            if base.to_ipv4_mapped().is_none() {
                assert_eq!(block(&base.to_string()), Some(r.block), "{base}");
            }
        }
    }

    #[test]
    fn private_loopback_link_local_and_the_rest_are_refused() {
        for (ip, expected) in [
            ("10.1.2.3", "10.0.0.0/8"),
            ("169.254.169.254", "169.254.0.0/16"),
            ("127.0.0.1", "127.0.0.0/8"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("100.100.0.1", "100.64.0.0/10"),
            ("198.19.0.1", "198.18.0.0/15"),
            ("192.0.2.7", "192.0.2.0/24"),
            ("203.0.113.9", "203.0.113.0/24"),
            ("239.1.1.1", "224.0.0.0/4"),
            ("255.255.255.255", "255.255.255.255/32"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("::1", "::1/128"),
            ("::", "::/128"),
            ("fe80::1", "fe80::/10"),
            ("fd00::1", "fc00::/7"),
            ("ff02::1", "ff00::/8"),
            ("2001:db8::1", "2001:db8::/32"),
            ("3fff::1", "3fff::/20"),
            ("64:ff9b::a00:1", "64:ff9b::/96"),
            ("2002:a00:1::", "2002::/16"),
            // IPv4-mapped: named by the block of the IPv4 address inside.
            ("::ffff:10.0.0.1", "10.0.0.0/8"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("::ffff:169.254.169.254", "169.254.0.0/16"),
            // A mapped public address is still not connected to: it is mapped.
            ("::ffff:8.8.8.8", "::ffff:0:0/96"),
        ] {
            assert_eq!(block(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:200::1",
        ] {
            assert_eq!(block(ip), None, "{ip}");
        }
    }
}
