//! Addresses, CIDRs and names as the Kubernetes sections take them: the value checks shared by the sections.

use std::fmt;
use std::net::IpAddr;

/// `ADDRESS/PREFIX`, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A DNS-1123 subdomain: dot-separated labels of a-z, 0-9 and -, at most 253 characters.
pub fn dns_subdomain_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A DNS name for a certificate (letters of either case allowed: names compare without case).
pub(super) fn san_name_ok(name: &str) -> bool {
    dns_subdomain_ok(&name.to_ascii_lowercase())
}

/// One CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.
pub(super) fn cidrs_problem(text: &str, service: bool) -> Option<String> {
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() > 2 {
        return Some(format!(
            "`{text}`: at most two CIDRs, an IPv4 and an IPv6 one (dual-stack)"
        ));
    }
    let mut cidrs = Vec::new();
    for part in &parts {
        let Some(c) = Cidr::parse(part) else {
            return Some(format!(
                "`{part}` is not a CIDR such as 10.1.0.0/16 or fd01::/108"
            ));
        };
        cidrs.push(c);
    }
    if cidrs.len() == 2 && cidrs[0].address.is_ipv4() == cidrs[1].address.is_ipv4() {
        return Some(format!(
            "`{text}`: two CIDRs must be one IPv4 and one IPv6 (dual-stack)"
        ));
    }
    if service {
        // kube-apiserver refuses bigger service ranges.
        for c in &cidrs {
            let min = if c.address.is_ipv4() { 12 } else { 108 };
            if c.prefix < min {
                return Some(format!(
                    "`{c}` is too large a service range: the prefix must be at least /{min}"
                ));
            }
        }
    }
    None
}

pub(super) fn parse_cidrs(text: &str) -> Vec<Cidr> {
    text.split(',').filter_map(Cidr::parse).collect()
}

/// A load-balancer pool entry: a CIDR or `FIRST-LAST` of one family, FIRST not after LAST.
pub(super) fn pool_ok(text: &str) -> bool {
    if Cidr::parse(text).is_some() {
        return true;
    }
    match text.split_once('-') {
        Some((a, b)) => match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
            (Ok(IpAddr::V4(a)), Ok(IpAddr::V4(b))) => a <= b,
            (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) => a <= b,
            _ => false,
        },
        None => false,
    }
}

/// A network interface name as Linux takes it.
pub(super) fn interface_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// An upstream DNS server as CoreDNS' `forward` takes it: an IP, `IP:PORT`, `[IPv6]:PORT` or a resolv.conf path.
pub(super) fn nameserver_ok(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() || text.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    text.starts_with('/')
        && text.len() > 1
        && !text.contains('\0')
        && !text.chars().any(char::is_whitespace)
}
