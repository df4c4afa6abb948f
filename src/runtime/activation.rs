//! Listening sockets passed in by the service manager (socket activation,
//! `sd_listen_fds(3)`): `LISTEN_PID` names this process, `LISTEN_FDS` says
//! how many descriptors start at fd 3, `LISTEN_FDNAMES` (optional,
//! colon-separated) names them.
//!
//! ```text
//!  fd 3, 4, …  named "admin"      → the admin listener (/metrics, /healthz)
//!              any other name     → a traffic listener
//! ```
//!
//! ## One socket, every worker
//! Without inherited sockets each worker binds its own `SO_REUSEPORT`
//! socket and the kernel spreads connections over them. With inherited
//! sockets every worker accepts on every inherited traffic socket: a
//! multishot accept per ring on io_uring (the kernel wakes one waiter per
//! connection), a registration per epoll instance on epoll (a woken worker
//! that finds the queue empty gets `EAGAIN` and waits again). `--workers`
//! therefore stays the number of threads, independent of the number of
//! sockets. We do not create extra `SO_REUSEPORT` sockets next to an
//! inherited one: connections queued on a socket die with the process that
//! owns it, and the point of a socket held by the service manager is that
//! connections arriving while ringcache restarts wait in its queue for the
//! next process.
//!
//! Every inherited descriptor is checked (a listening TCP socket over IPv4
//! or IPv6), made close-on-exec and non-blocking, and the variables are
//! removed from the environment so that nothing started later takes them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `FileDescriptorName=` of the admin socket.
pub const ADMIN_FD_NAME: &str = "admin";
/// Inherited descriptors taken at most.
pub const INHERITED_FDS_MAX: usize = 16;

/// The listening sockets the service manager passed.
#[derive(Debug)]
pub struct Inherited {
    /// Traffic listeners, shared by every worker.
    pub traffic: Vec<OwnedFd>,
    /// The admin listener, when one was passed by name.
    pub admin: Option<OwnedFd>,
}

/// Take the sockets passed by the service manager; `Ok(None)` when there
/// are none for this process. Call before any thread is started.
pub fn take() -> Result<Option<Inherited>, String> {
    let fds = sd_notify::listen_fds_with_names(true)
        .map_err(|e| format!("socket activation (LISTEN_FDS/LISTEN_FDNAMES): {e}"))?;
    let fds: Vec<(RawFd, String)> = fds.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    if fds.len() > INHERITED_FDS_MAX {
        return Err(format!(
            "socket activation: {} descriptors passed, at most {INHERITED_FDS_MAX} are taken",
            fds.len()
        ));
    }
    let mut inherited = Inherited {
        traffic: Vec::with_capacity(fds.len()),
        admin: None,
    };
    // Own every descriptor first, so that an error below closes them all.
    let mut owned = Vec::with_capacity(fds.len());
    for (fd, name) in fds {
        // SAFETY: LISTEN_PID names this process, so the service manager
        // passed `fd` to it; nothing else in this process took it yet.
        owned.push((unsafe { OwnedFd::from_raw_fd(fd) }, fd, name));
    }
    for (owned_fd, fd, name) in owned {
        let addr = crate::sys::check_tcp_listener(fd)
            .map_err(|e| format!("socket activation: fd {fd} (name {name:?}): {e}"))?;
        let admin = name == ADMIN_FD_NAME;
        // The admin thread uses blocking accepts; workers never block.
        crate::sys::set_nonblocking(fd, !admin)
            .map_err(|e| format!("socket activation: fd {fd}: {e}"))?;
        if admin {
            if inherited.admin.is_some() {
                return Err(format!(
                    "socket activation: more than one socket named {ADMIN_FD_NAME:?}"
                ));
            }
            log::info!("admin listener {addr} passed by the service manager (fd {fd})");
            inherited.admin = Some(owned_fd);
        } else {
            log::info!(
                "traffic listener {addr} passed by the service manager (fd {fd}, name {name:?})"
            );
            inherited.traffic.push(owned_fd);
        }
    }
    Ok(Some(inherited))
}
