//! Per-connection state: small while idle (no buffers), a boxed send state only while bytes are
//! queued.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use bytes::Bytes;

/// Most `Bytes` one sendmsg covers; more stay queued for the next one.
pub(crate) const SEND_IOVECS_MAX: usize = 16;

/// Flags of a [`Conn`]; see each for its invariant.
pub(crate) mod flag {
    /// Slot holds a live connection.
    pub const LIVE: u16 = 1 << 0;
    /// A multishot recv is in flight (its final CQE, without F_MORE, not yet reaped).
    pub const RECV_ARMED: u16 = 1 << 1;
    /// The caller wants to receive (not paused, not closing/detaching).
    pub const RECV_WANTED: u16 = 1 << 2;
    /// A cancel for the armed recv was queued.
    pub const RECV_CANCELLING: u16 = 1 << 3;
    /// The last recv ended with ENOBUFS; re-arm once buffers are back.
    pub const NOBUFS_WAIT: u16 = 1 << 4;
    /// A send/sendmsg is in flight.
    pub const SEND_IN_FLIGHT: u16 = 1 << 5;
    /// A cancel for the in-flight send was queued.
    pub const SEND_CANCELLING: u16 = 1 << 6;
    /// Queued but waiting for the ring-wide send bound.
    pub const SEND_READY_WAIT: u16 = 1 << 7;
    /// close(): drain sends, then close.
    pub const CLOSING: u16 = 1 << 8;
    /// detach(): drain sends, then hand the fd back.
    pub const DETACHING: u16 = 1 << 9;
    /// close_now(), EOF, error or linger expiry: cancel everything, then close.
    pub const ABORTING: u16 = 1 << 10;
    /// Terminal event queued in `finished`; nothing more happens to this slot.
    pub const FINISHED: u16 = 1 << 11;
    /// A linger timeout was armed.
    pub const LINGER_ARMED: u16 = 1 << 12;
}

/// One connection slot. Kept small: this is all that an idle connection costs the ring.
pub(crate) struct Conn {
    /// The socket; `Some` exactly while the slot is live.
    pub fd: Option<OwnedFd>,
    /// Bumped each time the slot is freed, so old keys and completions miss.
    pub generation: u32,
    /// Errno to report in `Closed` (0 = none, `ETIMEDOUT` for linger expiry).
    pub close_errno: i32,
    /// [`flag`] bits.
    pub flags: u16,
    /// The caller's cookie, echoed in events.
    pub user: u64,
    /// `Some` exactly while bytes are queued or a send is in flight.
    pub send: Option<Box<SendState>>,
}

/// `size_of` of the per-connection struct: what an idle connection costs the ring.
pub const CONN_SIZE_BYTES: usize = std::mem::size_of::<Conn>();
const _: () = assert!(CONN_SIZE_BYTES <= 32);

impl Conn {
    pub(crate) fn vacant() -> Conn {
        Conn {
            fd: None,
            generation: 0,
            close_errno: 0,
            flags: 0,
            user: 0,
            send: None,
        }
    }

    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub(crate) fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub(crate) fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.send.as_ref().map_or(0, |s| s.queued_bytes)
    }
}

/// Queued output of a connection, plus the iovecs/msghdr of the send in flight. Boxed so the
/// pointers handed to the kernel stay put while the slab moves.
pub(crate) struct SendState {
    pub queue: VecDeque<Bytes>,
    /// Sum of the unsent bytes in `queue`.
    pub queued_bytes: usize,
    /// Bytes of `queue[0]` already sent (partial send).
    pub front_offset: usize,
    /// Bytes offered to the send in flight (to count partial sends).
    pub offered: usize,
    pub iovecs: [libc::iovec; SEND_IOVECS_MAX],
    pub msghdr: libc::msghdr,
}

impl SendState {
    pub(crate) fn new() -> SendState {
        SendState {
            queue: VecDeque::new(),
            queued_bytes: 0,
            front_offset: 0,
            offered: 0,
            iovecs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; SEND_IOVECS_MAX],
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msghdr: unsafe { std::mem::zeroed() },
        }
    }

    /// Fills the iovecs from the queue head; returns how many were filled (>= 1 if non-empty).
    pub(crate) fn fill_iovecs(&mut self) -> usize {
        let mut count = 0;
        self.offered = 0;
        for (i, bytes) in self.queue.iter().take(SEND_IOVECS_MAX).enumerate() {
            let skip = if i == 0 { self.front_offset } else { 0 };
            let rest = &bytes[skip.min(bytes.len())..];
            self.iovecs[i] = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            self.offered += rest.len();
            count += 1;
        }
        self.msghdr.msg_iov = self.iovecs.as_mut_ptr();
        self.msghdr.msg_iovlen = count as _;
        count
    }

    /// Accounts `sent` bytes written from the queue head.
    pub(crate) fn advance(&mut self, mut sent: usize) {
        debug_assert!(sent <= self.queued_bytes, "kernel sent more than queued");
        self.queued_bytes -= sent.min(self.queued_bytes);
        while sent > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.len() - self.front_offset;
            if sent >= left {
                sent -= left;
                self.front_offset = 0;
                self.queue.pop_front();
            } else {
                self.front_offset += sent;
                sent = 0;
            }
        }
    }

    /// Empties the state for reuse from the pool.
    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.front_offset = 0;
        self.msghdr.msg_iov = std::ptr::null_mut();
        self.msghdr.msg_iovlen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_handles_partial_and_whole_sends() {
        let mut s = SendState::new();
        for chunk in [&b"abc"[..], b"defg", b"h"] {
            s.queue.push_back(Bytes::copy_from_slice(chunk));
            s.queued_bytes += chunk.len();
        }
        assert_eq!(s.fill_iovecs(), 3);
        s.advance(4);
        assert_eq!(s.queue.len(), 2);
        assert_eq!(s.front_offset, 1);
        assert_eq!(s.queued_bytes, 4);
        assert_eq!(s.fill_iovecs(), 2);
        assert_eq!(s.iovecs[0].iov_len, 3);
        s.advance(4);
        assert!(s.queue.is_empty());
        assert_eq!(s.queued_bytes, 0);
    }

    #[test]
    fn idle_connection_is_small() {
        assert_eq!(std::mem::size_of::<Conn>(), CONN_SIZE_BYTES);
        assert_eq!(CONN_SIZE_BYTES, 32, "update the crate docs if this changes");
    }
}
