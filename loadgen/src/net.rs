//! Opening a client socket bound to a chosen source address, non-blocking, then handing it
//! to glommio. glommio's own `TcpStream::connect` cannot bind first, and binding is how one
//! process gets more than one ephemeral-port range (one per source address).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;

use glommio::net::TcpStream;

/// Linux `IP_BIND_ADDRESS_NO_PORT`: defer the port choice to connect() so ports are shared
/// across destinations instead of reserved per bind().
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Starts a non-blocking connect (optionally from `source`) and returns the stream at once;
/// the first write completes when the handshake does (or fails with its error).
pub fn start_connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let domain = if target.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain syscall; the fd is owned by `guard` until handed to glommio.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let guard = FdGuard(fd);
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option pointer/length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    if let Some(source) = source {
        // SAFETY: as above; failure is harmless (only reduces port sharing).
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let (storage, len) = sockaddr(SocketAddr::new(source, 0));
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        if unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (storage, len) = sockaddr(target);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd, &storage as *const _ as *const libc::sockaddr, len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    let fd = guard.release();
    // SAFETY: we own `fd` and transfer ownership to the stream.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

struct FdGuard(libc::c_int);

impl FdGuard {
    fn release(self) -> libc::c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl Drop for FdGuard {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

/// Short stable names for the failure table. TLS and WebSocket failures travel as I/O errors
/// that carry the layer's own error; they are named after it (`tls_...`, `ws_...`).
pub fn io_reason(err: &io::Error) -> String {
    if let Some(inner) = err.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return tls_reason(tls);
        }
        if let Some(handshake) = inner.downcast_ref::<wire::ws::ClientHandshakeError>() {
            return match handshake {
                wire::ws::ClientHandshakeError::Refused { status } => {
                    format!("ws_refused_{status}")
                }
                other => format!("ws_handshake:{other}"),
            };
        }
        if let Some(frame) = inner.downcast_ref::<wire::ws::FrameError>() {
            return format!("ws_frame:{frame}");
        }
    }
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => "address_unavailable".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable".into(),
        Some(code) => format!("errno_{code}"),
        None => format!("io_{:?}", err.kind()).to_lowercase(),
    }
}

/// `tls_` and the error's variant (and its detail), lowercase without spaces:
/// `tls_invalidcertificate(unknownissuer)`, `tls_alertreceived(certificaterequired)`.
fn tls_reason(err: &rustls::Error) -> String {
    let detail: String = format!("{err:?}")
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    format!("tls_{detail}")
}

/// Raises the open-files soft limit to the hard limit (15,000 sockets need it).
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// CPUs this process may run on (respects taskset).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect();
        if cpus.is_empty() {
            vec![0]
        } else {
            cpus
        }
    }
}
