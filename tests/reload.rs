//! SIGHUP reloads and the systemd notify protocol, against the real dhisd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::conf::conf_password;
use common::dhid::{Captured, Dhid};
use common::dhisd::{DbHost, Dhisd};
use common::hookprobe::HookProbe;
use common::tmp::TempDir;
use common::{free_udp_port, wait_until};
use nix::sys::signal::Signal;

const SHORT: Duration = Duration::from_secs(10);

/// Records logged in within one second share a session id at dhisd, and
/// an OFFLINE_REQ takes whichever of them it finds first: removing one
/// record must leave the others online at the server.
#[test]
fn hup_applies_an_edit_without_dropping_unchanged_records() {
    require_dhisd!();
    let hosts: Vec<DbHost> = (1..=4)
        .map(|i| DbHost::password(i, &format!("pw{i}")))
        .collect();
    let dhisd = Dhisd::start(&hosts);
    let port = dhisd.port();
    let hooks = HookProbe::new();
    let (on, off) = (hooks.on_cmd("on"), hooks.off_cmd("off"));
    let record = |i: u32, extra: &[&str]| {
        let mut lines = vec![on.as_str(), off.as_str()];
        lines.extend_from_slice(extra);
        conf_password(i, &format!("pw{i}"), port, &lines)
    };
    let conf: String = (1..=3).map(|i| record(i, &[])).collect();
    let dhid = Dhid::start(&conf, &["-v"]);
    for i in 1..=3 {
        assert!(dhisd.wait_online(i, SHORT), "{}", dhisd.log());
    }
    assert!(hooks.wait_count("on", 3, SHORT));

    // 1 unchanged, 2 removed, 3 with a new refresh period, 4 new.
    let edited = record(1, &[]) + &record(3, &["Refresh 90"]) + &record(4, &[]);
    dhid.rewrite_conf(&edited);
    dhid.signal(Signal::SIGHUP);
    assert!(
        dhid.wait_line("reloaded: 3 records, 2 kept, 1 new, 1 removed", SHORT)
            .is_some()
    );
    assert!(dhisd.wait_online(4, SHORT), "{}", dhisd.log());
    assert!(dhisd.wait_log("-> offline 2", SHORT), "{}", dhisd.log());

    // Whatever the shared session id did at the server, 1 and 3 end up
    // online there, and dhid saw no transition for them.
    let settled = wait_until(SHORT, Duration::from_millis(50), || {
        dhisd.online(1) && dhisd.online(3) && !dhisd.online(2)
    });
    assert!(settled, "{}", dhisd.log());
    std::thread::sleep(Duration::from_secs(1));
    assert!(dhisd.online(1) && dhisd.online(3), "{}", dhisd.log());
    eprintln!("dhisd log:\n{}", dhisd.log());
    let calls = hooks.calls();
    let offs: Vec<&str> = calls
        .iter()
        .filter(|c| c.tag() == "off")
        .map(|c| c.hostid.as_str())
        .collect();
    assert_eq!(offs, ["2"], "{calls:?}");
    assert_eq!(hooks.count("on"), 4, "{calls:?}");
}

#[test]
fn a_config_with_errors_is_rejected_and_the_old_one_kept() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(7, "pw")]);
    let dhid = Dhid::start(&conf_password(7, "pw", dhisd.port(), &[]), &[]);
    assert!(dhisd.wait_online(7, SHORT));

    dhid.rewrite_conf("{\nHostID 7\nHostPass pw\nISAddr 127.0.0.1:0\n}\n");
    dhid.signal(Signal::SIGHUP);
    let conf = dhid.conf_path().display().to_string();
    assert!(
        dhid.wait_line(&format!("{conf}:4:"), SHORT).is_some(),
        "{:?}",
        dhid.lines()
    );
    assert!(dhid.wait_line("not reloaded", SHORT).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(dhisd.online(7));
    assert_eq!(dhid.count("-> Offline"), 0);
}

/// READY=1 comes once the configuration is loaded and the socket bound,
/// before any server answers (here none ever does).
#[test]
fn ready_is_notified_before_any_server_answers() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify.sock");
    let listener = UnixDatagram::bind(&socket_path).unwrap();
    listener.set_read_timeout(Some(SHORT)).unwrap();
    let conf = dir.write_mode(
        "dhid.conf",
        &conf_password(1, "pw", free_udp_port(), &[]),
        0o600,
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dhid"));
    cmd.args([
        "-F",
        "-f",
        conf.to_str().unwrap(),
        "-P",
        dir.join("p").to_str().unwrap(),
    ])
    .args(["-p", &free_udp_port().to_string()])
    .env("NOTIFY_SOCKET", &socket_path);
    let mut dhid = Captured::spawn(cmd, &dir.path().display().to_string());

    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 10 s");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.contains("READY=1"), "{text}");
    assert!(text.contains(&format!("MAINPID={}", dhid.pid())), "{text}");

    dhid.signal(Signal::SIGTERM);
    let n = listener.recv(&mut buf).expect("STOPPING=1 on TERM");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(dhid.wait_exit(SHORT).is_some_and(|s| s.success()));
}
