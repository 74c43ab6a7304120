//! DHIS R5 datagrams: encoder and strict decoder.
//!
//! Every R5 datagram starts with five big-endian u32 (PROTOCOL.md section 2):
//!
//! | offset | field     | meaning                                        |
//! |--------|-----------|------------------------------------------------|
//! | 0      | `opcode`  | message kind, table below                      |
//! | 4      | `serial`  | sender's own counter, +1 per datagram          |
//! | 8      | `version` | 55 from a 5.5 client, 53 from dhisd 5.3        |
//! | 12     | `rport`   | the port the sender listens on                 |
//! | 16     | `hostid`  | the record the message is about                |
//!
//! Bodies (PROTOCOL.md section 3), sizes including the header:
//!
//! | opcode | name        | size | body                                   |
//! |--------|-------------|------|----------------------------------------|
//! | 0x511  | ECHO_REQ    | 20   | none                                   |
//! | 0x512  | ECHO_ACK    | 24   | u32 serial of the ECHO_REQ answered    |
//! | 0x521  | AUTH_REQ    | 40   | 16 B password, NUL padded; u32 refresh |
//! | 0x522  | AUTH_DENY   | 20   | none                                   |
//! | 0x524  | AUTH_SX     | 220  | 200 ASCII digits                       |
//! | 0x525  | AUTH_SY     | 220  | 200 ASCII digits                       |
//! | 0x526  | AUTH_ACK    | 28   | u32 session id; 4 B IPv4 address       |
//! | 0x541  | CHECK_REQ   | 24   | u32 refresh period the server holds    |
//! | 0x542  | CHECK_ACK   | 24   | u32 session id                         |
//! | 0x551  | OFFLINE_REQ | 24   | u32 session id                         |
//!
//! The decoder refuses a datagram shorter than its message's size (the C
//! programs read stale buffer bytes instead) and ignores bytes beyond it,
//! as both reference programs do.

use std::fmt;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const PASSWORD_LEN: usize = 16;
pub const NUMBER_LEN: usize = 200;

/// Largest datagram we ever build (AUTH_SX).
pub const MAX_LEN: usize = HEADER_LEN + NUMBER_LEN;

/// The version we announce: that of the C dhid 5.5 we replace.
pub const VERSION: u32 = 55;

pub const ECHO_REQ: u32 = 0x511;
pub const ECHO_ACK: u32 = 0x512;
pub const AUTH_REQ: u32 = 0x521;
pub const AUTH_DENY: u32 = 0x522;
pub const AUTH_SX: u32 = 0x524;
pub const AUTH_SY: u32 = 0x525;
pub const AUTH_ACK: u32 = 0x526;
pub const CHECK_REQ: u32 = 0x541;
pub const CHECK_ACK: u32 = 0x542;
pub const OFFLINE_REQ: u32 = 0x551;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub opcode: u32,
    pub serial: u32,
    pub version: u32,
    pub rport: u32,
    pub hostid: u32,
}

/// A 200-digit decimal number field (AUTH_SX, AUTH_SY), kept as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Number(pub [u8; NUMBER_LEN]);

impl Number {
    /// The digits as dhisd reads them: up to the first NUL, at most 200.
    pub fn digits(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(NUMBER_LEN);
        &self.0[..end]
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({})", String::from_utf8_lossy(self.digits()))
    }
}

/// The 16-byte password field of AUTH_REQ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Password(pub [u8; PASSWORD_LEN]);

impl Password {
    /// All zero: the field a QRC record sends.
    pub const EMPTY: Password = Password([0; PASSWORD_LEN]);

    /// The text up to its NUL, NUL-padded; `None` if it does not fit with
    /// its NUL (the server compares 15 characters at most).
    pub fn new(text: &[u8]) -> Option<Password> {
        if text.len() >= PASSWORD_LEN || text.contains(&0) {
            return None;
        }
        let mut field = [0; PASSWORD_LEN];
        field[..text.len()].copy_from_slice(text);
        Some(Password(field))
    }

    pub fn text(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(PASSWORD_LEN);
        &self.0[..end]
    }
}

impl fmt::Debug for Password {
    // A password must never reach a log line, not even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    EchoReq,
    EchoAck { echo_serial: u32 },
    AuthReq { password: Password, refresh: u32 },
    AuthDeny,
    AuthSx(Number),
    AuthSy(Number),
    AuthAck { sid: u32, address: Ipv4Addr },
    CheckReq { refresh: u32 },
    CheckAck { sid: u32 },
    OfflineReq { sid: u32 },
}

impl Body {
    pub fn opcode(&self) -> u32 {
        match self {
            Body::EchoReq => ECHO_REQ,
            Body::EchoAck { .. } => ECHO_ACK,
            Body::AuthReq { .. } => AUTH_REQ,
            Body::AuthDeny => AUTH_DENY,
            Body::AuthSx(_) => AUTH_SX,
            Body::AuthSy(_) => AUTH_SY,
            Body::AuthAck { .. } => AUTH_ACK,
            Body::CheckReq { .. } => CHECK_REQ,
            Body::CheckAck { .. } => CHECK_ACK,
            Body::OfflineReq { .. } => OFFLINE_REQ,
        }
    }

    pub fn name(&self) -> &'static str {
        opcode_name(self.opcode()).unwrap_or("?")
    }
}

pub fn opcode_name(opcode: u32) -> Option<&'static str> {
    Some(match opcode {
        ECHO_REQ => "ECHO_REQ",
        ECHO_ACK => "ECHO_ACK",
        AUTH_REQ => "AUTH_REQ",
        AUTH_DENY => "AUTH_DENY",
        AUTH_SX => "AUTH_SX",
        AUTH_SY => "AUTH_SY",
        AUTH_ACK => "AUTH_ACK",
        CHECK_REQ => "CHECK_REQ",
        CHECK_ACK => "CHECK_ACK",
        OFFLINE_REQ => "OFFLINE_REQ",
        _ => return None,
    })
}

/// Full size of a message with this opcode, header included.
pub fn message_len(opcode: u32) -> Option<usize> {
    Some(match opcode {
        ECHO_REQ | AUTH_DENY => HEADER_LEN,
        ECHO_ACK | CHECK_REQ | CHECK_ACK | OFFLINE_REQ => HEADER_LEN + 4,
        AUTH_ACK => HEADER_LEN + 8,
        AUTH_REQ => HEADER_LEN + PASSWORD_LEN + 4,
        AUTH_SX | AUTH_SY => HEADER_LEN + NUMBER_LEN,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Why a datagram was not decoded. Each is an outside peer's doing (a
/// buggy or hostile sender, or an older protocol), never ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the 20-byte R5 header (an R4 peer sends 16).
    ShortHeader { len: usize },
    /// An opcode that is not R5 (R4 opcodes are 0x4xx).
    UnknownOpcode { opcode: u32 },
    /// The header is fine but the body is cut short.
    Truncated {
        opcode: u32,
        len: usize,
        need: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::ShortHeader { len } => {
                write!(f, "{len} bytes, shorter than the R5 header")
            }
            DecodeError::UnknownOpcode { opcode } => write!(f, "unknown opcode {opcode:#x}"),
            DecodeError::Truncated { opcode, len, need } => {
                let name = opcode_name(opcode).unwrap_or("?");
                write!(f, "{name} of {len} bytes, needs {need}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn u32_at(data: &[u8], offset: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&data[offset..offset + 4]);
    u32::from_be_bytes(word)
}

pub fn decode_header(data: &[u8]) -> Result<Header, DecodeError> {
    if data.len() < HEADER_LEN {
        return Err(DecodeError::ShortHeader { len: data.len() });
    }
    Ok(Header {
        opcode: u32_at(data, 0),
        serial: u32_at(data, 4),
        version: u32_at(data, 8),
        rport: u32_at(data, 12),
        hostid: u32_at(data, 16),
    })
}

pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let header = decode_header(data)?;
    let opcode = header.opcode;
    let need = message_len(opcode).ok_or(DecodeError::UnknownOpcode { opcode })?;
    if data.len() < need {
        return Err(DecodeError::Truncated {
            opcode,
            len: data.len(),
            need,
        });
    }

    let word = |i: usize| u32_at(data, HEADER_LEN + 4 * i);
    let number = || {
        let mut digits = [0; NUMBER_LEN];
        digits.copy_from_slice(&data[HEADER_LEN..HEADER_LEN + NUMBER_LEN]);
        Number(digits)
    };
    let body = match opcode {
        ECHO_REQ => Body::EchoReq,
        ECHO_ACK => Body::EchoAck {
            echo_serial: word(0),
        },
        AUTH_REQ => {
            let mut field = [0; PASSWORD_LEN];
            field.copy_from_slice(&data[HEADER_LEN..HEADER_LEN + PASSWORD_LEN]);
            let refresh = u32_at(data, HEADER_LEN + PASSWORD_LEN);
            Body::AuthReq {
                password: Password(field),
                refresh,
            }
        }
        AUTH_DENY => Body::AuthDeny,
        AUTH_SX => Body::AuthSx(number()),
        AUTH_SY => Body::AuthSy(number()),
        AUTH_ACK => Body::AuthAck {
            sid: word(0),
            address: Ipv4Addr::from(word(1)),
        },
        CHECK_REQ => Body::CheckReq { refresh: word(0) },
        CHECK_ACK => Body::CheckAck { sid: word(0) },
        OFFLINE_REQ => Body::OfflineReq { sid: word(0) },
        _ => unreachable!("message_len knows every opcode decoded here"),
    };
    Ok(Message { header, body })
}

/// Every message but AUTH_SX and AUTH_SY fits in this many bytes.
const SMALL_LEN: usize = HEADER_LEN + PASSWORD_LEN + 4;

/// An encoded datagram. The common ones are kept inline, so that a
/// keep-alive allocates nothing and a queue of 10 000 stays small; only
/// the 220-byte QRC numbers go to the heap.
#[derive(Clone)]
pub struct Datagram(Repr);

#[derive(Clone)]
enum Repr {
    Small { buf: [u8; SMALL_LEN], len: u8 },
    Large(Box<[u8; MAX_LEN]>),
}

impl Datagram {
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Small { buf, len } => &buf[..usize::from(*len)],
            Repr::Large(buf) => &buf[..],
        }
    }
}

impl PartialEq for Datagram {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Datagram {}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match decode(self.as_bytes()) {
            Ok(msg) => write!(f, "{} serial {}", msg.body.name(), msg.header.serial),
            Err(e) => write!(f, "undecodable datagram ({e})"),
        }
    }
}

pub fn encode(msg: &Message) -> Datagram {
    let mut buf = [0; MAX_LEN];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };

    let h = &msg.header;
    for word in [msg.body.opcode(), h.serial, h.version, h.rport, h.hostid] {
        put(&word.to_be_bytes());
    }

    match &msg.body {
        Body::EchoReq | Body::AuthDeny => {}
        Body::EchoAck { echo_serial } => put(&echo_serial.to_be_bytes()),
        Body::AuthReq { password, refresh } => {
            put(&password.0);
            put(&refresh.to_be_bytes());
        }
        Body::AuthSx(n) | Body::AuthSy(n) => put(&n.0),
        Body::AuthAck { sid, address } => {
            put(&sid.to_be_bytes());
            put(&address.octets());
        }
        Body::CheckReq { refresh } => put(&refresh.to_be_bytes()),
        Body::CheckAck { sid } | Body::OfflineReq { sid } => put(&sid.to_be_bytes()),
    }
    if len <= SMALL_LEN {
        let mut small = [0; SMALL_LEN];
        small.copy_from_slice(&buf[..SMALL_LEN]);
        Datagram(Repr::Small {
            buf: small,
            len: len as u8,
        })
    } else {
        debug_assert_eq!(len, MAX_LEN, "only AUTH_SX and AUTH_SY are large");
        Datagram(Repr::Large(Box::new(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32) -> Header {
        Header {
            opcode,
            serial: 7,
            version: VERSION,
            rport: 58902,
            hostid: 1000,
        }
    }

    #[test]
    fn every_message_round_trips_at_its_size() {
        let mut digits = [b'0'; NUMBER_LEN];
        digits[199] = b'9';
        let bodies = [
            Body::EchoReq,
            Body::EchoAck { echo_serial: 3 },
            Body::AuthReq {
                password: Password::new(b"secret").unwrap(),
                refresh: 60,
            },
            Body::AuthDeny,
            Body::AuthSx(Number(digits)),
            Body::AuthSy(Number(digits)),
            Body::AuthAck {
                sid: 0x4d48d6a2,
                address: Ipv4Addr::new(127, 0, 0, 1),
            },
            Body::CheckReq { refresh: 120 },
            Body::CheckAck { sid: 9 },
            Body::OfflineReq { sid: 0x0badcafe },
        ];
        for body in bodies {
            let msg = Message {
                header: header(body.opcode()),
                body,
            };
            let dgram = encode(&msg);
            assert_eq!(dgram.as_bytes().len(), message_len(body.opcode()).unwrap());
            assert_eq!(decode(dgram.as_bytes()), Ok(msg));
        }
    }

    #[test]
    fn short_and_unknown_datagrams_are_refused() {
        assert_eq!(decode(&[]), Err(DecodeError::ShortHeader { len: 0 }));
        assert_eq!(decode(&[0; 19]), Err(DecodeError::ShortHeader { len: 19 }));

        let ack = encode(&Message {
            header: header(AUTH_ACK),
            body: Body::AuthAck {
                sid: 1,
                address: Ipv4Addr::LOCALHOST,
            },
        });
        for len in [20, 24, 27] {
            let got = decode(&ack.as_bytes()[..len]);
            assert_eq!(
                got,
                Err(DecodeError::Truncated {
                    opcode: AUTH_ACK,
                    len,
                    need: 28
                })
            );
        }

        let mut r4 = ack.as_bytes().to_vec();
        r4[2..4].copy_from_slice(&[0x04, 0x11]);
        assert_eq!(
            decode(&r4),
            Err(DecodeError::UnknownOpcode { opcode: 0x411 })
        );
    }

    #[test]
    fn extra_bytes_are_ignored() {
        let mut data = encode(&Message {
            header: header(ECHO_REQ),
            body: Body::EchoReq,
        })
        .as_bytes()
        .to_vec();
        data.resize(65000, 0xff);
        assert_eq!(decode(&data).unwrap().body, Body::EchoReq);
    }

    #[test]
    fn password_field_is_zero_padded_and_bounded() {
        let p = Password::new(b"secret").unwrap();
        assert_eq!(&p.0, b"secret\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(p.text(), b"secret");
        assert!(Password::new(b"fifteen-chars-x").is_some());
        assert!(Password::new(b"sixteen-chars-xx").is_none());
        assert!(Password::new(b"nul\0inside").is_none());
        assert_eq!(format!("{p:?}"), "Password(..)");
    }
}
