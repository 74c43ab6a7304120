//! The protocol core on a virtual clock: scripts of "at t, this datagram
//! goes out; the server answers that; at t + x, this happens".

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhid::config::{Auth, Host, RecordConfig, ServerSpec};
use dhid::engine::Engine;
use dhid::qrc::QrcKey;
use dhid::record::{Event, OfflineReason, Policy};
use dhid::wire::{self, Body, Header, Message, Number, Password};

const PORT: u16 = 58902;
const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SPORT: u16 = 58901;
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn record(hostid: u32, auth: Auth, servers: &[(Ipv4Addr, u16)], refresh: u32) -> RecordConfig {
    RecordConfig {
        line: 1,
        hostid,
        auth,
        servers: servers
            .iter()
            .map(|&(a, port)| ServerSpec {
                host: Host::Addr(a),
                port,
                line: 2,
            })
            .collect(),
        refresh_proposal: refresh,
        on_cmd: None,
        off_cmd: None,
    }
}

fn pass_record(hostid: u32, pass: &str) -> RecordConfig {
    record(hostid, Auth::Password(pass.into()), &[(SERVER, SPORT)], 60)
}

#[derive(Clone)]
struct Sent {
    dest: SocketAddrV4,
    msg: Message,
}

/// The engine, a virtual clock, and what the engine said so far.
struct Sim {
    engine: Engine,
    now: Duration,
    events: Vec<Event>,
    server_serial: u32,
}

impl Sim {
    fn new(records: &[RecordConfig]) -> Sim {
        let engine = Engine::new(records, PORT, 42, Policy::default(), Duration::ZERO);
        Sim {
            engine,
            now: Duration::ZERO,
            events: Vec::new(),
            server_serial: 100,
        }
    }

    /// Run every deadline up to `t` in order; return what was sent.
    fn advance_to(&mut self, t: Duration) -> Vec<Sent> {
        let mut sent = Vec::new();
        // Bounded: a livelock in the core must fail the test, not hang it.
        for _ in 0..10_000 {
            match self.engine.poll_timeout() {
                Some(at) if at <= t => {
                    self.now = self.now.max(at);
                    self.engine.handle_timeout(self.now);
                    sent.extend(self.drain());
                }
                _ => {
                    self.now = t;
                    return sent;
                }
            }
        }
        panic!("more than 10 000 deadlines before {t:?}");
    }

    fn drain(&mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        while let Some(t) = self.engine.poll_transmit() {
            let msg = wire::decode(t.datagram.as_bytes()).expect("we send what we decode");
            assert_eq!(msg.header.version, 55);
            assert_eq!(msg.header.rport, u32::from(PORT));
            sent.push(Sent { dest: t.dest, msg });
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
        sent
    }

    /// A datagram from `src` arrives now; returns the engine's answers.
    fn receive(&mut self, src: Ipv4Addr, rport: u16, hostid: u32, body: Body) -> Vec<Sent> {
        self.server_serial += 1;
        let header = Header {
            opcode: body.opcode(),
            serial: self.server_serial,
            version: 53,
            rport: rport.into(),
            hostid,
        };
        let datagram = wire::encode(&Message { header, body });
        self.engine
            .handle_datagram(self.now, src, datagram.as_bytes());
        self.drain()
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The server's ECHO_ACK to one of our ECHO_REQs; returns what it drew.
    fn answer(&mut self, probe: &Sent, hostid: u32) -> Vec<Sent> {
        let serial = probe.msg.header.serial;
        self.receive(
            SERVER,
            SPORT,
            hostid,
            Body::EchoAck {
                echo_serial: serial,
            },
        )
    }

    /// Start the clock and answer the first ECHO_REQ; returns what that
    /// answer drew (the AUTH_REQ).
    fn answer_first_probe(&mut self, hostid: u32) -> Vec<Sent> {
        let sent = self.advance_to(Duration::ZERO);
        self.answer(&sent[0], hostid)
    }

    /// Answer a probe; returns the body of the AUTH_REQ it draws.
    fn login_request(&mut self, hostid: u32, echo: &Sent) -> Body {
        self.answer(echo, hostid)[0].msg.body
    }

    /// Log record `hostid` in with a password: ECHO_ACK, then AUTH_ACK.
    fn login(&mut self, hostid: u32, sid: u32, echo: &Sent) -> Vec<Sent> {
        let sent = self.answer(echo, hostid);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].msg.body.opcode(), wire::AUTH_REQ);
        let address = Ipv4Addr::new(192, 0, 2, 7);
        self.receive(SERVER, SPORT, hostid, Body::AuthAck { sid, address })
    }
}

fn opcodes(sent: &[Sent]) -> Vec<&'static str> {
    sent.iter().map(|s| s.msg.body.name()).collect()
}

fn online_sim(hostid: u32, pass: &str) -> Sim {
    let mut sim = Sim::new(&[pass_record(hostid, pass)]);
    let sent = sim.advance_to(Duration::ZERO);
    assert!(sim.login(hostid, 77, &sent[0]).is_empty());
    assert!(matches!(sim.take_events()[..], [Event::Online { .. }]));
    sim
}

#[test]
fn password_login_is_two_round_trips() {
    let mut sim = Sim::new(&[pass_record(1000, "secret")]);
    let sent = sim.advance_to(Duration::ZERO);
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
    assert_eq!(sent[0].dest, SocketAddrV4::new(SERVER, SPORT));
    assert_eq!(sent[0].msg.header.serial, 1);
    assert_eq!(sent[0].msg.header.hostid, 1000);

    let sent = sim.receive(SERVER, SPORT, 1000, Body::EchoAck { echo_serial: 1 });
    let Body::AuthReq { password, refresh } = sent[0].msg.body else {
        panic!("not AUTH_REQ")
    };
    assert_eq!(&password.0, b"secret\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(refresh, 60);
    assert_eq!(sent[0].msg.header.serial, 2);

    let address = Ipv4Addr::new(192, 0, 2, 7);
    let sent = sim.receive(SERVER, SPORT, 1000, Body::AuthAck { sid: 5, address });
    assert!(sent.is_empty());
    let server = SocketAddrV4::new(SERVER, SPORT);
    assert_eq!(
        sim.take_events(),
        [Event::Online {
            record: 0,
            address,
            server
        }]
    );
    assert_eq!(sim.engine.poll_timeout(), Some(secs(60.0)));
}

#[test]
fn polling_backs_off_from_two_seconds_up_to_the_period() {
    let mut sim = Sim::new(&[pass_record(1000, "secret")]);
    let mut times = Vec::new();
    for _ in 0..10 {
        let at = sim.engine.poll_timeout().unwrap();
        let sent = sim.advance_to(at);
        assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
        times.push(at.as_secs_f64());
    }
    assert_eq!(times[0], 0.0);
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let nominal = (2.0 * 2f64.powi(i as i32)).min(60.0);
        assert!(*gap >= nominal * 0.8 - 1e-9, "gap {i} = {gap}");
        assert!(*gap <= (nominal * 1.2).min(60.0) + 1e-9, "gap {i} = {gap}");
    }
    assert!(gaps.iter().skip(6).all(|g| *g <= 60.0 + 1e-6), "{gaps:?}");
}

#[test]
fn lost_auth_ack_polls_again_after_the_backoff_step() {
    let mut sim = Sim::new(&[pass_record(1000, "secret")]);
    sim.answer_first_probe(1000);
    let sent = sim.advance_to(secs(1.5));
    assert!(sent.is_empty());
    let sent = sim.advance_to(secs(2.5));
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
}

#[test]
fn redundant_servers_first_answer_wins() {
    let second = Ipv4Addr::new(127, 0, 0, 3);
    let servers = [(SERVER, SPORT), (second, 58903)];
    let mut sim = Sim::new(&[record(7, Auth::Password("pw".into()), &servers, 60)]);
    let sent = sim.advance_to(Duration::ZERO);
    assert_eq!(opcodes(&sent), ["ECHO_REQ", "ECHO_REQ"]);
    assert_eq!(sent[1].dest, SocketAddrV4::new(second, 58903));

    let serial = sent[1].msg.header.serial;
    let auth = sim.receive(
        second,
        58903,
        7,
        Body::EchoAck {
            echo_serial: serial,
        },
    );
    assert_eq!(opcodes(&auth), ["AUTH_REQ"]);
    assert_eq!(auth[0].dest, SocketAddrV4::new(second, 58903));

    // The slower server's answer changes nothing.
    assert!(sim.answer(&sent[0], 7).is_empty());
    // Nor does an AUTH_ACK from it: only the selected server authenticates.
    let address = Ipv4Addr::new(192, 0, 2, 9);
    assert!(
        sim.receive(SERVER, SPORT, 7, Body::AuthAck { sid: 1, address })
            .is_empty()
    );
    assert!(sim.take_events().is_empty());
    sim.receive(second, 58903, 7, Body::AuthAck { sid: 1, address });
    assert!(matches!(sim.take_events()[..], [Event::Online { .. }]));

    // Online: the selected server is asked to authenticate again, the
    // other only gets an ECHO_REQ.
    let sent = sim.advance_to(secs(60.0));
    assert_eq!(opcodes(&sent), ["ECHO_REQ", "AUTH_REQ"]);
    assert_eq!(sent[0].dest, SocketAddrV4::new(SERVER, SPORT));
    assert_eq!(sent[1].dest, SocketAddrV4::new(second, 58903));
}

#[test]
fn keepalive_reauthenticates_every_period() {
    let mut sim = online_sim(1000, "secret");
    assert!(sim.advance_to(secs(59.9)).is_empty());
    // The AUTH_REQ is the keep-alive: one request, one answer a period.
    let sent = sim.advance_to(secs(60.0));
    assert_eq!(opcodes(&sent), ["AUTH_REQ"]);
    assert_eq!(sent[0].dest, SocketAddrV4::new(SERVER, SPORT));

    let address = Ipv4Addr::new(192, 0, 2, 7);
    sim.receive(SERVER, SPORT, 1000, Body::AuthAck { sid: 77, address });
    assert!(
        sim.take_events().is_empty(),
        "same sid and address: nothing to tell"
    );

    let sent = sim.advance_to(secs(120.0));
    assert_eq!(opcodes(&sent), ["AUTH_REQ"]);
    let new = Ipv4Addr::new(198, 51, 100, 1);
    sim.receive(
        SERVER,
        SPORT,
        1000,
        Body::AuthAck {
            sid: 78,
            address: new,
        },
    );
    let events = sim.take_events();
    assert!(events.contains(&Event::NewSession { record: 0 }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::AddressChanged { new: n, .. } if *n == new))
    );
}

#[test]
fn silence_takes_the_record_offline_after_three_periods() {
    let mut sim = online_sim(1000, "secret");
    sim.advance_to(secs(179.9));
    assert!(sim.take_events().is_empty());
    let sent = sim.advance_to(secs(180.0));
    let events = sim.take_events();
    assert!(matches!(
        events[..],
        [Event::Offline {
            reason: OfflineReason::Timeout,
            ..
        }]
    ));
    // No OFFLINE_REQ to a silent server; polling starts over at once.
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
    let sent = sim.advance_to(secs(182.5));
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
}

#[test]
fn a_suspend_longer_than_the_timeout_reauthenticates_at_once() {
    let mut sim = online_sim(1000, "secret");
    // The daemon's clock counts suspended time: a day passes in one step.
    sim.now = secs(86_400.0);
    sim.engine.handle_timeout(sim.now);
    let sent = sim.drain();
    assert!(matches!(
        sim.take_events()[..],
        [Event::Offline {
            reason: OfflineReason::Timeout,
            ..
        }]
    ));
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
}

#[test]
fn huge_refresh_does_not_overflow_the_timeout() {
    let config = record(
        1,
        Auth::Password("pw".into()),
        &[(SERVER, SPORT)],
        715_827_883,
    );
    let mut sim = Sim::new(&[config]);
    let sent = sim.advance_to(Duration::ZERO);
    sim.login(1, 9, &sent[0]);
    assert!(matches!(sim.take_events()[..], [Event::Online { .. }]));
    // The C dhid computed 3 x Refresh in 32 bits and timed out at once.
    // Here the period is the 120 s dhisd holds, and silence ends the
    // session after three of them, not before.
    sim.advance_to(secs(359.9));
    assert!(sim.take_events().is_empty());
    assert!(sim.engine.records()[0].is_online());
    sim.advance_to(secs(360.0));
    assert!(matches!(
        sim.take_events()[..],
        [Event::Offline {
            reason: OfflineReason::Timeout,
            ..
        }]
    ));

    // Durations at the far end of the range saturate, they do not wrap.
    let mut policy_sim = Sim::new(&[pass_record(2, "pw")]);
    policy_sim.now = Duration::MAX - secs(1.0);
    policy_sim.engine.handle_timeout(policy_sim.now);
    policy_sim.drain();
}

#[test]
fn check_req_is_answered_and_its_period_adopted() {
    let config = record(1, Auth::Password("pw".into()), &[(SERVER, SPORT)], 3600);
    let mut sim = Sim::new(&[config]);
    let sent = sim.advance_to(Duration::ZERO);
    sim.login(1, 0x0bad_cafe, &sent[0]);

    let sent = sim.receive(SERVER, SPORT, 1, Body::CheckReq { refresh: 90 });
    assert_eq!(opcodes(&sent), ["CHECK_ACK"]);
    assert_eq!(sent[0].msg.body, Body::CheckAck { sid: 0x0bad_cafe });
    assert_eq!(sent[0].dest, SocketAddrV4::new(SERVER, SPORT));

    // Refreshes now follow the server's 90 s, not the hour we asked for.
    assert!(sim.advance_to(secs(89.9)).is_empty());
    let sent = sim.advance_to(secs(90.0));
    assert_eq!(opcodes(&sent), ["AUTH_REQ"]);
}

/// dhisd holds 120 s for a proposal above 21600; dhid uses that from the
/// start, so a restarted server (which sends no CHECK_REQ, having no
/// session) hears from it within two minutes, not in a day.
#[test]
fn a_refresh_beyond_the_server_limit_refreshes_at_its_120_seconds() {
    let config = record(1, Auth::Password("pw".into()), &[(SERVER, SPORT)], 86_400);
    let mut sim = Sim::new(&[config]);
    let sent = sim.advance_to(Duration::ZERO);
    let Body::AuthReq { refresh, .. } = sim.login_request(1, &sent[0]) else {
        panic!()
    };
    assert_eq!(refresh, 86_400, "the proposal is still what the file says");
    let address = Ipv4Addr::new(192, 0, 2, 7);
    sim.receive(SERVER, SPORT, 1, Body::AuthAck { sid: 1, address });
    assert!(sim.advance_to(secs(119.9)).is_empty());
    assert_eq!(opcodes(&sim.advance_to(secs(120.0))), ["AUTH_REQ"]);
}

#[test]
fn server_echo_req_is_answered_to_the_configured_port() {
    let mut sim = online_sim(1000, "secret");
    let sent = sim.receive(SERVER, SPORT, 1000, Body::EchoReq);
    assert_eq!(opcodes(&sent), ["ECHO_ACK"]);
    assert_eq!(sent[0].dest, SocketAddrV4::new(SERVER, SPORT));
    assert_eq!(sent[0].msg.header.hostid, 1000);
    assert_eq!(
        sent[0].msg.body,
        Body::EchoAck {
            echo_serial: sim.server_serial
        }
    );
}

#[test]
fn usr2_sends_offline_copies_and_waits_a_period() {
    let mut sim = online_sim(1000, "secret");
    sim.advance_to(secs(10.0));
    sim.engine.take_all_offline(sim.now, OfflineReason::Usr2);
    let sent = sim.drain();
    assert_eq!(opcodes(&sent), ["OFFLINE_REQ"]);
    assert_eq!(sent[0].msg.body, Body::OfflineReq { sid: 77 });
    assert!(matches!(
        sim.take_events()[..],
        [Event::Offline {
            reason: OfflineReason::Usr2,
            ..
        }]
    ));
    assert!(sim.engine.sending_offline());

    let sent = sim.advance_to(secs(10.3));
    assert_eq!(opcodes(&sent), ["OFFLINE_REQ"]);
    let sent = sim.advance_to(secs(10.6));
    assert_eq!(opcodes(&sent), ["OFFLINE_REQ"]);
    assert!(!sim.engine.sending_offline());

    assert!(sim.advance_to(secs(69.9)).is_empty());
    assert_eq!(opcodes(&sim.advance_to(secs(70.0))), ["ECHO_REQ"]);

    // A second USR2 while not online sends nothing and tells nothing.
    sim.engine.take_all_offline(sim.now, OfflineReason::Usr2);
    assert!(sim.drain().is_empty());
    assert!(sim.take_events().is_empty());
}

#[test]
fn refused_password_waits_a_period() {
    let mut sim = Sim::new(&[pass_record(1000, "wrong")]);
    sim.answer_first_probe(1000);
    assert!(sim.receive(SERVER, SPORT, 1000, Body::AuthDeny).is_empty());
    assert!(matches!(sim.take_events()[..], [Event::Refused { .. }]));
    assert!(sim.advance_to(secs(59.9)).is_empty());
    assert_eq!(opcodes(&sim.advance_to(secs(60.0))), ["ECHO_REQ"]);
}

#[test]
fn capitals_are_retried_once_in_lower_case() {
    let mut sim = Sim::new(&[pass_record(1000, "SeCret")]);
    let sent = sim.answer_first_probe(1000);
    let Body::AuthReq { password, .. } = sent[0].msg.body else {
        panic!()
    };
    assert_eq!(password.text(), b"SeCret");

    let sent = sim.receive(SERVER, SPORT, 1000, Body::AuthDeny);
    let Body::AuthReq { password, .. } = sent[0].msg.body else {
        panic!()
    };
    assert_eq!(password.text(), b"secret");
    assert!(sim.take_events().is_empty());

    let address = Ipv4Addr::new(192, 0, 2, 1);
    sim.receive(SERVER, SPORT, 1000, Body::AuthAck { sid: 3, address });
    let events = sim.take_events();
    assert!(events.contains(&Event::LowercaseAccepted { record: 0 }));
    assert!(events.iter().any(|e| matches!(e, Event::Online { .. })));

    // Denied in both spellings: refused, no third try.
    let mut sim = Sim::new(&[pass_record(1000, "SeCret")]);
    sim.answer_first_probe(1000);
    assert_eq!(sim.receive(SERVER, SPORT, 1000, Body::AuthDeny).len(), 1);
    assert!(sim.receive(SERVER, SPORT, 1000, Body::AuthDeny).is_empty());
    assert!(matches!(sim.take_events()[..], [Event::Refused { .. }]));
}

#[test]
fn deny_while_online_goes_offline() {
    let mut sim = online_sim(1000, "secret");
    sim.advance_to(secs(60.0));
    sim.receive(SERVER, SPORT, 1000, Body::AuthDeny);
    let events = sim.take_events();
    assert!(matches!(
        events[..],
        [
            Event::Offline {
                reason: OfflineReason::Refused,
                ..
            },
            Event::Refused { .. }
        ]
    ));
    assert!(!sim.engine.records()[0].is_online());
}

#[test]
fn strangers_and_forgeries_change_nothing() {
    let mut sim = online_sim(1000, "secret");
    let before = sim.engine.poll_timeout();
    let forgeries = [
        (STRANGER, SPORT, 1000, Body::AuthDeny),
        (STRANGER, SPORT, 1000, Body::CheckReq { refresh: 60 }),
        (STRANGER, SPORT, 1000, Body::EchoReq),
        (SERVER, SPORT + 1, 1000, Body::AuthDeny),
        (SERVER, SPORT, 1001, Body::AuthDeny),
        // Not waiting for an authentication: dropped.
        (SERVER, SPORT, 1000, Body::AuthDeny),
        (
            SERVER,
            SPORT,
            1000,
            Body::AuthAck {
                sid: 1,
                address: STRANGER,
            },
        ),
        // An ECHO_ACK that echoes no serial of ours.
        (SERVER, SPORT, 1000, Body::EchoAck { echo_serial: 999 }),
        (SERVER, SPORT, 1000, Body::OfflineReq { sid: 77 }),
    ];
    for (src, rport, hostid, body) in forgeries {
        assert!(
            sim.receive(src, rport, hostid, body).is_empty(),
            "{body:?} from {src}"
        );
    }
    assert!(sim.take_events().is_empty());
    assert!(sim.engine.records()[0].is_online());
    assert_eq!(sim.engine.poll_timeout(), before);

    for junk in [
        &[][..],
        &[0u8; 19],
        &[0, 0, 5, 0x26, 0, 0, 0, 1][..],
        &[0xff; 300],
    ] {
        sim.engine.handle_datagram(sim.now, SERVER, junk);
    }
    assert!(sim.drain().is_empty());
    assert!(sim.engine.records()[0].is_online());
}

#[test]
fn shared_session_ids_are_logged_in_again_after_an_offline() {
    let mut sim = Sim::new(&[pass_record(1, "a"), pass_record(2, "b")]);
    let sent = sim.advance_to(Duration::ZERO);
    // dhisd gives hosts that log in within one second the same sid.
    sim.login(1, 4242, &sent[0]);
    sim.login(2, 4242, &sent[1]);
    sim.take_events();

    sim.engine.take_offline(sim.now, 0, OfflineReason::Removed);
    assert_eq!(opcodes(&sim.drain()), ["OFFLINE_REQ"]);
    assert_eq!(
        opcodes(&sim.advance_to(sim.now + secs(0.3))),
        ["OFFLINE_REQ"]
    );
    let sent = sim.advance_to(sim.now + secs(0.3));
    assert_eq!(opcodes(&sent), ["OFFLINE_REQ", "AUTH_REQ"]);
    assert_eq!(sent[1].msg.header.hostid, 2);
}

#[test]
fn qrc_answers_the_capture_challenge_byte_for_byte() {
    let key = QrcKey::from_decimal(
        "1544989373666723217830788929917941663346574943368380824753093935890394130302442363034824844794389731",
        "9943523619893788445386621696723406327724268222904405650918559261780062297024431052235518351362273691",
    )
    .unwrap();
    // CAPTURES.md section 3: AUTH_SY from dhisd and the C dhid's AUTH_SX.
    let y = "1306592442226822654623549394822673046558314301615298488648907940625306534647\
             0433473260033998921789556628536332718532831413482630156920966772086487137372\
             103711748091722903166233498132805692954459746893";
    let x = "1260491105664559696544050390315799146839753323727238481601716060332351354141\
             5595317733129258266315660273159906596980165577652888528305047608785127677118\
             592896056072408609618884886125166844842465787065";
    assert_eq!(y.len(), 200);
    let mut field = [0u8; 200];
    field.copy_from_slice(y.as_bytes());

    let config = record(2011, Auth::Qrc(key), &[(SERVER, SPORT)], 60);
    let mut sim = Sim::new(&[config]);
    let sent = sim.answer_first_probe(2011);
    assert_eq!(
        sent[0].msg.body,
        Body::AuthReq {
            password: Password::EMPTY,
            refresh: 60
        }
    );

    let sent = sim.receive(SERVER, SPORT, 2011, Body::AuthSy(Number(field)));
    assert_eq!(opcodes(&sent), ["AUTH_SX"]);
    let Body::AuthSx(answer) = sent[0].msg.body else {
        panic!()
    };
    assert_eq!(std::str::from_utf8(&answer.0).unwrap(), x);

    // A password record ignores AUTH_SY.
    let mut sim = online_sim(1000, "secret");
    assert!(
        sim.receive(SERVER, SPORT, 1000, Body::AuthSy(Number(field)))
            .is_empty()
    );
}

/// CAPTURES.md section 1: our ECHO_REQ and AUTH_REQ are the C dhid's bytes,
/// except that the password field is zero after its NUL.
#[test]
fn encoder_matches_the_captures() {
    let echo = wire::encode(&Message {
        header: Header {
            opcode: 0,
            serial: 1,
            version: 55,
            rport: 58902,
            hostid: 1000,
        },
        body: Body::EchoReq,
    });
    let expect = [
        0, 0, 5, 0x11, 0, 0, 0, 1, 0, 0, 0, 0x37, 0, 0, 0xe6, 0x16, 0, 0, 3, 0xe8,
    ];
    assert_eq!(echo.as_bytes(), expect);

    let auth = wire::encode(&Message {
        header: Header {
            opcode: 0,
            serial: 2,
            version: 55,
            rport: 58902,
            hostid: 1000,
        },
        body: Body::AuthReq {
            password: Password::new(b"secret").unwrap(),
            refresh: 60,
        },
    });
    let mut expect = vec![
        0, 0, 5, 0x21, 0, 0, 0, 2, 0, 0, 0, 0x37, 0, 0, 0xe6, 0x16, 0, 0, 3, 0xe8,
    ];
    expect.extend_from_slice(b"secret\0\0\0\0\0\0\0\0\0\0");
    expect.extend_from_slice(&[0, 0, 0, 0x3c]);
    assert_eq!(auth.as_bytes(), &expect[..]);

    // Section 1's AUTH_ACK and section 5's CHECK_REQ decode as annotated.
    let ack = [
        0, 0, 5, 0x26, 0, 0, 0, 2, 0, 0, 0, 0x35, 0, 0, 0xe6, 0x15, 0, 0, 3, 0xe8, 0x4d, 0x48,
        0xd6, 0xa2, 0x7f, 0, 0, 1,
    ];
    let msg = wire::decode(&ack).unwrap();
    assert_eq!(msg.header.rport, 58901);
    assert_eq!(
        msg.body,
        Body::AuthAck {
            sid: 0x4d48_d6a2,
            address: Ipv4Addr::LOCALHOST
        }
    );
    let check = [
        0, 0, 5, 0x41, 0, 0, 0, 0x84, 0, 0, 0, 0x35, 0, 0, 0xe6, 0x20, 0, 0, 8, 0x7a, 0, 0, 0, 0x3c,
    ];
    assert_eq!(
        wire::decode(&check).unwrap().body,
        Body::CheckReq { refresh: 60 }
    );
}

#[test]
fn reload_keeps_unchanged_records_and_retires_removed_ones() {
    let old = [
        pass_record(1, "a"),
        pass_record(2, "b"),
        pass_record(3, "c"),
    ];
    let mut sim = Sim::new(&old);
    let sent = sim.advance_to(Duration::ZERO);
    for (i, hostid) in [1, 2, 3].into_iter().enumerate() {
        sim.login(hostid, 10 + hostid, &sent[i]);
    }
    sim.take_events();
    sim.advance_to(secs(5.0));

    // 1 unchanged, 2 removed, 3 with a new password, 4 new.
    let new = [
        pass_record(1, "a"),
        pass_record(3, "c2"),
        pass_record(4, "d"),
    ];
    let plan = sim.engine.plan_reload(&new);
    assert_eq!(plan.kept, [Some(0), Some(2), None]);
    assert_eq!(plan.removed, [1]);
    assert_eq!(plan.auth_changed, [false, true, false]);

    sim.engine.retire(sim.now, &plan);
    let sent = sim.drain();
    assert_eq!(opcodes(&sent), ["OFFLINE_REQ"]);
    assert_eq!(sent[0].msg.header.hostid, 2);
    assert!(matches!(
        sim.take_events()[..],
        [Event::Offline {
            record: 1,
            reason: OfflineReason::Removed,
            ..
        }]
    ));

    sim.engine.apply(sim.now, &new, &plan);
    let sent = sim.drain();
    // Record 3 logs in again in place with its new password; 4 starts.
    let Body::AuthReq { password, .. } = sent[0].msg.body else {
        panic!("{:?}", sent[0].msg)
    };
    assert_eq!(
        (sent[0].msg.header.hostid, password.text()),
        (3, &b"c2"[..])
    );
    let sent = [sent, sim.advance_to(sim.now)].concat();
    assert!(
        sent.iter()
            .any(|s| s.msg.header.hostid == 4 && s.msg.body == Body::EchoReq)
    );

    let address = Ipv4Addr::new(192, 0, 2, 7);
    sim.receive(SERVER, SPORT, 3, Body::AuthAck { sid: 13, address });
    assert!(
        sim.take_events().is_empty(),
        "a kept record does not bounce"
    );
    assert!(sim.engine.records()[0].is_online() && sim.engine.records()[1].is_online());

    // The removed record still sends its remaining copies, then is gone.
    let sent = sim.advance_to(sim.now + secs(1.0));
    let offline: Vec<_> = sent
        .iter()
        .filter(|s| s.msg.body.opcode() == wire::OFFLINE_REQ)
        .collect();
    assert_eq!(offline.len(), 2);
    assert!(offline.iter().all(|s| s.msg.header.hostid == 2));
    assert!(!sim.engine.sending_offline());
}

#[test]
fn a_refused_new_password_takes_a_kept_record_offline() {
    let mut sim = online_sim(1, "a");
    let new = [pass_record(1, "bad")];
    let plan = sim.engine.plan_reload(&new);
    assert_eq!(plan.auth_changed, [true]);
    sim.engine.retire(sim.now, &plan);
    sim.engine.apply(sim.now, &new, &plan);
    assert_eq!(opcodes(&sim.drain()), ["AUTH_REQ"]);
    sim.receive(SERVER, SPORT, 1, Body::AuthDeny);
    assert!(matches!(
        sim.take_events()[..],
        [
            Event::Offline {
                reason: OfflineReason::Refused,
                ..
            },
            Event::Refused { .. }
        ]
    ));
}

fn named_record(hostid: u32, name: &str) -> RecordConfig {
    let mut config = pass_record(hostid, "pw");
    config.servers = vec![ServerSpec {
        host: Host::Name(name.into()),
        port: SPORT,
        line: 3,
    }];
    config
}

/// Boot before the network: the name does not resolve yet. Every attempt
/// asks again, on the usual backoff, and the first answer is used at once.
#[test]
fn an_unresolved_name_is_asked_again_on_every_attempt() {
    let mut sim = Sim::new(&[named_record(1, "dhis.example.net"), pass_record(2, "pw")]);
    let sent = sim.advance_to(Duration::ZERO);
    // The record with an address is not held up by the one with a name.
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
    assert_eq!(sent[0].msg.header.hostid, 2);
    let asks = |events: Vec<Event>| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Resolve { record: 0, .. }))
            .count()
    };
    assert_eq!(asks(sim.take_events()), 1);

    sim.engine.handle_resolved(0, 0, Vec::new());
    assert!(sim.drain().is_empty(), "no address, nothing to send");
    let at = sim.engine.records()[0].deadline();
    assert!(at >= secs(1.6) && at <= secs(2.4), "{at:?}");
    sim.advance_to(at);
    assert_eq!(asks(sim.take_events()), 1);

    // The network came up: the answer sends the ECHO_REQ at once.
    let multi = vec![Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 6)];
    sim.engine.handle_resolved(0, 0, multi);
    let sent = sim.drain();
    assert_eq!(opcodes(&sent), ["ECHO_REQ"]);
    assert_eq!(
        sent[0].dest,
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 5), SPORT)
    );

    // A multi-homed server may answer from its other address.
    let serial = sent[0].msg.header.serial;
    let other = Ipv4Addr::new(127, 0, 0, 6);
    let sent = sim.receive(
        other,
        SPORT,
        1,
        Body::EchoAck {
            echo_serial: serial,
        },
    );
    assert_eq!(opcodes(&sent), ["AUTH_REQ"]);
    assert_eq!(sent[0].dest, SocketAddrV4::new(other, SPORT));
    // But not from an address outside the name's resolution.
    let address = Ipv4Addr::new(192, 0, 2, 1);
    assert!(
        sim.receive(STRANGER, SPORT, 1, Body::AuthAck { sid: 1, address })
            .is_empty()
    );
    sim.receive(other, SPORT, 1, Body::AuthAck { sid: 1, address });
    assert!(
        sim.take_events()
            .iter()
            .any(|e| matches!(e, Event::Online { record: 0, .. }))
    );
}

/// Wall-clock steps do not exist for the core: it only sees the daemon's
/// CLOCK_BOOTTIME. A step back an hour or forward a day on the wall clock
/// leaves that clock alone, so nothing happens.
#[test]
fn keepalives_follow_the_monotonic_clock_only() {
    let mut sim = online_sim(1, "pw");
    let deadline = sim.engine.poll_timeout();
    for _ in 0..100 {
        sim.engine.handle_timeout(sim.now);
    }
    assert!(sim.drain().is_empty());
    assert_eq!(sim.engine.poll_timeout(), deadline);
}

/// A late ECHO_ACK to a probe sent before USR2 must not start a login
/// before the period is over.
#[test]
fn late_answers_after_usr2_do_not_log_in_early() {
    let mut sim = Sim::new(&[pass_record(1, "pw")]);
    let probe = sim.advance_to(Duration::ZERO);
    sim.engine.take_all_offline(sim.now, OfflineReason::Usr2);
    sim.drain();
    assert!(sim.answer(&probe[0], 1).is_empty());
    assert!(sim.advance_to(secs(59.0)).is_empty());
}
