//! Log lines to syslog (ident `dhid`, facility daemon) or, in the
//! foreground, to stderr. Identical warnings and errors in a row are
//! logged once and then summarised, so a dead network does not fill a disk.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

enum Sink {
    Stderr { timestamps: bool },
    Syslog(Option<Syslog>),
}

struct Repeat {
    last: String,
    count: u64,
}

impl Repeat {
    /// Say how often the last line came again, if it did.
    fn summarise(&mut self, sink: &mut Sink) {
        if self.count > 0 {
            let summary = format!("last message repeated {} times", self.count);
            sink.write(Level::Info, &summary);
            self.count = 0;
        }
    }
}

pub struct Logger {
    sink: Mutex<(Sink, Repeat)>,
    level: LevelFilter,
}

fn formatter() -> Formatter3164 {
    Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "dhid".into(),
        pid: std::process::id(),
    }
}

/// Whether a syslog socket is there to log to.
pub fn syslog_available() -> bool {
    syslog::unix(formatter()).is_ok()
}

pub fn level_for(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Log to stderr: with timestamps, or under systemd (JOURNAL_STREAM set)
/// with the journal's priority prefixes instead.
pub fn init_stderr(level: LevelFilter) {
    let timestamps = std::env::var_os("JOURNAL_STREAM").is_none();
    install(Sink::Stderr { timestamps }, level);
}

/// Log to syslog. Call after fork: the pid in each line is the daemon's.
pub fn init_syslog(level: LevelFilter) {
    install(Sink::Syslog(syslog::unix(formatter()).ok()), level);
}

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

fn install(sink: Sink, level: LevelFilter) {
    let repeat = Repeat {
        last: String::new(),
        count: 0,
    };
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        sink: Mutex::new((sink, repeat)),
        level,
    }));
    // A second call (tests) keeps the first logger; that is harmless.
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
        let _ = LOGGER.set(logger);
    }
}

/// Connect to syslog again, after fork: each line carries the pid, and
/// the daemon's is not the launcher's.
pub fn reopen_syslog() {
    if let Some(logger) = LOGGER.get()
        && let Ok(mut guard) = logger.sink.lock()
        && let Sink::Syslog(conn) = &mut guard.0
    {
        *conn = syslog::unix(formatter()).ok();
    }
}

fn stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Sink {
    fn write(&mut self, level: Level, text: &str) {
        match self {
            Sink::Stderr { timestamps } => {
                let tag = match level {
                    Level::Error => "error: ",
                    Level::Warn => "warning: ",
                    _ => "",
                };
                // One write per line: stderr is unbuffered, and a line in
                // pieces could interleave with another writer's.
                let line = if *timestamps {
                    format!("{} dhid: {tag}{text}\n", stamp())
                } else {
                    // The journal stamps and names each line itself, and
                    // reads the priority from a "<N>" prefix.
                    let priority = match level {
                        Level::Error => 3,
                        Level::Warn => 4,
                        Level::Info => 6,
                        Level::Debug | Level::Trace => 7,
                    };
                    format!("<{priority}>{tag}{text}\n")
                };
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::Syslog(logger) => {
                // syslogd may have restarted; reconnect once and retry.
                if logger
                    .as_mut()
                    .is_none_or(|l| send(l, level, text).is_err())
                {
                    *logger = syslog::unix(formatter()).ok();
                    if let Some(l) = logger {
                        let _ = send(l, level, text);
                    }
                }
            }
        }
    }
}

fn send(l: &mut Syslog, level: Level, text: &str) -> syslog::Result<()> {
    match level {
        Level::Error => l.err(text),
        Level::Warn => l.warning(text),
        Level::Info => l.info(text),
        Level::Debug | Level::Trace => l.debug(text),
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let Ok(mut guard) = self.sink.lock() else {
            return;
        };
        let (sink, repeat) = &mut *guard;

        if record.level() <= Level::Warn && text == repeat.last {
            repeat.count += 1;
            return;
        }
        repeat.summarise(sink);
        repeat.last = if record.level() <= Level::Warn {
            text.clone()
        } else {
            String::new()
        };
        sink.write(record.level(), &text);
    }

    fn flush(&self) {
        if let Ok(mut guard) = self.sink.lock() {
            let (sink, repeat) = &mut *guard;
            repeat.summarise(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_791), (2026, 12, 4));
    }
}
