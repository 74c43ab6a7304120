//! The binary under test, run in the foreground with its output captured.
//!
//! [`Captured`] is the generic part (any program, stdout and stderr read
//! line by line by two threads); [`Dhid`] adds the dhid command line, the
//! config file, the port and the pid file. Set `DHID_TEST_ECHO=1` to copy
//! every captured line to the test's stderr as it arrives.

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::procs::{self, TAG_VAR};
use super::tmp::TempDir;
use super::{free_udp_port, wait_until};

/// The dhid binary under test: the one cargo built for this run, or
/// another build named by DHID_TEST_BINARY (scripts/test runs the
/// real-dhisd tests once more with the static build that way).
pub fn binary() -> PathBuf {
    // Absolute: the tests run dhid in a temporary directory.
    let path = std::env::var_os("DHID_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dhid")));
    std::path::absolute(&path).unwrap_or(path)
}

/// Grace between SIGTERM and SIGKILL on drop.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Default limit for [`Dhid::run`].
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many captured lines a failing test prints.
const TAIL: usize = 60;

/// Lines read from one pipe, with the time each arrived.
struct Stream {
    lines: Mutex<Vec<(Instant, String)>>,
    cond: Condvar,
    eof: AtomicBool,
}

impl Stream {
    fn new() -> Arc<Stream> {
        Arc::new(Stream {
            lines: Mutex::new(Vec::new()),
            cond: Condvar::new(),
            eof: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Instant, String)>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `pipe` to its end in a new thread.
    fn spawn_reader(self: &Arc<Self>, pipe: impl Read + Send + 'static, name: &'static str) {
        let me = Arc::clone(self);
        let echo = std::env::var("DHID_TEST_ECHO").as_deref() == Ok("1");
        let spawned = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).to_string();
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    me.lock().push((Instant::now(), line));
                    me.cond.notify_all();
                }
                me.eof.store(true, Ordering::SeqCst);
                // Take the lock so no waiter misses the wake-up.
                drop(me.lock());
                me.cond.notify_all();
            });
        spawned.expect("cannot spawn a capture thread");
    }

    fn eof(&self) -> bool {
        self.eof.load(Ordering::SeqCst)
    }

    fn texts(&self) -> Vec<String> {
        self.lock().iter().map(|(_, l)| l.clone()).collect()
    }

    /// Waits until `done(lines)` is `Some`, the stream ends, or `timeout`.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[(Instant, String)]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        // Bounded by the deadline; the count cap guards against a storm of
        // spurious wake-ups.
        for _ in 0..1_000_000 {
            if let Some(v) = done(&guard) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline || self.eof() {
                return None;
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            guard = self
                .cond
                .wait_timeout(guard, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        None
    }
}

/// A child process whose stdout and stderr are captured line by line; on
/// drop it gets SIGTERM, then SIGKILL, and so does every process it left
/// behind (found by the harness tag, e.g. hook commands).
pub struct Captured {
    child: Child,
    pid: i32,
    tag: String,
    status: Option<ExitStatus>,
    out: Arc<Stream>,
    err: Arc<Stream>,
}

impl Captured {
    /// Spawns `cmd` (stdin from /dev/null) tagged `tag` for clean-up.
    pub fn spawn(mut cmd: Command, tag: &str) -> Captured {
        cmd.env(TAG_VAR, tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let out = Stream::new();
        let err = Stream::new();
        out.spawn_reader(child.stdout.take().expect("piped stdout"), "stdout");
        err.spawn_reader(child.stderr.take().expect("piped stderr"), "stderr");
        let pid = child.id() as i32;
        Captured {
            child,
            pid,
            tag: tag.to_string(),
            status: None,
            out,
            err,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// All stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.err.texts()
    }

    /// All stderr lines so far with the time each was read.
    pub fn timed_lines(&self) -> Vec<(Instant, String)> {
        self.err.lock().clone()
    }

    /// All stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.texts()
    }

    /// The number of stderr lines so far, to pass to [`Self::wait_line_from`].
    pub fn mark(&self) -> usize {
        self.err.lock().len()
    }

    /// Stderr lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.err
            .lock()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// The first stderr line (already read or still to come) containing
    /// `needle`; `None` after `timeout` or when stderr ends without one.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_line_from(0, needle, timeout)
    }

    /// Like [`Self::wait_line`], looking only at lines from index `mark` on.
    pub fn wait_line_from(&self, mark: usize, needle: &str, timeout: Duration) -> Option<String> {
        self.err.wait_for(timeout, |lines| {
            lines
                .iter()
                .skip(mark)
                .find(|(_, l)| l.contains(needle))
                .map(|(_, l)| l.clone())
        })
    }

    /// Waits until at least `n` stderr lines contain `needle`.
    pub fn wait_line_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let enough = |lines: &[(Instant, String)]| {
            (lines.iter().filter(|(_, l)| l.contains(needle)).count() >= n).then_some(())
        };
        self.err.wait_for(timeout, enough).is_some()
    }

    /// Sends `sig` by pid; panics if the process was already reaped.
    pub fn signal(&self, sig: Signal) {
        if let Err(e) = self.try_signal(sig) {
            panic!("cannot send {sig} to {}: {e}", self.pid);
        }
    }

    /// Sends `sig` by pid; an error once the process has been reaped.
    pub fn try_signal(&self, sig: Signal) -> nix::Result<()> {
        if self.status.is_some() {
            // Reaped: the pid may belong to someone else by now.
            return Err(nix::errno::Errno::ESRCH);
        }
        kill(Pid::from_raw(self.pid), sig)
    }

    /// True until the process has exited.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit status if the process has exited (reaping it).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits for the process to exit, then (up to 1 s) for its output to be
    /// read to the end; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, Duration::from_millis(10), || {
            self.poll_exit().is_some()
        });
        let st = self.status?;
        let (out, err) = (&self.out, &self.err);
        wait_until(Duration::from_secs(1), Duration::from_millis(5), || {
            out.eof() && err.eof()
        });
        Some(st)
    }

    /// SIGTERM, SIGKILL after `grace`, reap; then end what it left behind.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.poll_exit().is_none() {
            let _ = self.try_signal(Signal::SIGTERM);
            if self.wait_exit(grace).is_none() {
                let _ = self.try_signal(Signal::SIGKILL);
                self.wait_exit(Duration::from_secs(2));
            }
        }
        let left = procs::end_tagged(&self.tag, Duration::from_secs(1));
        if !left.is_empty() {
            eprintln!("warning: processes of {} still alive: {left:?}", self.tag);
        }
        self.status
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        self.terminate(STOP_GRACE);
        if std::thread::panicking() {
            let lines = self.lines();
            let from = lines.len().saturating_sub(TAIL);
            eprintln!(
                "--- stderr of pid {} (last {} lines) ---",
                self.pid,
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            eprintln!("--- end ---");
        }
    }
}

/// dhid under test: `dhid -F -f CONF -p PORT -P PIDFILE [extra...]`.
pub struct Dhid {
    proc: Captured,
    port: u16,
    conf: PathBuf,
    pidfile: PathBuf,
    // Last field: removed after the process is gone.
    dir: TempDir,
}

impl Dhid {
    /// Starts dhid on a free port with `conf_text` as its config (0600).
    pub fn start(conf_text: &str, extra_args: &[&str]) -> Dhid {
        Dhid::start_on_port(conf_text, free_udp_port(), extra_args)
    }

    /// Like [`Dhid::start`] on a given port (e.g. one freed by a previous
    /// dhid that a test wants to reuse).
    pub fn start_on_port(conf_text: &str, port: u16, extra_args: &[&str]) -> Dhid {
        assert_ne!(port, super::FORBIDDEN_PORT, "port 58800 is off limits");
        let dir = TempDir::new("dhid");
        let conf = dir.write_mode("dhid.conf", conf_text, 0o600);
        let pidfile = dir.join("dhid.pid");
        let mut cmd = Command::new(binary());
        cmd.arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(port.to_string());
        cmd.arg("-P")
            .arg(&pidfile)
            .args(extra_args)
            .current_dir(dir.path());
        let proc = Captured::spawn(cmd, &dir.path().display().to_string());
        Dhid {
            proc,
            port,
            conf,
            pidfile,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pidfile(&self) -> PathBuf {
        self.pidfile.clone()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.conf.clone()
    }

    /// The daemon's private directory (also its working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file (keeping mode 0600); follow with SIGHUP.
    pub fn rewrite_conf(&self, conf_text: &str) {
        self.dir.write_mode("dhid.conf", conf_text, 0o600);
    }

    /// The pid the daemon wrote to its pid file, if any yet.
    pub fn pidfile_pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs dhid once with `args` (no config written, nothing added) and
    /// returns its output; panics if it runs longer than 10 s.
    pub fn run(args: &[&str]) -> Output {
        Dhid::run_timeout(args, RUN_TIMEOUT)
    }

    /// [`Dhid::run`] with another time limit.
    pub fn run_timeout(args: &[&str], timeout: Duration) -> Output {
        let dir = TempDir::new("dhid-run");
        let tag = dir.path().display().to_string();
        let binary = binary();
        let mut child = Command::new(&binary)
            .args(args)
            .current_dir(dir.path())
            .env(TAG_VAR, &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let out = read_all(child.stdout.take().expect("piped stdout"));
        let err = read_all(child.stderr.take().expect("piped stderr"));
        let mut status = None;
        wait_until(timeout, Duration::from_millis(10), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        procs::end_tagged(&tag, Duration::from_millis(500));
        let Some(status) = status else {
            panic!("dhid {args:?} still running after {timeout:?}");
        };
        // The pipes are at their end once the process and its children are.
        let stdout = out.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        let stderr = err.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// Reads `pipe` to its end in a new thread; the bytes come on the channel.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

impl Deref for Dhid {
    type Target = Captured;

    fn deref(&self) -> &Captured {
        &self.proc
    }
}

impl DerefMut for Dhid {
    fn deref_mut(&mut self) -> &mut Captured {
        &mut self.proc
    }
}
