//! dhid.conf: records between `{` and `}` (PROTOCOL.md section 10).

use std::fmt;
use std::net::Ipv4Addr;

use crate::qrc::QrcKey;

/// Where a server is: an IPv4 literal, or a name resolved at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Addr(Ipv4Addr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Addr(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// One `ISAddr host[:port]` line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    pub host: Host,
    pub port: u16,
    pub line: usize,
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// At most 15 bytes, case kept as written.
    Password(String),
    Qrc(QrcKey),
}

impl fmt::Debug for Auth {
    // Never print a secret, not even in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password(p) => write!(f, "Password({} bytes)", p.len()),
            Auth::Qrc(k) => write!(f, "{k:?}"),
        }
    }
}

/// An OnCmd or OffCmd line: the program (first word) and the rest of the
/// line, both as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub program: String,
    pub rest: String,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordConfig {
    /// Line of the record's `{`.
    pub line: usize,
    pub hostid: u32,
    pub auth: Auth,
    pub servers: Vec<ServerSpec>,
    /// The value sent in AUTH_REQ: 0 when the record has no Refresh line,
    /// else the configured value raised to at least 60.
    pub refresh_proposal: u32,
    pub on_cmd: Option<Hook>,
    pub off_cmd: Option<Hook>,
}

impl RecordConfig {
    /// The keep-alive period dhid uses, in seconds (60 without Refresh).
    pub fn refresh_period(&self) -> u32 {
        if self.refresh_proposal == 0 { MIN_REFRESH } else { self.refresh_proposal }
    }
}

/// The smallest period the protocol knows; lower values are raised to it.
pub const MIN_REFRESH: u32 = 60;
/// The largest period dhisd 5.3 honours (it holds 120 for anything else).
pub const MAX_SERVER_REFRESH: u32 = 21600;
pub const DEFAULT_PORT: u16 = 58800;

/// A message about the file that does not stop the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub records: Vec<RecordConfig>,
    pub warnings: Vec<Warning>,
}

/// A load error: the file, the line and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 0 when the error is about the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
