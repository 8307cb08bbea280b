//! Thin wrappers over the few system calls the loops make directly, so each loop reads as the
//! sequence of syscalls it costs.

use std::io;
use std::os::fd::RawFd;

/// One non-blocking `recv`; `Ok(0)` is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking `send`; may write fewer bytes than given.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// CPU used by the whole process so far, and its context switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    pub user_s: f64,
    pub sys_s: f64,
    /// Voluntary context switches: how often the process blocked waiting for work.
    pub voluntary_switches: i64,
    /// Involuntary context switches: how often it was preempted (noise from the shared machine).
    pub involuntary_switches: i64,
}

impl CpuSample {
    /// getrusage(RUSAGE_SELF): all threads of this process.
    pub fn now() -> Self {
        // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Self {
            user_s: seconds(usage.ru_utime),
            sys_s: seconds(usage.ru_stime),
            voluntary_switches: usage.ru_nvcsw,
            involuntary_switches: usage.ru_nivcsw,
        }
    }
}

/// Reads a timerfd's expiration count (8 bytes); WouldBlock when it has not fired.
pub fn recv_timer(fd: RawFd, buf: &mut [u8; 8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for 8 bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
