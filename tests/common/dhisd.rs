//! The real dhisd 5.3 (Debian package dhis-server), one per test, on a free
//! port with its own files (PROTOCOL.md 0.1 and 8).
//!
//! dhisd detaches at once and reports host state only in its log file:
//! `<ctime> : -> online HOSTID [a.b.c.d]`, `-> offline ...`, `-> update ...`
//! and `Datagram Server Started [pid]` at each start. A restart appends to
//! the same log, so [`Dhisd::log`] shows every run; the state queries
//! ([`Dhisd::online`] and friends) read only the current run, because a
//! SIGTERM marks hosts offline without logging it.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::conf::db_text;
use super::procs::{self, TAG_VAR};
use super::tmp::TempDir;
use super::{FORBIDDEN_PORT, free_udp_port, wait_until};

pub const DHISD: &str = "/usr/sbin/dhisd";
pub const LOG_ENGINE: &str = "/usr/lib/dhis-server/dhis-dummy-log-engine";

/// How long a start or a stop may take.
const START_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// Fresh ports tried when dhisd dies at once (port taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// One host of dhis.db.
#[derive(Clone, Debug)]
pub enum DbHost {
    /// `HostPass pass`.
    Password { hostid: u32, pass: String },
    /// Four `AuthN` lines; `n` is decimal, at most 200 digits.
    Qrc { hostid: u32, n: String },
}

impl DbHost {
    pub fn password(hostid: u32, pass: &str) -> DbHost {
        DbHost::Password {
            hostid,
            pass: pass.to_string(),
        }
    }

    pub fn qrc(hostid: u32, n: &str) -> DbHost {
        DbHost::Qrc {
            hostid,
            n: n.to_string(),
        }
    }
}

/// Why dhisd cannot run here, or `None` when it can.
fn unavailable() -> Option<String> {
    if !Path::new(DHISD).is_file() {
        return Some(format!("{DHISD} is missing (package dhis-server)"));
    }
    if !Path::new(LOG_ENGINE).is_file() {
        return Some(format!("{LOG_ENGINE} is missing (package dhis-server)"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("dhisd must run as root and we are not root".to_string());
    }
    None
}

/// True when the real dhisd is installed and we are root.
pub fn dhisd_available() -> bool {
    unavailable().is_none()
}

pub(crate) fn unavailable_reason() -> String {
    unavailable().unwrap_or_else(|| "available".to_string())
}

/// A running real dhisd; stopped (with its log engine) on drop.
pub struct Dhisd {
    port: u16,
    pid: Option<i32>,
    tag: String,
    db: PathBuf,
    services: PathBuf,
    logfile: PathBuf,
    pidfile: PathBuf,
    outfile: PathBuf,
    // Last field: removed after `Drop::drop` has stopped the processes.
    dir: TempDir,
}

impl Dhisd {
    /// Starts dhisd on a free port with `hosts` in its database; panics with
    /// the reason when it does not come up within 5 s.
    pub fn start(hosts: &[DbHost]) -> Dhisd {
        let dir = TempDir::new("dhisd");
        let tag = dir.path().display().to_string();
        let mut d = Dhisd {
            port: 0,
            pid: None,
            tag,
            db: dir.write("dhis.db", &db_text(hosts)),
            services: dir.write("services", &format!("log 1 {LOG_ENGINE}\n")),
            logfile: dir.join("dhisd.log"),
            pidfile: dir.join("dhisd.pid"),
            outfile: dir.join("dhisd.out"),
            dir,
        };
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            d.port = free_udp_port();
            match d.launch() {
                Ok(pid) => {
                    d.pid = Some(pid);
                    return d;
                }
                Err(e) => errors.push(format!("port {}: {e}", d.port)),
            }
        }
        panic!("dhisd did not start: {}", errors.join("; "));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pid of the running dhisd; panics when it is stopped.
    pub fn pid(&self) -> i32 {
        self.pid.expect("dhisd is not running")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_path(&self) -> &Path {
        &self.db
    }

    pub fn log_path(&self) -> &Path {
        &self.logfile
    }

    /// True while the dhisd process is alive.
    pub fn is_running(&self) -> bool {
        self.pid
            .is_some_and(|p| procs::is_alive(p) && procs::MARK.on(p, &self.tag))
    }

    /// The whole log file, every run since [`Dhisd::start`].
    pub fn log(&self) -> String {
        fs::read(&self.logfile)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log of the current run: from the last `Datagram Server Started
    /// [pid]` line of the running process on (empty when stopped).
    pub fn run_log(&self) -> String {
        let Some(pid) = self.pid else {
            return String::new();
        };
        let log = self.log();
        let mark = format!("Datagram Server Started [{pid}]");
        match log.rfind(&mark) {
            Some(i) => log[log[..i].rfind('\n').map_or(0, |n| n + 1)..].to_string(),
            None => String::new(),
        }
    }

    /// Lines of the whole log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Lines of the current run's log containing `needle`.
    pub fn count_run_log(&self, needle: &str) -> usize {
        self.run_log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the whole log (all runs) contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || self.log().contains(needle))
    }

    /// Waits until at least `n` lines of the whole log contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || self.count_log(needle) >= n)
    }

    /// Waits until the current run's log contains `needle`.
    pub fn wait_run_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || self.run_log().contains(needle))
    }

    /// True when the last transition of `hostid` in the current run is
    /// `-> online` (or `-> update`, an address change while online).
    pub fn online(&self, hostid: u32) -> bool {
        let id = hostid.to_string();
        let mut state = false;
        for line in self.run_log().lines() {
            let Some(i) = line.find("-> ") else { continue };
            let mut words = line[i + 3..].split_whitespace();
            let (Some(what), Some(who)) = (words.next(), words.next()) else {
                continue;
            };
            if who != id {
                continue;
            }
            match what {
                "online" | "update" => state = true,
                "offline" => state = false,
                _ => {}
            }
        }
        state
    }

    /// Waits until [`Dhisd::online`] is true for `hostid`.
    pub fn wait_online(&self, hostid: u32, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || self.online(hostid))
    }

    /// Waits until [`Dhisd::online`] is false for `hostid` (true at once for
    /// a host that never went online in this run; to see an offline event
    /// use `wait_log_count("-> offline ID", n, ..)`).
    pub fn wait_offline(&self, hostid: u32, timeout: Duration) -> bool {
        wait_until(timeout, POLL, || !self.online(hostid))
    }

    /// Sends `sig` to the running dhisd (e.g. SIGHUP to reload the DB).
    pub fn signal(&self, sig: Signal) {
        let pid = self.pid();
        assert!(
            procs::MARK.signal(pid, &self.tag, sig),
            "cannot send {sig} to dhisd {pid}"
        );
    }

    /// Rewrites dhis.db with `hosts`; follow with [`Dhisd::reload`].
    pub fn rewrite_db(&self, hosts: &[DbHost]) {
        self.dir.write("dhis.db", &db_text(hosts));
    }

    /// SIGHUP: dhisd reloads dhis.db.
    pub fn reload(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// SIGTERM, wait until the process is gone, start again on the same port
    /// with the same files; the log keeps the old runs.
    pub fn restart(&mut self) {
        self.stop();
        match self.launch() {
            Ok(pid) => self.pid = Some(pid),
            Err(e) => panic!("dhisd did not restart on port {}: {e}", self.port),
        }
    }

    /// SIGTERM (SIGKILL after 5 s), then ends what is left of this
    /// instance (its log engine). Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            if !procs::MARK.end(pid, &self.tag, STOP_TIMEOUT) {
                eprintln!("warning: dhisd {pid} still alive after SIGKILL");
            }
        }
        // On SIGTERM dhisd tells its log engine to exit; after a SIGKILL the
        // engine would spin on EOF forever, so end it here in any case.
        let left = procs::end_tagged(&self.tag, Duration::from_secs(1));
        if !left.is_empty() {
            eprintln!("warning: processes of {} still alive: {left:?}", self.tag);
        }
    }

    /// Runs dhisd once and waits for its pid file and its start line.
    fn launch(&self) -> Result<i32, String> {
        assert_ne!(self.port, FORBIDDEN_PORT);
        let _ = fs::remove_file(&self.pidfile);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.outfile)
            .map_err(|e| format!("cannot open {}: {e}", self.outfile.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut launcher = Command::new(DHISD)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(&self.db)
            .arg("-s")
            .arg(&self.services)
            .arg("-l")
            .arg(&self.logfile)
            .arg("-P")
            .arg(&self.pidfile)
            // The log engine makes its own log file with `mktemp -t`.
            .env("TMPDIR", self.dir.path())
            .env(TAG_VAR, &self.tag)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {DHISD}: {e}"))?;
        let t0 = Instant::now();
        // The launcher detaches at once; reap it.
        let mut exited = false;
        wait_until(START_TIMEOUT, Duration::from_millis(5), || {
            exited = matches!(launcher.try_wait(), Ok(Some(_)));
            exited
        });
        if !exited {
            let _ = launcher.kill();
            let _ = launcher.wait();
            return Err("dhisd did not detach".to_string());
        }
        let mut result = Err(String::new());
        wait_until(START_TIMEOUT.saturating_sub(t0.elapsed()), POLL, || {
            result = self.started();
            result.is_ok() || result.as_ref().is_err_and(|e| !e.is_empty())
        });
        match result {
            Ok(pid) => Ok(pid),
            Err(e) if e.is_empty() => {
                let _ = procs::end_tagged(&self.tag, Duration::from_secs(1));
                Err(format!(
                    "no pid file or start line after {START_TIMEOUT:?}{}",
                    self.output()
                ))
            }
            Err(e) => Err(format!("{e}{}", self.output())),
        }
    }

    /// `Ok(pid)` once up; `Err("")` while starting; `Err(why)` when dead.
    fn started(&self) -> Result<i32, String> {
        let pid = fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let line = format!("Datagram Server Started [{pid}]");
            if self.log().contains(&line) && procs::is_alive(pid) {
                return Ok(pid);
            }
        }
        if procs::MARK.pids(&self.tag).is_empty() {
            // Port taken, bad DB, no service line: dhisd exits silently.
            return Err("dhisd exited at once (port in use?)".to_string());
        }
        Err(String::new())
    }

    /// What the launcher printed, for error messages.
    fn output(&self) -> String {
        match fs::read_to_string(&self.outfile) {
            Ok(s) if !s.trim().is_empty() => format!("; dhisd printed: {}", s.trim()),
            _ => String::new(),
        }
    }
}

impl Drop for Dhisd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- dhisd log ({}) ---\n{}--- end ---",
                self.logfile.display(),
                self.log()
            );
        }
        self.stop();
    }
}
