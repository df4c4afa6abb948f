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

/// Backlog of each listening socket.
pub const LISTEN_BACKLOG: i32 = 4096;

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed alongside.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const i32).cast(),
        std::mem::size_of::<i32>() as libc::socklen_t,
    ))
    .map(drop)
}

/// A non-blocking listening socket with SO_REUSEPORT, so that every worker
/// owns one bound to the same address and the kernel spreads connections.
pub fn reuseport_listener(addr: &SocketAddr) -> io::Result<RawFd> {
    let fd = tcp_socket(addr)?;
    let setup = || -> io::Result<()> {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        let sa = SockAddr::new(addr);
        // SAFETY: `sa` holds a valid address of `byte_len` bytes for the call.
        syscall!(bind(fd, sa.as_ptr(), sa.byte_len()))?;
        // SAFETY: plain integer arguments.
        syscall!(listen(fd, LISTEN_BACKLOG))?;
        Ok(())
    };
    if let Err(e) = setup() {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

fn get_int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds value's size.
    syscall!(getsockopt(
        fd,
        level,
        name,
        (&mut value as *mut libc::c_int).cast(),
        &mut len,
    ))?;
    Ok(value)
}

/// Check that an inherited descriptor (socket activation) is a listening
/// TCP socket over IPv4 or IPv6, and return the address it is bound to.
/// The error says what the descriptor is instead.
pub fn check_tcp_listener(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes for the call.
    syscall!(fstat(fd, &mut st))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other("not a socket"));
    }
    if get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(io::Error::other("not a stream socket"));
    }
    if get_int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP {
        return Err(io::Error::other("not a TCP socket"));
    }
    if get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(io::Error::other(
            "a TCP socket that is not listening (ListenStream= expected)",
        ));
    }
    local_addr(fd).map_err(|e| io::Error::other(format!("no IPv4/IPv6 address: {e}")))
}

/// Set or clear `O_NONBLOCK` on `fd` (a flag of the open file description,
/// shared with every process that holds the same socket).
pub fn set_nonblocking(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    let wanted = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if wanted != flags {
        // SAFETY: plain integer arguments.
        syscall!(fcntl(fd, libc::F_SETFL, wanted))?;
    }
    Ok(())
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Which end of a socket [`socket_addr`] asks for.
#[derive(Clone, Copy)]
enum End {
    Local,
    Peer,
}

fn socket_addr(fd: RawFd, end: End) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    match end {
        // SAFETY: `storage` has room for `len` bytes; the kernel writes at most that.
        End::Local => syscall!(getsockname(fd, ptr, &mut len))?,
        // SAFETY: as above.
        End::Peer => syscall!(getpeername(fd, ptr, &mut len))?,
    };
    from_storage(&storage).ok_or_else(|| io::Error::other("unknown address family"))
}

/// The address a socket is bound to.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    socket_addr(fd, End::Local)
}

/// The IP address of a connected socket's peer (for X-Forwarded-For).
pub fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    socket_addr(fd, End::Peer).ok().map(|a| a.ip())
}

/// A fresh non-blocking TCP socket for an origin connection, Nagle off.
pub fn stream_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let fd = tcp_socket(addr)?;
    set_nodelay(fd);
    Ok(fd)
}

/// Disable Nagle: responses are written whole, latency matters more.
pub fn set_nodelay(fd: RawFd) {
    let _ = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
}

fn shutdown_sigset() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signals to it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGHUP);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
        set.assume_init()
    }
}

/// Block SIGTERM, SIGINT, SIGHUP and SIGUSR1 in the calling thread and every thread
/// it spawns afterwards, so that only [`wait_signal`] sees them. SIGPIPE is
/// ignored process-wide (sends carry MSG_NOSIGNAL as well).
pub fn block_signals() -> io::Result<()> {
    let set = shutdown_sigset();
    // SAFETY: `set` is initialised; the old mask is not wanted (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// Wait up to `timeout` for one of the signals blocked by
/// [`block_signals`]; returns its number, or `None` when the time is up.
pub fn wait_signal(timeout: std::time::Duration) -> Option<i32> {
    let set = shutdown_sigset();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    loop {
        // SAFETY: `set` and `ts` are initialised; a null siginfo is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            return Some(sig);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None, // EAGAIN: the time is up
        }
    }
}

/// Raise the soft limit on open files to the hard limit (each client and
/// origin connection is a descriptor). Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is initialised; raising soft up to hard needs no privilege.
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok(lim.rlim_cur)
}

/// Name of a signal number, for the shutdown log line.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}

/// Pin the calling thread to the `index`-th CPU this process may run on.
/// Returns the CPU id, or `None` when pinning is not possible.
pub fn pin_to_core(index: usize) -> Option<usize> {
    let cores = core_affinity::get_core_ids()?;
    if cores.is_empty() {
        return None;
    }
    let core = cores[index % cores.len()];
    core_affinity::set_for_current(core).then_some(core.id)
}

#[cfg(test)]
mod net_tests {
    use super::*;

    #[test]
    fn reuseport_listeners_share_a_port() {
        let a = reuseport_listener(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = local_addr(a).unwrap();
        assert_ne!(addr.port(), 0);
        let b = reuseport_listener(&addr).unwrap();
        assert_eq!(local_addr(b).unwrap(), addr);
        let client = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(client.peer_addr().unwrap(), addr);
        close(a);
        close(b);
    }

    #[test]
    fn inherited_sockets_are_checked() {
        let l = reuseport_listener(&"127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(check_tcp_listener(l).unwrap(), local_addr(l).unwrap());
        let stream = tcp_socket(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let e = check_tcp_listener(stream).unwrap_err().to_string();
        assert!(e.contains("not listening"), "{e}");
        let (u, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check_tcp_listener(std::os::fd::AsRawFd::as_raw_fd(&u))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a TCP socket"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = check_tcp_listener(std::os::fd::AsRawFd::as_raw_fd(&file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a socket"), "{e}");
        set_nonblocking(l, false).unwrap();
        set_nonblocking(l, true).unwrap();
        close(l);
        close(stream);
    }
}
