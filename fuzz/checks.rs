//! The checks of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (libFuzzer, nightly) and `tests/fuzz_corpus.rs` (stable), so that CI
//! replays the stored corpus with exactly the checks the fuzzer ran.
//!
//! Each check takes the raw fuzz input and panics when an invariant breaks.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use dhid::config::{self, Auth, Host, RecordConfig, ServerSpec};
use dhid::engine::Engine;
use dhid::qrc::QrcKey;
use dhid::record::{Event, OfflineReason, Policy};
use dhid::wire::{self, Body, DecodeError, Header, Message, Number, Password};

// ---------------------------------------------------------------------------
// wire_decode

/// `decode` never panics, refuses exactly what the size table says, and
/// what it accepts encodes back to the bytes it read.
pub fn wire_decode(data: &[u8]) {
    match wire::decode(data) {
        Ok(msg) => {
            let need = wire::message_len(msg.header.opcode).expect("decoded a known opcode");
            assert!(data.len() >= need, "decoded {} of {need} bytes", data.len());
            assert_eq!(msg.body.opcode(), msg.header.opcode);
            assert_eq!(wire::decode_header(data), Ok(msg.header));
            assert!(wire::opcode_name(msg.header.opcode).is_some());

            let dgram = wire::encode(&msg);
            let bytes = dgram.as_bytes();
            // Every field is kept raw, so the encoding is the input cut to
            // the message's size: bytes beyond it are ignored.
            assert_eq!(bytes, &data[..need], "re-encoding differs from the input");
            assert_eq!(wire::decode(bytes), Ok(msg));
            let _ = format!("{dgram:?} {msg:?}");
        }
        Err(e) => {
            match e {
                DecodeError::ShortHeader { len } => {
                    assert_eq!(len, data.len());
                    assert!(len < wire::HEADER_LEN);
                }
                DecodeError::UnknownOpcode { opcode } => {
                    assert!(data.len() >= wire::HEADER_LEN);
                    assert!(wire::message_len(opcode).is_none());
                }
                DecodeError::Truncated { opcode, len, need } => {
                    assert_eq!(len, data.len());
                    assert_eq!(wire::message_len(opcode), Some(need));
                    assert!(wire::HEADER_LEN <= len && len < need);
                }
            }
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// config_parse

const CONF_NAME: &str = "fuzz.conf";

/// `parse` never panics; an accepted file holds only records the engine
/// can run; and no message depends on a HostPass value.
pub fn config_parse(data: &[u8]) {
    let result = config::parse(CONF_NAME, data);
    match &result {
        Ok(cfg) => check_config(cfg),
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without an error");
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
            for e in errors {
                assert_eq!(e.file, CONF_NAME);
                let _ = e.to_string();
            }
        }
    }
    check_no_password_in_messages(data, &result);
}

fn check_config(cfg: &config::Config) {
    // "no records configured" is an error, so an accepted file has one.
    assert!(!cfg.records.is_empty(), "accepted a file without records");
    let mut seen = HashMap::new();
    for r in &cfg.records {
        assert_ne!(r.hostid, 0, "record at line {} has HostID 0", r.line);
        assert!(
            !r.servers.is_empty(),
            "record at line {} has no server",
            r.line
        );
        assert!(r.refresh_proposal == 0 || r.refresh_proposal >= config::MIN_REFRESH);
        match &r.auth {
            Auth::Password(p) => {
                // record.rs turns it into the wire field with `expect`.
                assert!(Password::new(p.as_bytes()).is_some(), "unusable password");
            }
            Auth::Qrc(key) => {
                assert!(key.modulus().to_str_radix(10).len() <= wire::NUMBER_LEN);
            }
        }
        for s in &r.servers {
            assert_ne!(s.port, 0);
            if let Host::Name(n) = &s.host {
                assert!(!n.is_empty());
            }
            // The parser refuses two records for one HostID on one server,
            // as replies carry only the HostID; one record may repeat a
            // server (a warning).
            let key = (r.hostid, s.host.to_string().to_ascii_lowercase(), s.port);
            let first = *seen.entry(key).or_insert(r.line);
            assert_eq!(first, r.line, "HostID {} on {s} in two records", r.hostid);
        }
    }
    // What was accepted must start: a record the engine rejects (for
    // example with a panic) is a parser bug.
    let mut engine = Engine::new(&cfg.records, 58902, 1, Policy::default(), Duration::ZERO);
    engine.handle_timeout(Duration::ZERO);
    while engine.poll_transmit().is_some() {}
    while engine.poll_event().is_some() {}
}

/// Where the value of a HostPass line lies, read as the parser reads the
/// line: `{` may precede the keyword on the same line.
fn hostpass_value(line: &[u8]) -> Option<std::ops::Range<usize>> {
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Lines the parser cannot read as text keep no value to protect, and
    // rewriting them could make them readable.
    if line.contains(&0) || std::str::from_utf8(line).is_err() {
        return None;
    }
    let mut i = line.iter().position(|b| !is_blank(b))?;
    if line[i] == b'{' {
        i += 1;
        i += line[i..].iter().take_while(|b| is_blank(b)).count();
    }
    let word_end = i + line[i..].iter().take_while(|b| !is_blank(b)).count();
    if !line[i..word_end].eq_ignore_ascii_case(b"HostPass") {
        return None;
    }
    let start = word_end + line[word_end..].iter().take_while(|b| is_blank(b)).count();
    let end = start + line[start..].iter().take_while(|b| !is_blank(b)).count();
    (start < end).then_some(start..end)
}

fn all_messages(result: &Result<config::Config, Vec<config::ConfigError>>) -> String {
    let mut text = String::new();
    match result {
        Ok(cfg) => cfg.warnings.iter().for_each(|w| {
            text.push_str(&w.message);
            text.push('\n');
        }),
        Err(errors) => errors.iter().for_each(|e| {
            text.push_str(&e.message);
            text.push('\n');
        }),
    }
    text
}

/// Differential: parse again with every HostPass value overwritten by a
/// filler of the same length. A value may appear in a message only as
/// often as it does for the masked file, where it can come only from
/// elsewhere in the file (another keyword's value) or from fixed text.
fn check_no_password_in_messages(
    data: &[u8],
    result: &Result<config::Config, Vec<config::ConfigError>>,
) {
    let mut masked = data.to_vec();
    let mut values = Vec::new();
    let mut offset = 0;
    for line in data.split(|&b| b == b'\n') {
        if let Some(r) = hostpass_value(line) {
            values.push(offset + r.start..offset + r.end);
        }
        offset += line.len() + 1;
    }
    if values.is_empty() {
        return;
    }
    let secrets: Vec<&str> = values
        .iter()
        .filter_map(|r| std::str::from_utf8(&data[r.clone()]).ok())
        .collect();
    // A filler byte that is in no value, so it cannot spell one.
    let Some(filler) = (b'a'..=b'z')
        .chain(b'A'..=b'Z')
        .find(|c| secrets.iter().all(|s| !s.as_bytes().contains(c)))
    else {
        return;
    };
    for r in &values {
        masked[r.clone()].fill(filler);
    }
    let original = all_messages(result);
    let reference = all_messages(&config::parse(CONF_NAME, &masked));
    for secret in secrets {
        let leaked = original.matches(secret).count();
        let expected = reference.matches(secret).count();
        assert!(
            leaked <= expected,
            "HostPass value {secret:?} appears in a message:\n{original}"
        );
    }
}

// ---------------------------------------------------------------------------
// engine

/// The port our engine listens on.
const PORT: u16 = 58902;
/// Where datagrams come from: the configured servers and a stranger.
const SOURCES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];
const SERVER_PORTS: [u16; 2] = [58901, 58911];
const HOSTIDS: [u32; 3] = [1000, 1001, 2011];
const PASSWORDS: [&str; 2] = ["secret", "Secret2"];
/// Record 1's second server is a name; the driver answers its Resolve.
const NAMED: (usize, usize) = (1, 1);
const OPCODES: [u32; 10] = [
    wire::ECHO_REQ,
    wire::ECHO_ACK,
    wire::AUTH_REQ,
    wire::AUTH_DENY,
    wire::AUTH_SX,
    wire::AUTH_SY,
    wire::AUTH_ACK,
    wire::CHECK_REQ,
    wire::CHECK_ACK,
    wire::OFFLINE_REQ,
];

/// tests/data/keys1.json, the key of CAPTURES.md section 3.
const KEY_P: &str = "15449893736667232178307889299179416633465749433683\
                     80824753093935890394130302442363034824844794389731";
const KEY_Q: &str = "99435236198937884453866216967234063277242682229044\
                     05650918559261780062297024431052235518351362273691";
/// The AUTH_SY challenge of CAPTURES.md section 3.
const CAPTURED_Y: &str = "13065924422268226546235493948226730465583143016152\
                          98488648907940625306534647043347326003399892178955\
                          66285363327185328314134826301569209667720864871373\
                          72103711748091722903166233498132805692954459746893";

/// Bounds one run: a livelocked engine must fail, not time out.
const MAX_OPS: usize = 400;
const MAX_DEADLINES_PER_STEP: usize = 20_000;

fn server(host: Host, port: u16) -> ServerSpec {
    ServerSpec {
        host,
        port,
        line: 2,
    }
}

fn engine_configs(key: &QrcKey) -> Vec<RecordConfig> {
    let record = |hostid, auth, servers, refresh_proposal| RecordConfig {
        line: 1,
        hostid,
        auth,
        servers,
        refresh_proposal,
        on_cmd: None,
        off_cmd: None,
    };
    let [s1, s2, _] = SOURCES;
    let [p1, p2] = SERVER_PORTS;
    vec![
        // Two servers, so that the first answer wins and the other's
        // replies are stale.
        record(
            HOSTIDS[0],
            Auth::Password(PASSWORDS[0].into()),
            vec![server(Host::Addr(s1), p1), server(Host::Addr(s2), p2)],
            60,
        ),
        // Mixed case: a refusal is retried in lower case. Same server as
        // record 0, so that a shared session id can be taken offline.
        record(
            HOSTIDS[1],
            Auth::Password(PASSWORDS[1].into()),
            vec![
                server(Host::Addr(s1), p1),
                server(Host::Name("dhis.example.net".into()), p2),
            ],
            0,
        ),
        record(
            HOSTIDS[2],
            Auth::Qrc(key.clone()),
            vec![server(Host::Addr(s1), p2)],
            300,
        ),
    ]
}

/// The fuzz input, read front to back; reads past the end give zeros so
/// that a short input still makes a whole operation.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// `n` bytes, zero-padded at the end of the input.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.data.len());
        let mut out = self.data[..take].to_vec();
        self.data = &self.data[take..];
        out.resize(n, 0);
        out
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

/// What the checks know of one record from its events alone.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Online {
    address: Ipv4Addr,
    server: SocketAddrV4,
}

struct Driver {
    engine: Engine,
    key: QrcKey,
    now: Duration,
    /// The serial of the last datagram sent; all records share one counter.
    serial: u32,
    server_serial: u32,
    online: Vec<Option<Online>>,
    /// Our latest datagrams, for answers that get past the engine's checks.
    sent: VecDeque<(SocketAddrV4, Message)>,
}

impl Driver {
    fn new(seed: u64) -> Driver {
        // Its primality tests would otherwise take most of each run.
        static KEY: OnceLock<QrcKey> = OnceLock::new();
        let key = KEY
            .get_or_init(|| QrcKey::from_decimal(KEY_P, KEY_Q).expect("keys1.json is a valid key"))
            .clone();
        let configs = engine_configs(&key);
        let engine = Engine::new(&configs, PORT, seed, Policy::default(), Duration::ZERO);
        Driver {
            online: vec![None; configs.len()],
            engine,
            key,
            now: Duration::ZERO,
            serial: 0,
            server_serial: 1000,
            sent: VecDeque::new(),
        }
    }

    /// Check and record everything the engine put out; true if anything.
    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(t) = self.engine.poll_transmit() {
            any = true;
            let msg = wire::decode(t.datagram.as_bytes()).expect("we send what we decode");
            self.check_sent(t.dest, &msg);
            self.sent.push_front((t.dest, msg));
            self.sent.truncate(32);
        }
        while let Some(e) = self.engine.poll_event() {
            any = true;
            self.check_event(&e);
        }
        for (i, online) in self.online.iter().enumerate() {
            // The status a SIGUSR1 shows agrees with the hooks' view.
            let status = self.engine.status(i);
            assert_eq!(
                status.state == "online",
                online.is_some(),
                "record {i}: {status:?}"
            );
            // The clock only moves forward: no record can know a later time.
            let now = self.now;
            assert!(status.since <= now, "record {i}: {status:?} at {now:?}");
            assert!(
                status.heard.is_none_or(|t| t <= now),
                "record {i}: {status:?}"
            );
            if let Some(o) = online {
                assert_eq!(status.address, Some(o.address));
                assert_eq!(status.server, Some(o.server));
            }
        }
        any
    }

    fn check_sent(&mut self, dest: SocketAddrV4, msg: &Message) {
        let h = msg.header;
        assert_eq!(h.version, wire::VERSION, "{msg:?}");
        assert_eq!(h.rport, u32::from(PORT), "{msg:?}");
        self.serial = self.serial.wrapping_add(1);
        assert_eq!(h.serial, self.serial, "serials count up across records");
        assert!(SOURCES.contains(dest.ip()), "sent to {dest}");
        assert!(SERVER_PORTS.contains(&dest.port()), "sent to {dest}");
        let record = HOSTIDS
            .iter()
            .position(|&id| id == h.hostid)
            .unwrap_or_else(|| panic!("sent for unknown HostID {}", h.hostid));
        match msg.body {
            Body::AuthReq { password, .. } => {
                let expected: &[u8] = match PASSWORDS.get(record) {
                    Some(p) => p.as_bytes(),
                    None => b"",
                };
                let text = password.text();
                // Only the record's own secret, as written or lower-cased.
                assert!(
                    text == expected || text == expected.to_ascii_lowercase(),
                    "record {record} sent the wrong password"
                );
            }
            Body::AuthSx(x) => {
                assert_eq!(record, 2, "only the QRC record answers AUTH_SY");
                assert!(x.0.iter().all(u8::is_ascii_digit), "{x:?}");
                let x = dhid::qrc::parse_number(&x);
                assert!(&x < self.key.modulus(), "answer not reduced mod N");
            }
            Body::EchoReq | Body::EchoAck { .. } | Body::CheckAck { .. } => {}
            Body::OfflineReq { .. } => {}
            _ => panic!("a client never sends {}", msg.body.name()),
        }
    }

    fn check_event(&mut self, e: &Event) {
        match *e {
            Event::Online {
                record,
                address,
                server,
            } => {
                let slot = &mut self.online[record];
                assert!(slot.is_none(), "record {record}: Online twice");
                *slot = Some(Online { address, server });
            }
            Event::Offline {
                record,
                address,
                server,
                ..
            } => {
                let slot = &mut self.online[record];
                // OffCmd must get the address OnCmd (or the last change) got.
                assert_eq!(
                    *slot,
                    Some(Online { address, server }),
                    "record {record}: Offline without a matching Online"
                );
                *slot = None;
            }
            Event::AddressChanged {
                record,
                old,
                new,
                server,
            } => {
                let slot = &mut self.online[record];
                let current = Some(Online {
                    address: old,
                    server,
                });
                assert_eq!(
                    *slot, current,
                    "record {record}: AddressChanged while {slot:?}"
                );
                assert_ne!(old, new);
                *slot = Some(Online {
                    address: new,
                    server,
                });
            }
            Event::NewSession { record } => {
                assert!(
                    self.online[record].is_some(),
                    "record {record}: NewSession offline"
                );
            }
            Event::Refused { record, .. } => {
                assert!(
                    self.online[record].is_none(),
                    "record {record}: Refused online"
                );
            }
            Event::LowercaseAccepted { record } => {
                assert_eq!(record, 1, "only record 1 has upper case in its password");
            }
            Event::Resolve { record, server, .. } => {
                assert_eq!((record, server), NAMED, "only one server has a name");
            }
        }
    }

    fn deadline(&mut self) -> Duration {
        // Every record always has something to do next.
        self.engine
            .poll_timeout()
            .expect("a deadline while records exist")
    }

    /// Run every deadline up to `target` in order, as the daemon does.
    fn advance_to(&mut self, target: Duration) {
        for _ in 0..MAX_DEADLINES_PER_STEP {
            let at = self.deadline();
            if at > target {
                self.now = target;
                return;
            }
            self.now = self.now.max(at);
            self.timeout();
        }
        panic!("more than {MAX_DEADLINES_PER_STEP} deadlines before {target:?}: livelock");
    }

    fn timeout(&mut self) {
        self.engine.handle_timeout(self.now);
        let output = self.drain();
        let next = self.deadline();
        assert!(
            next > self.now || output,
            "deadline {next:?} not after {:?} and nothing done",
            self.now
        );
    }

    fn deliver(&mut self, src: Ipv4Addr, bytes: &[u8]) {
        self.engine.handle_datagram(self.now, src, bytes);
        self.drain();
        self.deadline();
    }

    fn send_server(&mut self, src: Ipv4Addr, rport: u32, hostid: u32, body: Body) {
        self.server_serial = self.server_serial.wrapping_add(1);
        let header = Header {
            opcode: body.opcode(),
            serial: self.server_serial,
            version: 53,
            rport,
            hostid,
        };
        let dgram = wire::encode(&Message { header, body });
        self.deliver(src, dgram.as_bytes());
    }

    /// A server's answer to one of our recent datagrams, from the address
    /// and port it went to: the inputs most likely to move a record on.
    fn reply(&mut self, input: &mut Input) {
        let which = usize::from(input.u8());
        let kind = input.u8();
        if self.sent.is_empty() {
            return;
        }
        let (dest, msg) = self.sent[which % self.sent.len()];
        let body = match (msg.body, kind % 4) {
            (Body::EchoReq, 0 | 1) => Body::EchoAck {
                echo_serial: msg.header.serial,
            },
            (Body::AuthReq { .. } | Body::AuthSx(_), 0 | 1) => auth_ack(input),
            (Body::AuthReq { .. } | Body::AuthSx(_), 2) => Body::AuthDeny,
            (Body::AuthReq { .. }, 3) => Body::AuthSy(challenge(input)),
            // The server's own probe of a host it holds.
            (_, 2) => Body::EchoReq,
            _ => Body::CheckReq {
                refresh: refresh(input),
            },
        };
        self.send_server(*dest.ip(), dest.port().into(), msg.header.hostid, body);
    }

    /// A well-formed datagram whose fields are mostly fuzzed.
    fn forge(&mut self, input: &mut Input) {
        let src = input.pick(&SOURCES);
        let op = input.u8();
        let opcode = if op >= 250 {
            input.u32()
        } else {
            OPCODES[usize::from(op) % OPCODES.len()]
        };
        let serial = input.u32();
        let version = input.pick(&[53, 55, 0]);
        let port = input.u8();
        let rport = match port % 4 {
            3 => input.u32(),
            _ => SERVER_PORTS[usize::from(port) % 2].into(),
        };
        let id = input.u8();
        let hostid = match id % 4 {
            3 => input.u32(),
            _ => HOSTIDS[usize::from(id) % 3],
        };
        let mut data = Vec::with_capacity(wire::MAX_LEN);
        for word in [opcode, serial, version, rport, hostid] {
            data.extend_from_slice(&word.to_be_bytes());
        }
        let body_len = wire::message_len(opcode).map_or(0, |n| n - wire::HEADER_LEN);
        data.extend(input.bytes(body_len));
        self.deliver(src, &data);
    }

    fn raw(&mut self, input: &mut Input) {
        let src = input.pick(&SOURCES);
        let len = usize::from(input.u8());
        let data = input.bytes(len);
        self.deliver(src, &data);
    }

    fn signal(&mut self, input: &mut Input) {
        let how = input.u8();
        let reasons = [
            OfflineReason::Usr2,
            OfflineReason::Shutdown,
            OfflineReason::Removed,
        ];
        let reason = reasons[usize::from(how >> 2) % reasons.len()];
        match how % 4 {
            0 | 1 => self.engine.take_all_offline(self.now, OfflineReason::Usr2),
            2 => self.engine.take_all_offline(self.now, reason),
            _ => {
                let record = usize::from(how >> 4) % self.online.len();
                self.engine.take_offline(self.now, record, reason);
            }
        }
        self.drain();
        self.deadline();
    }

    fn resolve(&mut self, input: &mut Input) {
        let mask = input.u8();
        let addrs = SOURCES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, a)| *a)
            .collect();
        self.engine.handle_resolved(NAMED.0, NAMED.1, addrs);
        self.drain();
        self.deadline();
    }
}

fn auth_ack(input: &mut Input) -> Body {
    // Few session ids, so that records share one and an id comes back.
    let sid = u32::from(input.u8() % 4);
    let address = Ipv4Addr::new(192, 0, 2, input.u8() % 4);
    Body::AuthAck { sid, address }
}

fn refresh(input: &mut Input) -> u32 {
    match input.u8() % 6 {
        0 => 0,
        1 => 1,
        2 => 60,
        3 => 120,
        4 => u32::MAX,
        _ => input.u32(),
    }
}

fn challenge(input: &mut Input) -> Number {
    let mut field = [0u8; wire::NUMBER_LEN];
    match input.u8() % 3 {
        0 => field.copy_from_slice(CAPTURED_Y.as_bytes()),
        1 => field.copy_from_slice(&input.bytes(wire::NUMBER_LEN)),
        _ => {
            // A short number, NUL-terminated like a C string.
            let n = usize::from(input.u8()) % wire::NUMBER_LEN;
            for b in &mut field[..n] {
                *b = b'0' + input.u8() % 10;
            }
        }
    }
    Number(field)
}

/// Drive an engine of two password records and one QRC record through
/// the operations the input spells, checking its output after each.
pub fn engine(data: &[u8]) {
    let mut input = Input { data };
    let seed = u64::from(input.u32());
    let mut d = Driver::new(seed);
    d.advance_to(Duration::ZERO);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => {
                let ms = input.u16();
                let target = d.now + Duration::from_millis(ms.into());
                d.advance_to(target);
            }
            1 => {
                let long = Duration::from_secs(u64::from(input.u8()) * 5);
                d.advance_to(d.now + long);
            }
            2 => {
                // A late wake-up: deadlines are overdue when it comes.
                d.now += Duration::from_millis(input.u16().into());
                d.timeout();
            }
            3 => d.reply(&mut input),
            4 => d.forge(&mut input),
            5 => d.raw(&mut input),
            6 => d.signal(&mut input),
            _ => d.resolve(&mut input),
        }
    }
    // Whatever state the ops left, time going on must not break it.
    let end = d.now + Duration::from_secs(600);
    d.advance_to(end);
}
