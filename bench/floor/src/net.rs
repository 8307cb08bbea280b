//! Connection set-up, outside the measured loops: both listeners, then every sink and publisher
//! accepted with blocking calls before the loop starts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

/// Pending connections the kernel holds per listener while the receiver is still accepting.
const LISTEN_BACKLOG: i32 = 4096;

/// Every connection the receiver serves, in accept order.
pub struct Accepted {
    pub publishers: Vec<TcpStream>,
    pub sinks: Vec<TcpStream>,
}

/// A listener with a backlog large enough for the driver's burst of connects.
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let SocketAddr::V4(v4) = addr else {
        bail!("only IPv4 listen addresses are supported, got {addr}");
    };
    // SAFETY: plain socket creation; the fd is owned by `OwnedFd` right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let sockaddr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the pointers refer to live locals of the sizes passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        libc::bind(
            fd,
            (&sockaddr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    // SAFETY: `fd` is a bound stream socket.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } < 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    Ok(TcpListener::from(owned))
}

/// Binds both addresses, then accepts `sinks` sink and `publishers` publisher connections.
pub fn accept_all(
    pub_addr: SocketAddr,
    sink_addr: SocketAddr,
    publishers: usize,
    sinks: usize,
) -> Result<Accepted> {
    let pub_listener = listen(pub_addr)?;
    let sink_listener = listen(sink_addr)?;
    eprintln!("floor recv: listening publishers={pub_addr} sinks={sink_addr}");
    let accept = |listener: &TcpListener, count: usize| -> Result<Vec<TcpStream>> {
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let (stream, _) = listener.accept().context("accept")?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            streams.push(stream);
        }
        Ok(streams)
    };
    let sinks = accept(&sink_listener, sinks)?;
    let publishers = accept(&pub_listener, publishers)?;
    eprintln!(
        "floor recv: accepted publishers={} sinks={}",
        publishers.len(),
        sinks.len()
    );
    Ok(Accepted { publishers, sinks })
}
