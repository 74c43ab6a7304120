//! The driver's own processes, found and ended by pid.
//!
//! Every process the driver starts carries `DHID_BENCH_TAG=<tag>` in its
//! environment, and so do their children (the C dhid after it detaches,
//! dhisd's log engine). A pid is signalled only after /proc/PID/environ
//! shows the tag, which also guards against a reused pid. scripts/bench
//! sweeps the same tag when the driver dies.

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const TAG_VAR: &str = "DHID_BENCH_TAG";

/// A packaged dhisd may listen there; nothing of ours ever uses it.
pub const FORBIDDEN_PORT: u16 = 58800;

/// Calls `cond` every `poll` until it is true or `timeout` has passed;
/// returns its last answer. Bounded in time and in the number of calls.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let poll = poll.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    let max_calls = (timeout.as_millis() / poll.as_millis()).saturating_add(2);
    for _ in 0..max_calls {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
    cond()
}

/// True while `pid` exists and is not a zombie (a detached daemon's zombie
/// may linger under an init that does not reap).
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X" | "x")
}

pub fn has_tag(pid: i32, tag: &str) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{TAG_VAR}={tag}");
    env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Sends `sig` to `pid` if it is alive and ours; true if sent.
pub fn signal(pid: i32, tag: &str, sig: Signal) -> bool {
    is_alive(pid) && has_tag(pid, tag) && kill(Pid::from_raw(pid), sig).is_ok()
}

/// SIGTERM, then SIGKILL after `grace`; true when it is gone.
pub fn end(pid: i32, tag: &str, grace: Duration) -> bool {
    if !signal(pid, tag, Signal::SIGTERM) {
        return !is_alive(pid) || !has_tag(pid, tag);
    }
    let poll = Duration::from_millis(5);
    if wait_until(grace, poll, || !is_alive(pid)) {
        return true;
    }
    signal(pid, tag, Signal::SIGKILL);
    wait_until(Duration::from_secs(2), poll, || !is_alive(pid))
}

/// Live processes carrying `tag`, other than this one.
pub fn tagged_pids(tag: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && has_tag(pid, tag) && is_alive(pid))
        .collect()
}

/// Ends every process still carrying `tag`; returns the ones left.
pub fn sweep(tag: &str) -> Vec<i32> {
    // Bounded: a dying parent may just have forked.
    for _ in 0..3 {
        let pids = tagged_pids(tag);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            end(pid, tag, Duration::from_secs(1));
        }
    }
    tagged_pids(tag)
}

/// The parent pid of `pid`, from /proc/PID/stat.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port the OS calls free on 127.0.0.1 and on the wildcard address
/// (dhisd and both dhids bind 0.0.0.0), never 58800, never handed out
/// before by this process.
pub fn free_udp_port() -> Result<u16, String> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = guard.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let port = socket.local_addr().map_err(|e| e.to_string())?.port();
        drop(socket);
        if port == FORBIDDEN_PORT || handed.contains(&port) {
            continue;
        }
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_err() {
            continue;
        }
        handed.insert(port);
        return Ok(port);
    }
    Err("no free UDP port after 500 attempts".into())
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
