//! The network allowlist: which connections a sandbox may make. The
//! operator's host patterns (`MCP_BRIDGE_ALLOW_HOSTS`), the networks they
//! may resolve into (`MCP_BRIDGE_ALLOW_NETS`), and the addresses refused
//! whatever the name.
//!
//! Pure: parsing and matching, no I/O, and no module of the crate (the
//! configuration parses its variables with it; [`crate::egress`] enforces
//! it). The order of the checks is egress's: the requested name against the
//! patterns first (a refused name is never resolved: resolving it would
//! already send it out), then every address it resolves to against
//! [`Policy::address`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Ports a pattern allows when it names none.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// One entry of `MCP_BRIDGE_ALLOW_HOSTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: Host,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// `example.org`: that name only.
    Name(String),
    /// `*.example.org`: names below it, not itself.
    Below(String),
    /// `203.0.113.7`, `[2001:db8::1]`: that address only.
    Address(IpAddr),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Name(name) => f.write_str(name)?,
            Host::Below(name) => write!(f, "*.{name}")?,
            Host::Address(IpAddr::V6(address)) => write!(f, "[{address}]")?,
            Host::Address(address) => write!(f, "{address}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// A host name as the proxy compares it: lower case, no trailing dot,
/// ASCII letters, digits, `-` and `.` only (an international name arrives
/// in its `xn--` form), at most 253 bytes.
fn normalized_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(name)
}

/// `host` or `host:port` (`[v6]` or `[v6]:port`) split; the port parsed.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("{text:?}: the port must be a number from 1 to 65535");
    if let Some(rest) = text.strip_prefix('[') {
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: an IPv6 address in brackets needs its ']'"))?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Ok((address, None)),
            None => Err(format!("{text:?}: unexpected text after ']'")),
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => Ok((address, Some(port))),
                _ => Err(bad_port()),
            },
        };
    }
    match text.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 address, no port.
        Some((host, _)) if host.contains(':') => Ok((text, None)),
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok((host, Some(port))),
            _ => Err(bad_port()),
        },
        None => Ok((text, None)),
    }
}

impl HostPattern {
    /// Parses one entry: `example.org`, `*.example.org`, `api.example.org:8443`,
    /// `203.0.113.7`, `[2001:db8::1]:8080`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = split_port(text.trim())?;
        let host = if let Ok(address) = host.parse::<IpAddr>() {
            Host::Address(address)
        } else if let Some(below) = host.strip_prefix("*.") {
            Host::Below(normalized_name(below).ok_or_else(|| not_a_host(text))?)
        } else {
            Host::Name(normalized_name(host).ok_or_else(|| not_a_host(text))?)
        };
        Ok(Self { host, port })
    }

    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(allowed) => allowed == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }

    fn matches(&self, target: &Target, port: u16) -> bool {
        let host = match (&self.host, target) {
            (Host::Name(name), Target::Name(wanted)) => name == wanted,
            (Host::Below(name), Target::Name(wanted)) => wanted
                .strip_suffix(name.as_str())
                .is_some_and(|head| head.ends_with('.')),
            (Host::Address(address), Target::Address(wanted)) => address == wanted,
            _ => false,
        };
        host && self.allows_port(port)
    }
}

fn not_a_host(text: &str) -> String {
    format!(
        "{text:?} is not a host pattern: a name (example.org), a name and all below it \
         (*.example.org), or an IP address, each with an optional :port"
    )
}

/// What a connection asks for: a name, or an address written as such.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Address(IpAddr),
}

/// Why a connection is refused, in words that name the variable to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "egress is off: MCP_BRIDGE_ALLOW_HOSTS is empty (the operator lists the hosts runs may reach)"
    )]
    Off,
    #[error("{host}:{port} is not in MCP_BRIDGE_ALLOW_HOSTS (allowed: {allowed})")]
    Host {
        host: String,
        port: u16,
        allowed: String,
    },
    #[error("{host} is not a valid host name")]
    BadName { host: String },
    #[error(
        "{host} resolves only to addresses that are refused ({addresses}); \
         MCP_BRIDGE_ALLOW_NETS can allow a network"
    )]
    Address { host: String, addresses: String },
}

/// The operator's egress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    hosts: Vec<HostPattern>,
    nets: Vec<IpNet>,
}

impl Policy {
    /// `MCP_BRIDGE_ALLOW_HOSTS` and `MCP_BRIDGE_ALLOW_NETS`, comma-separated
    /// (empty: none).
    pub fn parse(hosts: &str, nets: &str) -> Result<Self, (&'static str, String)> {
        let entries = |text: &str| {
            text.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let hosts = entries(hosts)
            .iter()
            .map(|entry| HostPattern::parse(entry))
            .collect::<Result<_, _>>()
            .map_err(|error| ("MCP_BRIDGE_ALLOW_HOSTS", error))?;
        let nets = entries(nets)
            .iter()
            .map(|entry| {
                entry.parse::<IpNet>().map_err(|_| {
                    format!("{entry:?} is not a network: write it as a CIDR, like 127.0.0.0/8 or fd00::/8")
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|error| ("MCP_BRIDGE_ALLOW_NETS", error))?;
        Ok(Self { hosts, nets })
    }

    /// No host is allowed: every connection is refused.
    pub fn is_off(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The patterns, as the operator wrote them (normalized).
    pub fn hosts(&self) -> String {
        self.hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The networks allowed despite the refused ranges.
    pub fn nets(&self) -> String {
        self.nets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a connection to `host:port` may be attempted, before any
    /// lookup. Returns the address to dial when `host` is an IP literal
    /// (which must be listed as such, and pass [`Self::address`]).
    pub fn check_name(&self, host: &str, port: u16) -> Result<Option<IpAddr>, Refusal> {
        if self.is_off() {
            return Err(Refusal::Off);
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let target = match literal.parse::<IpAddr>() {
            Ok(address) => Target::Address(address),
            Err(_) => Target::Name(normalized_name(host).ok_or_else(|| Refusal::BadName {
                host: host.to_owned(),
            })?),
        };
        if !self
            .hosts
            .iter()
            .any(|pattern| pattern.matches(&target, port))
        {
            return Err(Refusal::Host {
                host: host.to_owned(),
                port,
                allowed: self.hosts(),
            });
        }
        match target {
            Target::Address(address) => {
                if self.address(address) {
                    Ok(Some(address))
                } else {
                    Err(Refusal::Address {
                        host: host.to_owned(),
                        addresses: describe(address),
                    })
                }
            }
            Target::Name(_) => Ok(None),
        }
    }

    /// Whether `address` may be dialled: never a loopback, private, shared,
    /// link-local (cloud metadata), multicast, reserved or unspecified
    /// address (nor an IPv4-mapped, -compatible, NAT64 or 6to4 form of
    /// one), unless a network of `MCP_BRIDGE_ALLOW_NETS` holds it; never
    /// a cloud metadata service, whatever the networks.
    pub fn address(&self, address: IpAddr) -> bool {
        if is_metadata(address) {
            return false;
        }
        if self.nets.iter().any(|net| net.contains(&address)) {
            return true;
        }
        refused_range(address).is_none()
    }

    /// The addresses of a name, kept if they may be dialled (in their
    /// order); refused with all of them described when none may.
    pub fn filter(&self, host: &str, addresses: &[IpAddr]) -> Result<Vec<IpAddr>, Refusal> {
        let allowed: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|&address| self.address(address))
            .collect();
        if allowed.is_empty() {
            return Err(Refusal::Address {
                host: host.to_owned(),
                addresses: addresses
                    .iter()
                    .map(|&address| describe(address))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(allowed)
    }
}

/// The cloud metadata and credential services: 169.254.169.254 (most
/// clouds), AWS ECS and EKS (169.254.170.2, 169.254.170.23), Alibaba
/// (100.100.100.200), Azure's WireServer (168.63.129.16, a public address),
/// AWS's IPv6 ones; in any form that carries the IPv4 ones.
fn is_metadata(address: IpAddr) -> bool {
    const V4: [Ipv4Addr; 5] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(169, 254, 170, 23),
        Ipv4Addr::new(100, 100, 100, 200),
        Ipv4Addr::new(168, 63, 129, 16),
    ];
    const V6: [Ipv6Addr; 2] = [
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    ];
    match address {
        IpAddr::V4(v4) => V4.contains(&v4),
        IpAddr::V6(v6) => V6.contains(&v6) || embedded_v4(v6).is_some_and(|v4| V4.contains(&v4)),
    }
}

/// `127.0.0.1, a loopback address`.
fn describe(address: IpAddr) -> String {
    match refused_range(address) {
        Some(range) => format!("{address}, {range}"),
        None => address.to_string(),
    }
}

/// The refused range `address` is in, named; `None` for a public address.
fn refused_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (\"this network\") address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (169, 254, _) => "a link-local address (cloud metadata lives here)",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => {
            "a reserved or documentation address"
        }
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped, IPv4-compatible,
/// NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`).
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = address.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !address.is_unspecified() && !address.is_loopback() {
        return Some(embedded(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(embedded(segments[6], segments[7]));
    }
    (segments[0] == 0x2002).then(|| embedded(segments[1], segments[2]))
}

fn refused_v6(address: Ipv6Addr) -> Option<&'static str> {
    // Forms that carry an IPv4 address: checked as that address.
    if let Some(v4) = embedded_v4(address) {
        return refused_v4(v4);
    }
    let segments = address.segments();
    Some(match segments[0] {
        _ if address.is_unspecified() => "an unspecified address",
        _ if address.is_loopback() => "a loopback address",
        0xfc00..=0xfdff => "a unique local (private) address",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if segments[1] == 0 => "a Teredo address",
        0x2001 if segments[1] == 0xdb8 => "a documentation address",
        0x0100 if segments[1..4] == [0, 0, 0] => "a discard-only address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &str, nets: &str) -> Policy {
        Policy::parse(hosts, nets).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn patterns_parse_and_bad_ones_name_the_variable() {
        let p = policy(
            " example.org , *.Example.COM., api.example.net:8443,203.0.113.7,[2001:db8::1]:8080",
            "",
        );
        assert_eq!(
            p.hosts(),
            "example.org, *.example.com, api.example.net:8443, 203.0.113.7, [2001:db8::1]:8080"
        );
        for bad in [
            "exa mple.org",
            "*.",
            "host:0",
            "host:99999",
            "[::1",
            "-x.org",
            "a..b",
        ] {
            let (name, error) = Policy::parse(bad, "").unwrap_err();
            assert_eq!(name, "MCP_BRIDGE_ALLOW_HOSTS", "{bad}");
            assert!(!error.is_empty());
        }
        let (name, _) = Policy::parse("example.org", "10.0.0.0/33").unwrap_err();
        assert_eq!(name, "MCP_BRIDGE_ALLOW_NETS");
        assert!(Policy::parse("", "").unwrap().is_off());
    }

    #[test]
    fn names_match_exactly_wildcards_match_below_ports_default_to_80_and_443() {
        let p = policy("example.org,*.example.com,api.example.net:8443", "");
        assert!(p.check_name("example.org", 443).is_ok());
        assert!(
            p.check_name("EXAMPLE.org.", 80).is_ok(),
            "case and the root dot"
        );
        assert!(
            p.check_name("example.org", 8080).is_err(),
            "an unlisted port"
        );
        assert!(
            p.check_name("www.example.org", 443).is_err(),
            "not below a plain name"
        );
        assert!(p.check_name("a.b.example.com", 443).is_ok());
        assert!(p.check_name("example.com", 443).is_err(), "*.x is not x");
        assert!(
            p.check_name("badexample.com", 443).is_err(),
            "a suffix is not a domain"
        );
        assert!(p.check_name("api.example.net", 8443).is_ok());
        assert!(p.check_name("api.example.net", 443).is_err());
        match p.check_name("evil.org", 443) {
            Err(Refusal::Host { allowed, .. }) => assert!(allowed.contains("*.example.com")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            policy("", "").check_name("example.org", 443),
            Err(Refusal::Off)
        );
        assert!(matches!(
            p.check_name("ex ample.org", 443),
            Err(Refusal::BadName { .. })
        ));
    }

    #[test]
    fn ip_literals_only_when_listed_and_never_into_refused_ranges() {
        let p = policy(
            "203.0.113.9,93.184.216.34,[2606:4700::1111],example.org",
            "",
        );
        assert_eq!(
            p.check_name("93.184.216.34", 443),
            Ok(Some(ip("93.184.216.34")))
        );
        assert!(p.check_name("93.184.216.35", 443).is_err(), "not listed");
        assert_eq!(
            p.check_name("[2606:4700::1111]", 443),
            Ok(Some(ip("2606:4700::1111")))
        );
        // Listed, but a documentation address: refused whatever the list.
        assert!(matches!(
            p.check_name("203.0.113.9", 443),
            Err(Refusal::Address { .. })
        ));
        // The metadata address, listed or not.
        let metadata = policy("169.254.169.254", "");
        assert!(matches!(
            metadata.check_name("169.254.169.254", 80),
            Err(Refusal::Address { .. })
        ));
    }

    #[test]
    fn refused_ranges_whatever_the_form_unless_a_net_allows_them() {
        let p = policy("example.org", "");
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001::1",
            "2001:db8::1",
        ] {
            assert!(!p.address(ip(refused)), "{refused} was allowed");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.address(ip(public)), "{public} was refused");
        }
        // The metadata services stay refused whatever the networks.
        let everything = policy("example.org", "0.0.0.0/0,::/0");
        for metadata in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "169.254.170.2",
            "168.63.129.16",
            "100.100.100.200",
            "fd00:ec2::23",
        ] {
            assert!(!everything.address(ip(metadata)), "{metadata} was allowed");
        }
        assert!(everything.address(ip("169.254.169.253")));
        let loopback = policy("localhost", "127.0.0.0/8,::1/128");
        assert!(loopback.address(ip("127.0.0.1")) && loopback.address(ip("::1")));
        assert!(!loopback.address(ip("10.0.0.1")));
    }

    #[test]
    fn a_name_is_dialled_only_on_its_allowed_addresses() {
        let p = policy("example.org", "");
        let mixed = [ip("10.0.0.5"), ip("93.184.216.34")];
        assert_eq!(
            p.filter("example.org", &mixed),
            Ok(vec![ip("93.184.216.34")])
        );
        match p.filter("example.org", &[ip("127.0.0.1"), ip("::1")]) {
            Err(Refusal::Address { addresses, .. }) => {
                assert_eq!(
                    addresses,
                    "127.0.0.1, a loopback address, ::1, a loopback address"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
