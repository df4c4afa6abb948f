//! The raw system calls ringcache makes outside io_uring, each behind a safe
//! wrapper. Every libc call goes through [`syscall!`], which turns `-1` into
//! `io::Error::last_os_error()`.
//!
//! Sends always carry `MSG_NOSIGNAL`: a peer that went away yields `EPIPE`,
//! never a `SIGPIPE` that would end the process.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Call `libc::$fn(args..)` and map a `-1` result to the thread's errno.
/// The caller states, at the call site, why the arguments are valid.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of `syscall!` upholds the libc function's contract
        // for the arguments it passes; see the comment at each call site.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A socket address in the kernel's layout, IPv4 or IPv6 (28 bytes at most).
#[derive(Clone, Copy)]
pub struct SockAddr {
    raw: SockAddrRaw,
    len: libc::socklen_t,
}

#[repr(C)]
#[derive(Clone, Copy)]
union SockAddrRaw {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddr {
    /// The kernel form of `addr`.
    pub fn new(addr: &SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(a) => SockAddr {
                raw: SockAddrRaw {
                    v4: libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    },
                },
                len: std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            },
            SocketAddr::V6(a) => SockAddr {
                raw: SockAddrRaw {
                    v6: libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: a.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    },
                },
                len: std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            },
        }
    }

    /// An all-zero placeholder (family `AF_UNSPEC`).
    pub fn empty() -> SockAddr {
        SockAddr::new(&SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Pointer for `connect(2)`; valid while `self` is neither moved nor dropped.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.raw as *const SockAddrRaw).cast()
    }

    /// Length in bytes of the address behind [`SockAddr::as_ptr`].
    pub fn byte_len(&self) -> libc::socklen_t {
        self.len
    }
}

/// A fresh non-blocking, close-on-exec TCP socket of `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain integer arguments.
    syscall!(socket(family, ty, 0))
}

/// Start a connect; `Err` carries `EINPROGRESS` for a non-blocking socket
/// whose handshake is under way.
pub fn connect(fd: RawFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points to `addr.byte_len()` initialised bytes for the call.
    syscall!(connect(fd, addr.as_ptr(), addr.byte_len())).map(drop)
}

/// Accept one connection as a non-blocking, close-on-exec fd.
pub fn accept(listener: RawFd) -> io::Result<RawFd> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: null address and length pointers ask the kernel not to report the peer.
    syscall!(accept4(
        listener,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        flags
    ))
}

/// `send(2)` with `MSG_NOSIGNAL`; returns the bytes written.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes during the call.
    syscall!(send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)).map(|n| n as usize)
}

/// `recv(2)` into `buf`; `Ok(0)` is the peer's orderly close.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
    syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)).map(|n| n as usize)
}

/// `shutdown(2)`; `how` is `libc::SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
pub fn shutdown(fd: RawFd, how: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    syscall!(shutdown(fd, how)).map(drop)
}

/// `close(2)`. Errors are ignored: on Linux the fd is released even when
/// `close` reports one, so there is nothing to retry.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it afterwards.
    let _ = syscall!(close(fd));
}

/// Take the socket's pending error (`SO_ERROR`): 0 when there is none.
pub fn take_socket_error(fd: RawFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes and `len` holds err's size.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut err as *mut libc::c_int).cast(),
        &mut len,
    ))?;
    Ok(err)
}

/// The size of a memory page in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}
