//! The poll loop: one UDP socket, one timer on CLOCK_BOOTTIME, the signal
//! pipe and the resolver, around the I/O-free engine. It sleeps until a
//! datagram, a signal, a name or the next deadline; nothing wakes it
//! periodically.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use log::{debug, error, info, trace, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{self, Hook, RecordConfig};
use crate::engine::Engine;
use crate::hooks::{self, Facts, Hooks, Kind};
use crate::notify;
use crate::record::{Event, OfflineReason, Policy, Time};
use crate::resolver::Resolver;
use crate::signals::{Sig, Signals};

/// Receive buffer asked for: room for the answers to a burst of logins.
const RCVBUF: usize = 4 << 20;

/// Datagrams sent per turn of the loop. An answer takes about 1 KiB of
/// receive buffer (the kernel's per-datagram overhead), so this many
/// in flight fit the buffer many times over.
const SEND_BATCH: usize = 256;

const TRIM_AFTER: Duration = Duration::from_millis(500);

/// The clock of every deadline: monotonic, and counting suspended time, so
/// that after a resume dhid knows the server has timed it out.
pub fn now() -> Time {
    let ts =
        clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME exists on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// Bind the one UDP socket every datagram of dhid leaves from.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    // As root the limit of net.core.rmem_max does not apply.
    let force = nix::sys::socket::sockopt::RcvBufForce;
    if nix::sys::socket::setsockopt(&socket, force, &RCVBUF).is_err() {
        let _ = socket.set_recv_buffer_size(RCVBUF);
    }
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

/// A record as the loop sees it: for log lines and hooks.
struct Entry {
    hostid: u32,
    line: usize,
    on_cmd: Option<Box<Hook>>,
    off_cmd: Option<Box<Hook>>,
}

impl From<RecordConfig> for Entry {
    fn from(c: RecordConfig) -> Entry {
        Entry {
            hostid: c.hostid,
            line: c.line,
            on_cmd: c.on_cmd.map(Box::new),
            off_cmd: c.off_cmd.map(Box::new),
        }
    }
}

/// The loop's table, in a buffer of its own: collecting in place would
/// keep the much larger buffer of the configurations alive.
fn entries(configs: Vec<RecordConfig>) -> Vec<Entry> {
    let mut table = Vec::with_capacity(configs.len());
    table.extend(configs.into_iter().map(Entry::from));
    table
}

pub struct Daemon {
    socket: UdpSocket,
    timer: TimerFd,
    signals: Signals,
    resolver: Resolver,
    engine: Engine,
    /// What the loop needs of each record beyond the engine: the engine
    /// holds the protocol state, and the configuration is not kept.
    table: Vec<Entry>,
    config_path: PathBuf,
    hooks: Hooks,
    shutdown_by: Option<Time>,
    /// When to give back the configuration's heap and drop start-up code
    /// pages: once things have settled, off the way to the first logins,
    /// which would otherwise fault the pages back in one by one.
    trim_at: Option<Time>,
    /// The deadline the timer is set to, so that a wake-up that changes no
    /// deadline costs no system call to set it again.
    armed: Option<Time>,
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut bytes);
    }
    u64::from_ne_bytes(bytes) ^ u64::from(std::process::id())
}

impl Daemon {
    pub fn new(
        socket: UdpSocket,
        configs: Vec<RecordConfig>,
        config_path: PathBuf,
        port: u16,
    ) -> io::Result<Daemon> {
        let timer = TimerFd::new(
            ClockId::CLOCK_BOOTTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let engine = Engine::new(&configs, port, seed(), Policy::default(), now());
        Ok(Daemon {
            socket,
            timer,
            signals: Signals::install()?,
            resolver: Resolver::new()?,
            engine,
            table: entries(configs),
            config_path,
            hooks: Hooks::new(hooks::DEFAULT_TIMEOUT),
            shutdown_by: None,
            trim_at: Some(now().saturating_add(TRIM_AFTER)),
            armed: None,
        })
    }

    /// The first turn's sends: the first ECHO_REQs leave at once, and the
    /// caller finishes start-up while their answers travel. `run` goes on
    /// from there (and does this itself when it was not called).
    pub fn begin(&mut self) {
        let now = now();
        self.engine.handle_timeout(now);
        self.drain_engine(now);
        self.flush_outbox();
    }

    /// Run until TERM or INT has taken every record offline and the hooks
    /// are done.
    pub fn run(&mut self) -> io::Result<()> {
        let mut woke = now();
        self.engine.handle_timeout(woke);
        loop {
            self.drain_engine(woke);
            self.flush_outbox();
            if self.finished() {
                return Ok(());
            }
            self.arm_timer()?;
            let (sock, sigs, names) = self.wait()?;

            // One clock read per wake-up serves everything it handles.
            woke = now();
            if sigs {
                self.on_signals(woke);
            }
            if sock {
                self.receive(woke);
            }
            if names {
                for ((record, server), addrs) in self.resolver.answers() {
                    self.engine.handle_resolved(record, server, addrs);
                }
            }
            self.engine.handle_timeout(woke);
            // Exited hooks are reaped on SIGCHLD; here only the overdue
            // ones, so that a wake-up for a datagram costs no waitpid per
            // running hook.
            if self.hooks.next_deadline().is_some_and(|d| d <= woke) {
                self.hooks.check(woke);
            }
            if self.trim_at.is_some_and(|at| at <= woke) {
                self.trim_at = None;
                crate::memory::trim_heap();
                crate::memory::trim_code_pages();
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Time> {
        let hooks = self.hooks.next_deadline();
        let engine = self.engine.poll_timeout();
        let shutdown = self.shutdown_by;
        [hooks, engine, shutdown, self.trim_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn arm_timer(&mut self) -> io::Result<()> {
        let next = self.next_deadline();
        if next == self.armed {
            return Ok(());
        }
        self.armed = next;
        match next {
            Some(at) => {
                // Zero would disarm the timer; a deadline in the past fires
                // at once anyway.
                let at = at.max(Duration::from_nanos(1));
                let spec = TimeSpec::from_duration(at);
                let flags = TimerSetTimeFlags::TFD_TIMER_ABSTIME;
                self.timer.set(Expiration::OneShot(spec), flags)?;
            }
            None => self.timer.unset()?,
        }
        Ok(())
    }

    /// Sleep until something happens. Returns which of the socket, the
    /// signal pipe and the resolver have news.
    fn wait(&mut self) -> io::Result<(bool, bool, bool)> {
        let mut sock_events = PollFlags::POLLIN;
        if self.engine.has_transmits() {
            sock_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(self.socket.as_fd(), sock_events),
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
            PollFd::new(self.resolver.fd(), PollFlags::POLLIN),
            PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, true, false)),
            Err(e) => return Err(e.into()),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[3]) {
            // A one-shot timer that fired is no longer set.
            let _ = self.timer.wait();
            self.armed = None;
        }
        Ok((ready(&fds[0]), ready(&fds[1]), ready(&fds[2])))
    }

    fn receive(&mut self, now: Time) {
        let mut buf = [0u8; 2048];
        // Bounded, so that a flood cannot starve signals and timers.
        for _ in 0..4096 {
            match self.socket.recv_from(&mut buf) {
                Ok((len, SocketAddr::V4(src))) => {
                    trace!("received {len} bytes from {src}");
                    self.engine.handle_datagram(now, *src.ip(), &buf[..len]);
                }
                Ok((_, src)) => debug!("dropped datagram from {src}: not IPv4"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here.
                    debug!("receive: {e}");
                    break;
                }
            }
        }
    }

    /// Send what is queued, at most `SEND_BATCH` at a time: the loop then
    /// reads what came back before sending more, so that the answers to a
    /// burst (10 000 records starting) fit the receive buffer.
    /// The engine's queue is the only one: nothing is copied, and what the
    /// socket cannot take now goes back to the front.
    fn flush_outbox(&mut self) {
        let mut sent = 0;
        while sent < SEND_BATCH {
            let Some(t) = self.engine.poll_transmit() else {
                return;
            };
            match self.socket.send_to(t.datagram.as_bytes(), t.dest) {
                Ok(_) => {
                    trace!("sent {:?} to {}", t.datagram, t.dest);
                    sent += 1
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.engine.unsend(t);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.engine.unsend(t),
                // Network down or unreachable: the engine retries on its
                // own schedule; the log summarises repeats.
                Err(e) => warn!("cannot send to {}: {e}", t.dest),
            }
        }
    }

    fn drain_engine(&mut self, now: Time) {
        while let Some(event) = self.engine.poll_event() {
            self.on_event(event, now);
        }
    }

    fn on_event(&mut self, event: Event, now: Time) {
        match event {
            Event::Online {
                record,
                address,
                server,
            } => {
                let id = self.table[record].hostid;
                info!("[{id}] -> Online");
                debug!("[{id}] online at {server} as {address}");
                self.hook(record, Kind::On, address, server, now);
            }
            Event::Offline {
                record,
                address,
                server,
                reason,
            } => {
                let id = self.table[record].hostid;
                info!("[{id}] -> Offline ({})", reason.as_str());
                self.hook(record, Kind::Off, address, server, now);
            }
            Event::AddressChanged {
                record,
                old,
                new,
                server,
            } => {
                let id = self.table[record].hostid;
                info!("[{id}] address changed from {old} to {new}");
                self.hook(record, Kind::On, new, server, now);
            }
            Event::Refused { record, .. } => {
                let id = self.table[record].hostid;
                error!("Authentication failed for {id}, retrying ...");
            }
            Event::LowercaseAccepted { record } => {
                let c = &self.table[record];
                warn!(
                    "[{}] the server accepted HostPass only in lower case; \
                     write it in lower case in the config (record at line {})",
                    c.hostid, c.line
                );
            }
            Event::NewSession { record } => {
                let id = self.table[record].hostid;
                info!("[{id}] logged in again with a new session id");
            }
            Event::Resolve {
                record,
                server,
                host,
            } => {
                if let Err(e) = self.resolver.request(&host, (record, server)) {
                    warn!("cannot start a lookup of {host}: {e}");
                }
            }
        }
    }

    fn hook(
        &mut self,
        record: usize,
        kind: Kind,
        address: Ipv4Addr,
        server: SocketAddrV4,
        now: Time,
    ) {
        let c = &self.table[record];
        let hook = match kind {
            Kind::On => c.on_cmd.as_deref(),
            Kind::Off => c.off_cmd.as_deref(),
        };
        if let Some(hook) = hook {
            let facts = Facts {
                hostid: c.hostid,
                kind,
                address,
                server,
            };
            self.hooks.run(hook, &facts, now);
        }
    }

    fn on_signals(&mut self, now: Time) {
        for sig in self.signals.take() {
            match sig {
                Sig::Usr2 => {
                    info!("-> Offline (USR2)");
                    self.engine.take_all_offline(now, OfflineReason::Usr2);
                }
                Sig::Term | Sig::Int if self.shutdown_by.is_none() => {
                    info!("daemon exiting");
                    notify::notify("STOPPING=1");
                    self.engine.take_all_offline(now, OfflineReason::Shutdown);
                    self.shutdown_by = Some(now.saturating_add(hooks::DEFAULT_TIMEOUT));
                }
                Sig::Term | Sig::Int => {}
                Sig::Usr1 => self.report_status(now),
                Sig::Hup => self.reload(now),
                Sig::Child => self.hooks.check(now),
            }
        }
    }

    /// SIGHUP: read the configuration again. Records with the same HostID
    /// and servers keep their sessions; removed ones go offline; new ones
    /// start. A file with errors changes nothing.
    fn reload(&mut self, now: Time) {
        notify::notify("RELOADING=1");
        let path = self.config_path.display().to_string();
        match config::load(&self.config_path) {
            Err(errors) => {
                for e in &errors {
                    error!("{e}");
                }
                let count = match errors.len() {
                    1 => "1 error".to_string(),
                    n => format!("{n} errors"),
                };
                error!("{path} not reloaded: {count}; the old configuration stays");
            }
            Ok(new) => {
                for w in &new.warnings {
                    warn!("{}", w.in_file(&self.config_path));
                }
                let plan = self.engine.plan_reload(&new.records);
                self.engine.retire(now, &plan);
                // Removed records' events name the old table.
                self.drain_engine(now);
                self.engine.apply(now, &new.records, &plan);
                self.table = entries(new.records);
                crate::memory::trim_heap();
                let kept = plan.kept.iter().flatten().count();
                info!(
                    "{path} reloaded: {} records, {kept} kept, {} new, {} removed",
                    self.table.len(),
                    self.table.len() - kept,
                    plan.removed.len()
                );
            }
        }
        notify::notify("READY=1");
    }

    fn report_status(&self, now: Time) {
        let ago = |t: Time| now.saturating_sub(t).as_secs();
        for (i, c) in self.table.iter().enumerate() {
            let s = self.engine.status(i);
            let server = s.server.map_or_else(|| "-".to_string(), |s| s.to_string());
            let heard = s
                .heard
                .map_or_else(|| "never".to_string(), |h| format!("{}s ago", ago(h)));
            let next = s.next.saturating_sub(now).as_secs();
            info!(
                "[{}] {} via {server} for {}s, next send in {next}s, refresh {}s, \
                 server last heard {heard}",
                c.hostid,
                s.state,
                ago(s.since),
                s.period.as_secs()
            );
        }
    }

    /// After TERM: done once the OFFLINE_REQ copies are out and the hooks
    /// have finished, or the hook timeout has passed.
    fn finished(&mut self) -> bool {
        let Some(by) = self.shutdown_by else {
            return false;
        };
        if self.engine.sending_offline() || self.engine.has_transmits() {
            return false;
        }
        if self.hooks.running() > 0 && now() < by {
            return false;
        }
        self.hooks.kill_all();
        true
    }
}
