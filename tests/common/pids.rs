//! Bounded waiting, free loopback ports, and processes found and ended by
//! pid and an environment mark. Shared by the test harness (`common`) and
//! the benchmark driver, which includes this file by path
//! (benches/daemon/main.rs), so it uses nothing else of either.
//!
//! Every process the harness or the driver starts carries a variable
//! `NAME=VALUE` in its environment, inherited by its children (dhisd's log
//! engine, the C dhid after it detaches, hooks). A pid is signalled only
//! after `/proc/PID/environ` shows the mark, which also guards against a
//! reused pid.

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The port an installed dhisd may hold; nothing of ours ever uses it.
pub const FORBIDDEN_PORT: u16 = 58800;

const POLL: Duration = Duration::from_millis(5);

/// Calls `cond` every `poll` until it returns true or `timeout` has passed;
/// returns its last answer. Bounded in time and in the number of calls.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let poll = poll.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    let max_calls = (timeout.as_millis() / poll.as_millis()).saturating_add(2);
    let mut calls = 0u128;
    loop {
        if cond() {
            return true;
        }
        calls += 1;
        let now = Instant::now();
        if now >= deadline || calls >= max_calls {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Ports already handed out by this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port on 127.0.0.1 chosen by the OS, free at the time of the call
/// there and on the wildcard address (dhisd and dhid bind `0.0.0.0`),
/// never [`FORBIDDEN_PORT`] and never handed out before by this process.
pub fn free_udp_port() -> Result<u16, String> {
    const ATTEMPTS: usize = 500;
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = guard.get_or_insert_with(HashSet::new);
    for _ in 0..ATTEMPTS {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
        let Ok(port) = socket.local_addr().map(|a| a.port()) else {
            continue;
        };
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
    Err(format!("no new free UDP port after {ATTEMPTS} attempts"))
}

/// True while `pid` exists and is not a zombie (a detached daemon's zombie
/// may linger under an init that does not reap).
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

/// The environment variable that marks a program's processes.
pub struct Mark(pub &'static str);

impl Mark {
    /// True when `pid` carries this mark with `value`.
    pub fn on(&self, pid: i32, value: &str) -> bool {
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let want = format!("{}={value}", self.0);
        env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
    }

    /// Live processes (not zombies) marked with `value`, other than this one.
    pub fn pids(&self, value: &str) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && self.on(pid, value) && is_alive(pid))
            .collect()
    }

    /// Sends `sig` to `pid` if it is alive and marked with `value`; true if
    /// sent.
    pub fn signal(&self, pid: i32, value: &str, sig: Signal) -> bool {
        is_alive(pid) && self.on(pid, value) && kill(Pid::from_raw(pid), sig).is_ok()
    }

    /// Ends `pid` if it is marked with `value`: SIGTERM, then SIGKILL after
    /// `grace`. True when it is gone (or was never ours).
    pub fn end(&self, pid: i32, value: &str, grace: Duration) -> bool {
        if !self.signal(pid, value, Signal::SIGTERM) {
            return !is_alive(pid) || !self.on(pid, value);
        }
        if wait_until(grace, POLL, || !is_alive(pid)) {
            return true;
        }
        self.signal(pid, value, Signal::SIGKILL);
        wait_until(Duration::from_secs(2), POLL, || !is_alive(pid))
    }
}
