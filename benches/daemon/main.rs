//! Side-by-side benchmarks of our dhid and the C dhid 5.5, against the
//! real dhisd 5.3 and against the project's test server. Run by
//! scripts/bench, which builds the release binary, fetches the C dhid and
//! passes its path:
//!
//!     cargo bench --bench daemon -- --run [--c-dhid PATH] [--runs N] ...
//!
//! Plain `cargo bench` only prints how to run it: it needs root, the real
//! dhisd, tcpdump and strace, and takes minutes.
//!
//! Times against the real dhisd are taken on the wire (tcpdump, kernel
//! timestamps in ns): its log has one-second stamps. Times against the
//! test server are its own `Instant` stamps of each arrival. Every figure
//! is the median of several runs; the raw samples follow the table.

mod capture;
#[path = "../../tests/common/pids.rs"]
mod pids;
mod procs;
mod programs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dhid::testserver::{Config, ServerEvent, TestServer};
use dhid::wire::{AUTH_ACK, AUTH_SX, AUTH_SY, OFFLINE_REQ};
use nix::sys::signal::Signal;

use capture::{Capture, Packet, ms_between, wall_ns};
use programs::{Auth, Dhisd, Host, Keys, Running, Which};

const USAGE: &str = "usage: cargo bench --bench daemon -- --run [--dhid PATH] [--c-dhid PATH | \
    --no-c-dhid REASON] [--runs N] [--runs-10k N] [--c-runs-100 N] [--idle-secs N] \
    [--criterion DIR] [--probe PATH] [--tag TAG] [--workdir DIR] [--only GROUP,...]";

const GROUPS: [&str; 7] = [
    "one-real",
    "one-test",
    "many-test",
    "hundred-real",
    "idle",
    "c-10k",
    "qrc",
];

/// Every record refreshes once a minute, the shortest period dhisd holds.
const REFRESH: u32 = 60;
/// Pause before each single-record run.
const SETTLE: Duration = Duration::from_millis(300);

struct Options {
    c_dhid: Result<PathBuf, String>,
    /// Our dhid: the one cargo built for this bench, or another to compare.
    dhid: PathBuf,
    runs: usize,
    runs_10k: usize,
    c_runs_100: usize,
    idle_secs: u64,
    criterion: PathBuf,
    probe: Option<PathBuf>,
    tag: String,
    workdir: Option<PathBuf>,
    only: Option<BTreeSet<String>>,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut args = std::env::args().skip(1);
    let mut run = false;
    let mut o = Options {
        c_dhid: Err("not given (--c-dhid)".into()),
        dhid: PathBuf::from(env!("CARGO_BIN_EXE_dhid")),
        runs: 5,
        runs_10k: 3,
        c_runs_100: 1,
        idle_secs: 60,
        criterion: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/criterion")),
        probe: None,
        tag: format!("dhid-bench-{}", std::process::id()),
        workdir: None,
        only: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("not a number: {v}"));
        match arg.as_str() {
            "--run" => run = true,
            // What cargo adds for a harness-less bench.
            "--bench" => {}
            "--c-dhid" => o.c_dhid = Ok(PathBuf::from(value("--c-dhid")?)),
            "--no-c-dhid" => o.c_dhid = Err(value("--no-c-dhid")?),
            "--runs" => o.runs = number(value("--runs")?)?.max(1),
            "--runs-10k" => o.runs_10k = number(value("--runs-10k")?)?.max(1),
            "--c-runs-100" => o.c_runs_100 = number(value("--c-runs-100")?)?,
            "--idle-secs" => o.idle_secs = number(value("--idle-secs")?)?.max(1) as u64,
            "--criterion" => o.criterion = PathBuf::from(value("--criterion")?),
            "--probe" => o.probe = Some(PathBuf::from(value("--probe")?)),
            "--dhid" => o.dhid = PathBuf::from(value("--dhid")?),
            "--tag" => o.tag = value("--tag")?,
            "--workdir" => o.workdir = Some(PathBuf::from(value("--workdir")?)),
            "--only" => {
                let list: BTreeSet<String> =
                    value("--only")?.split(',').map(str::to_string).collect();
                if let Some(bad) = list.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    return Err(format!("unknown group {bad}; groups: {}", GROUPS.join(",")));
                }
                o.only = Some(list);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(run.then_some(o))
}

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Ms,
    Us,
    Count,
    Mib,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.3} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::Us => format!("{v:.1} µs"),
            Unit::Count => format!("{v:.0}"),
            Unit::Mib => format!("{v:.2} MiB"),
        }
    }
}

/// One line of the table: samples of both programs, and the target.
struct Row {
    key: &'static str,
    figure: &'static str,
    unit: Unit,
    ours: Vec<f64>,
    c: Vec<f64>,
    c_note: Option<String>,
    /// The largest value that meets the target, and how it reads.
    target: Option<(f64, &'static str)>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn summary(unit: Unit, v: &[f64]) -> String {
    let Some(m) = median(v) else {
        return "—".into();
    };
    if v.len() == 1 {
        return format!("{} (1 run)", unit.show(m));
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{} ({} runs, {}–{})",
        unit.show(m),
        v.len(),
        unit.show(min),
        unit.show(max)
    )
}

/// The issue's figure for the C dhid, read as MiB (`ps` shows KiB); the
/// C dhid measured in the same run is the target when it ran.
const C_RSS_ISSUE_MIB: f64 = 1.65;

use Unit::{Count, Mib, Ms, Us};

/// The table's lines in order: key, unit, what is measured.
#[rustfmt::skip] // one line per row of the table reads best
const ROWS: [(&str, Unit, &str); 26] = [
    ("pass1", Ms, "1 password record, real dhisd: spawn → AUTH_ACK"),
    ("pass1_start", Ms, "1 password record, real dhisd: spawn → first datagram"),
    ("pass1_wire", Ms, "1 password record, real dhisd: first datagram → AUTH_ACK"),
    ("qrc1", Ms, "1 QRC record, real dhisd: spawn → AUTH_ACK"),
    ("qrc1_wire", Ms, "1 QRC record, real dhisd: first datagram → AUTH_ACK"),
    ("qrc1_answer", Ms, "1 QRC record, real dhisd: AUTH_SY → AUTH_SX on the wire"),
    ("test1", Ms, "1 password record, test server: spawn → online"),
    ("test1k", Ms, "1 000 records, test server: spawn → all online"),
    ("test10k", Ms, "10 000 records, test server: spawn → all online"),
    ("real100", Ms, "100 records, real dhisd: spawn → last AUTH_ACK"),
    ("usr2_1k_first", Ms, "USR2 → last record's first OFFLINE_REQ, 1 000 records, test server"),
    ("usr2_1k_last", Ms, "USR2 → last OFFLINE_REQ copy, 1 000 records, test server"),
    ("usr2_100_first", Ms, "USR2 → last record's first OFFLINE_REQ, 100 records, real dhisd"),
    ("usr2_100_last", Ms, "USR2 → last OFFLINE_REQ copy, 100 records, real dhisd"),
    ("idle_vol", Count, "Idle online, 1 record: wake-ups (voluntary switches) per 60 s"),
    ("idle_invol", Count, "Idle online, 1 record: involuntary switches per 60 s"),
    ("idle_sys", Count, "Idle online, 1 record: system calls per 60 s (strace)"),
    ("idle_dgrams", Count, "Idle online, 1 record: datagrams on the wire per 60 s"),
    ("rss1", Mib, "VmRSS, 1 record, 1 s after online"),
    ("anon1", Mib, "RssAnon, 1 record, 1 s after online"),
    ("pss1", Mib, "Pss, 1 record, 1 s after online"),
    ("rss10k", Mib, "VmRSS, 10 000 records"),
    ("anon10k", Mib, "RssAnon, 10 000 records"),
    ("pss10k", Mib, "Pss, 10 000 records"),
    ("sqrt_keys1", Us, "QRC square root, keys1.json (criterion median)"),
    ("sqrt_fresh", Us, "QRC square root, a generated pair (criterion median)"),
];

/// The issue's targets: the largest value that meets each.
fn target(key: &str) -> Option<(f64, &'static str)> {
    Some(match key {
        "pass1" => (2.0, "≤ 2 ms"),
        "qrc1" => (2.0, "≤ 2 ms"),
        "test10k" => (1000.0, "≤ 1 s"),
        "usr2_1k_first" => (50.0, "≤ 50 ms"),
        "idle_vol" => (2.0, "≤ 2"),
        "rss1" => (C_RSS_ISSUE_MIB, "≤ C dhid"),
        "rss10k" => (8.0, "≤ 8 MiB"),
        "sqrt_keys1" => (500.0, "≤ 0.5 ms"),
        _ => return None,
    })
}

fn rows() -> Vec<Row> {
    ROWS.iter()
        .map(|&(key, unit, figure)| Row {
            key,
            figure,
            unit,
            ours: Vec::new(),
            c: Vec::new(),
            c_note: None,
            target: target(key),
        })
        .collect()
}

struct Bench {
    ours: PathBuf,
    opts: Options,
    dhisd: Result<(), String>,
    dir: PathBuf,
    keys: Keys,
    rows: Vec<Row>,
    notes: Vec<String>,
    next_hostid: u32,
}

impl Bench {
    fn row(&mut self, key: &str) -> &mut Row {
        let i = self.rows.iter().position(|r| r.key == key);
        &mut self.rows[i.unwrap_or_else(|| panic!("no row {key}"))]
    }

    fn push(&mut self, key: &str, which: Which, v: f64) {
        let row = self.row(key);
        match which {
            Which::Ours => row.ours.push(v),
            Which::C => row.c.push(v),
        }
    }

    fn c_note(&mut self, key: &str, note: impl Into<String>) {
        let note = note.into();
        let row = self.row(key);
        if row.c_note.is_none() {
            row.c_note = Some(note);
        }
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: {note}");
        self.notes.push(note);
    }

    fn binary(&self, which: Which) -> &Path {
        match (which, &self.opts.c_dhid) {
            (Which::C, Ok(path)) => path,
            _ => &self.ours,
        }
    }

    /// Ours, and the C dhid where it is available.
    fn programs(&self) -> Vec<Which> {
        match self.opts.c_dhid {
            Ok(_) => vec![Which::Ours, Which::C],
            Err(_) => vec![Which::Ours],
        }
    }

    fn hostids(&mut self, n: usize) -> Vec<u32> {
        let first = self.next_hostid;
        self.next_hostid += n as u32;
        (first..self.next_hostid).collect()
    }

    fn tag(&self) -> &str {
        &self.opts.tag
    }

    fn conf(&self, hosts: &[Host], server_port: u16, name: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("{name}.conf"));
        programs::write_private(&path, &programs::dhid_conf(hosts, server_port, REFRESH))?;
        Ok(path)
    }

    fn start(&self, which: Which, conf: &Path, port: u16) -> Result<Running, String> {
        Running::start(which, self.binary(which), conf, port, &self.dir, self.tag())
    }

    fn need_dhisd(&self) -> Result<(), String> {
        self.dhisd.clone()
    }

    /// 1 record against the real dhisd, `runs` times for each program,
    /// alternating so that both see the same machine load.
    fn one_real(&mut self, qrc: bool) -> Result<(), String> {
        self.need_dhisd()?;
        let mut plan = Vec::new();
        for _ in 0..self.opts.runs {
            for which in self.programs() {
                let id = self.hostids(1)[0];
                let host = if qrc {
                    Host {
                        hostid: id,
                        auth: Auth::Qrc(self.keys.clone()),
                    }
                } else {
                    Host::password(id)
                };
                plan.push((which, host));
            }
        }
        let hosts: Vec<Host> = plan.iter().map(|(_, h)| h.clone()).collect();
        let dhisd = Dhisd::start(&hosts, &self.dir, self.tag())?;
        let (key, wire_key) = if qrc {
            ("qrc1", "qrc1_wire")
        } else {
            ("pass1", "pass1_wire")
        };
        for (which, host) in plan {
            let port = procs::free_udp_port()?;
            let conf = self.conf(
                std::slice::from_ref(&host),
                dhisd.port,
                &format!("one-{port}"),
            )?;
            let cap = Capture::start(
                &[dhisd.port, port],
                &self.dir,
                &format!("one-{port}"),
                self.tag(),
            )?;
            // The previous run's program has just been stopped, dhisd may
            // still be taking its host offline, and tcpdump has just said it
            // listens: start on a quiet machine.
            std::thread::sleep(SETTLE);
            let mut prog = self.start(which, &conf, port)?;
            let acked = |p: &Packet| p.opcode == AUTH_ACK && p.dport == port;
            let online = cap.wait_for(Duration::from_secs(10), Duration::from_millis(20), |pk| {
                pk.iter().any(acked)
            });
            // Resident memory with 1 record, a second after it is online.
            let memory = match (online.is_some(), qrc) {
                (true, false) => {
                    std::thread::sleep(Duration::from_secs(1));
                    Some(procs::memory(prog.pid)?)
                }
                _ => None,
            };
            prog.stop();
            let (packets, dropped) = cap.stop();
            if let Some(m) = memory {
                self.push_memory(which, "1", m);
            }
            if online.is_none() {
                let log = prog.log_tail();
                return Err(format!(
                    "{}: not online within 10 s; log: {log}",
                    which.name()
                ));
            }
            if dropped > 0 {
                self.note(format!("tcpdump dropped {dropped} packets ({key})"));
            }
            let ack = packets
                .iter()
                .find(|p| acked(p))
                .ok_or("AUTH_ACK vanished")?;
            let first = packets
                .iter()
                .find(|p| p.sport == port)
                .ok_or("no datagram from dhid")?;
            self.push(key, which, ms_between(prog.spawned_ns, ack.ns));
            self.push(wire_key, which, ms_between(first.ns, ack.ns));
            if !qrc {
                self.push("pass1_start", which, ms_between(prog.spawned_ns, first.ns));
            }
            if qrc {
                let sy = packets
                    .iter()
                    .find(|p| p.opcode == AUTH_SY && p.dport == port);
                let sx = packets
                    .iter()
                    .find(|p| p.opcode == AUTH_SX && p.sport == port);
                if let (Some(sy), Some(sx)) = (sy, sx) {
                    self.push("qrc1_answer", which, ms_between(sy.ns, sx.ns));
                }
            }
        }
        Ok(())
    }

    /// 1 record against the test server, both programs.
    fn one_test(&mut self) -> Result<(), String> {
        let mut probe_ms = Vec::new();
        for _ in 0..self.opts.runs {
            if let Some(probe) = self.opts.probe.clone() {
                probe_ms.push(self.probe(&probe)?);
            }
            for which in self.programs() {
                let host = Host::password(self.hostids(1)[0]);
                let Auth::Password(pass) = &host.auth else {
                    unreachable!()
                };
                let server = TestServer::start(Config::default().password(host.hostid, pass))
                    .map_err(|e| format!("test server: {e}"))?;
                let port = procs::free_udp_port()?;
                let conf =
                    self.conf(std::slice::from_ref(&host), server.local_port(), "one-test")?;
                let mut prog = self.start(which, &conf, port)?;
                let online =
                    server.wait_for(|e| e.is_online_of(host.hostid), Duration::from_secs(10));
                prog.stop();
                let at = online
                    .ok_or_else(|| format!("{}: not online at the test server", which.name()))?
                    .at();
                let ms = at.saturating_duration_since(prog.spawned).as_secs_f64() * 1e3;
                self.push("test1", which, ms);
            }
        }
        if let (Some(m), false) = (median(&probe_ms), probe_ms.is_empty()) {
            let list: Vec<String> = probe_ms.iter().map(|v| format!("{v:.3}")).collect();
            self.note(format!(
                "calibration: a program that only sends one datagram (examples/bench_probe.rs), \
                 spawn → that datagram at the test server: {m:.3} ms median of [{}]",
                list.join(" ")
            ));
        }
        Ok(())
    }

    /// Spawn → arrival of the probe's one datagram, in ms.
    fn probe(&mut self, probe: &Path) -> Result<f64, String> {
        let hostid = self.hostids(1)[0];
        let mut config = Config::default().password(hostid, "probe");
        config.arrival_capacity = 16;
        let server = TestServer::start(config).map_err(|e| format!("test server: {e}"))?;
        let spawned = Instant::now();
        let mut child = Command::new(probe)
            .arg(server.local_port().to_string())
            .arg(hostid.to_string())
            .env(procs::TAG_VAR, self.tag())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", probe.display()))?;
        let mut arrived = None;
        procs::wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            arrived = server.arrivals().first().map(|a| a.at);
            arrived.is_some()
        });
        let exited = procs::wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        let at = arrived.ok_or("the probe's datagram did not arrive")?;
        Ok(at.saturating_duration_since(spawned).as_secs_f64() * 1e3)
    }

    /// Ours with `n` records against the test server: time to all online,
    /// memory, and (for 1 000) USR2 to the OFFLINE_REQs at the server.
    fn many_test(&mut self, n: usize, runs: usize) -> Result<(), String> {
        let mut from_spawn_to_first = Vec::new();
        for _ in 0..runs {
            let hosts: Vec<Host> = self.hostids(n).into_iter().map(Host::password).collect();
            let mut config = Config::default();
            for h in &hosts {
                if let Auth::Password(p) = &h.auth {
                    config = config.password(h.hostid, p);
                }
            }
            // Every datagram of the run: ECHO_REQ, AUTH_REQ, 3 OFFLINE_REQ.
            config.arrival_capacity = 6 * n + 64;
            let server = TestServer::start(config).map_err(|e| format!("test server: {e}"))?;
            let port = procs::free_udp_port()?;
            let conf = self.conf(&hosts, server.local_port(), &format!("many-{n}"))?;
            let mut prog = self.start(Which::Ours, &conf, port)?;
            if !server.wait_online_count(n, Duration::from_secs(60)) {
                let got = server.online_count();
                prog.stop();
                let log = prog.log_tail();
                return Err(format!(
                    "{n} records: only {got} online after 60 s; log: {log}"
                ));
            }
            let last = server
                .events()
                .iter()
                .filter(|e| matches!(e, ServerEvent::Online { .. }))
                .map(ServerEvent::at)
                .max()
                .ok_or("no online event")?;
            let since =
                |at: Instant| at.saturating_duration_since(prog.spawned).as_secs_f64() * 1e3;
            let key = if n >= 10_000 { "test10k" } else { "test1k" };
            self.push(key, Which::Ours, since(last));
            if let Some(first) = server.arrivals().first() {
                from_spawn_to_first.push(since(first.at));
            }

            // Settle: the log lines are written and start-up memory freed.
            std::thread::sleep(Duration::from_millis(500));
            if n >= 10_000 {
                let m = procs::memory(prog.pid)?;
                self.push_memory(Which::Ours, "10k", m);
            }
            if n == 1000 {
                self.usr2_test(&server, &prog, n)?;
            }
            prog.stop();
        }
        let first = median(&from_spawn_to_first).unwrap_or(f64::NAN);
        self.note(format!(
            "{n} records, test server: spawn → first datagram at the server {first:.1} ms \
             (median; start-up and reading the configuration)"
        ));
        Ok(())
    }

    fn usr2_test(&mut self, server: &TestServer, prog: &Running, n: usize) -> Result<(), String> {
        let t0 = Instant::now();
        prog.signal(Signal::SIGUSR2)?;
        let all = 3 * n as u64;
        procs::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            server.counters().received(OFFLINE_REQ) >= all
        });
        let mut first_by_host: BTreeMap<u32, Instant> = BTreeMap::new();
        let mut last = None;
        for a in server.arrivals() {
            if a.opcode != OFFLINE_REQ || a.at < t0 {
                continue;
            }
            first_by_host.entry(a.hostid).or_insert(a.at);
            last = last.max(Some(a.at));
        }
        if first_by_host.len() != n {
            return Err(format!(
                "USR2: OFFLINE_REQ for {} of {n} records",
                first_by_host.len()
            ));
        }
        let ms = |at: Instant| at.saturating_duration_since(t0).as_secs_f64() * 1e3;
        let last_first = first_by_host
            .values()
            .max()
            .copied()
            .ok_or("no OFFLINE_REQ")?;
        self.push("usr2_1k_first", Which::Ours, ms(last_first));
        self.push(
            "usr2_1k_last",
            Which::Ours,
            ms(last.ok_or("no OFFLINE_REQ")?),
        );
        Ok(())
    }

    fn push_memory(&mut self, which: Which, size: &str, m: procs::Memory) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        self.push(&format!("rss{size}"), which, mib(m.rss));
        self.push(&format!("anon{size}"), which, mib(m.anon));
        self.push(&format!("pss{size}"), which, mib(m.pss));
    }

    /// 100 records against the real dhisd: time to all online, then USR2.
    fn hundred_real(&mut self) -> Result<(), String> {
        const N: usize = 100;
        self.need_dhisd()?;
        let mut plan = vec![Which::Ours; self.opts.runs];
        if self.opts.c_dhid.is_ok() {
            plan.extend(std::iter::repeat_n(Which::C, self.opts.c_runs_100));
            if self.opts.c_runs_100 == 0 {
                self.c_note("real100", "not run (--c-runs-100 0)");
            }
        }
        let groups: Vec<Vec<Host>> = plan
            .iter()
            .map(|_| self.hostids(N).into_iter().map(Host::password).collect())
            .collect();
        let all: Vec<Host> = groups.iter().flatten().cloned().collect();
        let dhisd = Dhisd::start(&all, &self.dir, self.tag())?;
        for (which, hosts) in plan.into_iter().zip(groups) {
            self.hundred_run(which, &hosts, &dhisd)?;
        }
        Ok(())
    }

    fn hundred_run(&mut self, which: Which, hosts: &[Host], dhisd: &Dhisd) -> Result<(), String> {
        let n = hosts.len();
        let port = procs::free_udp_port()?;
        let conf = self.conf(hosts, dhisd.port, &format!("hundred-{port}"))?;
        let cap = Capture::start(
            &[dhisd.port, port],
            &self.dir,
            &format!("hundred-{port}"),
            self.tag(),
        )?;
        let mut prog = self.start(which, &conf, port)?;
        // The C dhid brings about one record a second online.
        let (limit, poll) = match which {
            Which::Ours => (Duration::from_secs(30), Duration::from_millis(20)),
            Which::C => (
                Duration::from_secs(2 * n as u64 + 30),
                Duration::from_millis(500),
            ),
        };
        let acked = |pk: &[Packet]| {
            pk.iter()
                .filter(|p| p.opcode == AUTH_ACK && p.dport == port)
                .map(|p| p.hostid)
                .collect::<BTreeSet<_>>()
                .len()
        };
        let online = cap.wait_for(limit, poll, |pk| acked(pk) >= n).is_some();
        if !online {
            let got = acked(&cap.packets());
            prog.stop();
            return Err(format!(
                "{}: {got} of {n} records online after {limit:?}",
                which.name()
            ));
        }
        std::thread::sleep(Duration::from_secs(1));

        let kill_ns = wall_ns();
        prog.signal(Signal::SIGUSR2)?;
        // Done at 3 copies a record, or when nothing came for a while.
        let offs = |pk: &[Packet]| -> Vec<Packet> {
            pk.iter()
                .filter(|p| p.opcode == OFFLINE_REQ && p.sport == port && p.ns >= kill_ns)
                .copied()
                .collect()
        };
        // The C dhid sent none at all with 100 records in trials: give it
        // ten quiet seconds before concluding so.
        let quiet_ns = match which {
            Which::Ours => 3_000_000_000,
            Which::C => 10_000_000_000,
        };
        procs::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let o = offs(&cap.packets());
            let last = o.iter().map(|p| p.ns).max().unwrap_or(kill_ns);
            o.len() >= 3 * n || wall_ns().saturating_sub(last) > quiet_ns
        });
        let alive_after_usr2 = prog.is_alive();
        prog.stop();
        let (packets, dropped) = cap.stop();
        if dropped > 0 {
            self.note(format!(
                "tcpdump dropped {dropped} packets (100 records, {})",
                which.name()
            ));
        }

        let mut first_ack: BTreeMap<u32, u64> = BTreeMap::new();
        for p in packets
            .iter()
            .filter(|p| p.opcode == AUTH_ACK && p.dport == port)
        {
            first_ack.entry(p.hostid).or_insert(p.ns);
        }
        let last_ack = *first_ack.values().max().ok_or("no AUTH_ACK")?;
        self.push("real100", which, ms_between(prog.spawned_ns, last_ack));

        let offs = offs(&packets);
        let mut first_off: BTreeMap<u32, u64> = BTreeMap::new();
        for p in &offs {
            first_off.entry(p.hostid).or_insert(p.ns);
        }
        let last_copy = offs.iter().map(|p| p.ns).max();
        let name = which.name();
        let covered = first_off.len();
        let usr2_line = format!(
            "{name}, 100 records, real dhisd: after USR2, {} OFFLINE_REQ for {covered} of {n} \
             records{}; still running after USR2: {alive_after_usr2}",
            offs.len(),
            last_copy.map_or(String::new(), |t| format!(
                ", the last {:.1} ms after the signal",
                ms_between(kill_ns, t)
            )),
        );
        self.note(usr2_line);
        if covered == n {
            let last_first = *first_off.values().max().ok_or("no OFFLINE_REQ")?;
            self.push("usr2_100_first", which, ms_between(kill_ns, last_first));
            if let Some(t) = last_copy {
                self.push("usr2_100_last", which, ms_between(kill_ns, t));
            }
        } else if which == Which::C {
            let note = format!("not defined: OFFLINE_REQ for {covered} of {n} records only");
            self.c_note("usr2_100_first", &note);
            self.c_note("usr2_100_last", &note);
        } else {
            return Err(format!(
                "ours sent OFFLINE_REQ for {covered} of {n} records"
            ));
        }
        Ok(())
    }

    /// Idle online with 1 record: `IDLE_INSTANCES` of each program at once,
    /// each with its own record, against one dhisd. Context switches over
    /// one window (a sample per instance), then strace on the first
    /// instance of each over a second window.
    fn idle(&mut self) -> Result<(), String> {
        const IDLE_INSTANCES: usize = 3;
        self.need_dhisd()?;
        let window = Duration::from_secs(self.opts.idle_secs);
        let per_minute = 60.0 / window.as_secs_f64();
        let mut plan = Vec::new();
        for which in self.programs() {
            for k in 0..IDLE_INSTANCES {
                let host = Host::password(self.hostids(1)[0]);
                plan.push((which, k, host, procs::free_udp_port()?));
            }
        }
        let hosts: Vec<Host> = plan.iter().map(|(_, _, h, _)| h.clone()).collect();
        let dhisd = Dhisd::start(&hosts, &self.dir, self.tag())?;
        let mut watched = vec![dhisd.port];
        watched.extend(plan.iter().map(|(_, _, _, port)| *port));
        let cap = Capture::start(&watched, &self.dir, "idle", self.tag())?;
        let mut running = Vec::new();
        for (which, _, host, port) in &plan {
            let conf = self.conf(
                std::slice::from_ref(host),
                dhisd.port,
                &format!("idle-{port}"),
            )?;
            running.push(self.start(*which, &conf, *port)?);
        }
        let online = cap.wait_for(Duration::from_secs(10), Duration::from_millis(50), |pk| {
            plan.iter()
                .all(|(_, _, _, port)| pk.iter().any(|p| p.opcode == AUTH_ACK && p.dport == *port))
        });
        if online.is_none() {
            return Err("idle: not every program online within 10 s".into());
        }
        // Past start-up, the first login and the first refresh, so that
        // the window sees the steady state: the first refresh after start
        // is also when dhid faults back the code pages it dropped 0.5 s
        // after start. Windows over that first refresh counted 3 switches
        // for some instances under BENCH_RT=1, 2 for others; by hand,
        // without real-time priority, every refresh cost 2.
        std::thread::sleep(Duration::from_secs(u64::from(REFRESH) + 3));

        let switches = |running: &[Running]| -> Result<Vec<(u64, u64)>, String> {
            running
                .iter()
                .map(|r| procs::context_switches(r.pid))
                .collect()
        };
        let before = switches(&running)?;
        let a0 = wall_ns();
        std::thread::sleep(window);
        let a1 = wall_ns();
        let after = switches(&running)?;
        for (i, r) in running.iter().enumerate() {
            let (voluntary, involuntary) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
            self.push("idle_vol", r.which, voluntary as f64 * per_minute);
            self.push("idle_invol", r.which, involuntary as f64 * per_minute);
            if plan[i].1 > 0 {
                continue;
            }
            let m = procs::memory(r.pid)?;
            self.note(format!(
                "{}: after {} s idle online: VmRSS {:.2} MiB, RssAnon {:.2} MiB, Pss {:.2} MiB \
                 ({} instances running); {} thread(s)",
                r.which.name(),
                window.as_secs() + u64::from(REFRESH) + 3,
                m.rss as f64 / 1024.0,
                m.anon as f64 / 1024.0,
                m.pss as f64 / 1024.0,
                IDLE_INSTANCES,
                procs::threads(r.pid),
            ));
        }

        // Second window: strace counts what one instance of each program
        // asks the kernel.
        let mut straces = Vec::new();
        for (r, (_, k, _, _)) in running.iter().zip(&plan) {
            if *k == 0 {
                straces.push(Some(Strace::attach(r.pid, &self.dir, self.tag())?));
            } else {
                straces.push(None);
            }
        }
        let b0 = wall_ns();
        std::thread::sleep(window);
        let b1 = wall_ns();
        let traced: Vec<Option<(u64, BTreeMap<String, u64>)>> =
            straces.into_iter().map(|s| s.map(Strace::finish)).collect();
        for r in &mut running {
            r.stop();
        }
        let (packets, _) = cap.stop();
        for (i, r) in running.iter().enumerate() {
            let port = plan[i].3;
            let within = |from: u64, to: u64| -> Vec<Packet> {
                packets
                    .iter()
                    .filter(|p| (p.sport == port || p.dport == port) && (from..to).contains(&p.ns))
                    .copied()
                    .collect()
            };
            let (first, second) = (within(a0, a1), within(b0, b1));
            self.push("idle_dgrams", r.which, first.len() as f64 * per_minute);
            let Some((total, by_name)) = &traced[i] else {
                continue;
            };
            self.push("idle_sys", r.which, *total as f64 * per_minute);
            let calls: Vec<String> = by_name.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let line = format!(
                "{} idle, 1 record, Refresh {REFRESH}, first instance: first window of {}s: \
                 {}, {} voluntary switches; second (strace) window: {total} system calls \
                 ({}), {}",
                r.which.name(),
                window.as_secs(),
                datagrams(&first),
                after[i].0 - before[i].0,
                calls.join(", "),
                datagrams(&second),
            );
            self.note(line);
        }
        Ok(())
    }

    /// The C dhid's memory with 10 000 records: it brings about one online
    /// a second, so this is its footprint with the records loaded.
    fn c_10k(&mut self) -> Result<(), String> {
        const N: usize = 10_000;
        if self.opts.c_dhid.is_err() {
            return Ok(());
        }
        let hosts: Vec<Host> = self.hostids(N).into_iter().map(Host::password).collect();
        let mut config = Config::default();
        for h in &hosts {
            if let Auth::Password(p) = &h.auth {
                config = config.password(h.hostid, p);
            }
        }
        let server = TestServer::start(config).map_err(|e| format!("test server: {e}"))?;
        let port = procs::free_udp_port()?;
        let conf = self.conf(&hosts, server.local_port(), "c-10k")?;
        let mut prog = self.start(Which::C, &conf, port)?;
        std::thread::sleep(Duration::from_secs(5));
        let m = procs::memory(prog.pid);
        let online = server.online_count();
        prog.stop();
        self.push_memory(Which::C, "10k", m?);
        self.note(format!(
            "C dhid, 10 000 records: memory read 5 s after start, {online} of them online"
        ));
        Ok(())
    }

    /// Criterion's median for the two QRC benchmarks, if they ran.
    fn qrc(&mut self) -> Result<(), String> {
        for (name, key) in [("keys1", "sqrt_keys1"), ("fresh", "sqrt_fresh")] {
            let path = self
                .opts
                .criterion
                .join(format!("qrc_answer/{name}/new/estimates.json"));
            let text = fs::read_to_string(&path)
                .map_err(|e| format!("{}: {e} (run cargo bench --bench qrc)", path.display()))?;
            let ns = json_median(&text).ok_or(format!("{}: no median", path.display()))?;
            self.push(key, Which::Ours, ns / 1e3);
            self.c_note(key, "n/a: inside the C dhid (GMP), not callable alone");
        }
        Ok(())
    }
}

/// "4 datagrams (ECHO_REQ 1, ...)", by opcode in the order first seen.
fn datagrams(packets: &[Packet]) -> String {
    let mut names: Vec<(String, usize)> = Vec::new();
    for p in packets {
        let name = dhid::wire::opcode_name(p.opcode)
            .map_or_else(|| format!("{:#x}", p.opcode), str::to_string);
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => names.push((name, 1)),
        }
    }
    let list: Vec<String> = names.iter().map(|(n, c)| format!("{n} {c}")).collect();
    format!("{} datagrams ({})", packets.len(), list.join(", "))
}

/// `"median":{..."point_estimate":X...}` of criterion's estimates.json.
fn json_median(text: &str) -> Option<f64> {
    let at = text.find("\"median\"")?;
    let rest = &text[at..];
    let p = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let num: String = rest[p..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse().ok()
}

/// strace attached to one process for a while.
struct Strace {
    child: Option<Child>,
    out: PathBuf,
    tag: String,
}

impl Strace {
    fn attach(pid: i32, dir: &Path, tag: &str) -> Result<Strace, String> {
        let out = dir.join(format!("strace-{pid}.txt"));
        let errfile = dir.join(format!("strace-{pid}.err"));
        let err = File::create(&errfile).map_err(|e| e.to_string())?;
        let child = Command::new("strace")
            .args(["-f", "-tt", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .env(procs::TAG_VAR, tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run strace: {e}"))?;
        let mut s = Strace {
            child: Some(child),
            out,
            tag: tag.to_string(),
        };
        let attached = procs::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            procs::read_lossy(&errfile).contains("attached")
        });
        if !attached {
            s.stop();
            return Err(format!("strace: {}", procs::read_lossy(&errfile).trim()));
        }
        Ok(s)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: strace detaches and writes out what it has.
            procs::MARK.signal(child.id() as i32, &self.tag, Signal::SIGINT);
            let done = procs::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The number of system calls entered, in all and by name.
    fn finish(mut self) -> (u64, BTreeMap<String, u64>) {
        self.stop();
        let mut by_name = BTreeMap::new();
        let mut total = 0;
        for line in procs::read_lossy(&self.out).lines() {
            // "PID HH:MM:SS.uuuuuu name(args ..." ; resumed calls, signals
            // and exits are not entries.
            let Some(call) = line.split_whitespace().nth(2) else {
                continue;
            };
            if call.starts_with('<') || call.starts_with("---") || call.starts_with("+++") {
                continue;
            }
            let name = call.split('(').next().unwrap_or(call).to_string();
            *by_name.entry(name).or_insert(0) += 1;
            total += 1;
        }
        (total, by_name)
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ratio(row: &Row) -> String {
    match (median(&row.c), median(&row.ours)) {
        (Some(c), Some(o)) if o > 0.0 => {
            let r = c / o;
            if r >= 100.0 {
                format!("{r:.0}×")
            } else if r >= 10.0 {
                format!("{r:.1}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "—".into(),
    }
}

fn verdict(row: &Row) -> &'static str {
    let (Some((limit, _)), Some(ours)) = (row.target, median(&row.ours)) else {
        return "";
    };
    // Memory with 1 record: no more than the C dhid measured alongside.
    let limit = match (row.key, median(&row.c)) {
        ("rss1", Some(c)) => c,
        _ => limit,
    };
    if ours <= limit { "yes" } else { "**no**" }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| Figure | dhid (Rust) | C dhid 5.5 | C / ours | Target | Met |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let c = match (&r.c_note, r.c.is_empty()) {
            (Some(note), true) => note.clone(),
            _ => summary(r.unit, &r.c),
        };
        let target = r.target.map_or("", |(_, t)| t);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure,
            summary(r.unit, &r.ours),
            c,
            ratio(r),
            target,
            verdict(r)
        );
    }
    s
}

fn samples(rows: &[Row]) -> String {
    let mut s = String::new();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for r in rows {
        if r.ours.is_empty() && r.c.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "- {}: ours [{}]; C [{}]",
            r.figure,
            list(&r.ours),
            list(&r.c)
        );
    }
    s
}

fn keys() -> Keys {
    let text = include_str!("../../tests/data/keys1.json");
    let get = |name: &str| {
        let quoted = format!("\"{name}\":");
        let at = text.find(&quoted).map_or(text.len(), |i| i + quoted.len());
        text[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    };
    Keys {
        p: get("p"),
        q: get("q"),
        n: get("n"),
    }
}

/// One part of the run; `--only` selects by name.
type Group = fn(&mut Bench) -> Result<(), String>;

fn run(opts: Options) -> Result<bool, String> {
    let (dir, remove_dir) = match &opts.workdir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(&opts.tag), true),
    };
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dhisd = match programs::dhisd_unavailable() {
        Some(why) => Err(why),
        None => Ok(()),
    };
    let mut b = Bench {
        ours: opts.dhid.clone(),
        opts,
        dhisd,
        dir: dir.clone(),
        keys: keys(),
        rows: rows(),
        notes: Vec::new(),
        next_hostid: 1000,
    };
    if let Err(why) = b.opts.c_dhid.clone() {
        for r in &mut b.rows {
            r.c_note = Some(format!("not run: {why}"));
        }
    } else {
        for key in ["test1k", "test10k"] {
            b.c_note(key, "not run: about 1 record/s (see the 100-record row)");
        }
        for key in ["usr2_1k_first", "usr2_1k_last"] {
            b.c_note(
                key,
                "not run: 1 000 records would take ~17 min to go online",
            );
        }
    }
    let only = b.opts.only.clone();
    let wanted = |g: &str| only.as_ref().is_none_or(|o| o.contains(g));
    let mut ok = true;
    let groups: [(&str, Group); 8] = [
        ("qrc", Bench::qrc),
        ("one-real", |b| b.one_real(false)),
        ("one-real", |b| b.one_real(true)),
        ("one-test", Bench::one_test),
        ("many-test", |b| {
            let runs = b.opts.runs;
            b.many_test(1000, runs)?;
            let runs = b.opts.runs_10k;
            b.many_test(10_000, runs)
        }),
        ("idle", Bench::idle),
        ("c-10k", Bench::c_10k),
        ("hundred-real", Bench::hundred_real),
    ];
    for (name, group) in groups {
        if !wanted(name) {
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: {name} ...");
        if let Err(e) = group(&mut b) {
            ok = false;
            b.note(format!("{name} FAILED: {e}"));
        }
        eprintln!("bench: {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    if let Err(why) = &b.dhisd {
        b.note(format!("real dhisd not available: {why}"));
    }

    println!("{}", table(&b.rows));
    println!("Raw samples (ms, µs, counts or MiB as in the table):\n");
    println!("{}", samples(&b.rows));
    println!("Notes:\n");
    for n in &b.notes {
        println!("- {n}");
    }
    if remove_dir {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!(
                "daemon benchmarks: run scripts/bench (root, the real dhisd, tcpdump, \
                 strace; a few minutes), or\n{USAGE}"
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let tag = opts.tag.clone();
    // A panic unwinds through the guards; this catches what they miss.
    let default_hook = std::panic::take_hook();
    let hook_tag = tag.clone();
    std::panic::set_hook(Box::new(move |info| {
        procs::sweep(&hook_tag);
        default_hook(info);
    }));
    let result = run(opts);
    let left = procs::sweep(&tag);
    if !left.is_empty() {
        eprintln!("bench: processes still alive after the sweep: {left:?}");
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
