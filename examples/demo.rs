//! The demo: a DHIS server of ours on a free loopback port, and dhid in the
//! foreground against it with a password record and a QRC record. Both go
//! online, USR2 takes them offline, TERM stops dhid. About three seconds,
//! no root, no package.
//!
//!     cargo run --example demo

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhid::testserver::{Config, TestServer};
use num_bigint::BigUint;

const KEYS: &str = include_str!("../tests/data/keys1.json");

/// One number of the keys file, by name (`"p": 123...`).
fn key(name: &str) -> String {
    let start = KEYS
        .find(&format!("\"{name}\":"))
        .expect("key in keys1.json")
        + name.len()
        + 3;
    KEYS[start..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

fn free_port() -> u16 {
    // The OS picks; 58800 is left to a real dhisd that may run here.
    loop {
        let port = UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port != 58800 {
            return port;
        }
    }
}

/// The dhid binary next to this example (target/<profile>/dhid), built
/// first if needed: `cargo run --example` does not build it by itself.
fn dhid_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("no target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "--bin", "dhid"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --bin dhid failed".into());
    }
    Ok(profile_dir.join("dhid"))
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            println!("demo: {what} ({} ms)", start.elapsed().as_millis());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("{what}: not within {timeout:?}"))
}

fn run() -> Result<(), String> {
    let binary = dhid_binary()?;
    let n: BigUint = key("n").parse().map_err(|_| "bad keys file")?;
    let mut config = Config::default().password(1000, "secret").qrc(2011, n);
    config.log_sink = Some(Arc::new(|line: &str| println!("server: {line}")));
    let server = TestServer::start(config).map_err(|e| format!("test server: {e}"))?;
    let port = server.local_port();
    println!("demo: DHIS test server on 127.0.0.1:{port}");

    let dir = std::env::temp_dir().join(format!("dhid-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (p, q) = (key("p"), key("q"));
    let conf = format!(
        "{{\nHostID 1000\nHostPass secret\nISAddr localhost:{port}\n}}\n\
         {{\nHostID 2011\nAuthP {}\nAuthP {}\nAuthQ {}\nAuthQ {}\nISAddr localhost:{port}\n}}\n",
        &p[..50],
        &p[50..],
        &q[..50],
        &q[50..]
    );
    let conf_path = dir.join("dhid.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        &conf_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    let pidfile = dir.join("dhid.pid");

    let args = [
        "-F".to_string(),
        "-f".into(),
        conf_path.display().to_string(),
        "-p".into(),
        free_port().to_string(),
        "-P".into(),
        pidfile.display().to_string(),
    ];
    println!("demo: {} {}", binary.display(), args.join(" "));
    let mut dhid = Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;

    let result = (|| {
        let secs = Duration::from_secs(5);
        wait("both records online at the server", secs, || {
            server.online_count() == 2
        })?;
        std::thread::sleep(Duration::from_millis(500));
        println!("demo: kill -USR2 {}", dhid.id());
        signal(&dhid, nix::sys::signal::Signal::SIGUSR2);
        wait("both records offline at the server", secs, || {
            server.online_count() == 0
        })?;
        std::thread::sleep(Duration::from_millis(500));
        println!("demo: kill -TERM {}", dhid.id());
        signal(&dhid, nix::sys::signal::Signal::SIGTERM);
        wait("dhid exited", secs, || {
            matches!(dhid.try_wait(), Ok(Some(_)))
        })?;
        if pidfile.exists() {
            return Err("dhid left its pid file behind".to_string());
        }
        Ok(())
    })();

    if let Ok(None) = dhid.try_wait() {
        let _ = dhid.kill();
        let _ = dhid.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("demo: done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
