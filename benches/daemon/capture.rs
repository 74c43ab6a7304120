//! Time on the wire: tcpdump on the loopback interface writes a pcap file
//! with nanosecond kernel timestamps, which we read back. dhisd's own log
//! has one-second stamps only, and a relay would add a hop of its own.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::procs::{self, TAG_VAR};

pub const TCPDUMP: &str = "tcpdump";

/// One UDP datagram as it passed the loopback interface.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// CLOCK_REALTIME, nanoseconds since the epoch.
    pub ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub opcode: u32,
    pub hostid: u32,
}

/// The wall clock in the pcap's time base.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e6
}

pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    errfile: PathBuf,
    tag: String,
}

impl Capture {
    /// tcpdump on `lo` for UDP datagrams to or from any of `ports`; returns
    /// once it says it is listening.
    pub fn start(ports: &[u16], dir: &Path, name: &str, tag: &str) -> Result<Capture, String> {
        let file = dir.join(format!("{name}.pcap"));
        let errfile = dir.join(format!("{name}.tcpdump.err"));
        let err = File::create(&errfile).map_err(|e| e.to_string())?;
        let ports: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
        let filter = format!("udp and ({})", ports.join(" or "));
        let child = Command::new(TCPDUMP)
            // -U: each packet reaches the file at once, so that a wait can
            // read it; -Z root: no drop to a user who may not write `dir`;
            // -B: a 16 MiB buffer, so a burst is not dropped.
            .args(["-i", "lo", "-n", "-U", "-Z", "root", "-B", "16384"])
            .args(["--time-stamp-precision=nano", "-w"])
            .arg(&file)
            .arg(&filter)
            .env(TAG_VAR, tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {TCPDUMP}: {e}"))?;
        let mut capture = Capture {
            child: Some(child),
            file,
            errfile,
            tag: tag.to_string(),
        };
        let listening =
            procs::wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
                procs::read_lossy(&capture.errfile).contains("listening on")
            });
        if !listening {
            let why = procs::read_lossy(&capture.errfile);
            capture.stop_child();
            return Err(format!("tcpdump did not start: {}", why.trim()));
        }
        Ok(capture)
    }

    /// Everything written so far (a record cut short at the end is left
    /// for the next read).
    pub fn packets(&self) -> Vec<Packet> {
        fs::read(&self.file)
            .map(|b| parse_pcap(&b))
            .unwrap_or_default()
    }

    /// Polls the file until `done` holds; the packets when it did.
    pub fn wait_for(
        &self,
        timeout: Duration,
        poll: Duration,
        mut done: impl FnMut(&[Packet]) -> bool,
    ) -> Option<Vec<Packet>> {
        let mut found = None;
        procs::wait_until(timeout, poll, || {
            let packets = self.packets();
            if done(&packets) {
                found = Some(packets);
                return true;
            }
            false
        });
        found
    }

    /// Stops tcpdump; every packet it saw, and the kernel's drop count.
    pub fn stop(mut self) -> (Vec<Packet>, u64) {
        self.stop_child();
        let err = procs::read_lossy(&self.errfile);
        let dropped = err
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (self.packets(), dropped)
    }

    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        // SIGINT: tcpdump flushes the file and prints its counts.
        procs::MARK.signal(pid, &self.tag, Signal::SIGINT);
        let exited = procs::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_child();
    }
}

fn u32_at(b: &[u8], at: usize, little: bool) -> u32 {
    let bytes = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if little {
        u32::from_le_bytes(bytes)
    } else {
        u32::from_be_bytes(bytes)
    }
}

/// The UDP/IPv4 datagrams of a classic pcap file on an Ethernet-framed
/// link (Linux `lo`), with their R5 opcode and HostID.
pub fn parse_pcap(b: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    if b.len() < 24 {
        return out;
    }
    let (little, nano) = match u32_at(b, 0, true) {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        _ => match u32_at(b, 0, false) {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            _ => return out,
        },
    };
    const ETHERNET: u32 = 1;
    if u32_at(b, 20, little) != ETHERNET {
        return out;
    }
    let mut at = 24;
    while at + 16 <= b.len() {
        let secs = u64::from(u32_at(b, at, little));
        let frac = u64::from(u32_at(b, at + 4, little));
        let len = u32_at(b, at + 8, little) as usize;
        let start = at + 16;
        if start + len > b.len() {
            break;
        }
        let ns = secs * 1_000_000_000 + if nano { frac } else { frac * 1000 };
        if let Some(p) = parse_frame(&b[start..start + len], ns) {
            out.push(p);
        }
        at = start + len;
    }
    out
}

fn parse_frame(f: &[u8], ns: u64) -> Option<Packet> {
    const ETH: usize = 14;
    if f.len() < ETH + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    let payload = &udp[8..];
    if payload.len() < 20 {
        return None;
    }
    Some(Packet {
        ns,
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        opcode: u32_at(payload, 0, false),
        hostid: u32_at(payload, 16, false),
    })
}
