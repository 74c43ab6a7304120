//! Finding and ending the harness's own processes, by pid.
//!
//! Every process the harness spawns gets the environment variable
//! [`TAG_VAR`] set to a value unique to its handle (the handle's temporary
//! directory). Children inherit it (dhisd's log engine, dhid's hooks), so
//! `/proc/PID/environ` tells, for any pid, whether it is ours. A pid is
//! signalled only after that check, which also guards against pid reuse.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::wait_until;

/// The environment variable that marks the harness's processes.
pub const TAG_VAR: &str = "DHID_TEST_INSTANCE";

const POLL: Duration = Duration::from_millis(10);

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X" | "x")
}

/// True when `pid` carries our tag `tag` in its environment.
pub fn has_tag(pid: i32, tag: &str) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{TAG_VAR}={tag}");
    env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Live processes (not zombies) tagged `tag`, other than this one.
pub fn tagged_pids(tag: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && has_tag(pid, tag) && is_alive(pid))
        .collect()
}

/// Sends `sig` to `pid` if it is alive and tagged `tag`; true if sent.
pub fn signal_tagged(pid: i32, tag: &str, sig: Signal) -> bool {
    is_alive(pid) && has_tag(pid, tag) && kill(Pid::from_raw(pid), sig).is_ok()
}

/// Waits until `pid` is gone or a zombie; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    wait_until(timeout, POLL, || !is_alive(pid))
}

/// Ends `pid` (if tagged `tag`): SIGTERM, then SIGKILL after `grace`.
/// True when it is gone.
pub fn end_pid(pid: i32, tag: &str, grace: Duration) -> bool {
    if !signal_tagged(pid, tag, Signal::SIGTERM) {
        return !is_alive(pid) || !has_tag(pid, tag);
    }
    if wait_gone(pid, grace) {
        return true;
    }
    signal_tagged(pid, tag, Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(2))
}

/// Ends every live process tagged `tag`: SIGTERM, SIGKILL after `grace`.
/// Returns the pids still alive afterwards (normally none).
pub fn end_tagged(tag: &str, grace: Duration) -> Vec<i32> {
    let pids = tagged_pids(tag);
    if pids.is_empty() {
        return pids;
    }
    for &pid in &pids {
        signal_tagged(pid, tag, Signal::SIGTERM);
    }
    if wait_until(grace, POLL, || tagged_pids(tag).is_empty()) {
        return Vec::new();
    }
    // Bounded: a few rounds in case a dying parent had just forked.
    for _ in 0..3 {
        let left = tagged_pids(tag);
        if left.is_empty() {
            break;
        }
        for &pid in &left {
            signal_tagged(pid, tag, Signal::SIGKILL);
        }
        wait_until(Duration::from_secs(1), POLL, || tagged_pids(tag).is_empty());
    }
    tagged_pids(tag)
}
