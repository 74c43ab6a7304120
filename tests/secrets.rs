//! Passwords and QRC keys never reach a log line, at any level.

mod common;

use std::time::Duration;

use common::conf::{conf_password, conf_qrc, qrc_keys};
use common::dhid::Dhid;
use common::dhisd::{DbHost, Dhisd};
use nix::sys::signal::Signal;

#[test]
fn secrets_stay_out_of_the_log_at_every_level() {
    require_dhisd!();
    let (p, q, n) = qrc_keys();
    let dhisd = Dhisd::start(&[DbHost::password(1, "Right0ne"), DbHost::qrc(2, &n)]);
    let port = dhisd.port();
    // A refused password with capitals: retried in lower case, logged.
    let conf = conf_password(1, "Zq9SecretXy", port, &[]) + &conf_qrc(2, &p, &q, port, &[]);
    let dhid = Dhid::start(&conf, &["-v", "-v"]);
    assert!(
        dhid.wait_line("Authentication failed for 1", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        dhid.wait_line("[2] -> Online", Duration::from_secs(10))
            .is_some()
    );
    dhid.signal(Signal::SIGUSR1);
    assert!(
        dhid.wait_line("[2] online via", Duration::from_secs(10))
            .is_some()
    );

    let text = dhid.lines().join("\n");
    for secret in [
        "Zq9SecretXy",
        "zq9secretxy",
        &p[..20],
        &p[40..60],
        &q[..20],
        &q[80..],
    ] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

#[test]
fn a_config_readable_by_everyone_is_warned_about_once() {
    let conf = conf_password(1, "pw", common::free_udp_port(), &[]);
    let dir = common::tmp::TempDir::new("secrets-mode");
    let path = dir.write_mode("dhid.conf", &conf, 0o644);
    let out = Dhid::run(&["-t", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.matches("can be read by every user").count(), 1, "{err}");

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dhid"));
    cmd.args([
        "-F",
        "-f",
        path.to_str().unwrap(),
        "-P",
        dir.join("p").to_str().unwrap(),
    ])
    .args(["-p", &common::free_udp_port().to_string()]);
    let mut run = common::dhid::Captured::spawn(cmd, &dir.path().display().to_string());
    assert!(
        run.wait_line("daemon started", Duration::from_secs(10))
            .is_some()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        run.count("can be read by every user"),
        1,
        "{:?}",
        run.lines()
    );
    run.terminate(Duration::from_secs(5));
}
