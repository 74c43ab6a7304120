//! Hostile networks and bad neighbours, end to end against the real dhisd:
//! floods of garbage, a lossy link, hooks that hang or do not exist, a
//! server that stops answering, a network that is not up yet.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::conf::conf_password;
use common::dhid::{Captured, Dhid};
use common::dhisd::{DbHost, Dhisd};
use common::hookprobe::HookProbe;
use common::tmp::TempDir;
use common::wait_until;
use nix::sys::signal::Signal;

const SHORT: Duration = Duration::from_secs(10);

/// xorshift64*: a seeded generator, so that every run sees the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[test]
fn ten_thousand_random_datagrams_change_nothing() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(1000, "secret")]);
    let conf = conf_password(1000, "secret", dhisd.port(), &[]);
    let mut dhid = Dhid::start(&conf, &[]);
    assert!(dhisd.wait_online(1000, SHORT));
    assert!(dhid.wait_line("[1000] -> Online", SHORT).is_some());

    // Half of it raw bytes from the server's own address; half R5 headers
    // with every field random but some of ours, from another address.
    let local = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut rng = Rng(0x5eed_0001);
    let opcodes = [
        0x511, 0x512, 0x521, 0x522, 0x524, 0x525, 0x526, 0x541, 0x542, 0x551, 0x411,
    ];
    let target = ("127.0.0.1", dhid.port());
    for i in 0..10_000 {
        let len = rng.below(300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 1 && len >= 20 {
            let op: u32 = opcodes[rng.below(opcodes.len() as u64) as usize];
            data[0..4].copy_from_slice(&op.to_be_bytes());
            let rport = if rng.chance(50) {
                u32::from(dhisd.port())
            } else {
                rng.next() as u32
            };
            data[12..16].copy_from_slice(&rport.to_be_bytes());
            let hostid: u32 = if rng.chance(50) {
                1000
            } else {
                rng.next() as u32
            };
            data[16..20].copy_from_slice(&hostid.to_be_bytes());
            stranger.send_to(&data, target).unwrap();
        } else {
            local.send_to(&data, target).unwrap();
        }
        if i % 500 == 0 {
            // Let the loop drain; the socket buffer is not the subject here.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    std::thread::sleep(Duration::from_millis(500));
    assert!(dhid.poll_exit().is_none(), "dhid died: {:?}", dhid.lines());
    assert!(dhisd.online(1000));
    assert_eq!(dhid.count("-> Offline"), 0, "{:?}", dhid.lines());
    // Still fully working: USR2 takes it offline at the server.
    dhid.signal(Signal::SIGUSR2);
    assert!(dhisd.wait_offline(1000, SHORT), "{}", dhisd.log());
}

/// A UDP relay standing in for the server: dhid talks to it as if it were
/// dhisd; it rewrites `rport` both ways (dhisd answers to the port named
/// in the header, not to the sender) and drops, duplicates and delays
/// datagrams from a seeded generator.
struct Relay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64, u64)>>,
    port: u16,
}

impl Relay {
    fn start(server_port: u16, seed: u64) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = front.local_addr().unwrap().port();
        let back_port = back.local_addr().unwrap().port();
        front.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut client: Option<std::net::SocketAddr> = None;
            // (due, to-server?, bytes)
            let mut delayed: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
            let (mut dropped, mut duplicated, mut reordered) = (0, 0, 0);
            let mut buf = [0u8; 2048];
            // Bounded: the test stops it long before this runs out.
            let until = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                let mut batch = Vec::new();
                while let Ok((n, from)) = front.recv_from(&mut buf) {
                    client = Some(from);
                    let mut d = buf[..n].to_vec();
                    if n >= 16 {
                        d[12..16].copy_from_slice(&u32::from(back_port).to_be_bytes());
                    }
                    batch.push((true, d));
                }
                while let Ok((n, _)) = back.recv_from(&mut buf) {
                    let mut d = buf[..n].to_vec();
                    if n >= 16 {
                        d[12..16].copy_from_slice(&u32::from(port).to_be_bytes());
                    }
                    batch.push((false, d));
                }
                for (to_server, d) in batch {
                    if rng.chance(30) {
                        dropped += 1;
                        continue;
                    }
                    let copies = if rng.chance(10) { 2 } else { 1 };
                    duplicated += copies - 1;
                    for _ in 0..copies {
                        let delay = if rng.chance(15) {
                            reordered += 1;
                            Duration::from_millis(50 + rng.below(250))
                        } else {
                            Duration::ZERO
                        };
                        delayed.push((Instant::now() + delay, to_server, d.clone()));
                    }
                }
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    delayed.drain(..).partition(|(at, _, _)| *at <= now);
                delayed = later;
                for (_, to_server, d) in due {
                    if to_server {
                        let _ = back.send_to(&d, ("127.0.0.1", server_port));
                    } else if let Some(c) = client {
                        let _ = front.send_to(&d, c);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (dropped, duplicated, reordered)
        });
        Relay {
            stop,
            thread: Some(thread),
            port,
        }
    }

    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn a_lossy_link_still_brings_every_record_online_and_offline() {
    require_dhisd!();
    let hosts: Vec<DbHost> = (1..=4)
        .map(|i| DbHost::password(i, &format!("pw{i}")))
        .collect();
    let dhisd = Dhisd::start(&hosts);
    let relay = Relay::start(dhisd.port(), 0x1055_2026);
    let hooks = HookProbe::new();
    let (on, off) = (hooks.on_cmd("on"), hooks.off_cmd("off"));
    let conf: String = (1..=4)
        .map(|i| conf_password(i, &format!("pw{i}"), relay.port, &[&on, &off]))
        .collect();
    let dhid = Dhid::start(&conf, &["-v"]);

    // Lost datagrams cost a backoff step (2, 4, 8 ... s) each; dhid's
    // view (its OnCmds) is what counts, the server may know earlier.
    let all_on = hooks.wait_count("on", 4, Duration::from_secs(120));
    assert!(all_on, "{:?}\n{}", dhid.lines(), dhisd.log());
    for i in 1..=4 {
        assert!(dhisd.wait_online(i, SHORT), "{i}: {}", dhisd.log());
    }

    dhid.signal(Signal::SIGUSR2);
    for i in 1..=4 {
        assert!(dhisd.wait_offline(i, SHORT), "{i}: {}", dhisd.log());
    }
    assert!(hooks.wait_count("off", 4, SHORT));
    std::thread::sleep(Duration::from_millis(500));
    let (dropped, duplicated, reordered) = relay.finish();
    eprintln!("relay: {dropped} dropped, {duplicated} duplicated, {reordered} delayed");
    assert!(dropped > 0 && duplicated > 0 && reordered > 0);
    // Exactly once each, duplicates and all.
    assert_eq!(hooks.count("on"), 4, "{:?}", hooks.read_hook_log());
    assert_eq!(hooks.count("off"), 4, "{:?}", hooks.read_hook_log());
}

#[test]
fn a_hanging_hook_is_killed_and_holds_up_nothing() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(1, "a"), DbHost::password(2, "b")]);
    let hooks = HookProbe::new();
    let port = dhisd.port();
    let dir = TempDir::new("hang");
    let hang = dir.write_mode("hang.sh", "#!/bin/sh\nsleep 1000\n", 0o755);
    let hang_cmd = format!("OnCmd {}", hang.display());
    let conf = conf_password(1, "a", port, &[&hang_cmd])
        + &conf_password(2, "b", port, &[&hooks.on_cmd("on")])
        + &conf_password(3, "c", port, &["OnCmd /nonexistent/dhid-hook"]);
    let dhid = Dhid::start(&conf, &[]);
    assert!(dhisd.wait_online(1, SHORT) && dhisd.wait_online(2, SHORT));
    assert!(
        hooks.wait_count("on", 1, SHORT),
        "record 2 waited for record 1's hook"
    );

    let killed = dhid.wait_line(
        "[1] OnCmd still running after 30s, killed",
        Duration::from_secs(45),
    );
    assert!(killed.is_some(), "{:?}", dhid.lines());
    // The loop went on meanwhile: USR2 works.
    dhid.signal(Signal::SIGUSR2);
    assert!(dhisd.wait_offline(1, SHORT) && dhisd.wait_offline(2, SHORT));
}

#[test]
fn a_missing_hook_is_reported_once() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(3, "c")]);
    let conf = conf_password(3, "c", dhisd.port(), &["OnCmd /nonexistent/dhid-hook arg"]);
    let dhid = Dhid::start(&conf, &[]);
    let line = dhid.wait_line("OnCmd /nonexistent/dhid-hook: command not found", SHORT);
    assert!(line.is_some(), "{:?}", dhid.lines());
    assert!(line.unwrap().contains("[3]"));
}

/// The server freezes (SIGSTOP) for over three minutes, then comes back.
#[test]
fn a_server_gone_for_three_minutes_is_found_again() {
    require_dhisd!();
    let dhisd = Dhisd::start(&[DbHost::password(8, "pw")]);
    let hooks = HookProbe::new();
    let (on, off) = (hooks.on_cmd("on"), hooks.off_cmd("off"));
    let conf = conf_password(8, "pw", dhisd.port(), &["Refresh 60", &on, &off]);
    let dhid = Dhid::start(&conf, &[]);
    assert!(hooks.wait_count("on", 1, SHORT));

    dhisd.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let gone = dhid.wait_line("[8] -> Offline (timeout)", Duration::from_secs(200));
    assert!(gone.is_some(), "{:?}", dhid.lines());
    assert!(hooks.wait_count("off", 1, SHORT));
    std::thread::sleep(Duration::from_secs(185).saturating_sub(stopped.elapsed()));

    dhisd.signal(Signal::SIGCONT);
    let back = Instant::now();
    // Backoff is capped at the refresh period, 60 s (+20 % jitter).
    assert!(
        hooks.wait_count("on", 2, Duration::from_secs(75)),
        "{:?}",
        dhid.lines()
    );
    eprintln!(
        "online again {:?} after the server came back",
        back.elapsed()
    );
    assert_eq!(hooks.count("on"), 2);
    assert_eq!(hooks.count("off"), 1);
}

/// Boot before the network: loopback is down in a namespace of the test's
/// own, and the server's name is not in that namespace's hosts file yet.
#[test]
fn boot_before_the_network() {
    require_dhisd!();
    let ns = format!("dhidtest{}", std::process::id());
    let etc = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
    let hosts = etc.join("hosts");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot create network namespace {ns}");
    let _cleanup = NetnsGuard {
        ns: ns.clone(),
        etc: etc.clone(),
    };

    // dhisd inside the namespace; it binds 0.0.0.0 even with lo down.
    let dir = TempDir::new("netns");
    let db = dir.write("db", "1 {\n HostPass a\n}\n2 {\n HostPass b\n}\n");
    let services = dir.write(
        "services",
        "log 1 /usr/lib/dhis-server/dhis-dummy-log-engine\n",
    );
    let log = dir.join("dhisd.log");
    let pidfile = dir.join("dhisd.pid");
    let port = common::free_udp_port();
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "/usr/sbin/dhisd",
            "-p",
            &port.to_string(),
        ])
        .args(["-d", db.to_str().unwrap(), "-s", services.to_str().unwrap()])
        .args(["-l", log.to_str().unwrap(), "-P", pidfile.to_str().unwrap()])
        .env("DHID_TEST_INSTANCE", dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_until(SHORT, Duration::from_millis(20), || pidfile.exists()));
    let dhisd_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _dhisd = PidGuard(dhisd_pid);

    // Record 1 by address (sendto fails: network unreachable), record 2 by
    // a name that does not resolve yet.
    let conf = conf_password(1, "a", port, &[])
        + &conf_password(2, "b", port, &[]).replace("127.0.0.1:", "dhis-test-server:");
    let conf_path = dir.write_mode("dhid.conf", &conf, 0o600);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_dhid"), "-F"])
        .args([
            "-f",
            conf_path.to_str().unwrap(),
            "-P",
            dir.join("dhid.pid").to_str().unwrap(),
        ])
        .args(["-p", &common::free_udp_port().to_string()]);
    let dhid = Captured::spawn(cmd, &dir.path().display().to_string());

    assert!(
        dhid.wait_line("Network is unreachable", SHORT).is_some(),
        "{:?}",
        dhid.lines()
    );
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(dhid.count("-> Online"), 0);
    // Repeated identical errors are one line plus a summary, not a flood.
    assert!(
        dhid.count("Network is unreachable") <= 2,
        "{:?}",
        dhid.lines()
    );

    let up = Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 dhis-test-server\n").unwrap();
    let came_up = Instant::now();
    // Within one backoff step: at this point at most 16 s (+20 %).
    assert!(
        dhid.wait_line("[1] -> Online", Duration::from_secs(25))
            .is_some(),
        "{:?}",
        dhid.lines()
    );
    assert!(
        dhid.wait_line("[2] -> Online", Duration::from_secs(25))
            .is_some(),
        "{:?}",
        dhid.lines()
    );
    eprintln!("online {:?} after the network came up", came_up.elapsed());
    assert!(
        dhid.count("last message repeated") >= 1,
        "{:?}",
        dhid.lines()
    );
}

struct NetnsGuard {
    ns: String,
    etc: std::path::PathBuf,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Ends a process this test started, by pid.
struct PidGuard(i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        common::procs::wait_gone(self.0, Duration::from_secs(5));
    }
}
