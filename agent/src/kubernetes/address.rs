//! The node's name and address for the distribution, when the instance data does not give them.

use std::fs;
use std::time::{Duration, Instant};

use crate::target::Target;

/// The node's name when the instance data gives none: its hostname, lower-cased.
pub(super) fn node_name(target: &Target) -> Result<String, String> {
    let name = if target.is_live() {
        fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| format!("hostname: {e}"))?
    } else {
        target
            .read_string("/etc/hostname")
            .map_err(|e| e.to_string())?
            .unwrap_or_default()
    };
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || !cairn_profile::kubernetes::dns_subdomain_ok(&name) {
        return Err(format!(
            "the hostname `{name}` is not a valid node name: give [kubernetes] node-name in the instance data"
        ));
    }
    Ok(name)
}

/// The address given to the distribution: the instance's `address` (a CIDR is narrowed to this node's own
/// address in it when joining: `join-cluster` takes an IP), else [`default_address`], waited for.
pub(super) fn node_address(
    target: &Target,
    given: Option<&str>,
    joining: bool,
    wait: Duration,
) -> Result<String, String> {
    let Some(given) = given else {
        return wait_for_address(target, wait).ok_or_else(|| {
            "no address for the node: none in the instance data ([kubernetes] address), and no link had an IPv4 address within the wait".to_string()
        });
    };
    match cairn_profile::kubernetes::Cidr::parse(given) {
        Some(cidr) if joining => poll(target, wait, || {
            ipv4_addresses()
                .into_iter()
                .find(|(_, ip)| cidr.contains(std::net::IpAddr::V4(*ip)))
                .map(|(_, ip)| ip.to_string())
        })
        .ok_or_else(|| {
            format!(
                "[kubernetes] address {given}: no address of this node is in it, and a join takes the node's own address"
            )
        }),
        _ => Ok(given.to_string()),
    }
}

/// [`default_address`], polled on a live node until `wait` has passed.
fn wait_for_address(target: &Target, wait: Duration) -> Option<String> {
    poll(target, wait, default_address)
}

/// `find`'s first answer, asked every 250 ms until `wait` has passed on a live node (the network may still be
/// coming up), once on a root folder.
fn poll<T>(target: &Target, wait: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let wait = if target.is_live() {
        wait
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The node's address: the first IPv4 address of the link that carries the default route, else (an isolated
/// site may have no default route) the first one of any link but the loopback, links in name order.
fn default_address() -> Option<String> {
    let addresses = ipv4_addresses();
    let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_link = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    default_link
        .and_then(|link| addresses.iter().find(|(l, _)| *l == link))
        .or_else(|| addresses.first())
        .map(|(_, a)| a.to_string())
}

/// Every link's IPv4 addresses but loopback and link-local ones, sorted by link name.
fn ipv4_addresses() -> Vec<(String, std::net::Ipv4Addr)> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that freeifaddrs releases; it is only read in between.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_addr, when set, points at a sockaddr of the family it names.
        if ifa.ifa_addr.is_null()
            || ifa.ifa_name.is_null()
            || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string; the family is AF_INET, so the address is a sockaddr_in.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() {
            found.push((name.to_string_lossy().into_owned(), ip));
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found.sort();
    found
}
