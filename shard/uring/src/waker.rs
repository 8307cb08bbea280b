//! The eventfd that lets a glommio executor sleep until this ring has work (see the crate docs
//! for the protocol).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use glommio::io::BufferedFile;

use crate::RingError;

pub(crate) struct Waker {
    /// Registered with the ring. Blocking on purpose (see crate docs).
    eventfd: OwnedFd,
    /// A dup of `eventfd` wrapped for glommio's ring; made on the first `wait()` because it
    /// needs a running executor.
    file: RefCell<Option<BufferedFile>>,
}

impl Waker {
    pub(crate) fn new() -> Result<Waker, RingError> {
        // SAFETY: plain syscall; the fd is owned right away.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(RingError::Io {
                what: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Waker {
            eventfd,
            file: RefCell::new(None),
        })
    }

    pub(crate) fn raw(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Awaits one signal of the eventfd through glommio's ring. Must run inside a glommio
    /// executor. Errors are logged and end the wait early (the caller just polls again).
    pub(crate) async fn wait_signal(&self) {
        let file = match self.file.borrow_mut().take() {
            Some(file) => file,
            None => match self.glommio_file() {
                Ok(file) => file,
                Err(error) => {
                    tracing::warn!(%error, "cannot wrap the ring eventfd for glommio");
                    return;
                }
            },
        };
        if let Err(error) = file.read_at(0, 8).await {
            tracing::warn!(%error, "eventfd read through glommio failed");
        }
        // Put it back unless a concurrent wait() already did (wait takes &self).
        let mut slot = self.file.borrow_mut();
        if slot.is_none() {
            *slot = Some(file);
        }
    }

    fn glommio_file(&self) -> io::Result<BufferedFile> {
        let dup = self.eventfd.try_clone()?;
        // SAFETY: glommio takes ownership of the dup'd fd and closes it on drop.
        Ok(unsafe { BufferedFile::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(dup)) })
    }
}
