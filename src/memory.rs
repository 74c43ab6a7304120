//! Keep the resident set to the code dhid really runs.
//!
//! The kernel maps code in 64 KiB windows around each page fault, so a
//! long-lived daemon holds nearly all of its binary and of libc resident
//! although its loop runs a few pages of each. Once start-up is done, the
//! code mappings are told "random access" (no fault-around) and their
//! pages are dropped; the loop faults back in only the pages it uses. The
//! pages stay in the page cache: this costs a few page faults, never I/O.

use std::ptr::NonNull;

use log::debug;
use nix::sys::mman::{MmapAdvise, madvise};

/// Executable, read-only mappings: text pages are never written (position
/// independent code), so dropping them loses nothing.
fn code_mappings(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if perms != "r-xp" {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            // Leave the vDSO and vsyscall pages alone: they are not files.
            let path = fields.nth(3).unwrap_or("");
            path.starts_with('/').then_some((start, end - start))
        })
        .collect()
}

/// Give the heap's free pages back to the system. Loading the
/// configuration leaves many small blocks freed between the ones the
/// records keep; glibc returns only the top of the heap by itself.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory that is free; it is safe
    // to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn trim_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, len) in code_mappings(&maps) {
        let Some(addr) = NonNull::new(start as *mut std::ffi::c_void) else {
            continue;
        };
        for advice in [MmapAdvise::MADV_RANDOM, MmapAdvise::MADV_DONTNEED] {
            // SAFETY: the range is a whole private, read-only, file-backed
            // code mapping of this process. Neither advice changes what
            // the memory holds: dropped pages are read back from the same
            // file on the next access.
            #[allow(unsafe_code)]
            let result = unsafe { madvise(addr, len, advice) };
            if let Err(e) = result {
                debug!("madvise {advice:?} on {start:#x}+{len:#x}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::code_mappings;

    #[test]
    fn only_file_backed_code_is_picked() {
        let maps = "\
55d0c0000000-55d0c0010000 r--p 00000000 fe:01 123 /usr/sbin/dhid
55d0c0010000-55d0c0100000 r-xp 00010000 fe:01 123 /usr/sbin/dhid
55d0c0100000-55d0c0110000 rw-p 00100000 fe:01 123 /usr/sbin/dhid
7ffd0c000000-7ffd0c002000 r-xp 00000000 00:00 0 [vdso]
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
";
        assert_eq!(code_mappings(maps), [(0x55d0c0010000, 0xf0000)]);
    }
}
