//! The driver's own processes, found and ended by pid.
//!
//! Every process the driver starts carries `DHID_BENCH_TAG=<tag>` in its
//! environment, and so do their children (the C dhid after it detaches,
//! dhisd's log engine). A pid is signalled only after /proc/PID/environ
//! shows the tag, which also guards against a reused pid. scripts/bench
//! sweeps the same tag when the driver dies.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::pids::Mark;
pub use crate::pids::{free_udp_port, is_alive, wait_until};

pub const TAG_VAR: &str = "DHID_BENCH_TAG";

pub const MARK: Mark = Mark(TAG_VAR);

/// Ends every process still carrying `tag`; returns the ones left.
pub fn sweep(tag: &str) -> Vec<i32> {
    // Bounded: a dying parent may just have forked.
    for _ in 0..3 {
        let pids = MARK.pids(tag);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            MARK.end(pid, tag, Duration::from_secs(1));
        }
    }
    MARK.pids(tag)
}

/// The parent pid of `pid`, from /proc/PID/stat.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of one process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// VmRSS: every resident page, shared libc and binary pages included.
    pub rss: u64,
    /// RssAnon: heap, stacks and other private anonymous pages.
    pub anon: u64,
    /// Pss: resident pages, each shared one divided by its sharers.
    pub pss: u64,
}

fn field_kb(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

pub fn memory(pid: i32) -> Result<Memory, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let rollup =
        fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map_err(|e| e.to_string())?;
    let get = |text: &str, name: &str| {
        field_kb(text, name).ok_or_else(|| format!("/proc/{pid}: no {name}"))
    };
    Ok(Memory {
        rss: get(&status, "VmRSS:")?,
        anon: get(&status, "RssAnon:")?,
        pss: get(&rollup, "Pss:")?,
    })
}

/// (voluntary, involuntary) context switches summed over every thread:
/// a voluntary one is the process going to sleep, i.e. one wake-up later.
pub fn context_switches(pid: i32) -> Result<(u64, u64), String> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let (mut voluntary, mut involuntary) = (0, 0);
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue; // a thread that just ended
        };
        voluntary += field_kb(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        involuntary += field_kb(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Ok((voluntary, involuntary))
}

/// The number of threads of `pid`.
pub fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
