//! Recovering a redirected connection's original destination (`SO_ORIGINAL_DST` for IPv4,
//! `IP6T_SO_ORIGINAL_DST` for IPv6). This is the only `unsafe` code in the proxy.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the client originally addressed before an iptables REDIRECT (or the local
/// address when the connection was not redirected, or under TPROXY).
pub fn original_dst<S: AsRawFd>(sock: &S, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = sock.as_raw_fd();
    match local {
        SocketAddr::V4(_) => {
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: `addr` is a valid, writable sockaddr_in and `len` is its size.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IP,
                    SO_ORIGINAL_DST,
                    &mut addr as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(addr.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: `addr` is a valid, writable sockaddr_in6 and `len` is its size.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IPV6,
                    IP6T_SO_ORIGINAL_DST,
                    &mut addr as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        }
    }
}

/// The original destination if the kernel knows one, else the local address (no NAT entry:
/// the connection was addressed to the listener itself).
pub fn original_dst_or_local<S: AsRawFd>(sock: &S, local: SocketAddr) -> SocketAddr {
    original_dst(sock, local).unwrap_or(local)
}
