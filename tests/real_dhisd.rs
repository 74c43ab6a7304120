//! The release-facing behaviour of the dhid binary against the real dhisd
//! 5.3 on loopback. Each test fails (never passes) without a real dhisd.

mod common;

use std::time::{Duration, Instant};

use common::conf::{conf_password, key_lines, qrc_keys};
use common::dhid::Dhid;
use common::dhisd::{DbHost, Dhisd};
use common::hookprobe::HookProbe;
use nix::sys::signal::Signal;

const SHORT: Duration = Duration::from_secs(10);

/// A record as an administrator would write it: the server by name.
fn by_name(record: &str, port: u16) -> String {
    record.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}"))
}

fn qrc_record(hostid: u32, port: u16, extra: &[&str]) -> String {
    let (p, q, _) = qrc_keys();
    let mut lines = vec![format!("HostID {hostid}")];
    lines.extend(key_lines("AuthP", &p));
    lines.extend(key_lines("AuthQ", &q));
    lines.push(format!("ISAddr localhost:{port}"));
    lines.extend(extra.iter().map(|s| s.to_string()));
    format!("{{\n{}\n}}\n", lines.join("\n"))
}

#[test]
fn password_and_qrc_records_go_online_and_offline() {
    require_dhisd!();
    let (_, _, n) = qrc_keys();
    let dhisd = Dhisd::start(&[DbHost::password(1000, "secret"), DbHost::qrc(2011, &n)]);
    let port = dhisd.port();
    let hooks = HookProbe::new();
    let (on, off) = (hooks.on_cmd("on"), hooks.off_cmd("off"));
    let conf = by_name(&conf_password(1000, "secret", port, &[&on, &off]), port)
        + &qrc_record(2011, port, &[&on, &off]);

    let started = Instant::now();
    let mut dhid = Dhid::start(&conf, &[]);
    assert!(
        dhid.wait_line("[1000] -> Online", SHORT).is_some(),
        "{:?}",
        dhid.lines()
    );
    assert!(
        dhid.wait_line("[2011] -> Online", SHORT).is_some(),
        "{:?}",
        dhid.lines()
    );
    eprintln!("both records online {:?} after start", started.elapsed());
    assert!(
        dhisd.wait_online(1000, SHORT) && dhisd.wait_online(2011, SHORT),
        "{}",
        dhisd.log()
    );
    assert!(
        hooks.wait_count("on", 2, SHORT),
        "{:?}",
        hooks.read_hook_log()
    );

    // The hooks got the hostid and the address the server saw.
    let calls = hooks.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.hostid == "1000" && c.addr == "127.0.0.1"),
        "{calls:?}"
    );

    dhid.signal(Signal::SIGUSR2);
    assert!(dhid.wait_line("-> Offline (USR2)", SHORT).is_some());
    assert!(
        dhisd.wait_offline(1000, SHORT) && dhisd.wait_offline(2011, SHORT),
        "{}",
        dhisd.log()
    );
    assert!(
        hooks.wait_count("off", 2, SHORT),
        "{:?}",
        hooks.read_hook_log()
    );

    let pidfile = dhid.pidfile();
    assert!(pidfile.exists());
    dhid.signal(Signal::SIGTERM);
    let status = dhid.wait_exit(SHORT).expect("dhid exits on TERM");
    assert!(status.success(), "{status:?}");
    assert!(!pidfile.exists(), "pid file left behind");
    // Records were already offline: TERM runs no OffCmd again.
    assert_eq!(hooks.count("off"), 2, "{:?}", hooks.read_hook_log());
    assert_eq!(hooks.count("on"), 2, "{:?}", hooks.read_hook_log());
}

#[test]
fn term_takes_online_records_offline_and_exits() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(3000, "pw")]);
    let hooks = HookProbe::new();
    let conf = conf_password(3000, "pw", dhisd.port(), &[&hooks.off_cmd("off")]);
    let mut dhid = Dhid::start(&conf, &[]);
    assert!(dhisd.wait_online(3000, SHORT), "{}", dhisd.log());

    dhid.signal(Signal::SIGTERM);
    let status = dhid.wait_exit(SHORT).expect("dhid exits on TERM");
    assert!(status.success());
    assert!(dhisd.wait_offline(3000, SHORT), "{}", dhisd.log());
    assert_eq!(hooks.count("off"), 1, "{:?}", hooks.read_hook_log());
    assert!(!dhid.pidfile().exists());
}

#[test]
fn a_wrong_password_is_refused_while_another_record_stays_online() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[
        DbHost::password(1000, "secret"),
        DbHost::password(1001, "right"),
    ]);
    let port = dhisd.port();
    // A third record's server is down: nobody listens on its port.
    let dead = common::free_udp_port();
    let conf = conf_password(1002, "pw", dead, &[])
        + &conf_password(1000, "secret", port, &[])
        + &conf_password(1001, "wrong", port, &[]);
    let started = std::time::Instant::now();
    let dhid = Dhid::start(&conf, &[]);
    assert!(
        dhid.wait_line("Authentication failed for 1001, retrying ...", SHORT)
            .is_some()
    );
    assert!(dhisd.wait_online(1000, SHORT));
    // Neither the dead server nor the refusal held record 1000 up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!dhisd.online(1001));
    // Not hammered: one refusal per refresh period.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        dhid.count("Authentication failed for 1001"),
        1,
        "{:?}",
        dhid.lines()
    );
    assert!(dhid.count("[1000] -> Online") == 1);
}

/// dhisd honours 60 to 21600 s and holds 120 for anything else; the C dhid
/// ignored the CHECK_REQs that follow and was dropped after ~7 minutes.
#[test]
fn refresh_above_the_server_limit_stays_online_for_seven_minutes() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(4000, "pw")]);
    let conf = conf_password(4000, "pw", dhisd.port(), &["Refresh 86400"]);
    let dhid = Dhid::start(&conf, &["-v"]);
    assert!(dhisd.wait_online(4000, SHORT));

    // The C dhid was dropped at +418 s; look past that.
    let deadline = Instant::now() + Duration::from_secs(440);
    while Instant::now() < deadline {
        assert!(dhisd.online(4000), "dropped by the server: {}", dhisd.log());
        std::thread::sleep(Duration::from_secs(5));
    }
    assert_eq!(dhisd.count_log("-> offline 4000"), 0, "{}", dhisd.log());
    assert_eq!(dhid.count("-> Offline"), 0, "{:?}", dhid.lines());
}

#[test]
fn a_restarted_dhisd_sees_the_record_again_within_two_periods() {
    require_dhisd!();
    let mut dhisd = Dhisd::start(&[DbHost::password(5000, "pw")]);
    let hooks = HookProbe::new();
    let (on, off) = (hooks.on_cmd("on"), hooks.off_cmd("off"));
    let conf = conf_password(5000, "pw", dhisd.port(), &["Refresh 60", &on, &off]);
    let dhid = Dhid::start(&conf, &[]);
    assert!(dhisd.wait_online(5000, SHORT));

    dhisd.restart();
    let restarted = Instant::now();
    assert!(!dhisd.online(5000));
    assert!(
        dhisd.wait_online(5000, Duration::from_secs(125)),
        "not back after two periods: {}",
        dhisd.log()
    );
    eprintln!(
        "back online at the server {:?} after its restart",
        restarted.elapsed()
    );
    // dhid itself never saw an offline: no hook ran again.
    assert_eq!(dhid.count("-> Offline"), 0, "{:?}", dhid.lines());
    assert_eq!(hooks.count("on"), 1);
    assert_eq!(hooks.count("off"), 0);
}

/// Steady state is quiet: nothing per keep-alive at the default level,
/// and the re-authentication each period (a QRC challenge included)
/// keeps both records online at the server.
#[test]
fn keepalives_log_nothing() {
    require_dhisd!();
    let (_, _, n) = qrc_keys();
    let dhisd = Dhisd::start(&[DbHost::password(9000, "pw"), DbHost::qrc(9001, &n)]);
    let port = dhisd.port();
    let conf =
        conf_password(9000, "pw", port, &["Refresh 60"]) + &qrc_record(9001, port, &["Refresh 60"]);
    let dhid = Dhid::start(&conf, &[]);
    assert!(dhid.wait_line("[9000] -> Online", SHORT).is_some());
    assert!(dhid.wait_line("[9001] -> Online", SHORT).is_some());
    let before = dhid.lines();
    // Two refresh periods: two logins, the only keep-alive the server gets.
    std::thread::sleep(Duration::from_secs(125));
    assert!(dhisd.online(9000) && dhisd.online(9001), "{}", dhisd.log());
    assert_eq!(dhisd.count_log("-> offline"), 0, "{}", dhisd.log());
    assert_eq!(dhid.lines(), before);
    assert_eq!(before.len(), 3, "{before:?}");
}
