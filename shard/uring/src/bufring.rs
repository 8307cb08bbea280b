//! The provided buffer ring (IORING_REGISTER_PBUF_RING) shared by every connection of a ring.
//!
//! `buffer_count` buffers of `buffer_size` bytes, one anonymous mapping, touched only when the
//! kernel first fills a buffer. The kernel takes a buffer for each receive completion; we give
//! it back right after the `Received` callback returns, so between two `poll()` calls the only
//! buffers out are those of completions not yet reaped.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use crate::RingError;

/// Largest buffer ring the kernel accepts.
pub(crate) const BUFFER_COUNT_MAX: u16 = 32768;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, what: &'static str) -> Result<Mapping, RingError> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Io {
                what,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RingError::Io {
            what,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; the ring that used it is gone (see Ring's Drop).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub(crate) struct BufRing {
    /// The ring of entries the kernel reads (page aligned, registered).
    entries: Mapping,
    /// The buffers themselves.
    buffers: Mapping,
    buffer_count: u16,
    buffer_size: u32,
    /// Our producer index; published to the kernel through the ring's tail field.
    tail: u16,
    pub(crate) group_id: u16,
}

impl BufRing {
    /// Maps and registers the ring and hands every buffer to the kernel.
    pub(crate) fn new(
        uring: &IoUring,
        buffer_count: u16,
        buffer_size: u32,
        group_id: u16,
    ) -> Result<BufRing, RingError> {
        let entries_len = usize::from(buffer_count) * std::mem::size_of::<BufRingEntry>();
        let entries = Mapping::new(entries_len.max(4096), "mmap of the buffer ring")?;
        let buffers_len = usize::from(buffer_count) * buffer_size as usize;
        let buffers = Mapping::new(buffers_len, "mmap of the receive buffers")?;
        // SAFETY: the mapping lives as long as this BufRing, and Ring's Drop unregisters the
        // group (or tears the ring down) before the mapping goes.
        let registered = unsafe {
            uring.submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                buffer_count,
                group_id,
                0,
            )
        };
        if let Err(source) = registered {
            return Err(match source.raw_os_error() {
                Some(libc::ENOMEM) => RingError::Memlock {
                    what: "provided buffer ring",
                    source,
                },
                _ => RingError::KernelTooOld {
                    what: "IORING_REGISTER_PBUF_RING",
                    source,
                },
            });
        }
        let mut ring = BufRing {
            entries,
            buffers,
            buffer_count,
            buffer_size,
            tail: 0,
            group_id,
        };
        for bid in 0..buffer_count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The bytes the kernel put in buffer `bid`; `None` if the kernel's numbers are out of range.
    pub(crate) fn data(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.buffer_count || len > self.buffer_size as usize {
            return None;
        }
        let offset = usize::from(bid) * self.buffer_size as usize;
        // SAFETY: in bounds of the buffers mapping (checked above); the kernel wrote `len` bytes
        // there and does not touch the buffer again until we push it back.
        Some(unsafe { std::slice::from_raw_parts(self.buffers.ptr.as_ptr().add(offset), len) })
    }

    /// Gives buffer `bid` back to the kernel. Called once per completion that carried it.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid >= self.buffer_count {
            return;
        }
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.buffer_count - 1;
        let index = usize::from(self.tail & mask);
        let addr = self.buffers.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.buffer_size);
        // SAFETY: index < buffer_count entries, inside the entries mapping.
        let entry = unsafe { &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Release-stores our tail so the kernel sees the entries written before it.
    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field, 2-byte aligned, shared with
        // the kernel, which only reads it.
        let tail = unsafe {
            &*(BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>())
                as *const AtomicU16)
        };
        tail.store(self.tail, Ordering::Release);
    }
}
