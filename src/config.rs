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
    /// The keep-alive period dhid uses, in seconds: 60 without Refresh,
    /// and for a proposal above what dhisd 5.3 honours, the 120 s it holds
    /// instead. Without that, after a server restart (no CHECK_REQ then
    /// tells the server's period) such a record would not log in again
    /// for days.
    pub fn refresh_period(&self) -> u32 {
        match self.refresh_proposal {
            0 => MIN_REFRESH,
            p if p > MAX_SERVER_REFRESH => SERVER_DEFAULT_REFRESH,
            p => p,
        }
    }
}

/// The smallest period the protocol knows; lower values are raised to it.
pub const MIN_REFRESH: u32 = 60;
/// The largest period dhisd 5.3 honours (it holds 120 for anything else).
pub const MAX_SERVER_REFRESH: u32 = 21600;
/// Below this many digits in P·Q a key is warned about: the packaged
/// DHIS documentation uses 100-digit primes.
const WEAK_KEY_DIGITS: usize = 150;

/// What dhisd 5.3 holds for a proposal of 0 or out of its range.
pub const SERVER_DEFAULT_REFRESH: u32 = 120;
pub const DEFAULT_PORT: u16 = 58800;

/// A message about the file that does not stop the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl Warning {
    /// `file:line: message`, or `file: message` about the file as a whole,
    /// as errors are shown.
    pub fn in_file(&self, file: &std::path::Path) -> String {
        match self.line {
            0 => format!("{}: {}", file.display(), self.message),
            line => format!("{}:{line}: {}", file.display(), self.message),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub records: Vec<RecordConfig>,
    pub warnings: Vec<Warning>,
    /// QRC keys `load_deferring_key_checks` left to `check_keys`, each
    /// with the line of its AuthP.
    unchecked_keys: Vec<(usize, QrcKey)>,
}

impl Config {
    /// The primality test `load_deferring_key_checks` left out; `file`
    /// names the file in the errors.
    pub fn check_keys(&mut self, file: &str) -> Result<(), Vec<ConfigError>> {
        let errors: Vec<ConfigError> = std::mem::take(&mut self.unchecked_keys)
            .into_iter()
            .filter_map(|(line, key)| {
                key.check().err().map(|e| ConfigError {
                    file: file.to_string(),
                    line,
                    message: e.to_string(),
                })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
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

/// Longer lines are refused: no real setting needs them, and an OnCmd line
/// beyond this would not fit the kernel's limit for one argv string anyway.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// `load` refuses bigger files, so `-f /dev/zero` fails instead of eating
/// memory.
pub const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;
/// The wire field is 16 bytes and dhisd reads it as a C string.
pub const MAX_PASSWORD_LEN: usize = 15;

/// Shown whenever the file does not hold a usable record, so the
/// administrator sees the expected shape without opening the manual.
const RECORD_EXAMPLE: &str = "\n    {\n        HostID 1000\n        HostPass secret\n        \
                              ISAddr dhis.example.org\n    }";

/// Read and parse a dhid.conf. Adds a warning when "other" may read it.
pub fn load(path: &std::path::Path) -> Result<Config, Vec<ConfigError>> {
    read(path, false)
}

/// `load`, but the QRC keys' primality test (about 0.1 ms a key) is left
/// to `Config::check_keys`, so that dhid can start its first logins
/// first. A file with other errors reports those only.
pub fn load_deferring_key_checks(path: &std::path::Path) -> Result<Config, Vec<ConfigError>> {
    read(path, true)
}

fn read(path: &std::path::Path, defer_key_checks: bool) -> Result<Config, Vec<ConfigError>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let name = path.display().to_string();
    let fail = |message: String| {
        vec![ConfigError {
            file: name.clone(),
            line: 0,
            message,
        }]
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mode = file
        .metadata()
        .map_err(|e| fail(format!("cannot stat: {e}")))?
        .permissions()
        .mode();
    let mut text = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(fail(format!(
            "file is larger than {MAX_FILE_LEN} bytes; is it really dhid.conf?"
        )));
    }
    let mut config = parse_text(&name, &text, defer_key_checks)?;
    if mode & 0o004 != 0 {
        config.warnings.insert(
            0,
            Warning {
                line: 0,
                message: readable_message(mode),
            },
        );
    }
    Ok(config)
}

/// True when users other than the owner and group may read the file.
pub fn world_readable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// Shown after the file's name, as every message about the file is.
fn readable_message(mode: u32) -> String {
    format!(
        "can be read by every user (mode {:04o}) but holds passwords or keys; \
         remove that with chmod o-r",
        mode & 0o7777
    )
}

/// Parse the text of a dhid.conf; `file` only names it in messages.
/// Every error found is returned, in line order.
pub fn parse(file: &str, text: &[u8]) -> Result<Config, Vec<ConfigError>> {
    parse_text(file, text, false)
}

fn parse_text(file: &str, text: &[u8], defer_key_checks: bool) -> Result<Config, Vec<ConfigError>> {
    if let Some(line) = old_format_line(text) {
        return Err(vec![ConfigError {
            file: file.to_string(),
            line,
            message: OLD_FORMAT_MESSAGE.to_string(),
        }]);
    }
    // Counted first, so the table is allocated once at its size.
    let opening = text
        .split(|&b| b == b'\n')
        .filter(|line| trim_blanks(line).first() == Some(&b'{'))
        .count();
    let mut parser = Parser {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
        records: Vec::with_capacity(opening),
        open: None,
        saw_record: false,
        defer_key_checks,
        unchecked_keys: Vec::new(),
    };
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        parser.line(index + 1, raw);
    }
    parser.finish_file()
}

const OLD_FORMAT_MESSAGE: &str = "this is the old (R3/R4) dhid.conf format without braces\n  \
wrap each host's lines in { and }; idnumber -> HostID, password -> HostPass, for example\n    \
{\n        HostID 1000\n        HostPass secret\n        ISAddr dhis.example.org\n    }";

const OLD_KEYWORDS: [&str; 5] = ["hostid", "hostpass", "isaddr", "idnumber", "password"];

/// The first line that looks like an R3/R4 setting in a file where no line
/// opens a record: such a file would otherwise give one "outside any
/// record" error per line and hide the real problem.
fn old_format_line(text: &[u8]) -> Option<usize> {
    let mut first = None;
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = trim_blanks(raw.strip_suffix(b"\r").unwrap_or(raw));
        if line.first() == Some(&b'{') {
            return None;
        }
        let end = line
            .iter()
            .position(|&b| is_blank_byte(b))
            .unwrap_or(line.len());
        let word = &line[..end];
        if first.is_none()
            && OLD_KEYWORDS
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
        {
            first = Some(index + 1);
        }
    }
    first
}

fn is_blank_byte(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_blank_byte(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_blank_byte(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The first blank-separated word and the rest with its leading blanks cut.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(is_blank) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_blank)),
        None => (s, ""),
    }
}

/// A value from the file for a message: quoted with control characters
/// escaped (it goes to a terminal or syslog) and cut to a readable length.
fn quoted(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

fn decimal_u32(s: &str) -> Option<u32> {
    // `str::parse` alone would also take a leading '+'.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Keyword {
    HostId,
    HostPass,
    AuthP,
    AuthQ,
    IsAddr,
    Refresh,
    OnCmd,
    OffCmd,
    HostName,
    MxAddr,
}

const KEYWORDS: [Keyword; 10] = [
    Keyword::HostId,
    Keyword::HostPass,
    Keyword::AuthP,
    Keyword::AuthQ,
    Keyword::IsAddr,
    Keyword::Refresh,
    Keyword::OnCmd,
    Keyword::OffCmd,
    Keyword::HostName,
    Keyword::MxAddr,
];

impl Keyword {
    fn name(self) -> &'static str {
        match self {
            Keyword::HostId => "HostID",
            Keyword::HostPass => "HostPass",
            Keyword::AuthP => "AuthP",
            Keyword::AuthQ => "AuthQ",
            Keyword::IsAddr => "ISAddr",
            Keyword::Refresh => "Refresh",
            Keyword::OnCmd => "OnCmd",
            Keyword::OffCmd => "OffCmd",
            Keyword::HostName => "hostname",
            Keyword::MxAddr => "mxaddr",
        }
    }

    fn find(word: &str) -> Option<Keyword> {
        KEYWORDS
            .into_iter()
            .find(|k| word.eq_ignore_ascii_case(k.name()))
    }

    /// `HostID=1` and the like: a keyword glued to its value.
    fn glued(word: &str) -> Option<Keyword> {
        KEYWORDS.into_iter().find(|k| {
            let n = k.name().len();
            word.get(..n)
                .is_some_and(|head| head.eq_ignore_ascii_case(k.name()))
                && word[n..]
                    .chars()
                    .next()
                    .is_some_and(|c| !c.is_ascii_alphanumeric())
        })
    }

    fn is_secret(self) -> bool {
        matches!(self, Keyword::HostPass | Keyword::AuthP | Keyword::AuthQ)
    }
}

/// The digits of AuthP or AuthQ gathered over all their lines.
#[derive(Default)]
struct KeyPart {
    first_line: Option<usize>,
    digits: String,
    /// A line had something other than digits (already reported).
    bad: bool,
}

/// A record between `{` and `}` while it is read. A field is `Some` once its
/// keyword was seen, with `None` inside when the value was wrong, so that a
/// bad value is not reported a second time as missing.
#[derive(Default)]
struct Draft {
    line: usize,
    hostid: Option<(usize, Option<u32>)>,
    password: Option<(usize, Option<String>)>,
    p: KeyPart,
    q: KeyPart,
    isaddr_seen: bool,
    servers: Vec<ServerSpec>,
    /// First line of each server, to spot one listed twice.
    refresh: Option<(usize, Option<u32>)>,
    on_cmd: Option<Hook>,
    off_cmd: Option<Hook>,
}

impl Draft {
    /// Notes a keyword whose line was wrong beyond reading its value.
    fn seen(&mut self, n: usize, keyword: Keyword) {
        match keyword {
            Keyword::HostId => _ = self.hostid.get_or_insert((n, None)),
            Keyword::HostPass => _ = self.password.get_or_insert((n, None)),
            Keyword::AuthP | Keyword::AuthQ => {
                let part = if keyword == Keyword::AuthP {
                    &mut self.p
                } else {
                    &mut self.q
                };
                part.first_line.get_or_insert(n);
                part.bad = true;
            }
            Keyword::IsAddr => self.isaddr_seen = true,
            Keyword::Refresh => _ = self.refresh.get_or_insert((n, None)),
            Keyword::OnCmd | Keyword::OffCmd | Keyword::HostName | Keyword::MxAddr => {}
        }
    }
}

struct Parser<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<Warning>,
    records: Vec<RecordConfig>,
    open: Option<Draft>,
    saw_record: bool,
    defer_key_checks: bool,
    unchecked_keys: Vec<(usize, QrcKey)>,
}

impl Parser<'_> {
    fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        });
    }

    fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.warnings.push(Warning {
            line,
            message: message.into(),
        });
    }

    fn line(&mut self, n: usize, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let bytes = trim_blanks(raw);
        // Comments are skipped before any other check: they may hold
        // anything, in any encoding and of any length.
        if bytes.is_empty() || bytes[0] == b';' {
            return;
        }
        if bytes.len() > MAX_LINE_LEN {
            let message = format!("line is longer than {MAX_LINE_LEN} bytes");
            return self.broken_line(n, bytes, message);
        }
        if bytes.contains(&0) {
            return self.broken_line(n, bytes, "line contains a NUL byte".to_string());
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.broken_line(n, bytes, "line is not valid UTF-8".to_string());
        };
        if let Some(after) = text.strip_prefix('{') {
            self.open_record(n, after);
        } else if let Some(after) = text.strip_prefix('}') {
            self.close_record(n, after);
        } else if self.open.is_some() {
            self.statement(n, text);
        } else {
            let (word, _) = split_word(text);
            self.error(
                n,
                format!(
                    "expected \"{{\" to start a record, found {} outside any record",
                    quoted(word)
                ),
            );
        }
    }

    /// Reports a line that cannot be read as text, then keeps the record
    /// structure and notes which keyword it was, so that one bad line does
    /// not also show up as a missing `}` or a missing HostPass.
    fn broken_line(&mut self, n: usize, bytes: &[u8], message: String) {
        self.error(n, message);
        match bytes[0] {
            b'{' => self.open_record(n, ""),
            b'}' => self.close_record(n, ""),
            _ => {
                let end = bytes
                    .iter()
                    .position(|&b| is_blank_byte(b))
                    .unwrap_or(bytes.len());
                let keyword = std::str::from_utf8(&bytes[..end])
                    .ok()
                    .and_then(Keyword::find);
                if let (Some(keyword), Some(draft)) = (keyword, self.open.as_mut()) {
                    draft.seen(n, keyword);
                }
            }
        }
    }

    fn open_record(&mut self, n: usize, after: &str) {
        self.saw_record = true;
        if let Some(outer) = self.open.take() {
            let message = format!(
                "\"{{\" inside the record opened at line {}; close that record with \"}}\" \
                 first",
                outer.line
            );
            self.error(n, message);
            self.finish_record(outer, true);
        }
        self.open = Some(Draft {
            line: n,
            ..Draft::default()
        });
        let after = after.trim_start_matches(is_blank);
        if after.is_empty() || after.starts_with(';') {
            return;
        }
        let (word, _) = split_word(after);
        self.error(
            n,
            format!(
                "text after \"{{\": put {} on a line of its own",
                quoted(word)
            ),
        );
        // Still read it, so that `{ HostID 1` is not also reported as a
        // record without HostID.
        if !after.starts_with(['{', '}']) {
            self.statement(n, after);
        }
    }

    fn close_record(&mut self, n: usize, after: &str) {
        let after = after.trim_start_matches(is_blank);
        if !after.is_empty() && !after.starts_with(';') {
            let (word, _) = split_word(after);
            self.error(
                n,
                format!(
                    "text after \"}}\": put {} on a line of its own",
                    quoted(word)
                ),
            );
        }
        match self.open.take() {
            Some(draft) => self.finish_record(draft, true),
            None => self.error(n, "\"}\" without a record to close"),
        }
    }

    /// The single value of a one-word keyword, or `None` after reporting why
    /// there is none. Words after it are refused unless they are a comment:
    /// the C dhid silently dropped them, so `HostPass my secret` sent `my`.
    fn single<'t>(&mut self, n: usize, keyword: Keyword, rest: &'t str) -> Option<&'t str> {
        let name = keyword.name();
        if rest.is_empty() {
            self.error(n, format!("{name} needs a value"));
            return None;
        }
        let (value, more) = split_word(rest);
        if more.is_empty() || more.starts_with(';') {
            return Some(value);
        }
        let message = match keyword {
            k if k.is_secret() => format!("{name} takes one word; found more"),
            Keyword::IsAddr => format!(
                "{name} takes one word; found more: {}; give each server its own ISAddr line",
                quoted(more)
            ),
            _ => format!("{name} takes one word; found more: {}", quoted(more)),
        };
        self.error(n, message);
        None
    }

    fn statement(&mut self, n: usize, text: &str) {
        let (word, rest) = split_word(text);
        let Some(keyword) = Keyword::find(word) else {
            let message = match Keyword::glued(word) {
                Some(k) => {
                    if let Some(draft) = self.open.as_mut() {
                        draft.seen(n, k);
                    }
                    format!(
                        "{} must be followed by a space or tab and its value",
                        k.name()
                    )
                }
                None => format!(
                    "unknown keyword {}; expected HostID, HostPass, AuthP, AuthQ, ISAddr, \
                     Refresh, OnCmd or OffCmd",
                    quoted(word)
                ),
            };
            return self.error(n, message);
        };
        let Some(mut draft) = self.open.take() else {
            return;
        };
        self.keyword(n, keyword, rest, &mut draft);
        self.open = Some(draft);
    }

    fn keyword(&mut self, n: usize, keyword: Keyword, rest: &str, draft: &mut Draft) {
        match keyword {
            Keyword::HostId => {
                if let Some((first, _)) = draft.hostid {
                    return self.twice(n, keyword, first);
                }
                let value = self
                    .single(n, keyword, rest)
                    .and_then(|v| self.hostid(n, v));
                draft.hostid = Some((n, value));
            }
            Keyword::HostPass => {
                if let Some((first, _)) = draft.password {
                    return self.twice(n, keyword, first);
                }
                let value = self
                    .single(n, keyword, rest)
                    .and_then(|v| self.password(n, v));
                draft.password = Some((n, value));
            }
            Keyword::AuthP => self.key_part(n, keyword, rest, &mut draft.p),
            Keyword::AuthQ => self.key_part(n, keyword, rest, &mut draft.q),
            Keyword::IsAddr => {
                draft.isaddr_seen = true;
                let Some(value) = self.single(n, keyword, rest) else {
                    return;
                };
                match parse_server(value, n) {
                    Ok(server) => {
                        draft.servers.push(server);
                    }
                    Err(message) => self.error(n, message),
                }
            }
            Keyword::Refresh => {
                if let Some((first, _)) = draft.refresh {
                    return self.twice(n, keyword, first);
                }
                let value = self
                    .single(n, keyword, rest)
                    .and_then(|v| self.refresh(n, v));
                draft.refresh = Some((n, value));
            }
            Keyword::OnCmd | Keyword::OffCmd => {
                let slot = if keyword == Keyword::OnCmd {
                    &mut draft.on_cmd
                } else {
                    &mut draft.off_cmd
                };
                if let Some(first) = slot {
                    let first = first.line;
                    return self.twice(n, keyword, first);
                }
                if rest.is_empty() {
                    return self.error(n, format!("{} needs a command to run", keyword.name()));
                }
                let (program, args) = split_word(rest);
                *slot = Some(Hook {
                    program: program.to_string(),
                    rest: args.to_string(),
                    line: n,
                });
            }
            Keyword::HostName | Keyword::MxAddr => {
                let message = format!("{} is an R3/R4 keyword that dhid 5 ignores", keyword.name());
                self.warn(n, message);
            }
        }
    }

    fn twice(&mut self, n: usize, keyword: Keyword, first: usize) {
        let message = format!(
            "{} given twice in one record; the first is at line {first}",
            keyword.name()
        );
        self.error(n, message);
    }

    fn hostid(&mut self, n: usize, value: &str) -> Option<u32> {
        let id = decimal_u32(value).filter(|&id| id != 0);
        if id.is_none() {
            let message = format!(
                "HostID must be a decimal number from 1 to {}, found {}",
                u32::MAX,
                quoted(value)
            );
            self.error(n, message);
        }
        id
    }

    fn password(&mut self, n: usize, value: &str) -> Option<String> {
        // Neither the value nor a part of it may appear in the message.
        if value.len() > MAX_PASSWORD_LEN {
            let message = format!(
                "HostPass may be at most {MAX_PASSWORD_LEN} bytes (the 16-byte wire field ends \
                 with a NUL), found {} bytes",
                value.len()
            );
            self.error(n, message);
            return None;
        }
        Some(value.to_string())
    }

    fn key_part(&mut self, n: usize, keyword: Keyword, rest: &str, part: &mut KeyPart) {
        part.first_line.get_or_insert(n);
        let Some(value) = self.single(n, keyword, rest) else {
            part.bad = true;
            return;
        };
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            part.bad = true;
            return self.error(n, format!("{} must be decimal digits only", keyword.name()));
        }
        part.digits.push_str(value);
    }

    fn refresh(&mut self, n: usize, value: &str) -> Option<u32> {
        let Some(seconds) = decimal_u32(value) else {
            let message = format!(
                "Refresh must be a decimal number of seconds, at most {} \
                 ({MIN_REFRESH} to {MAX_SERVER_REFRESH} is what dhisd honours), found {}",
                u32::MAX,
                quoted(value)
            );
            self.error(n, message);
            return None;
        };
        if seconds < MIN_REFRESH {
            self.warn(
                n,
                format!("Refresh {seconds} is below {MIN_REFRESH}; using {MIN_REFRESH}"),
            );
            return Some(MIN_REFRESH);
        }
        if seconds > MAX_SERVER_REFRESH {
            let message = format!(
                "Refresh {seconds} is above {MAX_SERVER_REFRESH}: dhisd 5.3 honours only \
                 {MIN_REFRESH}..{MAX_SERVER_REFRESH} and holds 120 instead, so dhid refreshes \
                 every 120 s (or at the period the server says it holds)"
            );
            self.warn(n, message);
        }
        Some(seconds)
    }

    /// A server listed twice in one record: harmless, but surely a slip.
    fn check_repeated_servers(&mut self, servers: &[ServerSpec]) {
        if servers.len() < 2 {
            return;
        }
        let mut keys: Vec<(u16, u64, usize)> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.port, host_hash(&s.host), i))
            .collect();
        keys.sort_unstable();
        let mut first = keys[0];
        for &key in &keys[1..] {
            let (earlier, later) = (&servers[first.2], &servers[key.2]);
            if key.0 == first.0 && key.1 == first.1 && same_host(&earlier.host, &later.host) {
                let message = format!(
                    "ISAddr {later} is already listed at line {} of this record",
                    earlier.line
                );
                self.warn(later.line, message);
            } else {
                first = key;
            }
        }
    }

    fn finish_record(&mut self, draft: Draft, closed: bool) {
        self.check_repeated_servers(&draft.servers);
        if !closed {
            let message = format!(
                "record opened at line {} has no closing \"}}\"; the end of the file closes it",
                draft.line
            );
            self.warn(draft.line, message);
        }
        let hostid = match draft.hostid {
            Some((_, id)) => id,
            None => {
                self.error(draft.line, "record has no HostID line");
                None
            }
        };
        let auth = self.auth(&draft);
        if !draft.isaddr_seen {
            self.error(
                draft.line,
                "record has no ISAddr line; it needs at least one server",
            );
        }
        let (Some(hostid), Some(auth)) = (hostid, auth) else {
            return;
        };
        if draft.servers.is_empty() {
            return;
        }
        self.records.push(RecordConfig {
            line: draft.line,
            hostid,
            auth,
            servers: draft.servers,
            refresh_proposal: draft.refresh.and_then(|(_, r)| r).unwrap_or(0),
            on_cmd: draft.on_cmd,
            off_cmd: draft.off_cmd,
        });
    }

    fn auth(&mut self, draft: &Draft) -> Option<Auth> {
        let (p, q) = (&draft.p, &draft.q);
        let key_line = match (p.first_line, q.first_line) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (&draft.password, key_line) {
            (Some((pass_line, _)), Some(key_line)) => {
                let message = format!(
                    "record has both HostPass (line {pass_line}) and AuthP/AuthQ (line \
                     {key_line}); use HostPass for a password or AuthP and AuthQ for a QRC key"
                );
                self.error(*pass_line.max(&key_line), message);
                None
            }
            (None, None) => {
                let message = "record has no HostPass and no AuthP/AuthQ; it needs a password \
                               (HostPass) or a QRC key (AuthP and AuthQ)";
                self.error(draft.line, message);
                None
            }
            (Some((_, password)), None) => password.clone().map(Auth::Password),
            (None, Some(_)) => match (p.first_line, q.first_line) {
                (Some(line), None) => {
                    self.error(line, "AuthP without AuthQ; a QRC key needs both");
                    None
                }
                (None, Some(line)) => {
                    self.error(line, "AuthQ without AuthP; a QRC key needs both");
                    None
                }
                (Some(line), Some(_)) if !p.bad && !q.bad => self.key(line, &p.digits, &q.digits),
                _ => None,
            },
        }
    }

    fn key(&mut self, line: usize, p: &str, q: &str) -> Option<Auth> {
        // Checked before the primality test, whose cost grows fast with the
        // size: fifty AuthP lines must not stall the load.
        let (p_len, q_len) = (
            p.trim_start_matches('0').len(),
            q.trim_start_matches('0').len(),
        );
        if p_len > 0 && q_len > 0 && p_len + q_len - 1 > crate::wire::NUMBER_LEN {
            let message = format!(
                "AuthP x AuthQ has at least {} digits, more than the {} the protocol carries",
                p_len + q_len - 1,
                crate::wire::NUMBER_LEN
            );
            self.error(line, message);
            return None;
        }
        let key = QrcKey::unchecked_decimal(p, q).and_then(|key| {
            if self.defer_key_checks {
                self.unchecked_keys.push((line, key.clone()));
            } else {
                key.check()?;
            }
            Ok(key)
        });
        match key {
            Ok(key) => {
                let digits = p_len + q_len;
                if digits < WEAK_KEY_DIGITS {
                    let message = format!(
                        "the QRC key has only about {digits} digits and is easy to break; \
                         dhid --genkeys makes keys of 200"
                    );
                    self.warn(line, message);
                }
                Some(Auth::Qrc(key))
            }
            Err(e) => {
                self.error(line, e.to_string());
                None
            }
        }
    }

    fn finish_file(mut self) -> Result<Config, Vec<ConfigError>> {
        if let Some(draft) = self.open.take() {
            self.finish_record(draft, false);
        }
        if !self.saw_record {
            self.error(
                0,
                format!("no records configured; a record looks like{RECORD_EXAMPLE}"),
            );
        }
        self.check_ambiguous();
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|e| e.line);
            return Err(self.errors);
        }
        self.warnings.sort_by_key(|w| w.line);
        Ok(Config {
            records: self.records,
            warnings: self.warnings,
            unchecked_keys: self.unchecked_keys,
        })
    }

    /// dhisd's replies carry only the HostID, so two records for one HostID
    /// on one server could not be told apart. Sorted, not hashed into a
    /// map of strings: ten thousand records leave no garbage behind.
    fn check_ambiguous(&mut self) {
        let mut keys: Vec<(u32, u64, u16, usize, usize)> = Vec::new();
        for (r, record) in self.records.iter().enumerate() {
            for (s, server) in record.servers.iter().enumerate() {
                keys.push((record.hostid, host_hash(&server.host), server.port, r, s));
            }
        }
        keys.sort_unstable();

        let mut found = Vec::new();
        for pair in keys.windows(2) {
            let ((id, hash, port, r1, s1), (id2, hash2, port2, r2, s2)) = (pair[0], pair[1]);
            let (first, second) = (&self.records[r1], &self.records[r2]);
            let same_host = || same_host(&first.servers[s1].host, &second.servers[s2].host);
            if (id, hash, port) == (id2, hash2, port2) && r1 != r2 && same_host() {
                let (earlier, later) = if first.line < second.line {
                    (first, (second, s2))
                } else {
                    (second, (first, s1))
                };
                let server = &later.0.servers[later.1];
                let message = format!(
                    "HostID {id} on {server} already used by the record at line {}",
                    earlier.line
                );
                found.push((server.line, message));
            }
        }
        for (line, message) in found {
            self.error(line, message);
        }
    }
}

/// Names are compared without case, as the resolver does.
fn same_host(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Addr(x), Host::Addr(y)) => x == y,
        (Host::Name(x), Host::Name(y)) => x.eq_ignore_ascii_case(y),
        _ => false,
    }
}

fn host_hash(host: &Host) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match host {
        Host::Addr(a) => a.hash(&mut hasher),
        Host::Name(n) => n
            .bytes()
            .for_each(|b| b.to_ascii_lowercase().hash(&mut hasher)),
    }
    hasher.finish()
}

fn parse_server(value: &str, line: usize) -> Result<ServerSpec, String> {
    if value.contains(['[', ']']) || value.matches(':').count() > 1 {
        return Err(format!(
            "ISAddr {}: DHIS is IPv4 only; give an IPv4 address or a host name",
            quoted(value)
        ));
    }
    let (host, port) = match value.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    if host.is_empty() {
        return Err("ISAddr needs a host name or IPv4 address before the \":\"".to_string());
    }
    let host = match host.parse::<Ipv4Addr>() {
        Ok(addr) => Host::Addr(addr),
        Err(_) => Host::Name(check_host_name(host)?.to_string()),
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => decimal_u32(text)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                format!(
                    "ISAddr port must be a decimal number from 1 to 65535, found {}",
                    quoted(text)
                )
            })?,
    };
    Ok(ServerSpec { host, port, line })
}

fn check_host_name(host: &str) -> Result<&str, String> {
    let bad = |why: &str| Err(format!("ISAddr host {} {why}", quoted(host)));
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(allowed) {
        return bad(
            "is neither an IPv4 address nor a host name (letters, digits, \"-\", \"_\", \".\")",
        );
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return bad("is longer than the 253 characters a host name may have");
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return bad("is not a host name: each dot-separated part must have 1 to 63 characters");
    }
    // A resolver would read `127.1` or `10.0.0.256` as some address; a
    // name cannot be all digits, so this is a mistyped address.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return bad("is not an IPv4 address; expected four numbers from 0 to 255 like 192.0.2.1");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The primes of tests/data/keys1.json.
    const P: &str = "15449893736667232178307889299179416633465749433683\
                     80824753093935890394130302442363034824844794389731";
    const Q: &str = "99435236198937884453866216967234063277242682229044\
                     05650918559261780062297024431052235518351362273691";
    const SECRET: &str = "Zq9xSecret";

    fn parse_str(text: &str) -> Result<Config, Vec<ConfigError>> {
        parse("t.conf", text.as_bytes())
    }

    #[track_caller]
    fn ok(text: &str) -> Config {
        match parse_str(text) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    #[track_caller]
    fn errors(text: &str) -> Vec<(usize, String)> {
        match parse_str(text) {
            Ok(config) => panic!("expected errors, got {config:#?}"),
            Err(errors) => errors.into_iter().map(|e| (e.line, e.message)).collect(),
        }
    }

    /// The one error of `text`, which must be at `line` and contain `part`.
    #[track_caller]
    fn one_error(text: &str, line: usize, part: &str) -> String {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let (at, message) = &errors[0];
        assert_eq!(*at, line, "{message}");
        assert!(message.contains(part), "{message:?} lacks {part:?}");
        message.clone()
    }

    /// A valid record body around `lines`, which replace nothing: callers
    /// add what they test to a record that would be fine otherwise.
    fn record(lines: &str) -> String {
        format!("{{\nHostID 1000\nHostPass pw\nISAddr 127.0.0.1:58801\n{lines}}}\n")
    }

    fn only(config: &Config) -> &RecordConfig {
        assert_eq!(config.records.len(), 1, "{config:#?}");
        &config.records[0]
    }

    fn key_lines(keyword: &str, digits: &str, cuts: &[usize]) -> String {
        let mut out = String::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([digits.len()].iter()) {
            out.push_str(&format!("  {keyword}\t{}\n", &digits[start..cut]));
            start = cut;
        }
        out
    }

    fn qrc_text(p_cuts: &[usize], q_cuts: &[usize]) -> String {
        format!(
            "{{\nHostID 4603\n{}{}ISAddr 10.0.0.1\n}}\n",
            key_lines("AuthP", P, p_cuts),
            key_lines("AuthQ", Q, q_cuts)
        )
    }

    #[test]
    fn keys_match_the_test_data() {
        let json = include_str!("../tests/data/keys1.json");
        assert!(json.contains(&format!("\"p\": {P}")));
        assert!(json.contains(&format!("\"q\": {Q}")));
        assert_eq!((P.len(), Q.len()), (100, 100));
    }

    #[test]
    fn password_record() {
        let config = ok("; dhid.conf\n\
             {\n\
             \tHostID 1000\n\
             \tHostPass s3cret\n\
             \tISAddr 127.0.0.1:58801\n\
             \tISAddr dhis.example.org\n\
             \tRefresh 300\n\
             \tOnCmd /usr/local/bin/on.sh up\n\
             \tOffCmd /usr/local/bin/off.sh\n\
             }\n");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let r = only(&config);
        assert_eq!(r.line, 2);
        assert_eq!(r.hostid, 1000);
        assert_eq!(r.auth, Auth::Password("s3cret".into()));
        assert_eq!(
            r.servers,
            vec![
                ServerSpec {
                    host: Host::Addr(Ipv4Addr::new(127, 0, 0, 1)),
                    port: 58801,
                    line: 5
                },
                ServerSpec {
                    host: Host::Name("dhis.example.org".into()),
                    port: DEFAULT_PORT,
                    line: 6
                },
            ]
        );
        assert_eq!(r.refresh_proposal, 300);
        assert_eq!(r.refresh_period(), 300);
        let on = Hook {
            program: "/usr/local/bin/on.sh".into(),
            rest: "up".into(),
            line: 8,
        };
        assert_eq!(r.on_cmd, Some(on));
        let off = Hook {
            program: "/usr/local/bin/off.sh".into(),
            rest: String::new(),
            line: 9,
        };
        assert_eq!(r.off_cmd, Some(off));
    }

    #[test]
    fn several_records_in_order() {
        let text = format!("{}\n{}", record(""), record("").replace("1000", "1001"));
        let config = ok(&text);
        let ids: Vec<_> = config.records.iter().map(|r| (r.line, r.hostid)).collect();
        assert_eq!(ids, vec![(1, 1000), (7, 1001)]);
    }

    #[track_caller]
    fn assert_qrc(text: &str) {
        let config = ok(text);
        let r = only(&config);
        assert_eq!(r.hostid, 4603);
        assert_eq!(r.auth, Auth::Qrc(QrcKey::from_decimal(P, Q).unwrap()));
    }

    #[test]
    fn qrc_key_split_50_50() {
        assert_qrc(&qrc_text(&[50], &[50]));
    }

    #[test]
    fn qrc_key_split_30_70() {
        assert_qrc(&qrc_text(&[30], &[30]));
    }

    #[test]
    fn qrc_key_on_one_line() {
        assert_qrc(&qrc_text(&[], &[]));
    }

    #[test]
    fn qrc_key_split_unevenly_and_interleaved() {
        let text = format!(
            "{{\nHostID 4603\nAuthQ {}\nAuthP {}\nAuthQ {}\nISAddr 10.0.0.1\nAuthP {}\n}}\n",
            &Q[..70],
            &P[..1],
            &Q[70..],
            &P[1..]
        );
        assert_qrc(&text);
    }

    #[test]
    fn crlf_lines() {
        let text = record("Refresh 120\nOnCmd /bin/on a b\n").replace('\n', "\r\n");
        let config = ok(&text);
        let r = only(&config);
        assert_eq!(r.auth, Auth::Password("pw".into()));
        assert_eq!(r.refresh_proposal, 120);
        let on = r.on_cmd.as_ref().unwrap();
        assert_eq!((on.program.as_str(), on.rest.as_str()), ("/bin/on", "a b"));
        assert_eq!(r.servers[0].port, 58801);
    }

    #[test]
    fn comments_and_blank_lines() {
        let text = "; top\n\n   ; indented\n{ ; record for host 7\n\t; inside\n  \t \n\
                    HostID 7 ; the id\nHostPass pw\t;note\nISAddr 10.1.2.3 ;x\nRefresh 90 ;\n\
                    } ; end\n;{\n; HostID 8\n";
        let config = ok(text);
        let r = only(&config);
        assert_eq!((r.hostid, r.refresh_proposal, r.line), (7, 90, 4));
        assert_eq!(r.auth, Auth::Password("pw".into()));
    }

    #[test]
    fn keywords_ignore_case_values_keep_it() {
        let text = "{\nhostid 5\nHOSTPASS MiXeD\nisaddr DHIS.Example.ORG:1234\nREFRESH 61\n\
                    oncmd /Usr/Bin/On.sh 'Quoted Arg'  \"dq\"\tMiXeD\noFfCmD /X\n}\n";
        let config = ok(text);
        let r = only(&config);
        assert_eq!(r.auth, Auth::Password("MiXeD".into()));
        assert_eq!(r.servers[0].host, Host::Name("DHIS.Example.ORG".into()));
        assert_eq!(r.servers[0].port, 1234);
        let on = r.on_cmd.as_ref().unwrap();
        assert_eq!(on.program, "/Usr/Bin/On.sh");
        assert_eq!(on.rest, "'Quoted Arg'  \"dq\"\tMiXeD");
        assert_eq!(r.off_cmd.as_ref().unwrap().program, "/X");
    }

    #[test]
    fn semicolon_inside_values() {
        let r = ok(&record("").replace("HostPass pw", "HostPass ab;cd"));
        assert_eq!(only(&r).auth, Auth::Password("ab;cd".into()));
        let r = ok(&record("").replace("HostPass pw", "HostPass ;abcd"));
        assert_eq!(only(&r).auth, Auth::Password(";abcd".into()));
        let r = ok(&record("OnCmd /bin/on a; echo b ;c\n"));
        assert_eq!(only(&r).on_cmd.as_ref().unwrap().rest, "a; echo b ;c");
    }

    #[test]
    fn legacy_keywords_warn() {
        let config = ok(&record("hostname my.host.example\nMXADDR 1.2.3.4\n"));
        assert_eq!(config.records.len(), 1);
        let lines: Vec<_> = config.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![5, 6]);
        assert!(config.warnings[0].message.contains("hostname"));
        assert!(config.warnings[1].message.contains("mxaddr"));
        assert!(config.warnings[0].message.contains("ignore"));
    }

    #[test]
    fn missing_final_brace_warns_and_keeps_record() {
        let text = format!(
            "{}\n{{\nHostID 2\nHostPass pw\nISAddr 10.0.0.2\n",
            record("")
        );
        let config = ok(&text);
        assert_eq!(config.records.len(), 2);
        assert_eq!(config.records[1].hostid, 2);
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].line, 7);
        assert!(config.warnings[0].message.contains("no closing \"}\""));
    }

    #[test]
    fn refresh_absent_is_zero() {
        let config = ok(&record(""));
        assert_eq!(only(&config).refresh_proposal, 0);
        assert_eq!(only(&config).refresh_period(), MIN_REFRESH);
    }

    #[test]
    fn low_refresh_is_raised_with_warning() {
        for value in ["10", "0", "59", "0000"] {
            let config = ok(&record(&format!("Refresh {value}\n")));
            assert_eq!(only(&config).refresh_proposal, 60);
            assert_eq!(config.warnings.len(), 1);
            assert_eq!(config.warnings[0].line, 5);
            assert!(
                config.warnings[0].message.contains("using 60"),
                "{:?}",
                config.warnings
            );
        }
    }

    #[test]
    fn refresh_within_server_range_is_quiet() {
        for value in [60, 120, 21600] {
            let config = ok(&record(&format!("Refresh {value}\n")));
            assert_eq!(only(&config).refresh_proposal, value);
            assert!(config.warnings.is_empty());
        }
    }

    #[test]
    fn refresh_above_server_range_warns() {
        for value in [21601, 86400, 715827883, u32::MAX] {
            let config = ok(&record(&format!("Refresh {value}\n")));
            assert_eq!(only(&config).refresh_proposal, value);
            // dhid follows the 120 s dhisd will hold.
            assert_eq!(only(&config).refresh_period(), 120);
            assert_eq!(config.warnings.len(), 1);
            let message = &config.warnings[0].message;
            assert_eq!(config.warnings[0].line, 5);
            assert!(
                message.contains("21600") && message.contains("120"),
                "{message}"
            );
            assert!(message.contains("refreshes every 120 s"), "{message}");
        }
    }

    #[test]
    fn refresh_errors() {
        for value in [
            "ten",
            "-5",
            "12abc",
            "99999999999",
            "4294967296",
            "+5",
            "0x20",
            "70;x",
        ] {
            let m = one_error(&record(&format!("Refresh {value}\n")), 5, "Refresh must be");
            assert!(m.contains(&format!("{value:?}")), "{m}");
            assert!(m.contains("60 to 21600 is what dhisd honours"), "{m}");
        }
        one_error(&record("Refresh\n"), 5, "Refresh needs a value");
        one_error(
            &record("Refresh 70 80\n"),
            5,
            "Refresh takes one word; found more: \"80\"",
        );
        one_error(
            &record("Refresh 70\nRefresh 80\n"),
            6,
            "Refresh given twice",
        );
    }

    #[test]
    fn hostid_errors() {
        for value in [
            "abc",
            "99999999999",
            "-5",
            "12abc",
            "0",
            "4294967296",
            "+1",
            "1.5",
        ] {
            let text = record("").replace("HostID 1000", &format!("HostID {value}"));
            let m = one_error(
                &text,
                2,
                "HostID must be a decimal number from 1 to 4294967295",
            );
            assert!(m.ends_with(&format!("found {value:?}")), "{m}");
        }
        let config = ok(&record("").replace("HostID 1000", "HostID 4294967295"));
        assert_eq!(only(&config).hostid, u32::MAX);
        let m = one_error(&record("HostID 1001\n"), 5, "HostID given twice");
        assert!(m.contains("line 2"), "{m}");
        one_error(
            &record("").replace("HostID 1000", "HostID"),
            2,
            "HostID needs a value",
        );
        one_error(
            &record("").replace("HostID 1000", "HostID 1 2"),
            2,
            "takes one word",
        );
        let m = one_error(&record("").replace("HostID 1000\n", ""), 1, "no HostID");
        assert_eq!(m, "record has no HostID line");
    }

    #[test]
    fn hostid_error_message_reads_well() {
        let text = record("").replace("HostID 1000", "HostID abc");
        let e = &parse_str(&text).unwrap_err()[0];
        assert_eq!(
            e.to_string(),
            "t.conf:2: HostID must be a decimal number from 1 to 4294967295, found \"abc\""
        );
    }

    #[test]
    fn hostpass_length() {
        let fifteen = "abcdefghijklmno";
        let config = ok(&record("").replace("HostPass pw", &format!("HostPass {fifteen}")));
        assert_eq!(only(&config).auth, Auth::Password(fifteen.into()));
        let text = record("").replace("HostPass pw", &format!("HostPass {fifteen}p"));
        let m = one_error(&text, 3, "HostPass may be at most 15 bytes");
        assert!(m.contains("found 16 bytes"), "{m}");
        // Bytes, not characters: five three-byte characters are 15 bytes.
        let config = ok(&record("").replace("HostPass pw", "HostPass ééééé€"));
        assert_eq!(only(&config).auth, Auth::Password("ééééé€".into()));
        let text = record("").replace("HostPass pw", "HostPass éééééééé");
        one_error(&text, 3, "at most 15 bytes");
    }

    #[test]
    fn hostpass_errors() {
        one_error(
            &record("").replace("HostPass pw", "HostPass"),
            3,
            "HostPass needs a value",
        );
        one_error(
            &record("").replace("HostPass pw", "HostPass   \t "),
            3,
            "needs a value",
        );
        let m = one_error(
            &record("").replace("HostPass pw", "HostPass my secret"),
            3,
            "HostPass takes one word; found more",
        );
        assert_eq!(m, "HostPass takes one word; found more");
        let m = one_error(&record("HostPass other\n"), 5, "HostPass given twice");
        assert!(m.contains("line 3"));
    }

    #[test]
    fn authp_errors() {
        let base = "{\nHostID 1\nISAddr 10.0.0.1\n";
        let m = one_error(
            &format!("{base}AuthP 12a4\nAuthQ 7\n}}\n"),
            4,
            "AuthP must be decimal",
        );
        assert_eq!(m, "AuthP must be decimal digits only");
        one_error(
            &format!("{base}AuthP 3\nAuthQ -7\n}}\n"),
            5,
            "AuthQ must be decimal",
        );
        one_error(
            &format!("{base}AuthP\nAuthQ 7\n}}\n"),
            4,
            "AuthP needs a value",
        );
        one_error(
            &format!("{base}AuthP 3 ;c\nAuthQ 7 4\n}}\n"),
            5,
            "AuthQ takes one word",
        );
        one_error(&format!("{base}AuthP {P}\n}}\n"), 4, "AuthP without AuthQ");
        one_error(&format!("{base}AuthQ {Q}\n}}\n"), 4, "AuthQ without AuthP");
        let m = one_error(&format!("{base}}}\n"), 1, "no HostPass and no AuthP/AuthQ");
        assert!(m.contains("password") && m.contains("QRC"), "{m}");
    }

    #[test]
    fn password_and_key_together() {
        let text =
            format!("{{\nHostID 1\nHostPass pw\nAuthP {P}\nAuthQ {Q}\nISAddr 10.0.0.1\n}}\n");
        let m = one_error(&text, 4, "both HostPass (line 3) and AuthP/AuthQ (line 4)");
        assert!(!m.contains(P));
        let text =
            format!("{{\nHostID 1\nAuthQ {Q}\nAuthP {P}\nISAddr 10.0.0.1\nHostPass pw\n}}\n");
        one_error(&text, 6, "both HostPass (line 6) and AuthP/AuthQ (line 3)");
    }

    #[test]
    fn bad_keys_are_reported_at_the_first_authp() {
        let base = "{\nHostID 1\nISAddr 10.0.0.1\nAuthQ 7\n";
        let text = format!("{base}AuthP 15\nAuthP 0\n}}\n");
        assert_eq!(one_error(&text, 5, "not a prime"), "AuthP is not a prime");
        let text = format!("{base}AuthP 13\n}}\n");
        one_error(&text, 5, "AuthP is not 3 mod 4");
        let text = format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\nAuthQ {P}\n}}\n");
        one_error(&text, 4, "AuthP and AuthQ are the same number");
        let text = format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\nAuthQ {Q}{Q}\n}}\n");
        one_error(&text, 4, "more than the 200 the protocol carries");
    }

    #[test]
    fn fifty_authp_lines_concatenate_without_stalling() {
        let text = format!(
            "{{\nHostID 1\nISAddr 10.0.0.1\n{}AuthQ {Q}\n}}\n",
            format!("AuthP {P}\n").repeat(50)
        );
        let m = one_error(&text, 4, "AuthP x AuthQ has at least 5099 digits");
        assert!(!m.contains(&P[..20]));
        // Same with a long AuthQ of zeros, which is small but many digits.
        let text = format!(
            "{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\nAuthQ {}\n}}\n",
            "0".repeat(5000)
        );
        one_error(&text, 4, "AuthQ is not a prime");
    }

    #[test]
    fn isaddr_forms() {
        let cases: [(&str, Host, u16); 7] = [
            ("10.0.0.1", Host::Addr(Ipv4Addr::new(10, 0, 0, 1)), 58800),
            ("10.0.0.1:1", Host::Addr(Ipv4Addr::new(10, 0, 0, 1)), 1),
            (
                "10.0.0.1:65535",
                Host::Addr(Ipv4Addr::new(10, 0, 0, 1)),
                65535,
            ),
            ("localhost", Host::Name("localhost".into()), 58800),
            (
                "dhis_1.Example-Net.org.:058801",
                Host::Name("dhis_1.Example-Net.org.".into()),
                58801,
            ),
            ("1host:7", Host::Name("1host".into()), 7),
            ("a.b.c.d.e", Host::Name("a.b.c.d.e".into()), 58800),
        ];
        for (value, host, port) in cases {
            let config = ok(&record("").replace("127.0.0.1:58801", value));
            assert_eq!(
                only(&config).servers,
                vec![ServerSpec {
                    host,
                    port,
                    line: 4
                }],
                "{value}"
            );
        }
    }

    #[test]
    fn isaddr_errors() {
        let cases = [
            (
                "10.0.0.1:0",
                "port must be a decimal number from 1 to 65535, found \"0\"",
            ),
            ("10.0.0.1:65536", "found \"65536\""),
            ("10.0.0.1:99999999999", "found \"99999999999\""),
            ("10.0.0.1:abc", "found \"abc\""),
            ("10.0.0.1:-1", "found \"-1\""),
            ("10.0.0.1:", "found \"\""),
            (":58800", "needs a host name or IPv4 address"),
            ("::1", "IPv4 only"),
            ("[::1]:58800", "IPv4 only"),
            ("fe80::1", "IPv4 only"),
            ("[10.0.0.1]", "IPv4 only"),
            ("a/b", "is neither an IPv4 address nor a host name"),
            ("host,name", "is neither"),
            ("300.1.1.1", "is not an IPv4 address"),
            ("127.1", "is not an IPv4 address"),
            ("010.0.0.1", "is not an IPv4 address"),
            ("a..b", "1 to 63 characters"),
            (".", "1 to 63 characters"),
        ];
        for (value, part) in cases {
            one_error(&record("").replace("127.0.0.1:58801", value), 4, part);
        }
        let long = format!("{}.org", "a".repeat(64));
        one_error(
            &record("").replace("127.0.0.1:58801", &long),
            4,
            "1 to 63 characters",
        );
        let long = format!("{}org", "abcdefghi.".repeat(26));
        one_error(
            &record("").replace("127.0.0.1:58801", &long),
            4,
            "longer than the 253",
        );
        one_error(
            &record("").replace("127.0.0.1:58801", ""),
            4,
            "ISAddr needs a value",
        );
        let m = one_error(
            &record("").replace(":58801", " 10.0.0.2"),
            4,
            "takes one word",
        );
        assert!(m.contains("own ISAddr line"), "{m}");
        let text = record("").replace("ISAddr 127.0.0.1:58801\n", "");
        one_error(&text, 1, "record has no ISAddr line");
    }

    #[test]
    fn redundant_servers() {
        let config = ok(&record(
            "ISAddr 10.0.0.2\nISAddr backup.example.org:58802\n",
        ));
        let servers: Vec<_> = only(&config)
            .servers
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            servers,
            [
                "127.0.0.1:58801",
                "10.0.0.2:58800",
                "backup.example.org:58802"
            ]
        );
        assert!(config.warnings.is_empty());
        let config = ok(&record("ISAddr 127.0.0.1:58801\n"));
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].line, 5);
        assert!(
            config.warnings[0]
                .message
                .contains("already listed at line 4")
        );
    }

    #[test]
    fn hooks() {
        let config = ok(&record("OnCmd   /bin/on \t 'a b'  c  \nOffCmd /bin/off\n"));
        let r = only(&config);
        let on = r.on_cmd.as_ref().unwrap();
        assert_eq!(
            (on.program.as_str(), on.rest.as_str(), on.line),
            ("/bin/on", "'a b'  c", 5)
        );
        let off = r.off_cmd.as_ref().unwrap();
        assert_eq!(
            (off.program.as_str(), off.rest.as_str(), off.line),
            ("/bin/off", "", 6)
        );
        one_error(&record("OnCmd\n"), 5, "OnCmd needs a command to run");
        one_error(&record("OffCmd \t\n"), 5, "OffCmd needs a command to run");
        let m = one_error(&record("OnCmd /a\nOnCmd /b\n"), 6, "OnCmd given twice");
        assert!(m.contains("line 5"));
        one_error(&record("OffCmd /a\nOffCmd /b\n"), 6, "OffCmd given twice");
    }

    #[test]
    fn long_hook_comes_through_whole() {
        let program = format!("/{}", "p".repeat(599));
        let args = format!("'{}' \"{}\"", "a".repeat(200), "b".repeat(95));
        let config = ok(&record(&format!("OnCmd {program} {args}\n")));
        let on = only(&config).on_cmd.clone().unwrap();
        assert_eq!((on.program.len(), on.rest.len()), (600, 300));
        assert_eq!((on.program, on.rest), (program, args));
    }

    #[test]
    fn unknown_keywords() {
        let m = one_error(&record("Foo bar\n"), 5, "unknown keyword \"Foo\"");
        assert!(m.contains("expected HostID, HostPass"), "{m}");
        one_error(&record("HostIDx 1\n"), 5, "unknown keyword \"HostIDx\"");
        let text = record("").replace("HostID 1000", "HostID=1000");
        one_error(
            &text,
            2,
            "HostID must be followed by a space or tab and its value",
        );
        let text = record("").replace("HostPass pw", &format!("hostpass={SECRET}"));
        let m = one_error(&text, 3, "HostPass must be followed by a space or tab");
        assert!(!m.contains(SECRET));
        let m = one_error(
            &record(&format!("{}\n", "X".repeat(1000))),
            5,
            "unknown keyword",
        );
        assert!(m.len() < 200, "long words are cut: {m}");
    }

    #[test]
    fn brace_errors() {
        let text = format!(
            "{}{}",
            record("").trim_end_matches("}\n"),
            record("").replace("1000", "1001")
        );
        let m = one_error(&text, 5, "\"{\" inside the record opened at line 1");
        assert!(m.contains("close that record"), "{m}");
        let m = one_error(
            &format!("{}}}\n", record("")),
            6,
            "\"}\" without a record to close",
        );
        assert_eq!(m, "\"}\" without a record to close");
        let all = errors("}\n");
        assert_eq!(all[1], (1, "\"}\" without a record to close".to_string()));
    }

    #[test]
    fn text_after_braces() {
        let text = "{ HostID 1\nHostPass pw\nISAddr 10.0.0.1\n}\n";
        assert_eq!(
            errors(text),
            [(
                1,
                "text after \"{\": put \"HostID\" on a line of its own".into()
            )]
        );
        let text = "{\nHostID 1\nHostPass pw\nISAddr 10.0.0.1\n} {\n";
        let all = errors(text);
        assert_eq!(
            all[0],
            (5, "text after \"}\": put \"{\" on a line of its own".into())
        );
        let text = "{\nHostID 1\nHostPass pw\nISAddr 10.0.0.1\n}}\n";
        one_error(text, 5, "text after \"}\"");
        let text = format!("{{ HostPass {SECRET}\nHostID 1\nISAddr 10.0.0.1\n}}\n");
        let m = one_error(&text, 1, "put \"HostPass\" on a line of its own");
        assert!(!m.contains(SECRET));
    }

    #[test]
    fn lines_outside_records() {
        let text = format!("{}HostID 5\n", record(""));
        let m = one_error(
            &text,
            6,
            "expected \"{\" to start a record, found \"HostID\"",
        );
        assert!(m.ends_with("outside any record"));
        let text = format!("garbage here\n{}", record(""));
        one_error(&text, 1, "found \"garbage\" outside any record");
    }

    #[test]
    fn empty_file() {
        for text in ["", "\n\n", "; only a comment\n", "  \t\r\n"] {
            let m = one_error(text, 0, "no records configured");
            assert!(
                m.contains("HostID") && m.contains('{') && m.contains('}'),
                "{m}"
            );
        }
        let e = &parse_str("").unwrap_err()[0];
        assert!(e.to_string().starts_with("t.conf: no records configured"));
    }

    #[test]
    fn empty_record_reports_each_missing_part() {
        let all = errors("; x\n{\n}\n");
        let lines: Vec<_> = all.iter().map(|e| e.0).collect();
        assert_eq!(lines, [2, 2, 2]);
        assert!(all[0].1.contains("no HostID"));
        assert!(all[1].1.contains("no HostPass"));
        assert!(all[2].1.contains("no ISAddr"));
    }

    #[test]
    fn old_format_gets_one_explaining_error() {
        let text = "; old dhid.conf\nidnumber 1000\npassword secret\nisaddr 10.0.0.1\n";
        let m = one_error(text, 2, "old (R3/R4) dhid.conf format without braces");
        assert!(
            m.contains("idnumber -> HostID, password -> HostPass"),
            "{m}"
        );
        assert!(m.contains("wrap each host's lines in { and }"), "{m}");
        assert!(m.contains('\n'));
        assert!(m.lines().all(|l| l.len() <= 100), "{m}");
        one_error("HostID 1\nHostPass pw\nISAddr 10.0.0.1\n", 1, "old (R3/R4)");
        one_error("  hostpass x\n", 1, "old (R3/R4)");
        // A brace elsewhere than at the start of a line does not count.
        one_error("ISAddr a\nOnCmd /bin/x ${A}\n", 1, "old (R3/R4)");
        // Once a record exists, stray lines are ordinary errors.
        let m = one_error(
            &format!("HostID 1\n{}", record("")),
            1,
            "outside any record",
        );
        assert!(!m.contains("R3"));
    }

    #[test]
    fn same_hostid_on_same_server_is_ambiguous() {
        let first = record("");
        let second = record("").replace("127.0.0.1:58801", "10.9.9.9\nISAddr 127.0.0.1:58801");
        let m = one_error(&format!("{first}{second}"), 10, "already used");
        assert_eq!(
            m,
            "HostID 1000 on 127.0.0.1:58801 already used by the record at line 1"
        );
        let first = record("").replace("127.0.0.1:58801", "Dhis.Example.org");
        let second = record("").replace("127.0.0.1:58801", "dhis.example.ORG:58800");
        let m = one_error(
            &format!("{first}{second}"),
            9,
            "already used by the record at line 1",
        );
        assert!(
            m.starts_with("HostID 1000 on dhis.example.ORG:58800"),
            "{m}"
        );
    }

    #[test]
    fn same_hostid_on_other_servers_is_fine() {
        let other_port = record("").replace(":58801", ":58802");
        let other_host = record("").replace("127.0.0.1", "127.0.0.2");
        let config = ok(&format!("{}{other_port}{other_host}", record("")));
        assert_eq!(config.records.len(), 3);
        assert!(config.records.iter().all(|r| r.hostid == 1000));
    }

    #[test]
    fn all_errors_are_returned_in_line_order() {
        let text = "stray\n{\nHostID abc\nHostPass 0123456789abcdefgh\nISAddr ::1\nRefresh ten\n\
                    Bogus 1\n}\n}\n{\nHostID 2\n";
        let lines: Vec<_> = errors(text).iter().map(|e| e.0).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6, 7, 9, 10, 10]);
    }

    #[test]
    fn secrets_never_appear_in_messages() {
        let bad_texts = [
            record("").replace("HostPass pw", &format!("HostPass {SECRET} {SECRET}")),
            record("").replace("HostPass pw", &format!("HostPass {SECRET}{SECRET}")),
            record(&format!("HostPass {SECRET}\n")),
            record(&format!("AuthP {P}\nAuthQ {Q}\n")),
            record("").replace("HostPass pw", &format!("HostPass={SECRET}")),
            format!("{{HostPass {SECRET}\n}}\n"),
            format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}x\nAuthQ {Q} {Q}\n}}\n"),
            format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\nAuthQ {P}\n}}\n"),
            format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\n}}\n"),
            format!(
                "{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {}\nAuthQ {Q}\n}}\n",
                &P[..99]
            ),
            format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}{P}\nAuthQ {Q}\n}}\n"),
        ];
        let fragments = [
            SECRET,
            &P[..12],
            &P[40..52],
            &P[88..],
            &Q[..12],
            &Q[40..52],
            &Q[88..],
        ];
        for text in &bad_texts {
            let all = parse_str(text).unwrap_err();
            assert!(!all.is_empty());
            for e in all {
                let shown = e.to_string();
                for f in fragments {
                    assert!(!shown.contains(f), "{shown:?} shows a secret");
                }
            }
        }
        let warned = [
            record(&format!(
                "Refresh 5\nhostname {SECRET}\nISAddr 127.0.0.1:58801\n"
            )),
            format!("{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {P}\nAuthQ {Q}\nRefresh 99999\n"),
        ];
        for text in &warned {
            let config = ok(text);
            assert!(!config.warnings.is_empty());
            for w in &config.warnings {
                for f in fragments {
                    assert!(!w.message.contains(f), "{:?} shows a secret", w.message);
                }
            }
            for r in &config.records {
                let debug = format!("{r:?}");
                for f in fragments {
                    assert!(!debug.contains(f), "{debug:?} shows a secret");
                }
            }
        }
    }

    #[test]
    fn non_utf8_lines() {
        let mut text = b"{\nHostID 1\nHostPass pw\xff\xfe\nISAddr 10.0.0.1\n".to_vec();
        text.extend_from_slice(b"; caf\xe9 comment in Latin-1\n}\n");
        let all = parse("t.conf", &text).unwrap_err();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].line, all[0].message.as_str()),
            (3, "line is not valid UTF-8")
        );
        let mut text = record("").into_bytes();
        text.extend_from_slice(b"\xc3\n");
        assert_eq!(parse("t.conf", &text).unwrap_err()[0].line, 6);
    }

    #[test]
    fn nul_bytes_are_refused() {
        let text = record("").replace("HostPass pw", "HostPass p\0w");
        one_error(&text, 3, "NUL byte");
        let text = record("OnCmd /bin/on a\0b\n");
        one_error(&text, 5, "NUL byte");
    }

    #[test]
    fn megabyte_lines() {
        let big = "x".repeat(1 << 20);
        let m = one_error(
            &record(&format!("OnCmd /bin/on {big}\n")),
            5,
            "line is longer than",
        );
        assert!(m.len() < 100);
        one_error(
            &record(&format!("HostPass {big}\n")),
            5,
            "line is longer than 65536 bytes",
        );
        one_error(&format!("{big}\n{}", record("")), 1, "line is longer than");
        let config = ok(&format!("; {big}\n{}{}\n", record(""), " ".repeat(1 << 20)));
        assert_eq!(config.records.len(), 1);
        let spaced = record("").replace("HostID 1000", &format!("HostID {}", " 1".repeat(1 << 19)));
        one_error(&spaced, 2, "line is longer than");
        let digits = format!(
            "{{\nHostID 1\nISAddr 10.0.0.1\nAuthP {}\nAuthQ 7\n}}\n",
            "9".repeat(60000)
        );
        one_error(&digits, 4, "more than the 200 the protocol carries");
    }

    #[test]
    fn many_lines_stay_linear() {
        let text = record("")
            .repeat(20000)
            .replace("HostID 1000", "HostID 1\nhostname x");
        let all = parse_str(&text).unwrap_err();
        // Every record after the first repeats HostID 1 on the same server.
        assert_eq!(all.len(), 19999);
    }

    #[test]
    fn many_servers_in_one_record_stay_linear() {
        let servers: String = (0..60000)
            .map(|i| format!("ISAddr h{i}.example\n"))
            .collect();
        let config = ok(&record(&format!("{servers}ISAddr H7.Example\n")));
        assert_eq!(only(&config).servers.len(), 60002);
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].message.contains("at line 12 "));
    }

    #[test]
    fn error_messages_follow_the_house_style() {
        let texts = [
            "".to_string(),
            "idnumber 1\n".to_string(),
            "stray\n{ x\n{\nHostID 0\nHostPass 0123456789abcdef\nAuthP 1x\nISAddr ::1\n}\n}\n"
                .to_string(),
            record("Refresh x\nFoo 1\nOnCmd\nHostID=5\n"),
        ];
        for text in texts {
            for e in parse_str(&text).unwrap_err() {
                let m = &e.message;
                assert!(!m.ends_with('.'), "{m:?}");
                let first = m.chars().next().unwrap();
                // A keyword may start the message in its own spelling.
                let keyword = KEYWORDS.iter().any(|k| m.starts_with(k.name()));
                assert!(!first.is_uppercase() || keyword, "{m:?}");
            }
        }
    }

    /// Deterministic pseudo-random input: xorshift64*, so the test needs no
    /// crate and a failure can be replayed from its seed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        // Words joined at random, and whole lines that are often right, so
        // that records do get through now and then.
        let words: Vec<&[u8]> = b"{|}|\n|\r\n| | |\t|;|:|[|]|=|HostID|hostid|HostPass|AuthP|\
            AuthQ|ISAddr|Refresh|OnCmd|OffCmd|hostname|mxaddr|idnumber|password|1000|0|-5|\
            99999999999|4294967295|58801|65536|127.0.0.1|dhis.example.org|::1|10|86400|7|3|\
            abc|\xff|\xc3|\0|\xe2\x82\xac|/bin/sh|'x y'|0000"
            .split(|&b| b == b'|')
            .chain([
                &P.as_bytes()[..50],
                &P.as_bytes()[50..],
                &Q.as_bytes()[..30],
            ])
            .chain([&Q.as_bytes()[30..]])
            .collect();
        // Each record draws one line from every required group (so some
        // records are complete), some optional lines, and now and then a
        // line of random words in place of one of them.
        let required: [&[&str]; 3] = [
            &["HostID 1000", "hostid 7", "HostID 4294967295"],
            &[
                "HostPass pw",
                "AuthP 10\nAuthP 3\nAuthQ 1\nAuthQ 1",
                "AuthQ 11\nAuthP 7",
            ],
            &[
                "ISAddr 127.0.0.1",
                "isaddr h.example:58801",
                "ISAddr 10.0.0.1\nISAddr b",
            ],
        ];
        let optional = [
            "Refresh 10",
            "Refresh 90000",
            "OnCmd /bin/on x",
            "",
            "OffCmd /bin/off",
            "; c",
            "hostname x",
            "{",
            "}",
            "HostID 1",
            "HostPass x",
            "AuthP 7",
            "ISAddr 10.0.0.2",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for _ in 0..4000 {
            let mut text = Vec::new();
            for _ in 0..rng.below(4) {
                let mut lines: Vec<Vec<u8>> = required
                    .iter()
                    .map(|group| group[rng.below(group.len())].as_bytes().to_vec())
                    .collect();
                for _ in 0..rng.below(4) {
                    lines.push(optional[rng.below(optional.len())].as_bytes().to_vec());
                }
                for line in lines.iter_mut() {
                    if rng.below(12) == 0 {
                        line.clear();
                        for _ in 0..rng.below(8) {
                            line.extend_from_slice(words[rng.below(words.len())]);
                        }
                    }
                }
                for k in (1..lines.len()).rev() {
                    lines.swap(k, rng.below(k + 1));
                }
                lines.insert(0, b"{".to_vec());
                if rng.below(8) != 0 {
                    lines.push(b"}".to_vec());
                }
                for line in lines {
                    text.extend_from_slice(&line);
                    text.extend_from_slice(if rng.below(4) == 0 { b"\r\n" } else { b"\n" });
                }
            }
            let lines = text.split(|&b| b == b'\n').count();
            match parse("fuzz", &text) {
                Ok(config) => {
                    parsed += 1;
                    for r in &config.records {
                        assert!(r.hostid != 0 && !r.servers.is_empty());
                        assert!(r.refresh_proposal == 0 || r.refresh_proposal >= MIN_REFRESH);
                        assert!(r.servers.iter().all(|s| s.port != 0 && s.line <= lines));
                    }
                    assert!(config.warnings.iter().all(|w| w.line <= lines));
                }
                Err(errors) => {
                    assert!(!errors.is_empty());
                    assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
                    for e in errors {
                        assert!(e.line <= lines && !e.message.is_empty(), "{e}");
                    }
                }
            }
        }
        // The vocabulary is meant to reach the success path now and then.
        assert!(parsed > 100, "only {parsed} inputs parsed");
    }

    #[test]
    fn mutated_good_files_do_not_panic() {
        let good = format!(
            "{}{}",
            record("Refresh 90\nOnCmd /bin/on x\n"),
            // Small primes (103 and 11) keep the key check fast.
            qrc_text(&[], &[])
                .replace(P, "10\nAuthP 3")
                .replace(Q, "1\nAuthQ 1")
        )
        .into_bytes();
        assert_eq!(parse("good", &good).unwrap().records.len(), 2);
        let mut rng = XorShift(12345);
        for _ in 0..2000 {
            let mut text = good.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(text.len());
                match rng.below(3) {
                    0 => text[at] = rng.next() as u8,
                    1 => {
                        text.remove(at);
                    }
                    _ => text.insert(at, b"{};: \n\r\t0\xff"[rng.below(10)]),
                }
            }
            let _ = parse("fuzz", &text);
        }
    }

    fn temp_file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("dhid-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn load_private_file() {
        let path = temp_file("private.conf", &record(""), 0o600);
        let config = load(&path).unwrap();
        assert!(!world_readable(&path));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.records.len(), 1);
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn load_readable_file_warns() {
        let path = temp_file("open.conf", &record(""), 0o644);
        let config = load(&path).unwrap();
        assert!(world_readable(&path));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].line, 0);
        let m = &config.warnings[0].message;
        // The file's name comes first in every message about it.
        assert!(m.contains("every user") && m.contains("0644"), "{m}");
    }

    #[test]
    fn load_names_the_file_in_errors() {
        let path = temp_file("bad.conf", "{\nHostID x\n", 0o600);
        let all = load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let shown: Vec<_> = all.iter().map(|e| e.to_string()).collect();
        let expected = format!("{}:2: HostID must be", path.display());
        assert!(shown.iter().any(|s| s.starts_with(&expected)), "{shown:?}");
    }

    #[test]
    fn load_missing_file() {
        let path = std::env::temp_dir().join("dhid-config-does-not-exist/dhid.conf");
        let all = load(&path).unwrap_err();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].line, all[0].file.clone()),
            (0, path.display().to_string())
        );
        let shown = all[0].to_string();
        assert!(shown.contains("No such file or directory"), "{shown}");
        assert!(!world_readable(&path));
    }

    #[test]
    fn load_directory() {
        let all = load(&std::env::temp_dir()).unwrap_err();
        assert_eq!(all.len(), 1);
        assert!(all[0].message.starts_with("cannot read"), "{:?}", all[0]);
    }
}
