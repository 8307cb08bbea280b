//! The allocator trim a shard calls after TLS handshakes ended (`shard::edge::set_memory_trim`):
//! a purge of the calling thread's jemalloc arena, so the pages a connection burst's handshakes
//! freed leave RSS now instead of after the 5 s dirty decay (`malloc_conf` in `main.rs`).

use std::ffi::{c_uint, c_void};
use std::ptr;

use tikv_jemalloc_sys::{mallctl, mallctlbymib, mallctlnametomib};

/// Returns the dirty pages of the calling thread's arena to the kernel (`arena.<i>.purge`, i from
/// `thread.arena`). Only that arena: a shard's thread has its own (jemalloc gives threads arenas
/// round-robin, four per CPU), so the purge touches no other shard's memory and takes only that
/// arena's lock, which no other thread normally holds. A failed call leaves the memory to the
/// decay; there is nothing else to do about it.
pub fn purge_thread_arena() {
    let Some(arena) = thread_arena() else {
        return;
    };
    // `arena.<i>.purge` by MIB: the name's middle component replaced by the arena index, so no
    // string is formatted (nor allocated) per call.
    let mut mib = [0usize; 3];
    let mut mib_len = mib.len();
    // SAFETY: writes at most `mib_len` components into `mib`.
    let rc = unsafe { mallctlnametomib(c"arena.0.purge".as_ptr(), mib.as_mut_ptr(), &mut mib_len) };
    if rc != 0 || mib_len != mib.len() {
        return;
    }
    mib[1] = arena as usize;
    // SAFETY: `arena.<i>.purge` takes and returns nothing.
    let _ = unsafe {
        mallctlbymib(
            mib.as_ptr(),
            mib_len,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    };
}

/// The calling thread's arena index (`thread.arena`), if jemalloc answers.
fn thread_arena() -> Option<c_uint> {
    let mut arena: c_uint = 0;
    let mut len = std::mem::size_of::<c_uint>();
    // SAFETY: `thread.arena` reads an unsigned into `arena`, whose size `len` gives.
    let rc = unsafe {
        mallctl(
            c"thread.arena".as_ptr(),
            (&raw mut arena).cast::<c_void>(),
            &mut len,
            ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(arena)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The purge runs against the live allocator (the test binary is built from `main.rs`, so
    /// jemalloc is its global allocator too): the thread has an arena and the purge returns.
    #[test]
    fn purge_finds_the_thread_arena() {
        assert!(thread_arena().is_some());
        purge_thread_arena();
    }
}
