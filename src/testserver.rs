//! A small DHIS R5 server of our own, for demos, integration tests and
//! benchmarks. It is never installed.
//!
//! It behaves like dhisd 5.3-3 as PROTOCOL.md section 8 describes:
//!
//! * it listens on one UDP socket and sends every datagram from a second
//!   one (an ephemeral port), to (source IP of the request, `rport` of the
//!   request), with its own serial counter, version 53 and its listening
//!   port as `rport` (sections 1 and 2);
//! * ECHO_REQ is always answered; from a host's registered IP with its
//!   hostid it also counts as presence (the "ECHO_REQ hack", 8.3);
//! * AUTH_REQ authenticates by password (15 characters compared) or by the
//!   QRC challenge of section 7; a re-authentication while online from the
//!   same address keeps the session id (8.1);
//! * session ids are shared by every host going online within the same
//!   wall-clock second, as dhisd's time-seeded generator does (8.2);
//! * a scan every minute sends CHECK_REQ to overdue hosts and drops a host
//!   whose fourth check went unanswered (8.3); CHECK_ACK and OFFLINE_REQ are
//!   validated by source IP and session id (8.4, 8.5).
//!
//! Knobs a test needs and dhisd lacks: a time scale for refresh periods and
//! the scan, unique session ids, a silent mode, a restart, a per-host
//! denial, and records of every transition and arrival.
//!
//! Where dhisd reads stale buffer bytes (truncated datagrams, 8.4-8.6) this
//! server drops the datagram instead: the codec refuses short datagrams.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use num_bigint::BigUint;
use socket2::{Domain, Protocol, Socket, Type};

use crate::qrc;
use crate::wire::{self, Body, Datagram, Header, Message, NUMBER_LEN, Password};

/// The version dhisd 5.3 puts in its headers.
pub const SERVER_VERSION: u32 = 53;

/// Refresh proposals dhisd accepts; anything else becomes 120 (8.3).
pub const MIN_REFRESH: u32 = 60;
pub const MAX_REFRESH: u32 = 21600;
pub const DEFAULT_REFRESH: u32 = 120;

/// A host is dropped at the scan after its fourth unanswered CHECK_REQ.
pub const MAX_FAILURES: u32 = 4;

/// dhisd compares at most this many characters of the password field.
const PASSWORD_CMP_LEN: usize = 15;

/// dhisd ignores versions below 30 and treats 30-39 as R3 (section 2);
/// R5 messages it accepted carried 40 or more (8.4, E4).
const MIN_VERSION: u32 = 40;

/// Longest the server thread blocks, so that a stop request is seen soon.
const POLL: Duration = Duration::from_millis(50);

/// Room for a burst of 10 000 logins queued while the thread is busy. The
/// kernel caps it at rmem_max unless we may force it.
const RECV_BUFFER: usize = 16 << 20;

/// Stored log lines kept at most; the oldest go first.
const LOG_CAPACITY: usize = 100_000;

const SID_MASK: u32 = 0x7fff_ffff;

/// How a host authenticates, as in dhis.db.
#[derive(Clone, PartialEq, Eq)]
pub enum HostAuth {
    /// `HostPass`: compared over at most 15 characters, case-sensitively.
    Password(String),
    /// `AuthN`: the public modulus N = P·Q, at most 200 digits.
    Qrc { n: BigUint },
}

impl fmt::Debug for HostAuth {
    // Even a test password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAuth::Password(_) => f.write_str("Password(..)"),
            HostAuth::Qrc { n } => write!(f, "Qrc({} digit modulus)", n.to_str_radix(10).len()),
        }
    }
}

/// How session ids are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidPolicy {
    /// Like dhisd: every host going online within the same window of
    /// wall-clock time (one second for dhisd) gets the same sid.
    SharedWithin(Duration),
    /// A distinct sid for every session (until 2^31 sessions).
    Unique,
}

/// Receives every human-readable log line as it is written. It runs with
/// the server state locked, so it must not call back into `TestServer`.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What to start. `Config::default()` listens on 127.0.0.1 on a free port
/// with dhisd's timing and no hosts.
#[derive(Clone)]
pub struct Config {
    /// IPv4 only: R5 carries IPv4 addresses. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// The host table in dhis.db order (OFFLINE_REQ picks the first match).
    pub hosts: Vec<(u32, HostAuth)>,
    /// Time between scans; dhisd: 60 s, phase = start or restart.
    pub scan_interval: Duration,
    /// Length of one "second" of a refresh period: a held refresh of 60
    /// means 60 units. Lets tests run dhisd's timing faster.
    pub refresh_unit: Duration,
    pub sids: SidPolicy,
    /// How many datagram arrivals to keep (oldest dropped); 0 keeps none.
    pub arrival_capacity: usize,
    /// Drop datagrams from outside 127.0.0.0/8, so that nothing is ever
    /// sent anywhere else.
    pub loopback_only: bool,
    pub log_sink: Option<LogSink>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            hosts: Vec::new(),
            scan_interval: Duration::from_secs(60),
            refresh_unit: Duration::from_secs(1),
            sids: SidPolicy::SharedWithin(Duration::from_secs(1)),
            arrival_capacity: 0,
            loopback_only: true,
            log_sink: None,
        }
    }
}

impl Config {
    pub fn new(bind: SocketAddr) -> Config {
        Config {
            bind,
            ..Config::default()
        }
    }

    /// Add (or replace) a host.
    pub fn host(mut self, hostid: u32, auth: HostAuth) -> Config {
        match self.hosts.iter_mut().find(|(id, _)| *id == hostid) {
            Some(entry) => entry.1 = auth,
            None => self.hosts.push((hostid, auth)),
        }
        self
    }

    pub fn password(self, hostid: u32, password: &str) -> Config {
        self.host(hostid, HostAuth::Password(password.to_owned()))
    }

    pub fn qrc(self, hostid: u32, n: BigUint) -> Config {
        self.host(hostid, HostAuth::Qrc { n })
    }
}

/// Why a host went offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineReason {
    /// A valid OFFLINE_REQ (source IP and sid matched).
    OfflineReq,
    /// `failed 4 checks`.
    Timeout,
    /// `TestServer::restart` forgot the session.
    Restart,
}

/// A transition of a host at the server, timed when the datagram causing
/// it arrived (or when the scan ran).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    Online {
        hostid: u32,
        addr: Ipv4Addr,
        sid: u32,
        refresh: u32,
        at: Instant,
    },
    /// Re-authenticated while online from another address; sid kept.
    Update {
        hostid: u32,
        addr: Ipv4Addr,
        at: Instant,
    },
    Offline {
        hostid: u32,
        addr: Ipv4Addr,
        sid: u32,
        reason: OfflineReason,
        at: Instant,
    },
    /// An AUTH_DENY was sent (unknown host, bad password or QRC answer).
    Denied {
        hostid: u32,
        addr: Ipv4Addr,
        at: Instant,
    },
}

impl ServerEvent {
    pub fn hostid(&self) -> u32 {
        match *self {
            ServerEvent::Online { hostid, .. }
            | ServerEvent::Update { hostid, .. }
            | ServerEvent::Offline { hostid, .. }
            | ServerEvent::Denied { hostid, .. } => hostid,
        }
    }

    pub fn at(&self) -> Instant {
        match *self {
            ServerEvent::Online { at, .. }
            | ServerEvent::Update { at, .. }
            | ServerEvent::Offline { at, .. }
            | ServerEvent::Denied { at, .. } => at,
        }
    }

    pub fn is_online_of(&self, id: u32) -> bool {
        matches!(*self, ServerEvent::Online { hostid, .. } if hostid == id)
    }

    pub fn is_offline_of(&self, id: u32) -> bool {
        matches!(*self, ServerEvent::Offline { hostid, .. } if hostid == id)
    }
}

/// What the server holds for an online host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub sid: u32,
    pub addr: Ipv4Addr,
    /// Where CHECK_REQs go: the `rport` of the authenticating request.
    pub rport: u16,
    pub refresh: u32,
    pub failures: u32,
    pub since: Instant,
    pub last_seen: Instant,
}

/// One datagram as it arrived (recorded only if `arrival_capacity` > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Instant,
    pub src: SocketAddrV4,
    pub opcode: u32,
    pub hostid: u32,
}

/// Datagram counts since start (not reset by `restart`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: HashMap<u32, u64>,
    pub sent: HashMap<u32, u64>,
    /// Too short or unknown opcode.
    pub undecodable: u64,
    /// Dropped unread: silent mode, or a sender outside loopback.
    pub dropped: u64,
    pub send_errors: u64,
}

impl Counters {
    pub fn received(&self, opcode: u32) -> u64 {
        self.received.get(&opcode).copied().unwrap_or(0)
    }

    pub fn sent(&self, opcode: u32) -> u64 {
        self.sent.get(&opcode).copied().unwrap_or(0)
    }
}

/// The running server. Dropping it stops the thread.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: Config) -> io::Result<TestServer> {
        let bind = validate(&config)?;
        let listen = listen_socket(bind)?;
        let addr = match listen.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let reply = UdpSocket::bind(SocketAddrV4::new(*bind.ip(), 0))?;
        listen.set_read_timeout(Some(poll_interval(config.scan_interval)))?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config, addr.port())),
            changed: Condvar::new(),
            send_errors: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            thread::Builder::new()
                .name("dhis-testserver".into())
                .spawn(move || serve(&shared, &listen, &reply, &stop))?
        };
        Ok(TestServer {
            shared,
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub fn events(&self) -> Vec<ServerEvent> {
        self.shared.lock().events.clone()
    }

    /// The number of events so far: a cursor for `wait_for_from`.
    pub fn event_count(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// The first event, past or future, that matches; `None` on timeout.
    pub fn wait_for(
        &self,
        pred: impl FnMut(&ServerEvent) -> bool,
        timeout: Duration,
    ) -> Option<ServerEvent> {
        self.wait_for_from(0, pred, timeout)
    }

    /// Like `wait_for`, looking only at events from index `from` on.
    pub fn wait_for_from(
        &self,
        from: usize,
        mut pred: impl FnMut(&ServerEvent) -> bool,
        timeout: Duration,
    ) -> Option<ServerEvent> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        let mut next = from;
        loop {
            let start = next.min(state.events.len());
            if let Some(found) = state.events[start..].iter().find(|e| pred(e)) {
                return Some(*found);
            }
            next = state.events.len();
            state = self.shared.wait(state, deadline)?;
        }
    }

    /// Wait until exactly `count` hosts are online; false on timeout.
    pub fn wait_online_count(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.online != count {
            match self.shared.wait(state, deadline) {
                Some(s) => state = s,
                None => return false,
            }
        }
        true
    }

    pub fn is_online(&self, hostid: u32) -> bool {
        self.session(hostid).is_some()
    }

    pub fn session(&self, hostid: u32) -> Option<SessionInfo> {
        let state = self.shared.lock();
        let index = *state.by_id.get(&hostid)?;
        state.hosts[index].session.as_ref().map(Session::info)
    }

    pub fn online_count(&self) -> usize {
        self.shared.lock().online
    }

    /// Lines like dhisd's log file: `-> online 1000 [127.0.0.1]`.
    pub fn log_lines(&self) -> Vec<String> {
        self.shared.lock().lines.iter().cloned().collect()
    }

    pub fn counters(&self) -> Counters {
        let mut counters = self.shared.lock().counters.clone();
        counters.send_errors = self.shared.send_errors.load(Ordering::Relaxed);
        counters
    }

    /// The kept arrivals, oldest first (see `Config::arrival_capacity`).
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.lock().arrivals.iter().copied().collect()
    }

    /// When the last datagram with this opcode arrived (always recorded).
    pub fn last_arrival(&self, opcode: u32) -> Option<Instant> {
        self.shared.lock().last_arrival.get(&opcode).copied()
    }

    /// Silent: every datagram is dropped unread, nothing is sent and scans
    /// are skipped, like a stopped dhisd. Sessions are kept.
    pub fn set_silent(&self, silent: bool) {
        self.shared.lock().silent = silent;
    }

    /// Forget every session and challenge, restart the serial counter and
    /// the scan phase, like a restarted dhisd (same port, same hosts).
    pub fn restart(&self) {
        self.shared.lock().restart(Instant::now());
        self.shared.changed.notify_all();
    }

    /// Deny every AUTH_REQ of this host, whatever it sends.
    pub fn set_deny(&self, hostid: u32, deny: bool) {
        let mut state = self.shared.lock();
        if let Some(&index) = state.by_id.get(&hostid) {
            state.hosts[index].deny = deny;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the thread already failed whoever was waiting.
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestServer({})", self.addr)
    }
}

fn validate(config: &Config) -> io::Result<SocketAddrV4> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let SocketAddr::V4(bind) = config.bind else {
        return Err(invalid("the DHIS R5 protocol is IPv4 only".into()));
    };
    for (hostid, auth) in &config.hosts {
        if let HostAuth::Qrc { n } = auth {
            let digits = n.to_str_radix(10).len();
            if *n < BigUint::from(2u32) || digits > NUMBER_LEN {
                return Err(invalid(format!("host {hostid}: N must be 2 to 200 digits")));
            }
        }
    }
    if config.scan_interval.is_zero() || config.refresh_unit.is_zero() {
        return Err(invalid(
            "scan interval and refresh unit must not be zero".into(),
        ));
    }
    Ok(bind)
}

fn listen_socket(bind: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    if socket.recv_buffer_size()? < RECV_BUFFER {
        // Only with CAP_NET_ADMIN; otherwise rmem_max has to do.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &RECV_BUFFER,
        );
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// Short enough for the scan to run on time and a stop to be seen soon.
fn poll_interval(scan: Duration) -> Duration {
    (scan / 4).clamp(Duration::from_millis(1), POLL)
}

/// State shared by the server thread and the handle.
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever events were added.
    changed: Condvar,
    send_errors: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the test server thread panicked")
    }

    /// Wait for a change until `deadline`; `None` once it has passed.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())?;
        let (guard, _) = self
            .changed
            .wait_timeout(guard, left)
            .expect("the test server panicked");
        Some(guard)
    }
}

/// The server thread: one datagram at a time, then the scan if it is due.
fn serve(shared: &Shared, listen: &UdpSocket, reply: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let received = listen.recv_from(&mut buf);
        let at = Instant::now();

        let notify = {
            let mut state = shared.lock();
            let before = state.events.len();
            match received {
                Ok((len, src)) => state.on_datagram(&buf[..len], src, at, &mut out),
                Err(e) if is_timeout(&e) => {}
                Err(e) => log::warn!("test server: receive failed: {e}"),
            }
            state.scan_if_due(Instant::now(), &mut out);
            state.events.len() != before
        };
        if notify {
            shared.changed.notify_all();
        }

        for (to, datagram) in out.drain(..) {
            if reply.send_to(datagram.as_bytes(), to).is_err() {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

type Outgoing = (SocketAddrV4, Datagram);

struct Host {
    hostid: u32,
    auth: HostAuth,
    deny: bool,
    session: Option<Session>,
    challenge: Option<Challenge>,
}

struct Session {
    sid: u32,
    addr: Ipv4Addr,
    rport: u16,
    refresh: u32,
    failures: u32,
    since: Instant,
    last_seen: Instant,
}

impl Session {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            sid: self.sid,
            addr: self.addr,
            rport: self.rport,
            refresh: self.refresh,
            failures: self.failures,
            since: self.since,
            last_seen: self.last_seen,
        }
    }
}

/// A QRC challenge sent and not yet answered.
struct Challenge {
    x: BigUint,
    refresh: u32,
}

/// Everything the server knows; the thread and the handle take turns.
struct State {
    port: u16,
    hosts: Vec<Host>,
    by_id: HashMap<u32, usize>,
    /// Online hosts by (address, sid), in table order, for OFFLINE_REQ.
    by_sid: HashMap<(Ipv4Addr, u32), BTreeSet<usize>>,
    online: usize,
    serial: u32,
    sids: SidGen,
    rng: Rng,
    silent: bool,
    loopback_only: bool,
    scan_interval: Duration,
    refresh_unit: Duration,
    next_scan: Instant,
    events: Vec<ServerEvent>,
    lines: VecDeque<String>,
    log_sink: Option<LogSink>,
    counters: Counters,
    arrivals: VecDeque<Arrival>,
    arrival_capacity: usize,
    last_arrival: HashMap<u32, Instant>,
}

impl State {
    fn new(config: Config, port: u16) -> State {
        let mut hosts = Vec::with_capacity(config.hosts.len());
        let mut by_id = HashMap::with_capacity(config.hosts.len());
        for (hostid, auth) in config.hosts {
            by_id.insert(hostid, hosts.len());
            hosts.push(Host {
                hostid,
                auth,
                deny: false,
                session: None,
                challenge: None,
            });
        }
        let mut rng = Rng::from_os();
        State {
            port,
            hosts,
            by_id,
            by_sid: HashMap::new(),
            online: 0,
            serial: 0,
            sids: SidGen {
                policy: config.sids,
                salt: rng.next() as u32,
                count: 0,
            },
            rng,
            silent: false,
            loopback_only: config.loopback_only,
            scan_interval: config.scan_interval,
            refresh_unit: config.refresh_unit,
            next_scan: Instant::now() + config.scan_interval,
            events: Vec::new(),
            lines: VecDeque::new(),
            log_sink: config.log_sink,
            counters: Counters::default(),
            arrivals: VecDeque::with_capacity(config.arrival_capacity.min(1 << 16)),
            arrival_capacity: config.arrival_capacity,
            last_arrival: HashMap::new(),
        }
    }

    fn on_datagram(&mut self, data: &[u8], src: SocketAddr, at: Instant, out: &mut Vec<Outgoing>) {
        let src = match src {
            SocketAddr::V4(v4) if !self.silent && self.accepts(v4) => v4,
            _ => {
                self.counters.dropped += 1;
                return;
            }
        };

        let msg = match wire::decode(data) {
            Ok(msg) => msg,
            Err(e) => {
                log::debug!("test server: from {src}: {e}");
                self.counters.undecodable += 1;
                return;
            }
        };
        self.record_arrival(&msg.header, src, at);
        if msg.header.version < MIN_VERSION {
            log::debug!(
                "test server: from {src}: version {} ignored",
                msg.header.version
            );
            return;
        }

        if let Some(reply) = self.dispatch(&msg, src, at) {
            out.push(reply);
        }
    }

    fn accepts(&self, src: SocketAddrV4) -> bool {
        !self.loopback_only || src.ip().is_loopback()
    }

    fn record_arrival(&mut self, header: &Header, src: SocketAddrV4, at: Instant) {
        *self.counters.received.entry(header.opcode).or_insert(0) += 1;
        self.last_arrival.insert(header.opcode, at);
        if self.arrival_capacity == 0 {
            return;
        }
        if self.arrivals.len() == self.arrival_capacity {
            self.arrivals.pop_front();
        }
        let (opcode, hostid) = (header.opcode, header.hostid);
        self.arrivals.push_back(Arrival {
            at,
            src,
            opcode,
            hostid,
        });
    }

    fn dispatch(&mut self, msg: &Message, src: SocketAddrV4, at: Instant) -> Option<Outgoing> {
        let header = &msg.header;
        match msg.body {
            Body::EchoReq => Some(self.on_echo_req(header, src, at)),
            Body::AuthReq { password, refresh } => {
                Some(self.on_auth_req(header, &password, refresh, src, at))
            }
            Body::AuthSx(answer) => Some(self.on_auth_sx(header, &answer, src, at)),
            Body::CheckAck { sid } => {
                self.on_check_ack(header.hostid, sid, *src.ip(), at);
                None
            }
            Body::OfflineReq { sid } => {
                self.on_offline_req(sid, *src.ip(), at);
                None
            }
            // ECHO_ACK and the server's own opcodes: nothing to do.
            _ => None,
        }
    }

    fn host_index(&self, hostid: u32) -> Option<usize> {
        self.by_id.get(&hostid).copied()
    }

    fn on_echo_req(&mut self, header: &Header, src: SocketAddrV4, at: Instant) -> Outgoing {
        // The "ECHO_REQ hack (v5.5 compat)": presence, but only from the
        // registered address and for the host's own hostid.
        if let Some(index) = self.host_index(header.hostid) {
            if let Some(session) = &mut self.hosts[index].session {
                if session.addr == *src.ip() {
                    session.last_seen = at;
                }
            }
        }
        let body = Body::EchoAck {
            echo_serial: header.serial,
        };
        self.reply(src, header, body)
    }

    fn on_auth_req(
        &mut self,
        header: &Header,
        password: &Password,
        refresh: u32,
        src: SocketAddrV4,
        at: Instant,
    ) -> Outgoing {
        let Some(index) = self
            .host_index(header.hostid)
            .filter(|&i| !self.hosts[i].deny)
        else {
            return self.deny(src, header, at);
        };

        let host = &mut self.hosts[index];
        match &host.auth {
            HostAuth::Password(stored) if password_matches(stored, password) => {
                self.accept(index, header, src, refresh, at)
            }
            HostAuth::Password(_) => self.deny(src, header, at),
            HostAuth::Qrc { n } => {
                let x = random_square(&mut self.rng, n);
                let y = qrc::to_number(&(&x * &x % n));
                host.challenge = Some(Challenge { x, refresh });
                self.reply(src, header, Body::AuthSy(y))
            }
        }
    }

    fn on_auth_sx(
        &mut self,
        header: &Header,
        answer: &wire::Number,
        src: SocketAddrV4,
        at: Instant,
    ) -> Outgoing {
        let index = self.host_index(header.hostid);
        // A challenge is good for one answer, right or wrong.
        let challenge = index.and_then(|i| self.hosts[i].challenge.take());
        match (index, challenge) {
            (Some(index), Some(ch)) if qrc::parse_number(answer) == ch.x => {
                self.accept(index, header, src, ch.refresh, at)
            }
            _ => self.deny(src, header, at),
        }
    }

    /// Authenticated: online (or still online) and acknowledged.
    fn accept(
        &mut self,
        index: usize,
        header: &Header,
        src: SocketAddrV4,
        proposal: u32,
        at: Instant,
    ) -> Outgoing {
        let addr = *src.ip();
        let rport = header.rport as u16;
        let sid = match &self.hosts[index].session {
            // No on_add: same sid, no event, held refresh kept.
            Some(session) if session.addr == addr => session.sid,
            Some(_) => self.move_session(index, addr, rport, at),
            None => self.go_online(index, addr, rport, proposal, at),
        };
        self.reply(src, header, Body::AuthAck { sid, address: addr })
    }

    fn deny(&mut self, src: SocketAddrV4, header: &Header, at: Instant) -> Outgoing {
        let (hostid, addr) = (header.hostid, *src.ip());
        self.events.push(ServerEvent::Denied { hostid, addr, at });
        self.reply(src, header, Body::AuthDeny)
    }

    fn on_check_ack(&mut self, hostid: u32, sid: u32, addr: Ipv4Addr, at: Instant) {
        let Some(index) = self.host_index(hostid) else {
            return;
        };
        if let Some(session) = &mut self.hosts[index].session {
            if session.addr == addr && session.sid == sid {
                session.last_seen = at;
                session.failures = 0;
            }
        }
    }

    fn on_offline_req(&mut self, sid: u32, addr: Ipv4Addr, at: Instant) {
        // Assumed, not observed: with a shared sid the first host in the
        // table goes (PROTOCOL.md 0.1).
        let first = self
            .by_sid
            .get(&(addr, sid))
            .and_then(|set| set.first().copied());
        match first {
            Some(index) => self.go_offline(index, OfflineReason::OfflineReq, at),
            None => log::debug!("test server: Security: Invalid addr or sid ({addr}, {sid})"),
        }
    }

    fn go_online(
        &mut self,
        index: usize,
        addr: Ipv4Addr,
        rport: u16,
        proposal: u32,
        at: Instant,
    ) -> u32 {
        let sid = self.sids.next(SystemTime::now());
        let refresh = held_refresh(proposal);
        let session = Session {
            sid,
            addr,
            rport,
            refresh,
            failures: 0,
            since: at,
            last_seen: at,
        };
        self.hosts[index].session = Some(session);
        self.by_sid.entry((addr, sid)).or_default().insert(index);
        self.online += 1;

        let hostid = self.hosts[index].hostid;
        self.events.push(ServerEvent::Online {
            hostid,
            addr,
            sid,
            refresh,
            at,
        });
        self.log(format!("-> online {hostid} [{addr}]"));
        sid
    }

    /// Re-authenticated from another address while online.
    fn move_session(&mut self, index: usize, addr: Ipv4Addr, rport: u16, at: Instant) -> u32 {
        let hostid = self.hosts[index].hostid;
        let session = self.hosts[index]
            .session
            .as_mut()
            .expect("called for online hosts");
        let old = (session.addr, session.sid);
        (session.addr, session.rport, session.last_seen) = (addr, rport, at);
        let sid = session.sid;

        self.unindex(old, index);
        self.by_sid.entry((addr, sid)).or_default().insert(index);
        self.events.push(ServerEvent::Update { hostid, addr, at });
        self.log(format!("-> update {hostid} [{addr}]"));
        sid
    }

    fn go_offline(&mut self, index: usize, reason: OfflineReason, at: Instant) {
        let Some(session) = self.hosts[index].session.take() else {
            return;
        };
        self.unindex((session.addr, session.sid), index);
        self.online -= 1;

        let (hostid, addr, sid) = (self.hosts[index].hostid, session.addr, session.sid);
        self.events.push(ServerEvent::Offline {
            hostid,
            addr,
            sid,
            reason,
            at,
        });
        // dhisd's log shows nothing for the hosts it drops on SIGTERM.
        if reason != OfflineReason::Restart {
            self.log(format!("-> offline {hostid} [{addr}]"));
        }
    }

    fn unindex(&mut self, key: (Ipv4Addr, u32), index: usize) {
        if let Some(set) = self.by_sid.get_mut(&key) {
            set.remove(&index);
            if set.is_empty() {
                self.by_sid.remove(&key);
            }
        }
    }

    fn scan_if_due(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if now < self.next_scan {
            return;
        }
        // Keep the phase; scans missed while busy are not made up.
        while self.next_scan <= now {
            self.next_scan += self.scan_interval;
        }
        if !self.silent {
            self.scan(now, out);
        }
    }

    /// dhisd's scan (8.3): an overdue host gets a CHECK_REQ and a failure;
    /// one still overdue after four failures goes offline.
    fn scan(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let mut checks = Vec::new();
        let mut dropped = Vec::new();
        for (index, host) in self.hosts.iter_mut().enumerate() {
            let Some(session) = &mut host.session else {
                continue;
            };
            if now.duration_since(session.last_seen) <= self.refresh_unit * session.refresh {
                continue;
            }
            if session.failures >= MAX_FAILURES {
                dropped.push(index);
                continue;
            }
            session.failures += 1;
            let to = SocketAddrV4::new(session.addr, session.rport);
            checks.push((to, host.hostid, session.refresh));
        }

        for index in dropped {
            self.go_offline(index, OfflineReason::Timeout, now);
        }
        for (to, hostid, refresh) in checks {
            let datagram = self.datagram(hostid, Body::CheckReq { refresh });
            out.push((to, datagram));
        }
    }

    fn restart(&mut self, now: Instant) {
        for index in 0..self.hosts.len() {
            self.go_offline(index, OfflineReason::Restart, now);
            self.hosts[index].challenge = None;
        }
        self.serial = 0;
        self.next_scan = now + self.scan_interval;
    }

    /// A reply goes to the request's source IP and `rport`, not to its
    /// source port (section 1).
    fn reply(&mut self, src: SocketAddrV4, request: &Header, body: Body) -> Outgoing {
        let to = SocketAddrV4::new(*src.ip(), request.rport as u16);
        (to, self.datagram(request.hostid, body))
    }

    fn datagram(&mut self, hostid: u32, body: Body) -> Datagram {
        self.serial = self.serial.wrapping_add(1);
        *self.counters.sent.entry(body.opcode()).or_insert(0) += 1;
        let header = Header {
            opcode: body.opcode(),
            serial: self.serial,
            version: SERVER_VERSION,
            rport: u32::from(self.port),
            hostid,
        };
        wire::encode(&Message { header, body })
    }

    fn log(&mut self, line: String) {
        if let Some(sink) = &self.log_sink {
            sink(&line);
        }
        if self.lines.len() == LOG_CAPACITY {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// dhisd reads at most 15 characters of the field (up to its NUL) and
/// compares them with the whole stored password.
fn password_matches(stored: &str, field: &Password) -> bool {
    let text = field.text();
    &text[..text.len().min(PASSWORD_CMP_LEN)] == stored.as_bytes()
}

fn held_refresh(proposal: u32) -> u32 {
    if (MIN_REFRESH..=MAX_REFRESH).contains(&proposal) {
        proposal
    } else {
        DEFAULT_REFRESH
    }
}

/// X = r² mod N: a residue mod both primes, hence the principal root of
/// Y = X², the only root dhisd accepts (section 7).
fn random_square(rng: &mut Rng, n: &BigUint) -> BigUint {
    let mut bytes = vec![0u8; n.bits() as usize / 8 + 16];
    let mut x = BigUint::default();
    // X of 0 or 1 would make the challenge trivial; only a tiny N needs a
    // second try.
    for _ in 0..64 {
        rng.fill(&mut bytes);
        let r = BigUint::from_bytes_be(&bytes) % n;
        x = &r * &r % n;
        if x > BigUint::from(1u32) {
            break;
        }
    }
    x
}

/// Session ids: dhisd's time-seeded generator, or a unique sequence.
struct SidGen {
    policy: SidPolicy,
    salt: u32,
    count: u32,
}

impl SidGen {
    fn next(&mut self, wall: SystemTime) -> u32 {
        match self.policy {
            SidPolicy::SharedWithin(window) => {
                let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
                let slot = since.as_nanos() / window.as_nanos().max(1);
                mix31(slot as u32 ^ self.salt)
            }
            SidPolicy::Unique => {
                self.count = self.count.wrapping_add(1);
                mix31(self.count ^ self.salt)
            }
        }
    }
}

/// A bijection on 31-bit values (xor-shifts and odd multipliers mod 2^31),
/// so distinct inputs give distinct, random-looking sids.
fn mix31(x: u32) -> u32 {
    let mut x = x & SID_MASK;
    x ^= x >> 16;
    x = x.wrapping_mul(0x045d_9f3b) & SID_MASK;
    x ^= x >> 15;
    x = x.wrapping_mul(0x2c1b_3c6d) & SID_MASK;
    x ^ (x >> 16)
}

/// splitmix64: plenty for challenges and salts of a test server.
struct Rng(u64);

impl Rng {
    fn from_os() -> Rng {
        // std seeds its hash keys from the operating system.
        Rng(RandomState::new().hash_one(0x5eed_u64))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qrc::QrcKey;
    use crate::wire::{AUTH_ACK, AUTH_DENY, AUTH_SY, CHECK_REQ, ECHO_ACK, ECHO_REQ, Number};

    const WAIT: Duration = Duration::from_secs(3);

    /// A tiny client on 127.0.0.x with an ephemeral port.
    struct Client {
        sock: UdpSocket,
        server: SocketAddrV4,
        serial: u32,
    }

    impl Client {
        fn new(server: &TestServer) -> Client {
            Client::on(server, Ipv4Addr::LOCALHOST)
        }

        fn on(server: &TestServer, ip: Ipv4Addr) -> Client {
            let sock = UdpSocket::bind((ip, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            Client {
                sock,
                server: server.local_addr(),
                serial: 0,
            }
        }

        fn port(&self) -> u16 {
            self.sock.local_addr().unwrap().port()
        }

        fn send(&mut self, hostid: u32, body: Body) {
            let rport = u32::from(self.port());
            self.send_as(hostid, rport, body);
        }

        fn send_as(&mut self, hostid: u32, rport: u32, body: Body) {
            self.serial += 1;
            let header = Header {
                opcode: body.opcode(),
                serial: self.serial,
                version: 55,
                rport,
                hostid,
            };
            let datagram = wire::encode(&Message { header, body });
            self.sock.send_to(datagram.as_bytes(), self.server).unwrap();
        }

        /// The next datagram within `wait`, with its source port.
        fn recv(&self, wait: Duration) -> Option<(Message, u16)> {
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 1024];
            for _ in 0..10_000 {
                if Instant::now() >= deadline {
                    break;
                }
                if let Ok((len, from)) = self.sock.recv_from(&mut buf) {
                    return Some((wire::decode(&buf[..len]).unwrap(), from.port()));
                }
            }
            None
        }

        fn expect(&self, opcode: u32) -> Message {
            let (msg, _) = self.recv(WAIT).expect("a reply from the test server");
            assert_eq!(msg.header.opcode, opcode, "got {:?}", msg.body);
            msg
        }

        fn auth(&mut self, hostid: u32, password: &str, refresh: u32) -> Message {
            let password = Password::new(password.as_bytes()).unwrap();
            self.send(hostid, Body::AuthReq { password, refresh });
            self.recv(WAIT).expect("an answer to AUTH_REQ").0
        }

        /// A QRC login's first step: AUTH_REQ without a password, and the
        /// AUTH_SY challenge it brings.
        fn challenge(&mut self, hostid: u32) -> Number {
            let body = Body::AuthReq {
                password: Password::EMPTY,
                refresh: 60,
            };
            self.send(hostid, body);
            let Body::AuthSy(challenge) = self.expect(AUTH_SY).body else {
                unreachable!()
            };
            challenge
        }

        fn login(&mut self, hostid: u32, password: &str, refresh: u32) -> u32 {
            match self.auth(hostid, password, refresh).body {
                Body::AuthAck { sid, .. } => sid,
                other => panic!("login of {hostid} got {other:?}"),
            }
        }
    }

    fn start(config: Config) -> TestServer {
        TestServer::start(config).unwrap()
    }

    fn fast() -> Config {
        Config {
            scan_interval: Duration::from_millis(40),
            refresh_unit: Duration::from_millis(1),
            ..Config::default()
        }
    }

    /// Sleep, at most once, so that the next few milliseconds fall within
    /// one wall-clock second.
    fn align_to_second() {
        let subsec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if subsec > 500 {
            thread::sleep(Duration::from_millis(u64::from(1010 - subsec)));
        }
    }

    fn keys1() -> QrcKey {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keys1.json"
        ))
        .unwrap();
        let field = |name: &str| {
            let start = text.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
            let rest = text[start..].trim_start();
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        };
        QrcKey::from_decimal(&field("p"), &field("q")).unwrap()
    }

    #[test]
    fn password_login_as_in_capture_1() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);

        client.send(1000, Body::EchoReq);
        let (echo, from) = client.recv(WAIT).unwrap();
        assert_ne!(
            from,
            server.local_port(),
            "replies come from an ephemeral port"
        );
        let expected = Header {
            opcode: ECHO_ACK,
            serial: 1,
            version: 53,
            rport: u32::from(server.local_port()),
            hostid: 1000,
        };
        assert_eq!(echo.header, expected);
        assert_eq!(echo.body, Body::EchoAck { echo_serial: 1 });

        // The C client sends stack garbage after the NUL.
        let password = Password(*b"secret\0\x01O\x7f\0\0t\xb9]\x0c");
        client.send(
            1000,
            Body::AuthReq {
                password,
                refresh: 60,
            },
        );
        let ack = client.expect(AUTH_ACK);
        assert_eq!(ack.header.serial, 2);
        let session = server.session(1000).unwrap();
        let address = Ipv4Addr::LOCALHOST;
        assert_eq!(
            ack.body,
            Body::AuthAck {
                sid: session.sid,
                address
            }
        );
        assert_eq!((session.refresh, session.rport), (60, client.port()));

        assert!(server.wait_for(|e| e.is_online_of(1000), WAIT).is_some());
        assert_eq!(server.log_lines(), ["-> online 1000 [127.0.0.1]"]);
        assert_eq!(server.online_count(), 1);
        assert_eq!(server.counters().received(ECHO_REQ), 1);
    }

    #[test]
    fn replies_go_to_rport_not_to_the_source_port() {
        let server = start(Config::default());
        let mut sender = Client::new(&server);
        let listener = Client::new(&server);

        sender.send_as(7, u32::from(listener.port()), Body::EchoReq);
        let echo = listener.expect(ECHO_ACK);
        assert_eq!(echo.header.hostid, 7, "answered for an unknown hostid too");
        assert!(sender.recv(Duration::from_millis(200)).is_none());
    }

    #[test]
    fn wrong_password_and_unknown_host_are_denied() {
        let config = Config::default()
            .password(1000, "secret")
            .password(1001, "fifteen-chars-x")
            .password(1002, "sixteen-chars-xx");
        let server = start(config);
        let mut client = Client::new(&server);

        for (hostid, password) in [(1000, "wrong"), (1000, "SECRET"), (4242, "secret")] {
            assert_eq!(client.auth(hostid, password, 60).body, Body::AuthDeny);
        }
        assert!(!server.is_online(1000));
        let denied = server
            .events()
            .into_iter()
            .filter(|e| matches!(e, ServerEvent::Denied { .. }));
        assert_eq!(denied.count(), 3);

        // Only 15 characters of the field count; 16 stored never match.
        let password = Password(*b"fifteen-chars-xY");
        client.send(
            1001,
            Body::AuthReq {
                password,
                refresh: 60,
            },
        );
        client.expect(AUTH_ACK);
        let password = Password(*b"sixteen-chars-xx");
        client.send(
            1002,
            Body::AuthReq {
                password,
                refresh: 60,
            },
        );
        client.expect(AUTH_DENY);
    }

    #[test]
    fn refresh_proposals_outside_the_limits_become_120() {
        let cases = [
            (0, 120),
            (59, 120),
            (60, 60),
            (21600, 21600),
            (21601, 120),
            (u32::MAX, 120),
        ];
        let mut config = Config::default();
        for (i, _) in cases.iter().enumerate() {
            config = config.password(2000 + i as u32, "pw");
        }
        let server = start(config);
        let mut client = Client::new(&server);

        for (i, (proposal, held)) in cases.into_iter().enumerate() {
            let hostid = 2000 + i as u32;
            client.login(hostid, "pw", proposal);
            assert_eq!(
                server.session(hostid).unwrap().refresh,
                held,
                "proposal {proposal}"
            );
        }
    }

    #[test]
    fn qrc_login_with_the_capture_keys() {
        let key = keys1();
        let server = start(Config::default().qrc(2011, key.modulus().clone()));
        let mut client = Client::new(&server);

        let challenge = client.challenge(2011);
        assert_eq!(
            challenge.digits().len(),
            NUMBER_LEN,
            "zero-padded to 200 digits"
        );
        client.send(2011, Body::AuthSx(key.answer(&challenge)));
        let Body::AuthAck { sid, .. } = client.expect(AUTH_ACK).body else {
            unreachable!()
        };
        assert_eq!(server.session(2011).unwrap().sid, sid);
    }

    #[test]
    fn qrc_accepts_only_the_principal_root_once() {
        let key = keys1();
        let n = key.modulus().clone();
        let server = start(Config::default().qrc(2011, n.clone()));
        let mut client = Client::new(&server);

        let challenge = client.challenge(2011);
        let x = qrc::parse_number(&key.answer(&challenge));
        let y = qrc::parse_number(&challenge);
        assert!(qrc::is_residue(&x, key.p()) && qrc::is_residue(&x, key.q()));
        assert!(key.is_root(&(&n - &x), &y));
        client.send(2011, Body::AuthSx(qrc::to_number(&(&n - &x))));
        client.expect(AUTH_DENY);

        // The challenge was used up by the wrong answer.
        client.send(2011, Body::AuthSx(qrc::to_number(&x)));
        client.expect(AUTH_DENY);
        assert!(!server.is_online(2011));
    }

    #[test]
    fn auth_sx_without_challenge_is_denied() {
        let server = start(Config::default().qrc(2011, keys1().modulus().clone()));
        let mut client = Client::new(&server);

        client.send(2011, Body::AuthSx(Number([b'0'; NUMBER_LEN])));
        client.expect(AUTH_DENY);
    }

    #[test]
    fn reauth_while_online_keeps_the_sid() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);
        let mut elsewhere = Client::on(&server, Ipv4Addr::new(127, 0, 0, 2));

        let sid = client.login(1000, "secret", 60);
        assert_eq!(client.login(1000, "secret", 300), sid);
        let onlines = server
            .events()
            .iter()
            .filter(|e| e.is_online_of(1000))
            .count();
        assert_eq!(onlines, 1);
        assert_eq!(server.session(1000).unwrap().refresh, 60, "held value kept");

        // From a new address: same sid, the server follows the host.
        assert_eq!(elsewhere.login(1000, "secret", 60), sid);
        assert_eq!(
            server.session(1000).unwrap().addr,
            Ipv4Addr::new(127, 0, 0, 2)
        );
        assert_eq!(
            server.log_lines().last().unwrap(),
            "-> update 1000 [127.0.0.2]"
        );
    }

    #[test]
    fn hosts_going_online_in_the_same_second_share_the_sid() {
        let server = start(Config::default().password(1000, "a").password(1001, "b"));
        let mut client = Client::new(&server);

        align_to_second();
        let first = client.login(1000, "a", 60);
        assert_eq!(client.login(1001, "b", 60), first);
    }

    #[test]
    fn unique_sids_on_request() {
        let config = Config {
            sids: SidPolicy::Unique,
            ..Config::default()
        };
        let server = start(config.password(1000, "a").password(1001, "b"));
        let mut client = Client::new(&server);

        assert_ne!(client.login(1000, "a", 60), client.login(1001, "b", 60));
    }

    #[test]
    fn offline_req_is_checked_by_address_and_sid_only() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);
        let mut elsewhere = Client::on(&server, Ipv4Addr::new(127, 0, 0, 2));
        let sid = client.login(1000, "secret", 60);

        client.send(1000, Body::OfflineReq { sid: sid ^ 1 });
        elsewhere.send(1000, Body::OfflineReq { sid });
        client.send(1000, Body::EchoReq);
        client.expect(ECHO_ACK);
        assert!(server.is_online(1000));

        // Another hostid in the header does not matter.
        client.send(4242, Body::OfflineReq { sid });
        let gone = server.wait_for(|e| e.is_offline_of(1000), WAIT).unwrap();
        assert!(matches!(
            gone,
            ServerEvent::Offline {
                reason: OfflineReason::OfflineReq,
                ..
            }
        ));
        assert_eq!(
            server.log_lines().last().unwrap(),
            "-> offline 1000 [127.0.0.1]"
        );
        assert_eq!(server.online_count(), 0);
    }

    #[test]
    fn offline_req_with_a_shared_sid_takes_the_first_host_in_the_table() {
        let server = start(Config::default().password(1001, "b").password(1000, "a"));
        let mut client = Client::new(&server);

        align_to_second();
        let sid = client.login(1000, "a", 60);
        assert_eq!(client.login(1001, "b", 60), sid);
        client.send(1000, Body::OfflineReq { sid });

        assert!(server.wait_for(|e| e.is_offline_of(1001), WAIT).is_some());
        assert!(server.is_online(1000));
    }

    #[test]
    fn a_silent_host_is_checked_four_times_then_dropped() {
        let server = start(fast().password(1000, "secret"));
        let mut client = Client::new(&server);
        client.login(1000, "secret", 60);

        let mut checks = Vec::new();
        while let Some((msg, _)) = client.recv(Duration::from_millis(500)) {
            assert_eq!(msg.header.hostid, 1000);
            checks.push((msg.body, Instant::now()));
            assert!(checks.len() <= MAX_FAILURES as usize, "too many checks");
        }
        let gone = server.wait_for(|e| e.is_offline_of(1000), WAIT).unwrap();

        assert_eq!(checks.len(), 4);
        assert!(
            checks
                .iter()
                .all(|(body, _)| *body == Body::CheckReq { refresh: 60 })
        );
        assert!(matches!(
            gone,
            ServerEvent::Offline {
                reason: OfflineReason::Timeout,
                ..
            }
        ));
        assert!(gone.at() > checks[3].1 - Duration::from_millis(5));
        assert_eq!(server.counters().sent(CHECK_REQ), 4);
    }

    #[test]
    fn check_ack_and_echo_req_keep_a_host_online() {
        let config = Config {
            refresh_unit: Duration::from_millis(5),
            ..fast()
        };
        let server = start(config.password(1000, "a").password(1001, "b"));
        let mut acker = Client::new(&server);
        let mut echoer = Client::new(&server);
        let sid = acker.login(1000, "a", 60);
        echoer.login(1001, "b", 60);

        // Refresh 300 ms, scans every 40 ms: without answers the acker
        // would be dropped after about 500 ms.
        let end = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < end {
            echoer.send(1001, Body::EchoReq);
            assert_eq!(echoer.expect(ECHO_ACK).header.hostid, 1001);
            if let Some((msg, _)) = acker.recv(Duration::from_millis(20)) {
                assert_eq!(msg.body, Body::CheckReq { refresh: 60 });
                acker.send(1000, Body::CheckAck { sid });
            }
        }

        assert!(server.is_online(1000) && server.is_online(1001));
        let checks = server.counters().sent(CHECK_REQ);
        assert!(checks >= 1, "the acker was checked");
        let echoer_failures = server.session(1001).unwrap().failures;
        assert_eq!(echoer_failures, 0, "the echoer never was");
    }

    #[test]
    fn restart_forgets_sessions() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);
        let sid = client.login(1000, "secret", 60);

        server.restart();
        assert!(!server.is_online(1000));
        let gone = server.wait_for(|e| e.is_offline_of(1000), WAIT).unwrap();
        assert!(matches!(
            gone,
            ServerEvent::Offline {
                reason: OfflineReason::Restart,
                ..
            }
        ));
        assert_eq!(server.log_lines(), ["-> online 1000 [127.0.0.1]"]);

        client.send(1000, Body::OfflineReq { sid });
        client.send(1000, Body::EchoReq);
        assert_eq!(
            client.expect(ECHO_ACK).header.serial,
            1,
            "a fresh serial counter"
        );

        let cursor = server.event_count();
        client.login(1000, "secret", 60);
        assert!(
            server
                .wait_for_from(cursor, |e| e.is_online_of(1000), WAIT)
                .is_some()
        );
    }

    #[test]
    fn silent_mode_drops_everything() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);

        server.set_silent(true);
        client.send(1000, Body::EchoReq);
        assert!(client.recv(Duration::from_millis(200)).is_none());
        assert_eq!(server.counters().dropped, 1);

        server.set_silent(false);
        client.send(1000, Body::EchoReq);
        client.expect(ECHO_ACK);
    }

    #[test]
    fn deny_knob_refuses_a_good_password() {
        let server = start(Config::default().password(1000, "secret"));
        let mut client = Client::new(&server);

        server.set_deny(1000, true);
        assert_eq!(client.auth(1000, "secret", 60).body, Body::AuthDeny);
        server.set_deny(1000, false);
        client.login(1000, "secret", 60);
    }

    #[test]
    fn arrivals_are_bounded() {
        let server = start(Config {
            arrival_capacity: 3,
            ..Config::default()
        });
        let mut client = Client::new(&server);

        for _ in 0..5 {
            client.send(9, Body::EchoReq);
            client.expect(ECHO_ACK);
        }
        let arrivals = server.arrivals();
        assert_eq!(arrivals.len(), 3);
        assert!(
            arrivals
                .iter()
                .all(|a| a.opcode == ECHO_REQ && a.hostid == 9)
        );
        assert_eq!(server.last_arrival(ECHO_REQ), Some(arrivals[2].at));
    }

    #[test]
    fn ten_thousand_hosts_go_online_quickly() {
        const HOSTS: u32 = 10_000;
        let hosts = (0..HOSTS).map(|id| (id, HostAuth::Password("pw".into())));
        let server = start(Config {
            hosts: hosts.collect(),
            ..Config::default()
        });
        let mut client = Client::new(&server);

        let password = Password::new(b"pw").unwrap();
        let begin = Instant::now();
        for hostid in 0..HOSTS {
            client.send(
                hostid,
                Body::AuthReq {
                    password,
                    refresh: 60,
                },
            );
        }
        assert!(server.wait_online_count(HOSTS as usize, Duration::from_secs(10)));
        let last = server.events().iter().map(ServerEvent::at).max().unwrap();
        let took = last - begin;
        eprintln!("{HOSTS} hosts online {took:?} after the first AUTH_REQ");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
