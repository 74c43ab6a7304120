//! The programs measured and the servers they talk to: our dhid, the C
//! dhid 5.5, the real dhisd 5.3; and the configuration text they read.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::capture::wall_ns;
use crate::procs::{self, TAG_VAR};

pub const DHISD: &str = "/usr/sbin/dhisd";
pub const LOG_ENGINE: &str = "/usr/lib/dhis-server/dhis-dummy-log-engine";
const POLL: Duration = Duration::from_millis(2);
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Ours,
    C,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Ours => "dhid (Rust)",
            Which::C => "C dhid 5.5",
        }
    }
}

/// A QRC key pair, decimal.
#[derive(Clone, Debug)]
pub struct Keys {
    pub p: String,
    pub q: String,
    pub n: String,
}

#[derive(Clone, Debug)]
pub enum Auth {
    /// Lower case only: the C dhid lower-cases every line it reads.
    Password(String),
    Qrc(Keys),
}

#[derive(Clone, Debug)]
pub struct Host {
    pub hostid: u32,
    pub auth: Auth,
}

impl Host {
    pub fn password(hostid: u32) -> Host {
        Host {
            hostid,
            auth: Auth::Password(format!("pw{hostid}")),
        }
    }
}

fn chunks(keyword: &str, digits: &str, out: &mut String) {
    for c in digits.as_bytes().chunks(50) {
        let _ = writeln!(out, "{keyword} {}", String::from_utf8_lossy(c));
    }
}

/// dhid.conf for both programs: the C dhid needs the server as
/// `127.0.0.1:PORT`, and reads `Refresh` as ours does.
pub fn dhid_conf(hosts: &[Host], server_port: u16, refresh: u32) -> String {
    let mut s = String::with_capacity(hosts.len() * 80);
    for h in hosts {
        let _ = writeln!(s, "{{\nHostID {}", h.hostid);
        match &h.auth {
            Auth::Password(p) => {
                let _ = writeln!(s, "HostPass {p}");
            }
            Auth::Qrc(k) => {
                chunks("AuthP", &k.p, &mut s);
                chunks("AuthQ", &k.q, &mut s);
            }
        }
        let _ = writeln!(s, "ISAddr 127.0.0.1:{server_port}\nRefresh {refresh}\n}}");
    }
    s
}

/// dhis.db for the real dhisd: AuthN left-padded to 200 digits in four
/// lines of 50, as dhisd reads it.
pub fn dhis_db(hosts: &[Host]) -> String {
    let mut s = String::new();
    for h in hosts {
        let _ = writeln!(s, "{} {{", h.hostid);
        match &h.auth {
            Auth::Password(p) => {
                let _ = writeln!(s, "HostPass {p}");
            }
            Auth::Qrc(k) => chunks("AuthN", &format!("{:0>200}", k.n), &mut s),
        }
        s.push_str("}\n");
    }
    s
}

pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    // Our dhid warns about a world-readable file holding secrets.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A running dhid of either kind.
pub struct Running {
    pub which: Which,
    pub pid: i32,
    /// Wall clock and monotonic clock read just before the spawn.
    pub spawned_ns: u64,
    pub spawned: Instant,
    /// Our dhid stays our child; the C dhid detaches.
    child: Option<Child>,
    tag: String,
    stderr: PathBuf,
}

impl Running {
    /// Starts `binary` with `conf` on `port` in `dir`. Ours runs in the
    /// foreground (`-F`) with its log in a file; the C dhid always
    /// detaches, so its pid comes from its pid file.
    pub fn start(
        which: Which,
        binary: &Path,
        conf: &Path,
        port: u16,
        dir: &Path,
        tag: &str,
    ) -> Result<Running, String> {
        let pidfile = dir.join(format!("dhid-{port}.pid"));
        let stderr = dir.join(format!("dhid-{port}.err"));
        let err = File::create(&stderr).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary);
        if which == Which::Ours {
            cmd.arg("-F");
        }
        cmd.arg("-f")
            .arg(conf)
            .arg("-p")
            .arg(port.to_string())
            .arg("-P")
            .arg(&pidfile)
            .env(TAG_VAR, tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let spawned_ns = wall_ns();
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut running = Running {
            which,
            pid: child.id() as i32,
            spawned_ns,
            spawned,
            child: None,
            tag: tag.to_string(),
            stderr,
        };
        if which == Which::Ours {
            running.child = Some(child);
            return Ok(running);
        }
        // The C dhid's launcher exits once the daemon has forked.
        let exited = procs::wait_until(START_TIMEOUT, POLL, || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the C dhid did not detach".into());
        }
        let mut pid = None;
        procs::wait_until(START_TIMEOUT, POLL, || {
            pid = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|&p| procs::is_alive(p) && procs::MARK.on(p, tag));
            pid.is_some()
        });
        running.pid = pid.ok_or("the C dhid wrote no pid file of a live process")?;
        Ok(running)
    }

    pub fn signal(&self, sig: Signal) -> Result<(), String> {
        if procs::MARK.signal(self.pid, &self.tag, sig) {
            Ok(())
        } else {
            Err(format!(
                "{}: cannot send {sig} to pid {}",
                self.which.name(),
                self.pid
            ))
        }
    }

    /// The last lines of its log (ours only: the C dhid logs to syslog),
    /// for error messages.
    pub fn log_tail(&self) -> String {
        let log = procs::read_lossy(&self.stderr);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    pub fn is_alive(&self) -> bool {
        procs::is_alive(self.pid)
    }

    /// SIGTERM, SIGKILL after 5 s (ours sends its OFFLINE_REQ copies for
    /// 600 ms first).
    pub fn stop(&mut self) {
        procs::MARK.end(self.pid, &self.tag, Duration::from_secs(5));
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real dhisd 5.3 on a free port with its own files; stopped on drop.
pub struct Dhisd {
    pub port: u16,
    pid: i32,
    tag: String,
}

/// Why the real dhisd cannot run here, if it cannot.
pub fn dhisd_unavailable() -> Option<String> {
    for f in [DHISD, LOG_ENGINE] {
        if !Path::new(f).is_file() {
            return Some(format!("{f} is missing (package dhis-server)"));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("dhisd runs as root only".into());
    }
    None
}

impl Dhisd {
    pub fn start(hosts: &[Host], dir: &Path, tag: &str) -> Result<Dhisd, String> {
        let mut errors = Vec::new();
        // A port taken between choosing and binding makes dhisd exit.
        for attempt in 0..3 {
            let port = procs::free_udp_port()?;
            let sub = dir.join(format!("dhisd-{port}"));
            fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
            match Dhisd::launch(hosts, &sub, port, tag) {
                Ok(pid) => {
                    return Ok(Dhisd {
                        port,
                        pid,
                        tag: tag.to_string(),
                    });
                }
                Err(e) => errors.push(format!("attempt {attempt}, port {port}: {e}")),
            }
        }
        Err(format!("dhisd did not start: {}", errors.join("; ")))
    }

    fn launch(hosts: &[Host], dir: &Path, port: u16, tag: &str) -> Result<i32, String> {
        let db = dir.join("dhis.db");
        write_private(&db, &dhis_db(hosts))?;
        let services = dir.join("services");
        fs::write(&services, format!("log 1 {LOG_ENGINE}\n")).map_err(|e| e.to_string())?;
        let (log, pidfile) = (dir.join("dhisd.log"), dir.join("dhisd.pid"));
        let out = File::create(dir.join("dhisd.out")).map_err(|e| e.to_string())?;
        let mut launcher = Command::new(DHISD)
            .arg("-p")
            .arg(port.to_string())
            .arg("-d")
            .arg(&db)
            .arg("-s")
            .arg(&services)
            .arg("-l")
            .arg(&log)
            .arg("-P")
            .arg(&pidfile)
            // The log engine makes its own file with `mktemp -t`.
            .env("TMPDIR", dir)
            .env(TAG_VAR, tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot run {DHISD}: {e}"))?;
        let exited = procs::wait_until(START_TIMEOUT, POLL, || {
            matches!(launcher.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = launcher.kill();
            let _ = launcher.wait();
            return Err("dhisd did not detach".into());
        }
        let mut pid = None;
        procs::wait_until(START_TIMEOUT, Duration::from_millis(10), || {
            pid = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|&p| {
                    procs::is_alive(p)
                        && procs::read_lossy(&log)
                            .contains(&format!("Datagram Server Started [{p}]"))
                });
            pid.is_some()
        });
        pid.ok_or_else(|| format!("no start line in {}", log.display()))
    }

    pub fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        let pid = std::mem::take(&mut self.pid);
        // Its log engine is its child; after a SIGKILL of dhisd it would
        // spin on EOF, so end what is left of it by pid.
        let engines: Vec<i32> = procs::MARK
            .pids(&self.tag)
            .into_iter()
            .filter(|&p| procs::parent(p) == Some(pid))
            .collect();
        procs::MARK.end(pid, &self.tag, Duration::from_secs(5));
        for engine in engines {
            let gone = procs::wait_until(Duration::from_secs(1), POLL, || !procs::is_alive(engine));
            if !gone {
                procs::MARK.end(engine, &self.tag, Duration::from_secs(1));
            }
        }
    }
}

impl Drop for Dhisd {
    fn drop(&mut self) {
        self.stop();
    }
}
