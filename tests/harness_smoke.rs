//! Exercises the shared harness in `tests/common` against the real dhisd,
//! without dhid: a small UDP client in this file plays the client side.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use num_bigint::BigUint;

use common::{
    Captured, DbHost, Dhisd, FORBIDDEN_PORT, HookProbe, TempDir, conf_password, conf_qrc,
    free_udp_port, qrc_keys, wait_until,
};

const ECHO_REQ: u32 = 0x511;
const ECHO_ACK: u32 = 0x512;
const AUTH_REQ: u32 = 0x521;
const AUTH_DENY: u32 = 0x522;
const AUTH_SX: u32 = 0x524;
const AUTH_SY: u32 = 0x525;
const AUTH_ACK: u32 = 0x526;
const OFFLINE_REQ: u32 = 0x551;

const PASS_ID: u32 = 1000;
const QRC_ID: u32 = 2000;
const WAIT: Duration = Duration::from_secs(5);

/// A hand-made R5 client on 127.0.0.1; dhisd answers to our port from
/// ports of its own, so replies are read with `recv_from`.
struct Client {
    sock: UdpSocket,
    port: u16,
    server: SocketAddr,
    serial: u32,
}

impl Client {
    fn new(server: SocketAddr) -> Client {
        assert!(server.ip().is_loopback(), "tests talk to loopback only");
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        Client {
            sock,
            port,
            server,
            serial: 0,
        }
    }

    fn send(&mut self, opcode: u32, hostid: u32, body: &[u8]) {
        self.serial += 1;
        let mut d = Vec::with_capacity(20 + body.len());
        for w in [opcode, self.serial, 55, u32::from(self.port), hostid] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        d.extend_from_slice(body);
        self.sock.send_to(&d, self.server).expect("send_to");
    }

    /// The next datagram with one of `opcodes`, within `timeout`.
    fn recv(&self, opcodes: &[u32], timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        for _ in 0..1000 {
            if Instant::now() >= deadline {
                return None;
            }
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            if !from.ip().is_loopback() || n < 20 {
                continue;
            }
            if opcodes.contains(&u32_at(&buf, 0)) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    }

    fn echo(&mut self, hostid: u32) -> bool {
        self.send(ECHO_REQ, hostid, &[]);
        self.recv(&[ECHO_ACK], WAIT).is_some()
    }

    /// AUTH_REQ with a NUL-padded password (all NUL for QRC), refresh 60;
    /// the answer's opcode and datagram.
    fn auth(&mut self, hostid: u32, pass: &str) -> (u32, Vec<u8>) {
        let mut body = [0u8; 20];
        body[..pass.len()].copy_from_slice(pass.as_bytes());
        body[16..].copy_from_slice(&60u32.to_be_bytes());
        self.send(AUTH_REQ, hostid, &body);
        let reply = self
            .recv(&[AUTH_ACK, AUTH_DENY, AUTH_SY], WAIT)
            .expect("no AUTH answer");
        (u32_at(&reply, 0), reply)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn dec(s: &str) -> BigUint {
    BigUint::parse_bytes(s.as_bytes(), 10).expect("decimal")
}

/// The square root of `y` that is a residue mod p and mod q (p, q ≡ 3
/// mod 4), combined by the CRT.
fn principal_root(y: &BigUint, p: &BigUint, q: &BigUint) -> BigUint {
    let one = BigUint::from(1u32);
    let four = BigUint::from(4u32);
    let a = y.modpow(&((p + &one) / &four), p);
    let b = y.modpow(&((q + &one) / &four), q);
    let p_inv = (p % q).modpow(&(q - BigUint::from(2u32)), q);
    let diff = (b + q - (&a % q)) % q;
    a + p * ((diff * p_inv) % q)
}

fn two_hosts() -> Dhisd {
    let (_, _, n) = qrc_keys();
    Dhisd::start(&[DbHost::password(PASS_ID, "secret"), DbHost::qrc(QRC_ID, &n)])
}

#[test]
fn dhisd_password_host_online_offline_and_restart() {
    require_dhisd!();
    let mut srv = two_hosts();
    let first_pid = srv.pid();
    assert_ne!(srv.port(), FORBIDDEN_PORT);
    assert!(
        srv.log()
            .contains(&format!("Datagram Server Started [{first_pid}]"))
    );
    assert!(!srv.online(PASS_ID));

    let mut c = Client::new(srv.addr());
    assert!(c.echo(PASS_ID), "no ECHO_ACK from dhisd");
    let (op, _) = c.auth(PASS_ID, "wrong");
    assert_eq!(op, AUTH_DENY);
    let (op, ack) = c.auth(PASS_ID, "secret");
    assert_eq!(op, AUTH_ACK, "password host not accepted");
    assert_eq!(ack.len(), 28);
    assert_eq!(ack[24..28], [127, 0, 0, 1]);
    let sid = u32_at(&ack, 20);
    assert!(srv.wait_online(PASS_ID, WAIT), "log: {}", srv.log());
    assert!(srv.online(PASS_ID));
    assert!(!srv.online(QRC_ID));
    assert_eq!(
        srv.count_log(&format!("-> online {PASS_ID} [127.0.0.1]")),
        1
    );

    c.send(OFFLINE_REQ, PASS_ID, &sid.to_be_bytes());
    let offline = format!("-> offline {PASS_ID}");
    assert!(srv.wait_log_count(&offline, 1, WAIT), "log: {}", srv.log());
    assert!(srv.wait_offline(PASS_ID, WAIT));

    assert_eq!(c.auth(PASS_ID, "secret").0, AUTH_ACK);
    assert!(srv.wait_online(PASS_ID, WAIT));
    assert_eq!(srv.count_log(&format!("-> online {PASS_ID}")), 2);

    srv.restart();
    assert_ne!(srv.pid(), first_pid);
    assert_eq!(
        srv.count_log("Datagram Server Started"),
        2,
        "log: {}",
        srv.log()
    );
    assert!(
        srv.log()
            .contains(&format!("Datagram Server Started [{}]", srv.pid()))
    );
    assert!(srv.log().contains("SIGTERM received"));
    assert!(!srv.online(PASS_ID), "a restarted dhisd has no session");
    assert_eq!(srv.count_run_log("-> online"), 0);
    // The old runs stay readable.
    assert_eq!(srv.count_log(&format!("-> online {PASS_ID}")), 2);

    // Same port, fresh server: a new login works.
    assert!(c.echo(PASS_ID), "no ECHO_ACK after restart");
    assert_eq!(c.auth(PASS_ID, "secret").0, AUTH_ACK);
    assert!(srv.wait_online(PASS_ID, WAIT));
    assert_eq!(srv.count_run_log("-> online"), 1);
}

#[test]
fn dhisd_qrc_host_login() {
    require_dhisd!();
    let srv = two_hosts();
    let (p, q, n) = qrc_keys();
    let (p, q, n) = (dec(&p), dec(&q), dec(&n));
    let mut c = Client::new(srv.addr());
    let (op, sy) = c.auth(QRC_ID, "");
    assert_eq!(op, AUTH_SY, "QRC host must get a challenge");
    let text = String::from_utf8_lossy(&sy[20..220]);
    let y = dec(text.trim_end_matches('\0'));
    let x = principal_root(&y, &p, &q);
    assert_eq!(x.modpow(&BigUint::from(2u32), &n), y);
    let sx = format!("{x:0>200}");
    c.send(AUTH_SX, QRC_ID, sx.as_bytes());
    let ack = c
        .recv(&[AUTH_ACK, AUTH_DENY], WAIT)
        .expect("no answer to AUTH_SX");
    assert_eq!(u32_at(&ack, 0), AUTH_ACK, "QRC answer denied");
    assert!(srv.wait_online(QRC_ID, WAIT), "log: {}", srv.log());
    assert!(!srv.online(PASS_ID));
}

#[test]
fn dhisd_drop_ends_its_processes_and_files() {
    require_dhisd!();
    let srv = two_hosts();
    let pid = srv.pid();
    let dir: PathBuf = srv.dir().to_path_buf();
    let tag = dir.display().to_string();
    // dhisd and its log engine.
    assert!(wait_until(WAIT, Duration::from_millis(20), || {
        common::procs::MARK.pids(&tag).len() >= 2
    }));
    drop(srv);
    assert!(!common::procs::is_alive(pid) || !common::procs::MARK.on(pid, &tag));
    assert!(common::procs::MARK.pids(&tag).is_empty());
    assert!(!dir.exists());
}

#[test]
fn free_udp_port_is_distinct_and_never_58800() {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let p = free_udp_port();
        assert_ne!(p, FORBIDDEN_PORT);
        assert!(seen.insert(p), "port {p} handed out twice");
        UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).expect("a handed-out port is free");
    }
}

#[test]
fn wait_until_is_bounded() {
    let t0 = Instant::now();
    assert!(!wait_until(
        Duration::from_millis(100),
        Duration::from_millis(10),
        || false
    ));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let mut n = 0;
    assert!(wait_until(WAIT, Duration::from_millis(1), || {
        n += 1;
        n == 3
    }));
    assert_eq!(n, 3);
}

#[test]
fn keys_and_config_text() {
    let (p, q, n) = qrc_keys();
    assert_eq!(dec(&p) * dec(&q), dec(&n));
    assert_eq!(p.len(), 100);

    let conf = conf_password(1000, "secret", 58911, &[]);
    assert_eq!(
        conf,
        "{\nHostID 1000\nHostPass secret\nISAddr 127.0.0.1:58911\nRefresh 60\n}\n"
    );
    let conf = conf_password(7, "x", 40000, &["Refresh 90", "OnCmd /bin/true"]);
    assert_eq!(conf.matches("Refresh").count(), 1);
    assert!(conf.contains("Refresh 90\nOnCmd /bin/true\n}\n"));

    let conf = conf_qrc(2000, &p, &q, 40001, &[]);
    let auth: Vec<&str> = conf.lines().filter(|l| l.starts_with("Auth")).collect();
    assert_eq!(auth.len(), 4);
    assert_eq!(auth[0], format!("AuthP {}", &p[..50]));
    assert_eq!(auth[1], format!("AuthP {}", &p[50..]));
    assert_eq!(auth[3], format!("AuthQ {}", &q[50..]));

    let db = common::conf::db_text(&[DbHost::qrc(5, "12345")]);
    let lines: Vec<&str> = db.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0], "5 {");
    assert_eq!(lines[4], format!("AuthN {}12345", "0".repeat(45)));
}

#[test]
fn hookprobe_logs_each_call() {
    let probe = HookProbe::new();
    assert_eq!(
        probe.on_cmd("on"),
        format!("OnCmd {} on", probe.script().display())
    );
    assert!(probe.read_hook_log().is_empty());
    // The way dhid runs a hook: `sh -c "PROGRAM HOSTID ADDR REST"`.
    for (tag, addr) in [("on", "127.0.0.1"), ("off", "0.0.0.0"), ("on", "127.0.0.1")] {
        let line = format!("{} 1000 {addr} {tag} extra ", probe.script().display());
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(&line)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let log = probe.read_hook_log();
    assert_eq!(log.len(), 3);
    assert_eq!(
        log[0],
        format!("{} 1000 127.0.0.1 on extra", probe.script().display())
    );
    assert_eq!(probe.count("on"), 2);
    assert!(probe.wait_count("off", 1, WAIT));
    let off = &probe.calls()[1];
    assert_eq!(
        (off.hostid.as_str(), off.addr.as_str(), off.tag()),
        ("1000", "0.0.0.0", "off")
    );
}

#[test]
fn captured_process_lines_signals_and_exit() {
    let dir = TempDir::new("captured");
    let tag = dir.path().display().to_string();
    // Bounded: gives up by itself after 20 s.
    let script = "echo ready >&2; echo out; trap 'echo got-term >&2; exit 3' TERM; \
                  i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done";
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    let mut p = Captured::spawn(cmd, &tag);
    assert_eq!(p.wait_line("ready", WAIT).as_deref(), Some("ready"));
    assert!(p.wait_line("never", Duration::from_millis(50)).is_none());
    let mark = p.mark();
    p.signal(Signal::SIGTERM);
    assert!(p.wait_line_from(mark, "got-term", WAIT).is_some());
    let st = p.wait_exit(WAIT).expect("exits on SIGTERM");
    assert_eq!(st.code(), Some(3));
    assert_eq!(p.lines(), ["ready", "got-term"]);
    assert_eq!(p.stdout_lines(), ["out"]);
    assert!(
        p.try_signal(Signal::SIGTERM).is_err(),
        "no signal after reaping"
    );
    drop(p);
    assert!(common::procs::MARK.pids(&tag).is_empty());
}
