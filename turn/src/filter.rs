//! Which peers the relay may talk to. A TURN relay sends wherever its users
//! ask, so without this filter any caller could use it to reach the machine's
//! own services, the internal network or the cloud metadata address. The
//! filter is on by default and refuses every address that is not public
//! unicast, in every spelling: IPv4-mapped (`::ffff:127.0.0.1`),
//! IPv4-compatible (`::127.0.0.1`), NAT64 (`64:ff9b::7f00:1`) and 6to4
//! (`2002:7f00:1::`) forms are judged by the IPv4 address inside them
//! (coturn's CVE-2020-26262 was `0.0.0.0` slipping past a loopback ban).
//! Ranges listed with `--turn-allow-peer` are let through, for tests and
//! closed networks; by default a relay listening on loopback lets loopback
//! peers through ([`listen_scope`]): only this machine can reach such a
//! relay, and its calls' peers are on this machine too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Multicast,
    Broadcast,
    /// Other special-purpose ranges (shared address space, documentation,
    /// benchmarking, reserved) that no call's peer lives in.
    Reserved,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Blocked::Unspecified => "unspecified",
            Blocked::Loopback => "loopback",
            Blocked::Private => "private",
            Blocked::LinkLocal => "link_local",
            Blocked::Multicast => "multicast",
            Blocked::Broadcast => "broadcast",
            Blocked::Reserved => "reserved",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allow: Vec<IpNet>,
}

impl PeerFilter {
    /// A filter that lets `allow` through and refuses every other
    /// non-public address.
    pub fn new(allow: Vec<IpNet>) -> Self {
        PeerFilter { allow }
    }

    /// `Err` with the reason when the relay must not talk to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let canonical = canonical(ip);
        if self.allow.iter().any(|net| net.contains(&ip) || net.contains(&canonical)) {
            return Ok(());
        }
        match canonical {
            IpAddr::V4(v4) => check_v4(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => check_v4(v4),
                None => check_v6(v6),
            },
        }
    }
}

/// The peer ranges a relay listening on `listen` may reach besides public
/// ones: the loopback ranges when it listens on loopback (whoever can use it
/// is on this machine and reaches loopback anyway), none otherwise.
pub fn listen_scope(listen: IpAddr) -> Vec<IpNet> {
    if canonical(listen).is_loopback() {
        ["127.0.0.0/8", "::1/128"].iter().filter_map(|net| net.parse().ok()).collect()
    } else {
        Vec::new()
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address reaches through a translation or tunnel
/// mechanism: IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
/// 6to4 (`2002::/16`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

fn check_v4(ip: Ipv4Addr) -> Result<(), Blocked> {
    let o = ip.octets();
    if o[0] == 0 {
        // 0.0.0.0/8: "this network"; 0.0.0.0 itself reaches the local host.
        Err(Blocked::Unspecified)
    } else if ip.is_loopback() {
        Err(Blocked::Loopback)
    } else if ip.is_private() {
        Err(Blocked::Private)
    } else if ip.is_link_local() {
        Err(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Err(Blocked::Multicast)
    } else if ip.is_broadcast() {
        Err(Blocked::Broadcast)
    } else if o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
    {
        // 240/4, 100.64/10 (carrier-grade NAT), 192.0.0/24, 192.0.2/24,
        // 198.18/15, 198.51.100/24, 203.0.113/24.
        Err(Blocked::Reserved)
    } else {
        Ok(())
    }
}

fn check_v6(ip: Ipv6Addr) -> Result<(), Blocked> {
    let s = ip.segments();
    if ip.is_unspecified() {
        Err(Blocked::Unspecified)
    } else if ip.is_loopback() {
        Err(Blocked::Loopback)
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        // fc00::/7 unique local; fec0::/10 the deprecated site-local.
        Err(Blocked::Private)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Err(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Err(Blocked::Multicast)
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x0100 && s[1..4] == [0; 3]) || s[0] == 0 {
        // 2001:db8::/32 documentation, 100::/64 discard, and the rest of ::/16.
        Err(Blocked::Reserved)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str) -> Result<(), Blocked> {
        PeerFilter::default().check(ip.parse().unwrap())
    }

    #[test]
    fn public_unicast_addresses_pass() {
        for ip in ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"] {
            assert_eq!(check(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn loopback_in_every_form_is_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            assert_eq!(check(ip), Err(Blocked::Loopback), "{ip}");
        }
    }

    #[test]
    fn a_relay_on_loopback_reaches_loopback_peers_and_a_public_one_does_not() {
        let local = PeerFilter::new(listen_scope("127.0.0.1".parse().unwrap()));
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(local.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::"] {
            assert!(local.check(ip.parse().unwrap()).is_err(), "only loopback is opened: {ip}");
        }
        assert_eq!(listen_scope("::1".parse().unwrap()).len(), 2);
        for public in ["203.0.113.7", "2001:db8::1", "0.0.0.0", "::", "10.0.0.1"] {
            assert!(listen_scope(public.parse().unwrap()).is_empty(), "{public}");
        }
    }

    #[test]
    fn unspecified_in_every_form_is_refused() {
        for ip in ["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0", "64:ff9b::"] {
            assert_eq!(check(ip), Err(Blocked::Unspecified), "{ip}");
        }
    }

    #[test]
    fn private_ranges_are_refused() {
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::",
        ] {
            assert_eq!(check(ip), Err(Blocked::Private), "{ip}");
        }
        // Neighbours of the ranges are public.
        for ip in ["172.15.255.255", "172.32.0.0", "192.169.0.1", "11.0.0.1"] {
            assert_eq!(check(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn link_local_and_the_metadata_address_are_refused() {
        for ip in ["169.254.169.254", "169.254.0.1", "::ffff:169.254.169.254", "fe80::1", "febf::1"] {
            assert_eq!(check(ip), Err(Blocked::LinkLocal), "{ip}");
        }
    }

    #[test]
    fn multicast_and_broadcast_are_refused() {
        for ip in ["224.0.0.1", "239.255.255.250", "::ffff:224.0.0.251", "ff02::1", "ff05::1:3"] {
            assert_eq!(check(ip), Err(Blocked::Multicast), "{ip}");
        }
        for ip in ["255.255.255.255", "::ffff:255.255.255.255"] {
            assert_eq!(check(ip), Err(Blocked::Broadcast), "{ip}");
        }
    }

    #[test]
    fn special_purpose_ranges_are_refused() {
        for ip in [
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "240.0.0.1",
            "2001:db8::1",
            "100::1",
        ] {
            assert_eq!(check(ip), Err(Blocked::Reserved), "{ip}");
        }
        assert_eq!(check("100.128.0.1"), Ok(()));
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let filter = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert_eq!(filter.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(filter.check("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(filter.check("fd00::5".parse().unwrap()), Ok(()));
        assert_eq!(filter.check("::1".parse().unwrap()), Err(Blocked::Loopback));
        assert_eq!(filter.check("10.0.0.1".parse().unwrap()), Err(Blocked::Private));
        assert_eq!(filter.check("169.254.169.254".parse().unwrap()), Err(Blocked::LinkLocal));
    }
}
