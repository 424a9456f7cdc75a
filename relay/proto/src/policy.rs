//! Peer-address policy: which peer addresses a client may create permissions and channels for
//! and send to. Secure by default: every special-purpose range of issue 3 is denied, IPv4
//! addresses embedded in IPv6 (mapped, compatible, 6to4, Teredo, NAT64) are checked as IPv4 too,
//! and a few addresses can never be allowed (CVE-2020-26262 was `0.0.0.0` / `[::]`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;

enum_with_all! {
    /// Why a peer address was refused (a metrics label and a `403 Forbidden` cause).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum DenyReason {
        /// `0.0.0.0/8`, `::/128`: "this host" - reaches the relay host itself. Never allowable.
        Unspecified,
        /// `127.0.0.0/8`, `::1` (allowable only with `allow_loopback_peers`).
        Loopback,
        /// RFC 1918 `10/8`, `172.16/12`, `192.168/16`, unique-local `fc00::/7`, site-local
        /// `fec0::/10`.
        Private,
        /// `100.64.0.0/10` carrier-grade NAT shared address space.
        SharedAddressSpace,
        /// `169.254.0.0/16`, `fe80::/10`.
        LinkLocal,
        /// `169.254.169.254`: cloud instance metadata. Never allowable.
        CloudMetadata,
        /// `192.0.0.0/24` and `2001::/23` IETF protocol assignments (the parts without a row of
        /// their own: service continuity, dummy addresses, NAT64 discovery, unassigned space).
        IetfProtocol,
        /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
        Documentation,
        /// `192.88.99.0/24` deprecated 6to4 relay anycast.
        Relay6to4Anycast,
        /// `198.18.0.0/15`, `2001:2::/48` benchmarking.
        Benchmarking,
        /// `224.0.0.0/4`, `ff00::/8`.
        Multicast,
        /// `240.0.0.0/4` (includes the limited broadcast address), `2001:10::/28` (deprecated
        /// ORCHID), `2001:20::/28` (ORCHIDv2) and `2001:30::/28` (drone DETs): identifiers, not
        /// locators; `5f00::/16` (SRv6 SIDs), `100:0:0:1::/64` (dummy prefix).
        Reserved,
        /// `64:ff9b::/96` NAT64 well-known prefix and `64:ff9b:1::/48` local-use NAT64 (RFC 8215)
        /// (the embedded IPv4 address is checked as well).
        Nat64,
        /// `::ffff:0:0/96` IPv4-translated addresses (RFC 2765 SIIT; the embedded IPv4 address is
        /// checked as well).
        Ipv4Translated,
        /// `100::/64` discard-only prefix.
        DiscardOnly,
        /// Anycast service addresses, never a WebRTC peer: PCP, TURN and DNS-SD SRP anycast
        /// (`192.0.0.9`, `192.0.0.10`, `2001:1::1`-`2001:1::3`), AMT relays (`192.52.193.0/24`,
        /// `2001:3::/32`), AS112 DNS sinks (`192.31.196.0/24`, `192.175.48.0/24`,
        /// `2001:4:112::/48`, `2620:4f:8000::/48`). Relaying to them would let a client use the
        /// relay host's nearest instance of the service (its NAT gateway, for PCP).
        Anycast,
        /// Matched a configured deny entry.
        ConfiguredDeny,
        /// One of the relay's own listening addresses, or a non-relay port on one of its own IPs.
        OwnAddress,
    }
}

impl DenyReason {
    /// Number of variants (size of per-reason counter arrays).
    pub const COUNT: usize = Self::ALL.len();

    /// Index into per-reason counter arrays (`Stats::peer_denied`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared_address_space",
            Self::LinkLocal => "link_local",
            Self::CloudMetadata => "cloud_metadata",
            Self::IetfProtocol => "ietf_protocol",
            Self::Documentation => "documentation",
            Self::Relay6to4Anycast => "relay_6to4_anycast",
            Self::Benchmarking => "benchmarking",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::Nat64 => "nat64",
            Self::Ipv4Translated => "ipv4_translated",
            Self::DiscardOnly => "discard_only",
            Self::Anycast => "anycast",
            Self::ConfiguredDeny => "configured_deny",
            Self::OwnAddress => "own_address",
        }
    }

    /// Reasons no allow-list entry can override.
    fn is_absolute(self) -> bool {
        matches!(self, Self::Unspecified | Self::CloudMetadata)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP prefix (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR prefix {0:?} (expected ADDRESS[/LEN])")]
pub struct IpNetParseError(String);

impl IpNet {
    /// A prefix; `prefix` is clamped to the family's width and host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.min(max);
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Self { addr, prefix }
    }

    /// True if `ip` (same family) lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// The addresses inside this prefix that no allow-list entry can open (`0.0.0.0/8`,
    /// `::/128`, the cloud metadata address), as prefixes: an `--allow-peer` naming them
    /// deserves a warning, as they stay denied.
    pub fn never_allowed_inside(&self) -> Vec<Self> {
        let absolute_v4 = DEFAULT_DENY_V4
            .iter()
            .filter(|(_, _, reason)| reason.is_absolute())
            .map(|(addr, prefix, _)| Self::new(IpAddr::V4(Ipv4Addr::from(*addr)), *prefix));
        let absolute_v6 = DEFAULT_V6
            .iter()
            .filter(|(_, _, reason)| reason.is_some_and(DenyReason::is_absolute))
            .map(|(addr, prefix, _)| Self::new(IpAddr::V6(Ipv6Addr::from(*addr)), *prefix));
        absolute_v4
            .chain(absolute_v6)
            .filter(|never| self.contains(never.addr) || never.contains(self.addr))
            .collect()
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpNetParseError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Self::new(addr, prefix))
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// The peer-address policy (part of `ServerConfig`, which the server never changes: the
/// addresses it learns at run time go to `OwnAddresses`).
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    /// Prefixes allowed even though a default rule denies them (never overrides
    /// `0.0.0.0/8`, `::/128`, `169.254.169.254` or `deny`).
    pub allow: Vec<IpNet>,
    /// Extra prefixes to deny; wins over `allow`.
    pub deny: Vec<IpNet>,
    /// Allow `127.0.0.0/8` and `::1` peers. Off by default: for tests on loopback only.
    pub allow_loopback_peers: bool,
    /// The relay host's own IPs (listening, relay and advertised public IPs). A peer on one of
    /// these IPs is allowed, whatever its range (a relay on a private or loopback address), but
    /// only on a port inside `relay_ports` (relay-to-relay traffic between two clients of this
    /// server is how two relay-only WebRTC peers talk); anything else on the host (admin port,
    /// SSH, the TURN listeners) is `OwnAddress`. The server adds the IPs it sees in 5-tuples
    /// and bound relay addresses by itself.
    pub own_ips: Vec<IpAddr>,
    /// The port range relay sockets are bound in (see `own_ips`).
    pub relay_ports: RangeInclusive<u16>,
    /// Exact listening socket addresses, always denied as peers (a peer packet into a listener
    /// would loop through the server). The server adds the ones it sees in 5-tuples.
    pub listen_addresses: Vec<SocketAddr>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_loopback_peers: false,
            own_ips: Vec::new(),
            relay_ports: 49152..=65535,
            listen_addresses: Vec::new(),
        }
    }
}

/// IPv4 ranges denied by default: the IANA IPv4 Special-Purpose Address Registry (every row
/// is denied: none of them holds a WebRTC peer), multicast and the metadata address. First
/// match wins, so more specific rows come first.
const DEFAULT_DENY_V4: &[([u8; 4], u8, DenyReason)] = &[
    ([0, 0, 0, 0], 8, DenyReason::Unspecified), // RFC 791 "this network" (and RFC 1122 0/32)
    ([10, 0, 0, 0], 8, DenyReason::Private),    // RFC 1918
    ([100, 64, 0, 0], 10, DenyReason::SharedAddressSpace), // RFC 6598
    ([127, 0, 0, 0], 8, DenyReason::Loopback),  // RFC 1122
    ([169, 254, 169, 254], 32, DenyReason::CloudMetadata),
    ([169, 254, 0, 0], 16, DenyReason::LinkLocal), // RFC 3927
    ([172, 16, 0, 0], 12, DenyReason::Private),    // RFC 1918
    ([192, 0, 0, 9], 32, DenyReason::Anycast),     // RFC 7723 PCP anycast
    ([192, 0, 0, 10], 32, DenyReason::Anycast),    // RFC 8155 TURN anycast
    ([192, 0, 0, 0], 24, DenyReason::IetfProtocol), // RFC 6890 (RFC 7335, 7600, 8880 inside)
    ([192, 0, 2, 0], 24, DenyReason::Documentation), // RFC 5737
    ([192, 31, 196, 0], 24, DenyReason::Anycast),  // RFC 7535 AS112-v4
    ([192, 52, 193, 0], 24, DenyReason::Anycast),  // RFC 7450 AMT
    ([192, 88, 99, 0], 24, DenyReason::Relay6to4Anycast), // RFC 7526
    ([192, 168, 0, 0], 16, DenyReason::Private),   // RFC 1918
    ([192, 175, 48, 0], 24, DenyReason::Anycast),  // RFC 7534 AS112 direct delegation
    ([198, 18, 0, 0], 15, DenyReason::Benchmarking), // RFC 2544
    ([198, 51, 100, 0], 24, DenyReason::Documentation), // RFC 5737
    ([203, 0, 113, 0], 24, DenyReason::Documentation), // RFC 5737
    ([224, 0, 0, 0], 4, DenyReason::Multicast),    // RFC 5771
    ([240, 0, 0, 0], 4, DenyReason::Reserved),     // RFC 1112; 255.255.255.255 (RFC 919) inside
];

/// IPv6 rows of the defaults: the IANA IPv6 Special-Purpose Address Registry plus multicast,
/// site-local and IPv4-translated. First match wins; `None` allows the prefix: its hosts are
/// ordinary peers whose embedded IPv4 address is checked as well (`embedded_ipv4`).
const DEFAULT_V6: &[(u128, u8, Option<DenyReason>)] = &[
    (0, 128, Some(DenyReason::Unspecified)), // RFC 4291
    (1, 128, Some(DenyReason::Loopback)),    // RFC 4291
    (0xffff << 32, 96, None),                // RFC 4291 IPv4-mapped: checked as IPv4
    (0xffff_0000 << 32, 96, Some(DenyReason::Ipv4Translated)), // RFC 2765
    (0, 96, None),                           // RFC 4291 IPv4-compatible: checked as IPv4
    (0x0064_ff9b << 96, 96, Some(DenyReason::Nat64)), // RFC 6052
    (0x0064_ff9b_0001 << 80, 48, Some(DenyReason::Nat64)), // RFC 8215
    (0x0100 << 112, 64, Some(DenyReason::DiscardOnly)), // RFC 6666
    (0x0100_0000_0000_0001 << 64, 64, Some(DenyReason::Reserved)), // RFC 9780 dummy prefix
    // 2001::/23 IETF protocol assignments: the rows inside it first.
    (0x2001 << 112, 32, None), // RFC 4380 Teredo: a host; its client IPv4 is checked
    ((0x2001_0001 << 96) | 1, 128, Some(DenyReason::Anycast)), // RFC 7723 PCP
    ((0x2001_0001 << 96) | 2, 128, Some(DenyReason::Anycast)), // RFC 8155 TURN
    ((0x2001_0001 << 96) | 3, 128, Some(DenyReason::Anycast)), // RFC 9665 DNS-SD SRP
    (0x2001_0002 << 96, 48, Some(DenyReason::Benchmarking)), // RFC 5180
    (0x2001_0003 << 96, 32, Some(DenyReason::Anycast)), // RFC 7450 AMT
    (0x2001_0004_0112 << 80, 48, Some(DenyReason::Anycast)), // RFC 7535 AS112-v6
    (0x2001_0010 << 96, 28, Some(DenyReason::Reserved)), // RFC 4843 ORCHID (deprecated)
    (0x2001_0020 << 96, 28, Some(DenyReason::Reserved)), // RFC 7343 ORCHIDv2
    (0x2001_0030 << 96, 28, Some(DenyReason::Reserved)), // RFC 9374 drone DETs
    (0x2001 << 112, 23, Some(DenyReason::IetfProtocol)), // RFC 2928: the rest
    (0x2001_0db8 << 96, 32, Some(DenyReason::Documentation)), // RFC 3849
    (0x2002 << 112, 16, None), // RFC 3056 6to4: a host; its IPv4 is checked
    (0x2620_004f_8000 << 80, 48, Some(DenyReason::Anycast)), // RFC 7534 AS112 delegation
    (0x3fff << 112, 20, Some(DenyReason::Documentation)), // RFC 9637
    (0x5f00 << 112, 16, Some(DenyReason::Reserved)), // RFC 9602 SRv6 SIDs
    (0xfc00 << 112, 7, Some(DenyReason::Private)), // RFC 4193 unique-local
    (0xfe80 << 112, 10, Some(DenyReason::LinkLocal)), // RFC 4291
    (0xfec0 << 112, 10, Some(DenyReason::Private)), // RFC 3879 site-local
    (0xff00 << 112, 8, Some(DenyReason::Multicast)), // RFC 4291
];

/// The IPv4 address embedded in an IPv6 address, by any of the encodings a router or a
/// dual-stack socket may honour: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, 6to4 `2002:AABB:CCDD::/48`, Teredo `2001:0::/32`
/// (client = NOT of the last 32 bits), NAT64 `64:ff9b::/96` and local-use NAT64
/// `64:ff9b:1::a.b.c.d` (the /96 layout inside RFC 8215's /48). `::` and `::1` are IPv6
/// addresses of their own and return `None`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = bits as u32;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if bits >> 32 == 0 {
        // IPv4-compatible (deprecated); `::` and `::1` stay IPv6.
        return (bits > 1).then(|| Ipv4Addr::from(low32));
    }
    let seg = ip.segments();
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some(Ipv4Addr::from(!low32));
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000
        || bits >> 32 == 0x0064_ff9b_0001_0000_0000_0000
        || bits >> 32 == 0xffff_0000
    {
        return Some(Ipv4Addr::from(low32));
    }
    None
}

/// The canonical form of an address: the embedded IPv4 address for IPv4-in-IPv6 encodings,
/// otherwise the address itself.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl PeerPolicy {
    /// Decide whether a peer IP may be used for a permission. Checks the raw address and, for
    /// IPv6, the embedded IPv4 address: denied if either form is denied.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), DenyReason> {
        self.check_one(ip, false)?;
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_ipv4(v6)
        {
            self.check_one(IpAddr::V4(v4), false)?;
        }
        Ok(())
    }

    /// `check_ip` for a permission, knowing the IPs of this server's relay sockets (bound and
    /// advertised): one of them is allowed whatever its range (private, loopback), unless
    /// configured or absolutely denied, since relay-to-relay traffic between two clients of
    /// this server goes there; the port rules of [`Self::check_addr_with`] then keep it to
    /// relay sockets. A listening IP that no relay socket has is not exempt.
    pub(crate) fn check_ip_with(&self, ip: IpAddr, relay_ips: &[IpAddr]) -> Result<(), DenyReason> {
        let canonical = canonical_ip(ip);
        if relay_ips.iter().any(|o| canonical_ip(*o) == canonical) {
            self.check_one(canonical, true)
        } else {
            self.check_ip(ip)
        }
    }

    /// `check_ip` plus the own-address rules (`own_ips`, `relay_ports`, `listen_addresses`);
    /// used for channel binds and sends, where the port is known.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), DenyReason> {
        self.check_addr_with(addr, &self.own_ips, &self.own_ips, &self.listen_addresses)
    }

    /// `check_addr` with `own_ips`, `relay_ips` (the own IPs exempt from the range check, see
    /// [`Self::check_ip_with`]) and `listen_addresses` in place of the fields (the server
    /// passes the addresses it learned at run time: `OwnAddresses`).
    pub(crate) fn check_addr_with(
        &self,
        addr: SocketAddr,
        own_ips: &[IpAddr],
        relay_ips: &[IpAddr],
        listen_addresses: &[SocketAddr],
    ) -> Result<(), DenyReason> {
        self.check_ip_with(addr.ip(), relay_ips)?;
        let ip = canonical_ip(addr.ip());
        let same = |a: IpAddr| canonical_ip(a) == ip;
        let own_ip = own_ips.iter().any(|o| same(*o));
        if listen_addresses.iter().any(|l| {
            l.port() == addr.port() && (same(l.ip()) || (l.ip().is_unspecified() && own_ip))
        }) {
            return Err(DenyReason::OwnAddress);
        }
        // With the loopback opt-in (tests), peers share the host's loopback IP with the relay:
        // only the exact listening addresses stay off limits there.
        let loopback_opt_in = self.allow_loopback_peers && ip.is_loopback();
        if own_ip && !loopback_opt_in && !self.relay_ports.contains(&addr.port()) {
            return Err(DenyReason::OwnAddress);
        }
        Ok(())
    }

    /// One address form against the rules: absolute denials, then configured ones, then (but
    /// for an `own_relay` address, see [`Self::check_ip_with`]) the default ranges and their
    /// allow entries.
    fn check_one(&self, ip: IpAddr, own_relay: bool) -> Result<(), DenyReason> {
        let default = default_deny(ip);
        if let Some(reason) = default
            && reason.is_absolute()
        {
            return Err(reason);
        }
        if self.deny.iter().any(|n| n.contains(ip)) {
            return Err(DenyReason::ConfiguredDeny);
        }
        if own_relay {
            return Ok(());
        }
        match default {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|n| n.contains(ip)) => Ok(()),
            Some(DenyReason::Loopback) if self.allow_loopback_peers => Ok(()),
            Some(reason) => Err(reason),
        }
    }
}

/// The default rule for one address form (no embedded-address handling).
fn default_deny(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            DEFAULT_DENY_V4
                .iter()
                .find(|(net, len, _)| bits & mask32(*len) == u32::from_be_bytes(*net))
                .map(|(_, _, r)| *r)
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            DEFAULT_V6
                .iter()
                .find(|(net, len, _)| bits & mask128(*len) == *net)
                .and_then(|(_, _, r)| *r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ip;

    #[test]
    fn default_ranges_are_denied_with_their_reason() {
        let policy = PeerPolicy::default();
        let table = [
            ("0.0.0.0", DenyReason::Unspecified),
            ("0.1.2.3", DenyReason::Unspecified),
            ("10.1.2.3", DenyReason::Private),
            ("100.64.0.1", DenyReason::SharedAddressSpace),
            ("100.127.255.255", DenyReason::SharedAddressSpace),
            ("127.0.0.1", DenyReason::Loopback),
            ("127.255.255.254", DenyReason::Loopback),
            ("169.254.1.1", DenyReason::LinkLocal),
            ("169.254.169.254", DenyReason::CloudMetadata),
            ("172.16.0.1", DenyReason::Private),
            ("172.31.255.255", DenyReason::Private),
            ("192.0.0.8", DenyReason::IetfProtocol),
            ("192.0.2.1", DenyReason::Documentation),
            ("192.88.99.1", DenyReason::Relay6to4Anycast),
            ("192.168.1.1", DenyReason::Private),
            ("198.18.0.1", DenyReason::Benchmarking),
            ("198.19.255.255", DenyReason::Benchmarking),
            ("198.51.100.7", DenyReason::Documentation),
            ("203.0.113.9", DenyReason::Documentation),
            ("224.0.0.1", DenyReason::Multicast),
            ("239.255.255.250", DenyReason::Multicast),
            ("240.0.0.1", DenyReason::Reserved),
            ("255.255.255.255", DenyReason::Reserved),
            ("::", DenyReason::Unspecified),
            ("::1", DenyReason::Loopback),
            ("fc00::1", DenyReason::Private),
            ("fd12:3456::1", DenyReason::Private),
            ("fe80::1", DenyReason::LinkLocal),
            ("fec0::1", DenyReason::Private),
            ("ff02::1", DenyReason::Multicast),
            ("2001:db8::1", DenyReason::Documentation),
            ("64:ff9b::808:808", DenyReason::Nat64),
            ("100::1", DenyReason::DiscardOnly),
            // IANA IPv6 special-purpose registry entries, each with its RFC.
            ("64:ff9b:1::808:808", DenyReason::Nat64), // RFC 8215 local-use NAT64
            ("64:ff9b:1:ffff::1", DenyReason::Nat64),  // anywhere in the /48
            ("::ffff:0:808:808", DenyReason::Ipv4Translated), // RFC 2765 SIIT
            ("2001:2::1", DenyReason::Benchmarking),   // RFC 5180
            ("2001:10::1", DenyReason::Reserved),      // RFC 4843 ORCHID (deprecated)
            ("2001:1f::1", DenyReason::Reserved),      // the same /28
            ("3fff::1", DenyReason::Documentation),    // RFC 9637
            ("3fff:fff::1", DenyReason::Documentation), // the same /20
            ("5f00::1", DenyReason::Reserved),         // RFC 9602 SRv6 SIDs
        ];
        for (addr, reason) in table {
            assert_eq!(policy.check_ip(ip(addr)), Err(reason), "{addr}");
        }
    }

    /// One row of an IANA special-purpose registry: its block, its RFC, an address inside it
    /// and the default verdict. Denied rows are also checked at the block's last address.
    type RegistryRow = (
        &'static str,
        &'static str,
        &'static str,
        Result<(), DenyReason>,
    );

    fn check_registry(rows: &[RegistryRow]) {
        let policy = PeerPolicy::default();
        for &(block, rfc, sample, expected) in rows {
            let net: IpNet = block.parse().unwrap();
            assert!(net.contains(ip(sample)), "{sample} is not in {block}");
            assert_eq!(
                policy.check_ip(ip(sample)),
                expected,
                "{block} ({rfc}) at {sample}"
            );
            if expected.is_err() {
                let last = match net.addr {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) | !mask32(net.prefix)).into()),
                    IpAddr::V6(a) => IpAddr::V6((u128::from(a) | !mask128(net.prefix)).into()),
                };
                assert_eq!(policy.check_ip(last), expected, "{block} ({rfc}) at {last}");
            }
        }
    }

    /// Every row of the IANA IPv4 Special-Purpose Address Registry: all denied.
    #[test]
    fn ipv4_special_purpose_registry_rows() {
        use DenyReason::*;
        check_registry(&[
            ("0.0.0.0/8", "RFC 791", "0.1.2.3", Err(Unspecified)),
            ("0.0.0.0/32", "RFC 1122", "0.0.0.0", Err(Unspecified)),
            ("10.0.0.0/8", "RFC 1918", "10.1.2.3", Err(Private)),
            (
                "100.64.0.0/10",
                "RFC 6598",
                "100.64.0.1",
                Err(SharedAddressSpace),
            ),
            ("127.0.0.0/8", "RFC 1122", "127.0.0.1", Err(Loopback)),
            ("169.254.0.0/16", "RFC 3927", "169.254.1.1", Err(LinkLocal)),
            ("172.16.0.0/12", "RFC 1918", "172.16.0.1", Err(Private)),
            ("192.0.0.0/24", "RFC 6890", "192.0.0.100", Err(IetfProtocol)),
            ("192.0.0.0/29", "RFC 7335", "192.0.0.1", Err(IetfProtocol)),
            ("192.0.0.8/32", "RFC 7600", "192.0.0.8", Err(IetfProtocol)),
            ("192.0.0.9/32", "RFC 7723", "192.0.0.9", Err(Anycast)),
            ("192.0.0.10/32", "RFC 8155", "192.0.0.10", Err(Anycast)),
            (
                "192.0.0.170/32",
                "RFC 8880",
                "192.0.0.170",
                Err(IetfProtocol),
            ),
            (
                "192.0.0.171/32",
                "RFC 8880",
                "192.0.0.171",
                Err(IetfProtocol),
            ),
            ("192.0.2.0/24", "RFC 5737", "192.0.2.1", Err(Documentation)),
            ("192.31.196.0/24", "RFC 7535", "192.31.196.1", Err(Anycast)),
            ("192.52.193.0/24", "RFC 7450", "192.52.193.1", Err(Anycast)),
            (
                "192.88.99.0/24",
                "RFC 7526",
                "192.88.99.1",
                Err(Relay6to4Anycast),
            ),
            ("192.168.0.0/16", "RFC 1918", "192.168.1.1", Err(Private)),
            ("192.175.48.0/24", "RFC 7534", "192.175.48.1", Err(Anycast)),
            ("198.18.0.0/15", "RFC 2544", "198.19.0.1", Err(Benchmarking)),
            (
                "198.51.100.0/24",
                "RFC 5737",
                "198.51.100.7",
                Err(Documentation),
            ),
            (
                "203.0.113.0/24",
                "RFC 5737",
                "203.0.113.9",
                Err(Documentation),
            ),
            ("240.0.0.0/4", "RFC 1112", "240.0.0.1", Err(Reserved)),
            (
                "255.255.255.255/32",
                "RFC 919",
                "255.255.255.255",
                Err(Reserved),
            ),
            // Not in the registry, denied as well.
            ("224.0.0.0/4", "RFC 5771", "239.255.255.250", Err(Multicast)),
            (
                "169.254.169.254/32",
                "metadata",
                "169.254.169.254",
                Err(CloudMetadata),
            ),
        ]);
    }

    /// Every row of the IANA IPv6 Special-Purpose Address Registry. Allowed rows are hosts
    /// with an IPv4 address inside (checked as IPv4: public here).
    #[test]
    fn ipv6_special_purpose_registry_rows() {
        use DenyReason::*;
        check_registry(&[
            ("::1/128", "RFC 4291", "::1", Err(Loopback)),
            ("::/128", "RFC 4291", "::", Err(Unspecified)),
            ("::ffff:0:0/96", "RFC 4291", "::ffff:8.8.8.8", Ok(())),
            ("64:ff9b::/96", "RFC 6052", "64:ff9b::808:808", Err(Nat64)),
            (
                "64:ff9b:1::/48",
                "RFC 8215",
                "64:ff9b:1:ffff::1",
                Err(Nat64),
            ),
            ("100::/64", "RFC 6666", "100::1", Err(DiscardOnly)),
            ("100:0:0:1::/64", "RFC 9780", "100:0:0:1::1", Err(Reserved)),
            ("2001::/23", "RFC 2928", "2001:100::1", Err(IetfProtocol)),
            ("2001::/23", "RFC 2928", "2001:1::4", Err(IetfProtocol)),
            // Teredo client 8.8.8.8 (stored inverted: !0xf7f7f7f7).
            (
                "2001::/32",
                "RFC 4380",
                "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
                Ok(()),
            ),
            ("2001:1::1/128", "RFC 7723", "2001:1::1", Err(Anycast)),
            ("2001:1::2/128", "RFC 8155", "2001:1::2", Err(Anycast)),
            ("2001:1::3/128", "RFC 9665", "2001:1::3", Err(Anycast)),
            ("2001:2::/48", "RFC 5180", "2001:2::1", Err(Benchmarking)),
            ("2001:3::/32", "RFC 7450", "2001:3::1", Err(Anycast)),
            ("2001:4:112::/48", "RFC 7535", "2001:4:112::1", Err(Anycast)),
            ("2001:10::/28", "RFC 4843", "2001:1f::1", Err(Reserved)),
            ("2001:20::/28", "RFC 7343", "2001:20::1", Err(Reserved)),
            ("2001:30::/28", "RFC 9374", "2001:30::1", Err(Reserved)),
            (
                "2001:db8::/32",
                "RFC 3849",
                "2001:db8::1",
                Err(Documentation),
            ),
            ("2002::/16", "RFC 3056", "2002:808:808::1", Ok(())),
            (
                "2620:4f:8000::/48",
                "RFC 7534",
                "2620:4f:8000::1",
                Err(Anycast),
            ),
            ("3fff::/20", "RFC 9637", "3fff:fff::1", Err(Documentation)),
            ("5f00::/16", "RFC 9602", "5f00::1", Err(Reserved)),
            ("fc00::/7", "RFC 4193", "fd12:3456::1", Err(Private)),
            ("fe80::/10", "RFC 4291", "fe80::1", Err(LinkLocal)),
            // Not in the registry, denied as well.
            (
                "::ffff:0:0:0/96",
                "RFC 2765",
                "::ffff:0:808:808",
                Err(Ipv4Translated),
            ),
            ("fec0::/10", "RFC 3879", "fec0::1", Err(Private)),
            ("ff00::/8", "RFC 4291", "ff02::1", Err(Multicast)),
        ]);
        // Inside 2001::/23 but outside its rows: IETF space; next to it: ordinary addresses.
        let policy = PeerPolicy::default();
        assert_verdicts(
            &policy,
            &[
                ("2001:1::", Err(IetfProtocol)),
                ("2001:4:113::1", Err(IetfProtocol)),
                ("2001:200::1", Ok(())),
                ("2001:4860:4860::8888", Ok(())),
            ],
        );
    }

    /// `policy.check_ip` gives each address its expected verdict.
    fn assert_verdicts(policy: &PeerPolicy, cases: &[(&str, Result<(), DenyReason>)]) {
        for (addr, expected) in cases {
            assert_eq!(policy.check_ip(ip(addr)), *expected, "{addr}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = PeerPolicy::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert_eq!(policy.check_ip(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn every_ipv4_in_ipv6_encoding_of_loopback_is_denied() {
        let policy = PeerPolicy::default();
        // 127.0.0.1 = 0x7f000001; Teredo stores the client address inverted: 0x80fffffe.
        for addr in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::127.0.0.1",
            "::7f00:1",
            "2002:7f00:1::",
            "2002:7f00:1:1234::5",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001::80ff:fffe",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::7f00:1",
            "::ffff:0:7f00:1",
        ] {
            let res = policy.check_ip(ip(addr));
            assert!(res.is_err(), "{addr} must be denied");
            let sock = SocketAddr::new(ip(addr), 50000);
            assert!(policy.check_addr(sock).is_err(), "{addr} must be denied");
        }
        assert_verdicts(
            &policy,
            &[
                ("::ffff:127.0.0.1", Err(DenyReason::Loopback)),
                ("2002:7f00:1::", Err(DenyReason::Loopback)),
                ("2001::80ff:fffe", Err(DenyReason::Loopback)),
            ],
        );
    }

    #[test]
    fn embedded_private_and_unspecified_addresses_are_denied() {
        let policy = PeerPolicy::default();
        assert_verdicts(
            &policy,
            &[
                ("::ffff:0.0.0.0", Err(DenyReason::Unspecified)),
                ("::ffff:10.0.0.1", Err(DenyReason::Private)),
                ("::ffff:169.254.169.254", Err(DenyReason::CloudMetadata)),
                ("2002:c0a8:0101::", Err(DenyReason::Private)),
            ],
        );
    }

    #[test]
    fn loopback_opt_in_allows_loopback_in_every_form_but_not_unspecified() {
        let policy = PeerPolicy {
            allow_loopback_peers: true,
            ..PeerPolicy::default()
        };
        assert_verdicts(
            &policy,
            &[
                ("127.0.0.1", Ok(())),
                ("::1", Ok(())),
                ("::ffff:127.0.0.1", Ok(())),
                ("0.0.0.0", Err(DenyReason::Unspecified)),
                ("::", Err(DenyReason::Unspecified)),
                ("10.0.0.1", Err(DenyReason::Private)),
            ],
        );
    }

    #[test]
    fn an_allow_entry_names_the_never_allowed_addresses_inside_it() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let inside = |s: &str| -> Vec<String> {
            net(s)
                .never_allowed_inside()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(inside("0.0.0.0/8"), ["0.0.0.0/8"]);
        assert_eq!(inside("0.0.0.1"), ["0.0.0.0/8"]);
        assert_eq!(inside("169.254.0.0/16"), ["169.254.169.254/32"]);
        assert_eq!(inside("0.0.0.0/0"), ["0.0.0.0/8", "169.254.169.254/32"]);
        assert_eq!(inside("::/0"), ["::/128"]);
        assert!(inside("10.0.0.0/8").is_empty());
        assert!(inside("::1").is_empty());
    }

    #[test]
    fn allow_list_cannot_open_absolute_denials_and_deny_list_wins() {
        let policy = PeerPolicy {
            allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            deny: vec!["8.8.4.0/24".parse().unwrap()],
            ..PeerPolicy::default()
        };
        assert_verdicts(
            &policy,
            &[
                ("10.0.0.1", Ok(())),
                ("169.254.1.1", Ok(())),
                ("0.0.0.0", Err(DenyReason::Unspecified)),
                ("::", Err(DenyReason::Unspecified)),
                ("::ffff:0.0.0.0", Err(DenyReason::Unspecified)),
                ("169.254.169.254", Err(DenyReason::CloudMetadata)),
                ("8.8.4.4", Err(DenyReason::ConfiguredDeny)),
                ("::ffff:8.8.4.4", Err(DenyReason::ConfiguredDeny)),
            ],
        );
    }

    #[test]
    fn own_addresses_allow_only_relay_ports() {
        let policy = PeerPolicy {
            own_ips: vec![ip("203.0.114.5")],
            listen_addresses: vec!["203.0.114.5:3478".parse().unwrap()],
            relay_ports: 50000..=50100,
            ..PeerPolicy::default()
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(policy.check_addr(at("203.0.114.5:50050")), Ok(()));
        assert_eq!(
            policy.check_addr(at("203.0.114.5:22")),
            Err(DenyReason::OwnAddress)
        );
        assert_eq!(
            policy.check_addr(at("203.0.114.5:3478")),
            Err(DenyReason::OwnAddress)
        );
        assert_eq!(
            policy.check_addr(at("[::ffff:203.0.114.5]:22")),
            Err(DenyReason::OwnAddress)
        );
        assert_eq!(policy.check_addr(at("203.0.114.6:22")), Ok(()));
    }

    #[test]
    fn own_private_and_loopback_addresses_are_relay_ports_only() {
        let policy = PeerPolicy {
            own_ips: vec![ip("192.168.1.5"), ip("127.0.0.1")],
            relay_ports: 50000..=50100,
            deny: vec!["127.0.0.0/8".parse().unwrap()],
            ..PeerPolicy::default()
        };
        let own = policy.own_ips.clone();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // A relay on a LAN address: its relay sockets are peers, nothing else on it is.
        assert_eq!(policy.check_ip_with(ip("192.168.1.5"), &own), Ok(()));
        assert_eq!(policy.check_addr(at("192.168.1.5:50050")), Ok(()));
        assert_eq!(
            policy.check_addr(at("192.168.1.5:22")),
            Err(DenyReason::OwnAddress)
        );
        // A listening IP that no relay socket has is not exempt.
        assert_eq!(
            policy.check_addr_with(at("192.168.1.5:50050"), &own, &[], &[]),
            Err(DenyReason::Private)
        );
        // Another private address is still refused, and a configured deny still wins.
        assert_eq!(
            policy.check_ip_with(ip("192.168.1.6"), &own),
            Err(DenyReason::Private)
        );
        assert_eq!(
            policy.check_addr(at("127.0.0.1:50050")),
            Err(DenyReason::ConfiguredDeny)
        );
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<IpNet>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }
}
