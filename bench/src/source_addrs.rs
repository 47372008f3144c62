//! Local source addresses the client connections are bound to, so one client machine can open
//! more connections than the ~28k ephemeral ports of one address allow.
//!
//! `--source-addrs` lists IPv4 addresses and CIDR blocks (`10.0.0.5,10.0.0.6`, `10.0.1.0/28`);
//! connection `i` is bound to address `i mod count`. Without the option, a loopback target gets
//! today's rotation over 127.0.0.2 ..= 127.0.0.251 and any other target no binding (the kernel
//! picks the route's address). Every address is bound once in the parent before any worker
//! starts, so an address that is not on this machine fails the run at once with its name.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::limits::{SOURCE_ADDR_FIRST_OCTET, SOURCE_ADDRS_COUNT, SOURCE_ADDRS_MAX};
use crate::target::Endpoint;

/// Why `--source-addrs` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceAddrError {
    /// An entry is neither an IPv4 address nor an IPv4 CIDR block.
    #[error("--source-addrs entry {entry:?}: {reason}")]
    Malformed { entry: String, reason: &'static str },
    /// The list expands to more than SOURCE_ADDRS_MAX addresses.
    #[error("--source-addrs expands to more than {SOURCE_ADDRS_MAX} addresses")]
    TooMany,
    /// An address cannot be bound on this machine (usually: not assigned to an interface).
    #[error(
        "cannot bind source address {addr}: {source} (is it assigned to an interface on this machine? `ip -4 addr` lists them)"
    )]
    Unbindable {
        addr: Ipv4Addr,
        source: std::io::Error,
    },
    /// A loopback source cannot reach a target on another machine.
    #[error("source address {addr} is loopback but target {target} is not")]
    LoopbackToRemote { addr: Ipv4Addr, target: String },
}

/// Parses `--source-addrs` entries (addresses and CIDR blocks) into the list of addresses.
/// A block of prefix 30 or shorter leaves out its network and broadcast addresses.
pub fn parse(entries: &[String]) -> Result<Vec<Ipv4Addr>, SourceAddrError> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for raw in entries {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let malformed = |reason| SourceAddrError::Malformed {
            entry: entry.to_string(),
            reason,
        };
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| malformed("prefix must be 0..=32"))?,
            ),
            None => (entry, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed("not an IPv4 address"))?;
        let size = 1u64 << (32 - u32::from(prefix));
        let host_only = prefix <= 30;
        let hosts = if host_only { size - 2 } else { size };
        if out.len() as u64 + hosts > SOURCE_ADDRS_MAX as u64 {
            return Err(SourceAddrError::TooMany);
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let network = u32::from(addr) & mask;
        let first = u64::from(network) + u64::from(host_only);
        out.extend((first..first + hosts).map(|a| Ipv4Addr::from(a as u32)));
    }
    Ok(out)
}

/// The loopback rotation used when `--source-addrs` is not given and the target is loopback.
pub fn loopback_default() -> Vec<Ipv4Addr> {
    (0..SOURCE_ADDRS_COUNT)
        .map(|i| Ipv4Addr::new(127, 0, 0, (SOURCE_ADDR_FIRST_OCTET + i) as u8))
        .collect()
}

/// The addresses the workers bind to: the parsed `--source-addrs`, else the loopback rotation
/// when every `--ws` target is loopback, else none. `disabled` (`--no-source-rotation`) wins.
/// Checks that each address can be bound here and reaches the targets.
pub fn resolve(
    entries: &[String],
    disabled: bool,
    targets: &[Endpoint],
) -> Result<Vec<Ipv4Addr>, SourceAddrError> {
    if disabled {
        return Ok(Vec::new());
    }
    let addrs = if entries.is_empty() {
        if targets.iter().all(Endpoint::is_loopback) {
            loopback_default()
        } else {
            Vec::new()
        }
    } else {
        parse(entries)?
    };
    for &addr in &addrs {
        if addr.is_loopback()
            && let Some(remote) = targets.iter().find(|t| !t.is_loopback())
        {
            return Err(SourceAddrError::LoopbackToRemote {
                addr,
                target: remote.url.clone(),
            });
        }
        probe(addr)?;
    }
    Ok(addrs)
}

/// Binds a socket to `addr` (port 0, no port reserved) and drops it.
fn probe(addr: Ipv4Addr) -> Result<(), SourceAddrError> {
    let unbindable = |source| SourceAddrError::Unbindable { addr, source };
    let socket = std::net::TcpListener::bind(SocketAddrV4::new(addr, 0)).map_err(unbindable)?;
    drop(socket);
    Ok(())
}

/// The source address of connection `global` (None when `addrs` is empty).
pub fn for_connection(addrs: &[Ipv4Addr], global: u64) -> Option<SocketAddr> {
    if addrs.is_empty() {
        return None;
    }
    let addr = addrs[(global % addrs.len() as u64) as usize];
    Some(SocketAddr::V4(SocketAddrV4::new(addr, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_addresses_and_blocks() {
        let a = parse(&strings(&[
            "10.0.0.5",
            " 10.0.0.6 ",
            "192.168.1.0/30",
            "127.1.2.3/31",
        ]))
        .unwrap();
        let expect: Vec<Ipv4Addr> = [
            "10.0.0.5",
            "10.0.0.6",
            "192.168.1.1",
            "192.168.1.2",
            "127.1.2.2",
            "127.1.2.3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(a, expect);
        assert_eq!(parse(&strings(&["10.9.9.9/32"])).unwrap().len(), 1);
        assert!(matches!(
            parse(&strings(&["10.0.0.300"])),
            Err(SourceAddrError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&strings(&["10.0.0.0/33"])),
            Err(SourceAddrError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&strings(&["10.0.0.0/8"])),
            Err(SourceAddrError::TooMany)
        ));
    }

    #[test]
    fn loopback_default_and_rotation() {
        let d = loopback_default();
        assert_eq!(d.first(), Some(&Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(d.last(), Some(&Ipv4Addr::new(127, 0, 0, 251)));
        let two = [Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 6)];
        assert_eq!(
            for_connection(&two, 3),
            Some("127.0.0.6:0".parse().unwrap())
        );
        assert_eq!(for_connection(&[], 3), None);
    }

    #[test]
    fn an_address_not_on_this_machine_is_refused_by_name() {
        // 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
        let target = Endpoint::parse("ws://127.0.0.1:9").unwrap();
        let e = resolve(&strings(&["127.0.0.7", "192.0.2.1"]), false, &[target]).unwrap_err();
        assert!(e.to_string().contains("192.0.2.1"), "{e}");
        assert!(matches!(e, SourceAddrError::Unbindable { .. }));
    }
}
