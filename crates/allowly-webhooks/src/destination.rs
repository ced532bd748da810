//! Which addresses a webhook may be delivered to (server-side request forgery protection).
//!
//! An endpoint URL is chosen by a workspace admin, but the request leaves from the service's
//! network, where loopback services, cloud metadata (`169.254.169.254`) and private subnets are
//! reachable. By default only *public* unicast addresses are allowed:
//!
//! - at registration, a URL whose host is an IP literal in a refused range is rejected
//!   ([`check_url`]);
//! - at delivery, every address a host name resolves to is classified, and the connection is
//!   made only to an address that passed ([`Sender`](crate::client::Sender) resolves once,
//!   filters, and connects to those `SocketAddr`s, so a second DNS answer cannot slip in between
//!   the check and the connect). A host with no allowed address fails the attempt with
//!   `destination_not_allowed`, retried like any failure.
//!
//! An operator whose receivers live on a private network turns this off with
//! `--webhook-allow-private-networks` ([`Policy::AllowPrivate`]).
//!
//! Refused ranges ([`classify`]): IPv4 `0/8`, `10/8`, `100.64/10` (CGNAT), `127/8`,
//! `169.254/16`, `172.16/12`, `192.0.0/24`, `192.0.2/24`, `192.88.99/24`, `192.168/16`,
//! `198.18/15`, `198.51.100/24`, `203.0.113/24`, `224/4` (multicast), `240/4` (incl. broadcast);
//! IPv6 `::`, `::1`, `::/96` (IPv4-compatible), `100::/64`, `2001::/32` (Teredo), `2001:db8::/32`,
//! `3fff::/20`, `fc00::/7`, `fe80::/10`, `fec0::/10`, `ff00::/8`, `64:ff9b:1::/48`; and the IPv4
//! ranges above in their IPv6 forms (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
//! `2002:aabb:ccdd::`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether non-public destinations are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Only public unicast addresses (the default).
    #[default]
    PublicOnly,
    /// Anything the service can reach (`--webhook-allow-private-networks`).
    AllowPrivate,
}

impl Policy {
    /// The policy for the operator switch.
    pub fn from_allow_private(allow: bool) -> Self {
        if allow {
            Self::AllowPrivate
        } else {
            Self::PublicOnly
        }
    }

    /// Why `ip` is refused under this policy (`None`: allowed).
    pub fn refuses(self, ip: IpAddr) -> Option<&'static str> {
        match self {
            Self::AllowPrivate => None,
            Self::PublicOnly => classify(ip),
        }
    }
}

/// The stable error text (and metric label) of a refused destination.
pub const NOT_ALLOWED: &str = "destination_not_allowed";

/// Why `ip` is not a public unicast address (the name of its range), or `None` if it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: [([u8; 4], u32, &str); 15] = [
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private (RFC 1918)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (RFC 6598)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local (incl. cloud metadata)"),
        ([172, 16, 0, 0], 12, "private (RFC 1918)"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private (RFC 1918)"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved or broadcast"),
    ];
    let bits = u128::from(u32::from(ip)) << 96;
    find(bits, RANGES.iter().map(|(net, len, why)| (u128::from(u32::from(Ipv4Addr::from(*net))) << 96, *len, *why)))
}

/// The reason of the first `(network, prefix length, reason)` whose network holds `bits`
/// (addresses as the top bits of a `u128`: IPv4 shifted left by 96).
fn find(bits: u128, mut ranges: impl Iterator<Item = (u128, u32, &'static str)>) -> Option<&'static str> {
    ranges.find(|(net, len, _)| (bits ^ net).checked_shr(128 - len).unwrap_or(0) == 0).map(|(_, _, why)| why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv6 forms that carry an IPv4 address reach that address: judge it.
    let s = ip.segments();
    let low32 = Ipv4Addr::from(u128::from(ip) as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(low32);
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    const RANGES: [([u16; 8], u32, &str); 10] = [
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)"),
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "local-use NAT64"),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
    ];
    find(u128::from(ip), RANGES.iter().map(|(net, len, why)| (u128::from(Ipv6Addr::from(*net)), *len, *why)))
}

/// The host of `url` as an IP address, when it is an IP literal (`1.2.3.4`, `[::1]`) in the
/// form the HTTP client connects to without resolving.
pub fn ip_literal(url: &str) -> Option<IpAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.parse().ok()
}

/// Registration check: a URL whose host is an IP literal refused by `policy` is rejected (a
/// host name is checked when it is resolved, at each delivery). Returns why not.
pub fn check_url(url: &str, policy: Policy) -> Result<(), String> {
    match ip_literal(url).and_then(|ip| policy.refuses(ip).map(|why| (ip, why))) {
        None => Ok(()),
        Some((ip, why)) => Err(format!(
            "{NOT_ALLOWED}: {ip} is not a public address ({why}); webhooks go to public addresses only \
             unless the operator starts the server with --webhook-allow-private-networks"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn known_addresses() {
        for refused in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.7",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
        ] {
            assert!(classify(ip(refused)).is_some(), "{refused} must be refused");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.255.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(classify(ip(public)), None, "{public} must be allowed");
        }
        assert_eq!(classify(ip("169.254.169.254")), Some("link-local (incl. cloud metadata)"));
        assert_eq!(Policy::AllowPrivate.refuses(ip("127.0.0.1")), None);
        assert_eq!(Policy::PublicOnly.refuses(ip("127.0.0.1")), Some("loopback"));
    }

    #[test]
    fn registration_refuses_ip_literals_in_refused_ranges_only() {
        let p = Policy::PublicOnly;
        for bad in [
            "http://127.0.0.1:9/x",
            "http://[::1]:8080/",
            "https://169.254.169.254/latest/meta-data",
            "http://[::ffff:10.0.0.1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
        ] {
            let e = check_url(bad, p).unwrap_err();
            assert!(e.starts_with(NOT_ALLOWED) && e.contains("--webhook-allow-private-networks"), "{bad}: {e}");
            assert_eq!(check_url(bad, Policy::AllowPrivate), Ok(()), "{bad}");
        }
        // Names are checked when resolved, at delivery.
        for ok in ["https://8.8.8.8/x", "http://[2606:4700::1111]/", "http://localhost:1/", "https://example.com/"] {
            assert_eq!(check_url(ok, p), Ok(()), "{ok}");
        }
    }

    proptest! {
        /// Every IPv6 form that embeds an IPv4 address is judged like that address.
        #[test]
        fn embedded_ipv4_is_judged_like_ipv4(v4: u32) {
            let a = Ipv4Addr::from(v4);
            let expect = classify_v4(a);
            prop_assert_eq!(classify(IpAddr::V6(a.to_ipv6_mapped())), expect);
            let nat64 = Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(v4));
            prop_assert_eq!(classify(IpAddr::V6(nat64)), expect);
            let six_to_four = Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(v4) << 80));
            prop_assert_eq!(classify(IpAddr::V6(six_to_four)), expect);
        }

        /// Every address inside each refused IPv4 range is refused, and agrees with std's own
        /// predicates where std has one.
        #[test]
        fn ranges_are_refused_throughout(host: u32) {
            for (net, len) in [([10u8, 0, 0, 0], 8u32), ([172, 16, 0, 0], 12), ([192, 168, 0, 0], 16),
                               ([100, 64, 0, 0], 10), ([127, 0, 0, 0], 8), ([169, 254, 0, 0], 16),
                               ([224, 0, 0, 0], 4), ([240, 0, 0, 0], 4), ([0, 0, 0, 0], 8)] {
                let mask = u32::MAX << (32 - len);
                let a = Ipv4Addr::from((u32::from(Ipv4Addr::from(net)) & mask) | (host & !mask));
                prop_assert!(classify_v4(a).is_some(), "{}", a);
            }
            let a = Ipv4Addr::from(host);
            if a.is_private() || a.is_loopback() || a.is_link_local() || a.is_multicast()
                || a.is_broadcast() || a.is_documentation() || a.is_unspecified() {
                prop_assert!(classify_v4(a).is_some(), "{}", a);
            }
        }

        #[test]
        fn ipv6_std_predicates_agree(bits: u128) {
            let a = Ipv6Addr::from(bits);
            if a.is_loopback() || a.is_unspecified() || a.is_multicast()
                || a.is_unique_local() || a.is_unicast_link_local() {
                prop_assert!(classify_v6(a).is_some(), "{}", a);
            }
        }
    }
}
