//! The protocol state machine of one dhid.conf record (PROTOCOL.md 5 to 7).
//!
//! A record polls its servers with ECHO_REQ, authenticates with the first
//! that answers, then stays online by refreshing every period. It reads no
//! clock and touches no socket: `now` comes in, datagrams and events go out
//! through [`Ctx`], and [`Record::deadline`] says when it next needs a call.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use log::debug;

use crate::config::{Auth, Host, RecordConfig, ServerSpec};
use crate::qrc::QrcKey;
use crate::wire::{self, Body, Header, Message, Password};

/// Time since an arbitrary origin; the daemon uses CLOCK_BOOTTIME so that a
/// suspend counts as time passing.
pub type Time = Duration;

/// Retry policy while a record is not online.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Delay before the first retry; it doubles with every further attempt.
    pub first_retry: Duration,
    /// Each delay is scaled by a random factor in 1 ± jitter.
    pub jitter: f64,
    /// Periods without an answer before a record counts as offline.
    pub silent_periods: u32,
    /// Copies of OFFLINE_REQ: the server never acknowledges it.
    pub offline_copies: u32,
    pub offline_spacing: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            first_retry: Duration::from_secs(2),
            jitter: 0.2,
            silent_periods: 3,
            offline_copies: 3,
            offline_spacing: Duration::from_millis(300),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddrV4,
    pub datagram: wire::Datagram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineReason {
    /// No answer from the server for `silent_periods` refresh periods.
    Timeout,
    /// SIGUSR2.
    Usr2,
    /// SIGTERM or SIGINT: dhid is exiting.
    Shutdown,
    /// The server refused a re-authentication.
    Refused,
    /// The record was removed from the configuration.
    Removed,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Timeout => "timeout",
            OfflineReason::Usr2 => "USR2",
            OfflineReason::Shutdown => "shutdown",
            OfflineReason::Refused => "refused",
            OfflineReason::Removed => "removed",
        }
    }
}

/// What a record tells the daemon. `record` is the index in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Online {
        record: usize,
        address: Ipv4Addr,
        server: SocketAddrV4,
    },
    Offline {
        record: usize,
        address: Ipv4Addr,
        server: SocketAddrV4,
        reason: OfflineReason,
    },
    AddressChanged {
        record: usize,
        old: Ipv4Addr,
        new: Ipv4Addr,
        server: SocketAddrV4,
    },
    /// AUTH_DENY; the record polls again after one refresh period.
    Refused { record: usize, server: SocketAddrV4 },
    /// The password was accepted only in lower case.
    LowercaseAccepted { record: usize },
    /// A new session id while online (the server restarted, most likely).
    NewSession { record: usize },
    /// Resolve the name of this server; answer with `Engine::handle_resolved`.
    Resolve {
        record: usize,
        server: usize,
        host: String,
    },
}

/// What the engine lends a record for one call.
pub struct Ctx {
    pub port: u16,
    pub policy: Policy,
    serial: u32,
    rng: u64,
    pub transmits: VecDeque<Transmit>,
    pub events: VecDeque<Event>,
}

impl Ctx {
    pub fn new(port: u16, seed: u64, policy: Policy) -> Ctx {
        Ctx {
            port,
            policy,
            serial: 0,
            rng: seed | 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Header for the next datagram: every datagram dhid sends, of every
    /// record, takes the next serial (PROTOCOL.md section 2).
    fn header(&mut self, hostid: u32) -> Header {
        self.serial = self.serial.wrapping_add(1);
        Header {
            opcode: 0,
            serial: self.serial,
            version: wire::VERSION,
            rport: self.port as u32,
            hostid,
        }
    }

    fn send(&mut self, dest: SocketAddrV4, hostid: u32, body: Body) -> u32 {
        let mut header = self.header(hostid);
        header.opcode = body.opcode();
        let datagram = wire::encode(&Message { header, body });
        self.transmits.push_back(Transmit { dest, datagram });
        header.serial
    }

    /// A uniform float in [0, 1) from xorshift64*.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One ISAddr of the record, with its current name resolution. Kept
/// small: a daemon may hold ten thousand of these.
#[derive(Clone, Debug)]
struct Server {
    port: u16,
    /// The address, for an ISAddr given as one.
    literal: Option<Ipv4Addr>,
    /// The name to resolve, for an ISAddr given as one, and its addresses.
    name: Option<Box<str>>,
    resolved: Vec<Ipv4Addr>,
    /// Serials of our latest ECHO_REQs to it; an ECHO_ACK must echo one.
    echo_serials: [u32; 4],
    /// An attempt is waiting for this name to resolve.
    echo_pending: bool,
}

impl Server {
    fn new(spec: &ServerSpec) -> Server {
        let (literal, name) = match &spec.host {
            Host::Addr(a) => (Some(*a), None),
            Host::Name(n) => (None, Some(n.as_str().into())),
        };
        Server {
            port: spec.port,
            literal,
            name,
            resolved: Vec::new(),
            echo_serials: [0; 4],
            echo_pending: false,
        }
    }

    fn is(&self, spec: &ServerSpec) -> bool {
        self.port == spec.port
            && match &spec.host {
                Host::Addr(a) => self.literal == Some(*a),
                Host::Name(n) => self.name.as_deref() == Some(n.as_str()),
            }
    }

    fn addrs(&self) -> &[Ipv4Addr] {
        match &self.literal {
            Some(a) => std::slice::from_ref(a),
            None => &self.resolved,
        }
    }

    fn owns(&self, src: Ipv4Addr, rport: u32) -> bool {
        rport == u32::from(self.port) && self.addrs().contains(&src)
    }

    fn dest(&self) -> Option<SocketAddrV4> {
        self.addrs()
            .first()
            .map(|a| SocketAddrV4::new(*a, self.port))
    }

    fn note_echo(&mut self, serial: u32) {
        self.echo_serials.rotate_right(1);
        self.echo_serials[0] = serial;
    }

    fn echoed(&self, serial: u32) -> bool {
        serial != 0 && self.echo_serials.contains(&serial)
    }
}

fn fingerprint(auth: &Auth) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match auth {
        Auth::Password(p) => (0u8, p).hash(&mut hasher),
        Auth::Qrc(key) => (1u8, key.p(), key.q()).hash(&mut hasher),
    }
    hasher.finish()
}

/// A record's servers: almost always one, kept inline then, so that ten
/// thousand records do not cost ten thousand heap blocks.
#[derive(Clone, Debug)]
enum Servers {
    One(Server),
    Many(Box<[Server]>),
}

impl Servers {
    fn new(specs: &[ServerSpec]) -> Servers {
        match specs {
            [one] => Servers::One(Server::new(one)),
            _ => Servers::Many(specs.iter().map(Server::new).collect()),
        }
    }
}

impl std::ops::Deref for Servers {
    type Target = [Server];

    fn deref(&self) -> &[Server] {
        match self {
            Servers::One(s) => std::slice::from_ref(s),
            Servers::Many(all) => all,
        }
    }
}

impl std::ops::DerefMut for Servers {
    fn deref_mut(&mut self) -> &mut [Server] {
        match self {
            Servers::One(s) => std::slice::from_mut(s),
            Servers::Many(all) => all,
        }
    }
}

#[derive(Clone, Debug)]
enum Secret {
    Password {
        written: Password,
        lower: Option<Password>,
        use_lower: bool,
    },
    Qrc(QrcKey),
}

impl Secret {
    fn new(auth: &Auth) -> Secret {
        match auth {
            Auth::Password(text) => {
                let written = Password::new(text.as_bytes()).expect("config checks the length");
                let lowered = text.to_lowercase();
                let lower = (lowered != *text)
                    .then(|| Password::new(lowered.as_bytes()))
                    .flatten();
                Secret::Password {
                    written,
                    lower,
                    use_lower: false,
                }
            }
            Auth::Qrc(key) => Secret::Qrc(key.clone()),
        }
    }

    fn field(&self, lowercase: bool) -> Password {
        match self {
            Secret::Password {
                written,
                lower,
                use_lower,
            } => match lower {
                Some(lower) if lowercase || *use_lower => *lower,
                _ => *written,
            },
            Secret::Qrc(_) => Password::EMPTY,
        }
    }

    /// Whether a refused password is worth one more try in lower case.
    fn can_lower(&self, lowercase: bool) -> bool {
        matches!(self, Secret::Password { lower: Some(_), use_lower: false, .. } if !lowercase)
    }
}

/// An authentication in flight: AUTH_REQ sent, AUTH_ACK, AUTH_SY or
/// AUTH_DENY expected from `server`.
#[derive(Clone, Copy, Debug)]
struct Pending {
    lowercase: bool,
}

#[derive(Clone, Debug)]
enum State {
    /// Probing every server with ECHO_REQ; `attempt` counts the probes.
    Poll {
        next: Time,
        attempt: u32,
    },
    /// AUTH_REQ sent to the server that answered first.
    Auth {
        server: usize,
        dest: SocketAddrV4,
        deadline: Time,
        attempt: u32,
        pending: Pending,
    },
    Online(Online),
}

#[derive(Clone, Debug)]
struct Online {
    server: usize,
    dest: SocketAddrV4,
    sid: u32,
    address: Ipv4Addr,
    heard: Time,
    next_refresh: Time,
    /// A re-authentication is in flight; it is simply replaced by the next.
    reauth: Option<Pending>,
}

/// OFFLINE_REQ copies still to send.
#[derive(Clone, Copy, Debug)]
struct Resend {
    dest: SocketAddrV4,
    sid: u32,
    left: u32,
    at: Time,
}

/// A snapshot for SIGUSR1 and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: &'static str,
    pub server: Option<SocketAddrV4>,
    pub address: Option<Ipv4Addr>,
    pub since: Time,
    pub heard: Option<Time>,
    /// When the record next sends on its own (probe, retry or refresh).
    pub next: Time,
    pub period: Duration,
}

pub struct Record {
    pub index: usize,
    /// Unique for the life of the engine, unlike `index`, which a reload
    /// changes.
    pub uid: u64,
    pub hostid: u32,
    secret: Secret,
    /// A digest of the password or key, to tell a changed one on reload
    /// without keeping a second copy of the secret.
    auth_print: u64,
    refresh_proposal: u32,
    period: Duration,
    /// The shorter period a CHECK_REQ announced, if any.
    server_period: Option<Duration>,
    servers: Servers,
    silent_periods: u32,
    state: State,
    since: Time,
    heard: Option<Time>,
    resend: Option<Resend>,
}

impl Record {
    pub fn new(
        index: usize,
        uid: u64,
        config: &RecordConfig,
        policy: &Policy,
        now: Time,
    ) -> Record {
        Record {
            index,
            uid,
            hostid: config.hostid,
            secret: Secret::new(&config.auth),
            auth_print: fingerprint(&config.auth),
            refresh_proposal: config.refresh_proposal,
            period: Duration::from_secs(config.refresh_period().into()),
            server_period: None,
            servers: Servers::new(&config.servers),
            silent_periods: policy.silent_periods.max(1),
            state: State::Poll {
                next: now,
                attempt: 0,
            },
            since: now,
            heard: None,
            resend: None,
        }
    }

    /// The period between refreshes: ours, or the server's if shorter.
    pub fn period(&self) -> Duration {
        match self.server_period {
            Some(p) if p < self.period => p,
            _ => self.period,
        }
    }

    pub fn is_online(&self) -> bool {
        matches!(self.state, State::Online(_))
    }

    /// The session id and the server holding it, while online.
    pub fn session(&self) -> Option<(SocketAddrV4, u32)> {
        match &self.state {
            State::Online(o) => Some((o.dest, o.sid)),
            _ => None,
        }
    }

    pub fn has_resend(&self) -> bool {
        self.resend.is_some()
    }

    pub fn deadline(&self) -> Time {
        let state = match &self.state {
            State::Poll { next, .. } => *next,
            State::Auth { deadline, .. } => *deadline,
            State::Online(o) => o.next_refresh.min(self.silence_deadline(o)),
        };
        match self.resend {
            Some(r) => state.min(r.at),
            None => state,
        }
    }

    fn silence_deadline(&self, o: &Online) -> Time {
        o.heard
            .saturating_add(self.period().saturating_mul(self.silent_periods))
    }

    /// The state as USR1 names it.
    fn state_name(&self) -> &'static str {
        match &self.state {
            // Attempt 0 is a wait: after USR2, a refusal, or before start.
            State::Poll { attempt: 0, .. } => "waiting",
            State::Poll { .. } => "polling",
            State::Auth { .. } => "authenticating",
            State::Online(_) => "online",
        }
    }

    pub fn status(&self) -> Status {
        let (server, address, next) = match &self.state {
            State::Poll { next, .. } => (None, None, *next),
            State::Auth { dest, deadline, .. } => (Some(*dest), None, *deadline),
            State::Online(o) => (Some(o.dest), Some(o.address), o.next_refresh),
        };
        Status {
            state: self.state_name(),
            server,
            address,
            since: self.since,
            heard: self.heard,
            next,
            period: self.period(),
        }
    }

    fn set_state(&mut self, now: Time, state: State) {
        let before = self.state_name();
        self.state = state;
        if before != self.state_name() {
            self.since = now;
        }
    }

    /// Delay before retry number `attempt` (1, 2, ...): 2 s doubling, with
    /// jitter, never longer than the refresh period.
    fn backoff(&self, attempt: u32, ctx: &mut Ctx) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = ctx.policy.first_retry.saturating_mul(1 << doublings);
        let factor = 1.0 - ctx.policy.jitter + 2.0 * ctx.policy.jitter * ctx.random();
        base.mul_f64(factor).min(self.period())
    }

    pub fn on_timeout(&mut self, now: Time, ctx: &mut Ctx) {
        if let Some(r) = self.resend
            && r.at <= now
        {
            self.send_offline_copy(now, ctx);
        }

        match &self.state {
            State::Poll { next, attempt } if *next <= now => {
                let attempt = *attempt;
                self.poll(now, attempt, ctx);
            }
            State::Auth {
                deadline, attempt, ..
            } if *deadline <= now => {
                debug!("[{}] no answer to AUTH_REQ, polling again", self.hostid);
                let attempt = *attempt;
                self.poll(now, attempt, ctx);
            }
            State::Online(o) if self.silence_deadline(o) <= now => {
                self.go_offline(now, OfflineReason::Timeout, ctx);
                self.poll(now, 0, ctx);
            }
            State::Online(o) if o.next_refresh <= now => self.refresh(now, ctx),
            _ => {}
        }
    }

    /// Send ECHO_REQ to every server and schedule the next attempt.
    fn poll(&mut self, now: Time, attempt: u32, ctx: &mut Ctx) {
        for i in 0..self.servers.len() {
            self.echo(i, true, ctx);
        }
        let attempt = attempt.saturating_add(1);
        let next = now.saturating_add(self.backoff(attempt, ctx));
        self.set_state(now, State::Poll { next, attempt });
    }

    /// ECHO_REQ to one server; a name is resolved again on every attempt
    /// so that a server that moved, or a network that came up, is found.
    fn echo(&mut self, i: usize, resolve: bool, ctx: &mut Ctx) {
        let hostid = self.hostid;
        let server = &mut self.servers[i];
        if let (Some(name), true) = (&server.name, resolve) {
            server.echo_pending = server.resolved.is_empty();
            ctx.events.push_back(Event::Resolve {
                record: self.index,
                server: i,
                host: name.to_string(),
            });
        }
        if let Some(dest) = server.dest() {
            let serial = ctx.send(dest, hostid, Body::EchoReq);
            server.note_echo(serial);
        }
    }

    /// A name resolution came back. An empty list means "not yet": the
    /// next attempt asks again.
    pub fn on_resolved(&mut self, server: usize, addrs: Vec<Ipv4Addr>, ctx: &mut Ctx) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        if addrs.is_empty() || s.name.is_none() {
            return;
        }
        s.resolved = addrs;
        if s.echo_pending && matches!(self.state, State::Poll { .. }) {
            s.echo_pending = false;
            self.echo(server, false, ctx);
        }
    }

    fn start_auth(&mut self, now: Time, server: usize, dest: SocketAddrV4, ctx: &mut Ctx) {
        let attempt = match self.state {
            State::Poll { attempt, .. } | State::Auth { attempt, .. } => attempt,
            State::Online(_) => 0,
        };
        let pending = Pending { lowercase: false };
        self.send_auth(dest, pending, ctx);
        let deadline = now.saturating_add(self.backoff(attempt.max(1), ctx));
        self.set_state(
            now,
            State::Auth {
                server,
                dest,
                deadline,
                attempt,
                pending,
            },
        );
    }

    fn send_auth(&mut self, dest: SocketAddrV4, pending: Pending, ctx: &mut Ctx) {
        let password = self.secret.field(pending.lowercase);
        let body = Body::AuthReq {
            password,
            refresh: self.refresh_proposal,
        };
        ctx.send(dest, self.hostid, body);
    }

    /// Keep-alive while online: a fresh authentication with the selected
    /// server, so that a server that forgot us (restart) or sees a new
    /// address learns it within a period, and ECHO_REQ to the other servers.
    /// The selected one gets no ECHO_REQ: dhisd counts the AUTH_REQ as
    /// presence just as it counts an ECHO_REQ, and a second request would
    /// cost a second answer, one more wake-up a period.
    fn refresh(&mut self, now: Time, ctx: &mut Ctx) {
        let period = self.period();
        let State::Online(o) = &mut self.state else {
            return;
        };
        o.next_refresh = now.saturating_add(period);
        let selected = o.server;

        for i in (0..self.servers.len()).filter(|&i| i != selected) {
            self.echo(i, false, ctx);
        }
        self.reauthenticate(ctx);
    }

    pub fn on_message(
        &mut self,
        now: Time,
        server: usize,
        src: Ipv4Addr,
        msg: &Message,
        ctx: &mut Ctx,
    ) {
        let id = self.hostid;
        let name = msg.body.name();
        self.heard = Some(now);
        match msg.body {
            Body::EchoReq => {
                // Answer to the configured port; the source port is random.
                let dest = SocketAddrV4::new(src, self.servers[server].port);
                let serial = msg.header.serial;
                ctx.send(
                    dest,
                    msg.header.hostid,
                    Body::EchoAck {
                        echo_serial: serial,
                    },
                );
            }
            Body::EchoAck { echo_serial } => self.on_echo_ack(now, server, src, echo_serial, ctx),
            Body::AuthAck { sid, address } => self.on_auth_ack(now, server, sid, address, ctx),
            Body::AuthDeny => self.on_auth_deny(now, server, ctx),
            Body::AuthSy(challenge) => self.on_auth_sy(server, &challenge, ctx),
            Body::CheckReq { refresh } => self.on_check_req(now, server, refresh, ctx),
            _ => debug!("[{id}] dropped {name} from {src}: not a server message"),
        }
    }

    fn on_echo_ack(&mut self, now: Time, server: usize, src: Ipv4Addr, serial: u32, ctx: &mut Ctx) {
        let id = self.hostid;
        if !self.servers[server].echoed(serial) {
            debug!("[{id}] dropped ECHO_ACK from {src}: serial {serial} is not ours");
            return;
        }
        match &mut self.state {
            State::Poll { .. } => {
                // The first server to answer wins (PROTOCOL.md 5.5).
                let dest = SocketAddrV4::new(src, self.servers[server].port);
                self.start_auth(now, server, dest, ctx);
            }
            State::Online(o) if o.server == server => o.heard = now,
            _ => debug!("[{id}] ignored ECHO_ACK from {src}: not waiting for it"),
        }
    }

    fn on_auth_ack(
        &mut self,
        now: Time,
        server: usize,
        sid: u32,
        address: Ipv4Addr,
        ctx: &mut Ctx,
    ) {
        let id = self.hostid;
        let index = self.index;
        let period = self.period();
        match &mut self.state {
            State::Auth {
                server: s,
                dest,
                pending,
                ..
            } if *s == server => {
                let dest = *dest;
                if pending.lowercase {
                    self.accept_lowercase(ctx);
                }
                let online = Online {
                    server,
                    dest,
                    sid,
                    address,
                    heard: now,
                    next_refresh: now.saturating_add(period),
                    reauth: None,
                };
                self.set_state(now, State::Online(online));
                ctx.events.push_back(Event::Online {
                    record: index,
                    address,
                    server: dest,
                });
            }
            State::Online(o) if o.server == server && o.reauth.is_some() => {
                let lowercase = o.reauth.take().is_some_and(|p| p.lowercase);
                o.heard = now;
                let (old, dest) = (o.address, o.dest);
                o.address = address;
                let new_sid = o.sid != sid;
                o.sid = sid;
                if lowercase {
                    self.accept_lowercase(ctx);
                }
                if new_sid {
                    ctx.events.push_back(Event::NewSession { record: index });
                }
                if old != address {
                    let event = Event::AddressChanged {
                        record: index,
                        old,
                        new: address,
                        server: dest,
                    };
                    ctx.events.push_back(event);
                }
            }
            _ => debug!("[{id}] dropped AUTH_ACK: no authentication in flight with that server"),
        }
    }

    fn accept_lowercase(&mut self, ctx: &mut Ctx) {
        if let Secret::Password { use_lower, .. } = &mut self.secret
            && !*use_lower
        {
            *use_lower = true;
            ctx.events
                .push_back(Event::LowercaseAccepted { record: self.index });
        }
    }

    fn on_auth_deny(&mut self, now: Time, server: usize, ctx: &mut Ctx) {
        let id = self.hostid;
        let index = self.index;
        let (dest, lowercase, online) = match &self.state {
            State::Auth {
                server: s,
                dest,
                pending,
                ..
            } if *s == server => (*dest, pending.lowercase, false),
            State::Online(o) if o.server == server && o.reauth.is_some() => {
                (o.dest, o.reauth.is_some_and(|p| p.lowercase), true)
            }
            _ => {
                debug!("[{id}] dropped AUTH_DENY: no authentication in flight with that server");
                return;
            }
        };

        // The C dhid lower-cased every password; a server set up for it may
        // hold the lower-case form, so that is worth exactly one more try.
        if self.secret.can_lower(lowercase) {
            debug!("[{id}] password refused, trying it in lower case");
            let pending = Pending { lowercase: true };
            match &mut self.state {
                State::Auth { pending: p, .. } => *p = pending,
                State::Online(o) => o.reauth = Some(pending),
                State::Poll { .. } => unreachable!("matched above"),
            }
            self.send_auth(dest, pending, ctx);
            return;
        }

        if online {
            self.go_offline(now, OfflineReason::Refused, ctx);
        }
        ctx.events.push_back(Event::Refused {
            record: index,
            server: dest,
        });
        // A refused password is not hammered.
        self.wait_a_period(now);
    }

    fn on_auth_sy(&mut self, server: usize, challenge: &wire::Number, ctx: &mut Ctx) {
        let id = self.hostid;
        let dest = match &self.state {
            State::Auth {
                server: s, dest, ..
            } if *s == server => *dest,
            State::Online(o) if o.server == server && o.reauth.is_some() => o.dest,
            _ => {
                debug!("[{id}] dropped AUTH_SY: no authentication in flight with that server");
                return;
            }
        };
        let Secret::Qrc(key) = &self.secret else {
            debug!("[{id}] dropped AUTH_SY: the record authenticates by password");
            return;
        };
        let answer = key.answer(challenge);
        ctx.send(dest, id, Body::AuthSx(answer));
    }

    fn on_check_req(&mut self, now: Time, server: usize, refresh: u32, ctx: &mut Ctx) {
        let id = self.hostid;
        let State::Online(o) = &mut self.state else {
            debug!("[{id}] dropped CHECK_REQ: not online");
            return;
        };
        if o.server != server {
            debug!("[{id}] dropped CHECK_REQ: not from the server holding the session");
            return;
        }
        let (dest, sid) = (o.dest, o.sid);
        ctx.send(dest, id, Body::CheckAck { sid });

        // The server tells the period it holds; dhisd holds 120 s for
        // proposals it does not accept and drops hosts slower than that.
        let announced = Duration::from_secs(refresh.into());
        if refresh > 0 && self.server_period != Some(announced) {
            debug!("[{id}] server holds a refresh period of {refresh} s");
            self.server_period = Some(announced);
            self.refresh_within_period(now);
        }
    }

    /// A shorter period applies at once: the next refresh comes no later
    /// than one (new) period from now.
    fn refresh_within_period(&mut self, now: Time) {
        let period = self.period();
        if let State::Online(o) = &mut self.state {
            o.next_refresh = o.next_refresh.min(now.saturating_add(period));
        }
    }

    /// Leave the online state because of `reason`: OFFLINE_REQ (but not on
    /// a timeout: the server is gone) and the Offline event. The record is
    /// left polling from now; callers that must wait change that.
    fn go_offline(&mut self, now: Time, reason: OfflineReason, ctx: &mut Ctx) {
        let State::Online(o) = &self.state else {
            return;
        };
        let (dest, sid, address) = (o.dest, o.sid, o.address);
        let index = self.index;
        // No OFFLINE_REQ to a server that went silent; a refusal of a new
        // password or key still leaves the old session there, so that one
        // is ended too.
        if reason != OfflineReason::Timeout {
            let copies = ctx.policy.offline_copies;
            self.resend = Some(Resend {
                dest,
                sid,
                left: copies,
                at: now,
            });
            self.send_offline_copy(now, ctx);
        }
        self.server_period = None;
        self.set_state(
            now,
            State::Poll {
                next: now,
                attempt: 0,
            },
        );
        ctx.events.push_back(Event::Offline {
            record: index,
            address,
            server: dest,
            reason,
        });
    }

    fn send_offline_copy(&mut self, now: Time, ctx: &mut Ctx) {
        let Some(r) = &mut self.resend else { return };
        ctx.send(r.dest, self.hostid, Body::OfflineReq { sid: r.sid });
        r.left -= 1;
        r.at = now.saturating_add(ctx.policy.offline_spacing);
        if r.left == 0 {
            self.resend = None;
        }
    }

    /// USR2, TERM, or removal: go offline if online, and poll again only
    /// after a whole period, as the C dhid does, so that a PPP disconnect
    /// script's short pause does not race a new login.
    pub fn take_offline(&mut self, now: Time, reason: OfflineReason, ctx: &mut Ctx) {
        self.go_offline(now, reason, ctx);
        self.wait_a_period(now);
    }

    /// Poll again only after a whole period, and ignore late answers to
    /// probes sent before: they must not start a login earlier.
    fn wait_a_period(&mut self, now: Time) {
        for server in self.servers.iter_mut() {
            server.echo_serials = [0; 4];
            server.echo_pending = false;
        }
        let next = now.saturating_add(self.period());
        self.set_state(now, State::Poll { next, attempt: 0 });
    }

    /// Authenticate again now (another record's OFFLINE_REQ may have taken
    /// our shared session down at the server).
    pub fn reauthenticate(&mut self, ctx: &mut Ctx) {
        let State::Online(o) = &mut self.state else {
            return;
        };
        let dest = o.dest;
        o.reauth = Some(Pending { lowercase: false });
        self.send_auth(dest, Pending { lowercase: false }, ctx);
    }

    /// Adopt an edited record that kept its HostID and servers (SIGHUP): new
    /// hooks and refresh apply at once; a changed password or key logs in
    /// again in place, so the session survives unless the server refuses.
    pub fn update(
        &mut self,
        index: usize,
        config: &RecordConfig,
        auth_changed: bool,
        now: Time,
        ctx: &mut Ctx,
    ) {
        self.index = index;
        self.refresh_proposal = config.refresh_proposal;
        self.period = Duration::from_secs(config.refresh_period().into());
        self.refresh_within_period(now);

        if !auth_changed {
            return;
        }
        self.secret = Secret::new(&config.auth);
        self.auth_print = fingerprint(&config.auth);
        match self.state {
            State::Online(_) => self.reauthenticate(ctx),
            // A password fixed after a refusal is tried at once.
            State::Auth { .. } | State::Poll { .. } => self.set_state(
                now,
                State::Poll {
                    next: now,
                    attempt: 0,
                },
            ),
        }
    }

    /// Removed from the configuration: it only finishes its OFFLINE_REQ
    /// copies from now on.
    pub fn retire(&mut self) {
        self.state = State::Poll {
            next: Duration::MAX,
            attempt: 0,
        };
    }

    /// The same record for a reload: same HostID, same servers in order.
    pub fn same_as(&self, config: &RecordConfig) -> bool {
        self.hostid == config.hostid
            && self.servers.len() == config.servers.len()
            && self
                .servers
                .iter()
                .zip(&config.servers)
                .all(|(s, c)| s.is(c))
    }

    /// Whether `auth` is the password or key this record logs in with.
    pub fn same_auth(&self, auth: &Auth) -> bool {
        self.auth_print == fingerprint(auth)
    }

    /// The index of the server owning a datagram from `src` naming `rport`.
    pub fn match_server(&self, src: Ipv4Addr, rport: u32) -> Option<usize> {
        self.servers.iter().position(|s| s.owns(src, rport))
    }
}
