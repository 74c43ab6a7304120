//! The command line, start-up and exit status of the dhid binary. None of
//! these needs a server: the records point at a loopback port nobody uses.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::conf::conf_password;
use common::dhid::Dhid;
use common::free_udp_port;
use common::tmp::TempDir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_dhid");
const SHORT: Duration = Duration::from_secs(10);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A private directory holding a `dhid.conf` of one password record whose
/// server is a loopback port nobody listens on.
fn lone_record(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let path = dir.write_mode(
        "dhid.conf",
        &conf_password(1, "pw", free_udp_port(), &[]),
        0o600,
    );
    (dir, path)
}

#[test]
fn help_prints_usage_and_succeeds() {
    let out = Dhid::run(&["-h"]);
    assert!(out.status.success());
    let usage = text(&out.stdout);
    for flag in ["-f", "-p", "-P", "-F", "-t", "-v"] {
        assert!(usage.contains(flag), "{flag} missing from {usage}");
    }
}

#[test]
fn bad_options_are_usage_errors() {
    let out = Dhid::run(&["-l", "/etc/dhid.conf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-f"), "{}", text(&out.stderr));

    for port in ["7oo0", "0", "70000", "-5", ""] {
        let out = Dhid::run(&["-F", "-p", port, "-f", "/nonexistent"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "-p {port:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("-p"), "{}", text(&out.stderr));
    }
}

#[test]
fn config_errors_exit_1_with_file_and_line() {
    let dir = TempDir::new("cli-conf");
    let conf = dir.write_mode(
        "dhid.conf",
        "{\nHostID abc\nHostPass x\nISAddr 127.0.0.1\n}\n",
        0o600,
    );
    for foreground in [true, false] {
        let mut args = vec!["-f", conf.to_str().unwrap(), "-p", "1"];
        if foreground {
            args.push("-F");
        }
        let out = Dhid::run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{}:2:", conf.display())), "{err}");
    }

    let out = Dhid::run(&["-F", "-f", "/nonexistent/dhid.conf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/dhid.conf"));
}

#[test]
fn check_reports_records_without_secrets() {
    let dir = TempDir::new("cli-check");
    let conf = conf_password(1000, "topsecret", 58977, &[]);
    let path = dir.write_mode("dhid.conf", &conf, 0o600);
    let out = Dhid::run(&["-t", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("HostID 1000") && stdout.contains("configuration OK"),
        "{stdout}"
    );
    assert!(!stdout.contains("topsecret") && !text(&out.stderr).contains("topsecret"));
}

/// 139952671 = 131 · 571 · 1871 is a Carmichael number and 3 mod 4: the
/// single round at start lets it through, the full test of -t does not.
#[test]
fn check_runs_the_full_primality_test() {
    let dir = TempDir::new("cli-check-prime");
    let conf = "{\nHostID 5\nAuthP 139952671\nAuthQ 1000003\nISAddr 127.0.0.1:58977\n}\n";
    let path = dir.write_mode("dhid.conf", conf, 0o600);
    let out = Dhid::run(&["-t", "-f", path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:1: AuthP is not a prime", path.display())),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("configuration OK"));
}

/// The primality test of a key runs after the first ECHO_REQ has left,
/// yet a key that fails it is still a start-up error with file and line,
/// detached or not, and leaves no pid file.
#[test]
fn a_composite_key_stops_the_start() {
    let dir = TempDir::new("cli-composite");
    let server = free_udp_port();
    let conf = format!("{{\nHostID 5\nAuthP 15\nAuthQ 1000003\nISAddr 127.0.0.1:{server}\n}}\n");
    let path = dir.write_mode("dhid.conf", &conf, 0o600);
    let pidfile = dir.join("dhid.pid");
    for foreground in [true, false] {
        let port = free_udp_port().to_string();
        let mut args = vec![
            "-f",
            path.to_str().unwrap(),
            "-p",
            &port,
            "-P",
            pidfile.to_str().unwrap(),
        ];
        if foreground {
            args.push("-F");
        }
        let out = Dhid::run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{}:3: AuthP is not a prime", path.display())),
            "{err}"
        );
        assert!(!pidfile.exists());
    }
}

#[test]
fn a_busy_port_is_a_start_up_error() {
    let port = free_udp_port();
    let _holder = UdpSocket::bind(("0.0.0.0", port)).unwrap();
    let (dir, path) = lone_record("cli-busy");
    let pidfile = dir.join("dhid.pid");
    let port_arg = port.to_string();
    let out = Dhid::run(&[
        "-f",
        path.to_str().unwrap(),
        "-p",
        &port_arg,
        "-P",
        pidfile.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("failed to open incoming udp socket on port"));
    assert!(!pidfile.exists());
}

/// A detaching start returns once the daemon runs and its pid file is
/// written; the pid file is locked against a second dhid.
#[test]
fn detached_start_writes_a_locked_pid_file() {
    let (dir, path) = lone_record("cli-detach");
    let pidfile = dir.join("dhid.pid");
    let args = |port: u16| {
        vec![
            "-f".to_string(),
            path.display().to_string(),
            "-p".to_string(),
            port.to_string(),
            "-P".to_string(),
            pidfile.display().to_string(),
        ]
    };
    let status = Command::new(BIN)
        .args(args(free_udp_port()))
        .env("DHID_TEST_INSTANCE", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file written before the parent exits")
        .trim()
        .parse()
        .unwrap();
    assert!(
        kill(Pid::from_raw(pid), None).is_ok(),
        "daemon {pid} not running"
    );

    let second = Command::new(BIN)
        .args(args(free_udp_port()))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(
        err.contains("another dhid") && err.contains(&pid.to_string()),
        "{err}"
    );

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let gone = common::wait_until(SHORT, Duration::from_millis(20), || !pidfile.exists());
    assert!(gone, "pid file not removed on TERM");
    assert!(common::procs::wait_gone(pid, SHORT));
}

/// Started with stdin, stdout and stderr closed, dhid puts /dev/null there
/// before opening anything, so neither its socket nor its pid file becomes
/// fd 0, 1 or 2 (log lines for stdout or stderr would land in them). It
/// ignores SIGPIPE, as std's start-up made it do: a write to a pipe whose
/// reader is gone is an error, not death.
#[test]
fn closed_stdio_is_reopened_on_dev_null() {
    let (dir, path) = lone_record("cli-closed");
    let pidfile = dir.join("dhid.pid");
    let port = free_udp_port().to_string();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec \"$0\" -F -f \"$1\" -p \"$2\" -P \"$3\" <&- >&- 2>&-")
        .args([
            BIN,
            path.to_str().unwrap(),
            &port,
            pidfile.to_str().unwrap(),
        ])
        .env("DHID_TEST_INSTANCE", dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let started = common::wait_until(SHORT, Duration::from_millis(20), || pidfile.exists());
    let links: Vec<String> = (0..=2)
        .map(
            |fd| match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
                Ok(target) => target.display().to_string(),
                Err(e) => e.to_string(),
            },
        )
        .collect();

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let _ = child.wait();
    assert!(started, "no pid file");
    for link in &links {
        assert_eq!(link, "/dev/null", "{links:?}");
    }
    let ignored = ignored.expect("SigIgn in /proc/PID/status");
    assert_ne!(ignored & 1 << (libc::SIGPIPE - 1), 0, "SigIgn {ignored:x}");
}

#[test]
fn an_unwritable_pid_file_names_the_option() {
    let (_dir, path) = lone_record("cli-pid");
    let port = free_udp_port().to_string();
    let out = Dhid::run(&[
        "-F",
        "-f",
        path.to_str().unwrap(),
        "-p",
        &port,
        "-P",
        "/nonexistent/dir/dhid.pid",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("-P") && err.contains("/nonexistent/dir/dhid.pid"),
        "{err}"
    );
}

#[test]
fn a_stale_pid_file_is_replaced() {
    let (dir, path) = lone_record("cli-stale");
    let mut dhid = Dhid::start(&std::fs::read_to_string(&path).unwrap(), &[]);
    assert!(dhid.wait_line("daemon started", SHORT).is_some());
    let pidfile = dhid.pidfile();
    dhid.signal(Signal::SIGTERM);
    dhid.wait_exit(SHORT).unwrap();

    // A pid that cannot be running: beyond pid_max.
    std::fs::write(&pidfile, "99999999\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-F",
        "-f",
        path.to_str().unwrap(),
        "-P",
        pidfile.to_str().unwrap(),
    ])
    .args(["-p", &free_udp_port().to_string()]);
    let mut run = common::dhid::Captured::spawn(cmd, &dir.path().display().to_string());
    let line = run.wait_line("replaced stale pid file", SHORT);
    assert!(
        line.is_some_and(|l| l.contains("pid 99999999 is gone")),
        "{:?}",
        run.lines()
    );
    let pid = run.pid().to_string();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), pid);
    run.signal(Signal::SIGTERM);
    assert!(run.wait_exit(SHORT).is_some_and(|s| s.success()));
    assert!(!pidfile.exists());
}
