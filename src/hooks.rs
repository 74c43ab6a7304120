//! OnCmd and OffCmd: run as the C dhid ran them, `/bin/sh -c "<program>
//! <hostid> <address> <rest of the line>"`, so shell syntax in old configs
//! keeps working. Unlike the C dhid the loop never waits for them: they
//! are reaped as they exit, and killed when they run too long.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use log::{debug, warn};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::config::Hook;
use crate::record::Time;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The shell's status for "command not found".
const NOT_FOUND: i32 = 127;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    On,
    Off,
}

impl Kind {
    fn keyword(self) -> &'static str {
        match self {
            Kind::On => "OnCmd",
            Kind::Off => "OffCmd",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Kind::On => "online",
            Kind::Off => "offline",
        }
    }
}

struct Running {
    child: Child,
    hostid: u32,
    kind: Kind,
    program: String,
    deadline: Time,
}

pub struct Hooks {
    running: Vec<Running>,
    timeout: Duration,
    /// (hostid, kind, program) already reported as missing or lower-cased.
    reported: HashSet<(u32, &'static str, String)>,
}

/// The facts a hook is run with.
pub struct Facts {
    pub hostid: u32,
    pub kind: Kind,
    pub address: Ipv4Addr,
    pub server: SocketAddrV4,
}

fn exists_as_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// The program a hook line names, as it will be run: as written, or, when
/// only that exists, lower-cased. The C dhid lower-cased whole config
/// lines, so an old config may name `/etc/dhid/OnLine.sh` for a file that
/// only works as `online.sh`. `None` when neither form is found.
pub fn find_program(program: &str) -> Option<String> {
    if exists_as_program(program) {
        return Some(program.to_string());
    }
    let lower = program.to_lowercase();
    (lower != program && exists_as_program(&lower)).then_some(lower)
}

/// What `run` starts: a missing program is still handed to the shell,
/// which reports it with status 127.
fn choose_program(program: &str) -> (String, bool) {
    // Only a name with capitals has a lower-case form to look for.
    if program.to_lowercase() == program {
        return (program.to_string(), false);
    }
    match find_program(program) {
        Some(found) => {
            let lowered = found != program;
            (found, lowered)
        }
        None => (program.to_string(), false),
    }
}

impl Hooks {
    pub fn new(timeout: Duration) -> Hooks {
        Hooks {
            running: Vec::new(),
            timeout,
            reported: HashSet::new(),
        }
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn next_deadline(&self) -> Option<Time> {
        self.running.iter().map(|r| r.deadline).min()
    }

    pub fn run(&mut self, hook: &Hook, facts: &Facts, now: Time) {
        let (program, lowered) = choose_program(&hook.program);
        let keyword = facts.kind.keyword();
        if lowered && self.report(facts.hostid, keyword, &hook.program) {
            warn!(
                "[{}] {keyword} {} not found; running {program}: fix line {} of the config",
                facts.hostid, hook.program, hook.line
            );
        }

        let mut line = format!("{program} {} {}", facts.hostid, facts.address);
        if !hook.rest.is_empty() {
            line.push(' ');
            line.push_str(&hook.rest);
        }
        match self.spawn(&line, facts) {
            Ok(child) => {
                debug!("[{}] {keyword} started, pid {}", facts.hostid, child.id());
                self.running.push(Running {
                    child,
                    hostid: facts.hostid,
                    kind: facts.kind,
                    program,
                    deadline: now.saturating_add(self.timeout),
                });
            }
            Err(e) => warn!("[{}] {keyword} could not start: {e}", facts.hostid),
        }
    }

    fn spawn(&self, line: &str, facts: &Facts) -> io::Result<Child> {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("DHID_EVENT", facts.kind.event())
            .env("DHID_HOSTID", facts.hostid.to_string())
            .env("DHID_ADDRESS", facts.address.to_string())
            .env("DHID_SERVER", facts.server.to_string())
            // Its own process group, so that a timeout kills what the
            // shell started too.
            .process_group(0)
            .spawn()
    }

    fn report(&mut self, hostid: u32, keyword: &'static str, program: &str) -> bool {
        self.reported.insert((hostid, keyword, program.to_string()))
    }

    /// Reap hooks that exited, kill those past their deadline.
    pub fn check(&mut self, now: Time) {
        let mut i = 0;
        while i < self.running.len() {
            if self.settle(i, now) {
                self.running.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn settle(&mut self, i: usize, now: Time) -> bool {
        let r = &mut self.running[i];
        let keyword = r.kind.keyword();
        match r.child.try_wait() {
            Ok(Some(status)) => {
                let (hostid, program) = (r.hostid, r.program.clone());
                if status.code() == Some(NOT_FOUND) && self.report(hostid, keyword, &program) {
                    warn!("[{hostid}] {keyword} {program}: command not found");
                } else if let Some(sig) = status.signal() {
                    debug!("[{hostid}] {keyword} killed by signal {sig}");
                }
                true
            }
            Ok(None) if r.deadline <= now => {
                kill(&mut r.child);
                warn!(
                    "[{}] {keyword} still running after {:?}, killed",
                    r.hostid, self.timeout
                );
                true
            }
            Ok(None) => false,
            Err(e) => {
                warn!("[{}] {keyword} lost: {e}", r.hostid);
                true
            }
        }
    }

    /// Kill every hook still running (exit after the wait for them).
    pub fn kill_all(&mut self) {
        for r in &mut self.running {
            kill(&mut r.child);
            warn!(
                "[{}] {} still running at exit, killed",
                r.hostid,
                r.kind.keyword()
            );
        }
        self.running.clear();
    }
}

/// Kill a hook with everything it started (its own process group), and
/// reap it.
fn kill(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}
