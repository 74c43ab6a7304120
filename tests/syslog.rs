//! A detached dhid logs to syslog: ident dhid, facility daemon, its own
//! pid. These machines have no /dev/log, so each test runs dhid in a
//! private mount namespace whose /run (and so /var/run/syslog) is the
//! test's own directory, where the test listens.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::conf::conf_password;
use common::tmp::TempDir;
use dhid::testserver::{Config, TestServer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SHORT: Duration = Duration::from_secs(10);

/// Run dhid (detaching) with `dir` mounted on /run, in a mount namespace
/// of its own.
fn run_with_syslog(dir: &TempDir, args: &[&str]) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /run && exec \"$@\"")
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_dhid"))
        .args(args)
        .env("DHID_TEST_INSTANCE", dir.path())
        .output()
        .expect("unshare runs")
}

struct Sink(UnixDatagram);

impl Sink {
    fn bind(dir: &TempDir) -> Sink {
        let socket = UnixDatagram::bind(dir.join("syslog")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Sink(socket)
    }

    /// Every line received until `needle` shows up (or the time is out).
    fn until(&self, needle: &str, lines: &mut Vec<String>) -> bool {
        let deadline = Instant::now() + SHORT;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.0.recv(&mut buf) {
                lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if lines.last().unwrap().contains(needle) {
                    return true;
                }
            }
        }
        false
    }
}

#[test]
fn config_errors_reach_syslog_and_stderr() {
    let dir = TempDir::new("syslog-err");
    let sink = Sink::bind(&dir);
    let conf = dir.write_mode("dhid.conf", "{\nHostID abc\n}\n", 0o600);
    let out = run_with_syslog(&dir, &["-f", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", conf.display())),
        "{stderr}"
    );

    let mut lines = Vec::new();
    assert!(
        sink.until(&format!("{}:2:", conf.display()), &mut lines),
        "{lines:?}"
    );
    // <27>: facility daemon (3), priority err (3).
    assert!(lines.last().unwrap().starts_with("<27>"), "{lines:?}");
    assert!(lines.last().unwrap().contains("dhid["), "{lines:?}");
}

#[test]
fn a_detached_dhid_logs_its_life_to_syslog() {
    let server = TestServer::start(Config::default().password(42, "pw")).unwrap();
    let dir = TempDir::new("syslog-run");
    let sink = Sink::bind(&dir);
    let conf = conf_password(42, "pw", server.local_port(), &[]);
    let conf_path = dir.write_mode("dhid.conf", &conf, 0o600);
    let pidfile = dir.join("dhid.pid");
    let port = common::free_udp_port().to_string();
    let out = run_with_syslog(
        &dir,
        &[
            "-f",
            conf_path.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "-p",
            &port,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = Arc::new(Guard(pid));

    let mut lines = Vec::new();
    assert!(sink.until("[42] -> Online", &mut lines), "{lines:?}");
    let started = lines
        .iter()
        .find(|l| l.contains("daemon started"))
        .expect("daemon started");
    // <30>: daemon, info; the daemon's own pid, not the launcher's.
    assert!(started.starts_with("<30>"), "{started}");
    assert!(started.contains(&format!("dhid[{pid}]")), "{started}");

    kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    assert!(sink.until("-> Offline (USR2)", &mut lines), "{lines:?}");
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(sink.until("daemon exiting", &mut lines), "{lines:?}");
    assert!(common::procs::wait_gone(pid, SHORT));
    assert!(!pidfile.exists());
}

struct Guard(i32);

impl Drop for Guard {
    fn drop(&mut self) {
        if common::procs::is_alive(self.0) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}
