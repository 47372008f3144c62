//! Listening sockets built with `nix` so that each executor binds its own
//! `SO_REUSEPORT` socket with the configured backlog (glommio's own
//! `TcpListener::bind` hard-codes 1024), then hands it to glommio.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use glommio::net::TcpListener;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, listen,
    setsockopt, socket, sockopt,
};

/// A TCP socket bound to `addr` in its `SO_REUSEPORT` group, not yet
/// listening.
pub fn reuseport_socket(addr: SocketAddr) -> nix::Result<OwnedFd> {
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Tcp,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

/// Binds `addr` with `SO_REUSEPORT` and `TCP_NODELAY` (inherited by
/// accepted sockets) and starts listening with `backlog`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let fd = reuseport_socket(addr)?;
    let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog)?;
    // SAFETY: `fd` is a bound, listening TCP socket we own; glommio takes it.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
}
