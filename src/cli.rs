//! The command line, read as getopt reads it: short flags may share one
//! word (`-Fv`), a short option's value may follow in the same word
//! (`-p58800`) or the next one, and `--` ends the options.
//!
//! Hand-written rather than built with an argument-parser crate: building
//! such a parser at every start cost about 80 µs of the 2 ms dhid has to
//! come online in, and these few options need none of its power.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::config::DEFAULT_PORT;

pub const DEFAULT_CONFIG: &str = "/etc/dhid.conf";
pub const DEFAULT_PIDFILE: &str = "/var/run/dhid.pid";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub port: u16,
    pub pidfile: PathBuf,
    pub foreground: bool,
    pub verbose: u8,
    pub check: bool,
    pub genkeys: bool,
    pub version: bool,
    pub help: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: PathBuf::from(DEFAULT_CONFIG),
            port: DEFAULT_PORT,
            pidfile: PathBuf::from(DEFAULT_PIDFILE),
            foreground: false,
            verbose: 0,
            check: false,
            genkeys: false,
            version: false,
            help: false,
        }
    }
}

/// A command line dhid cannot run with; shown with the usage line, and
/// dhid exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// `-l`: the old manual page documented it for the config file.
    OldConfigOption,
    Unknown(String),
    MissingValue(char),
    /// `-f ""` or `-P ""`: no file name.
    EmptyValue(char),
    BadPort(String),
    Unexpected(String),
    /// A long flag given a value (`--check=yes`); none takes one.
    ValueNotAllowed(String),
    /// `-t` and `--genkeys` together: only one of them could run.
    CheckAndGenkeys,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::OldConfigOption => {
                write!(
                    f,
                    "-l is not an option; give the configuration file with -f FILE"
                )
            }
            UsageError::Unknown(opt) => write!(f, "unknown option {opt}"),
            UsageError::MissingValue(opt) => write!(f, "option -{opt} needs a value"),
            UsageError::EmptyValue(opt) => write!(f, "option -{opt} needs a file name, not \"\""),
            UsageError::BadPort(value) => {
                write!(f, "-p {value:?}: the port must be a number from 1 to 65535")
            }
            UsageError::Unexpected(word) => write!(f, "unexpected argument {word:?}"),
            UsageError::ValueNotAllowed(opt) => write!(f, "option --{opt} takes no value"),
            UsageError::CheckAndGenkeys => f.write_str("-t and --genkeys cannot be combined"),
        }
    }
}

pub const USAGE: &str = "Usage: dhid [-F] [-v] [-t] [-f FILE] [-p PORT] [-P FILE]
       dhid --genkeys | -h | -V";

/// The text of `-h`. tests/manpages.rs reads the flags from its
/// "Options:" part and checks that dhid(8) documents exactly those.
pub fn help() -> String {
    format!(
        "DHIS R5 client: keeps this host's dynamic address registered with a DHIS server

{USAGE}

Options:
  -f FILE           Configuration file [default: {DEFAULT_CONFIG}]
  -p PORT           UDP port to listen on and send from (the server answers to it) \
[default: {DEFAULT_PORT}]
  -P FILE           Pid file [default: {DEFAULT_PIDFILE}]
  -F, --foreground  Stay in the foreground and log to stderr
  -v...             Debug log lines; twice: every datagram too
  -t, --check       Check the configuration file and exit
      --genkeys     Print a new QRC key pair for dhid.conf and the server's dhis.db
  -V, --version     Print the version
  -h, --help        Print help
"
    )
}

/// Reads the arguments after the program name. Values are taken as bytes,
/// so a file name need not be UTF-8.
pub fn parse<I>(args: I) -> Result<Options, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut options = Options::default();
    let mut args = args.into_iter();

    while let Some(word) = args.next() {
        let bytes = word.as_bytes();
        if bytes == b"--" {
            if let Some(extra) = args.next() {
                return Err(UsageError::Unexpected(lossy(&extra)));
            }
            break;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            long_option(&mut options, &String::from_utf8_lossy(long))?;
            continue;
        }
        match bytes.strip_prefix(b"-") {
            Some(flags) if !flags.is_empty() => short_options(&mut options, flags, &mut args)?,
            _ => return Err(UsageError::Unexpected(lossy(&word))),
        }
    }
    if options.check && options.genkeys {
        return Err(UsageError::CheckAndGenkeys);
    }
    Ok(options)
}

fn lossy(word: &OsStr) -> String {
    word.to_string_lossy().into_owned()
}

fn long_option(options: &mut Options, long: &str) -> Result<(), UsageError> {
    let (name, value) = match long.split_once('=') {
        Some((name, _)) => (name, true),
        None => (long, false),
    };
    let flag = match name {
        "foreground" => &mut options.foreground,
        "check" => &mut options.check,
        "genkeys" => &mut options.genkeys,
        "version" => &mut options.version,
        "help" => &mut options.help,
        _ => return Err(UsageError::Unknown(format!("--{name}"))),
    };
    if value {
        return Err(UsageError::ValueNotAllowed(name.to_string()));
    }
    *flag = true;
    Ok(())
}

/// One word of short options: flags, and at most one option with a value,
/// which takes the rest of the word or else the next word.
fn short_options(
    options: &mut Options,
    flags: &[u8],
    rest: &mut impl Iterator<Item = OsString>,
) -> Result<(), UsageError> {
    for (at, &flag) in flags.iter().enumerate() {
        match flag {
            b'F' => options.foreground = true,
            b'v' => options.verbose = options.verbose.saturating_add(1),
            b't' => options.check = true,
            b'V' => options.version = true,
            b'h' => options.help = true,
            b'l' => return Err(UsageError::OldConfigOption),
            b'f' | b'p' | b'P' => {
                let attached = &flags[at + 1..];
                let value = if attached.is_empty() {
                    rest.next()
                        .ok_or(UsageError::MissingValue(char::from(flag)))?
                } else {
                    OsStr::from_bytes(attached).to_os_string()
                };
                return set_value(options, flag, value);
            }
            _ => {
                let other = String::from_utf8_lossy(&flags[at..]);
                let other = other.chars().next().unwrap_or('?');
                return Err(UsageError::Unknown(format!("-{other}")));
            }
        }
    }
    Ok(())
}

fn set_value(options: &mut Options, flag: u8, value: OsString) -> Result<(), UsageError> {
    match flag {
        b'f' | b'P' if value.is_empty() => return Err(UsageError::EmptyValue(char::from(flag))),
        b'f' => options.config = PathBuf::from(value),
        b'P' => options.pidfile = PathBuf::from(value),
        _ => {
            // Port 0 would let the kernel pick one, but the server answers
            // to the port our datagrams name, so it must be known. Digits
            // only: no sign, no blanks.
            let text = value
                .to_str()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            options.port = text
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|&p| p != 0)
                .ok_or_else(|| UsageError::BadPort(lossy(&value)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Options, UsageError> {
        parse(words.iter().map(OsString::from))
    }

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(parse_words(&[]), Ok(Options::default()));
    }

    #[test]
    fn values_attached_or_separate() {
        let o = parse_words(&["-f", "/tmp/a.conf", "-p58801", "-P/tmp/p"]).unwrap();
        assert_eq!(o.config, PathBuf::from("/tmp/a.conf"));
        assert_eq!(o.port, 58801);
        assert_eq!(o.pidfile, PathBuf::from("/tmp/p"));
    }

    #[test]
    fn flags_share_a_word_and_a_value_ends_it() {
        let o = parse_words(&["-Fvvtf", "x.conf"]).unwrap();
        assert!(o.foreground && o.check);
        assert_eq!(o.verbose, 2);
        assert_eq!(o.config, PathBuf::from("x.conf"));

        let o = parse_words(&["-Fpv"]);
        assert_eq!(o, Err(UsageError::BadPort("v".into())));
    }

    #[test]
    fn long_flags() {
        let o = parse_words(&["--foreground", "--check", "--version"]).unwrap();
        assert!(o.foreground && o.check && o.version);
        assert!(parse_words(&["--genkeys"]).unwrap().genkeys);
        assert!(parse_words(&["--help"]).unwrap().help);
        assert_eq!(
            parse_words(&["--check=yes"]),
            Err(UsageError::ValueNotAllowed("check".into()))
        );
        assert_eq!(
            parse_words(&["--conf"]),
            Err(UsageError::Unknown("--conf".into()))
        );
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        // As getopt does: the word after -f is its value, whatever it is.
        let o = parse_words(&["-f", "-weird.conf"]).unwrap();
        assert_eq!(o.config, PathBuf::from("-weird.conf"));
        let o = parse_words(&["-f", "-l"]).unwrap();
        assert_eq!(o.config, PathBuf::from("-l"));
    }

    #[test]
    fn file_names_need_not_be_utf8() {
        let name = OsStr::from_bytes(b"/tmp/d\xe9j\xe0.conf");
        let o = parse([OsString::from("-f"), name.to_os_string()]).unwrap();
        assert_eq!(o.config.as_os_str(), name);
        let mut attached = b"-P".to_vec();
        attached.extend_from_slice(b"/run/\xff");
        let o = parse([OsString::from(OsStr::from_bytes(&attached))]).unwrap();
        assert_eq!(o.pidfile.as_os_str().as_bytes(), b"/run/\xff");
    }

    #[test]
    fn bad_ports() {
        for bad in ["0", "70000", "-5", "", "7oo0", " 1", "+1"] {
            assert_eq!(
                parse_words(&["-p", bad]),
                Err(UsageError::BadPort(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(parse_words(&["-p", "65535"]).unwrap().port, 65535);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_words(&["-l", "/etc/dhid.conf"]),
            Err(UsageError::OldConfigOption)
        );
        assert_eq!(parse_words(&["-Fl"]), Err(UsageError::OldConfigOption));
        assert_eq!(parse_words(&["-x"]), Err(UsageError::Unknown("-x".into())));
        assert_eq!(parse_words(&["-f"]), Err(UsageError::MissingValue('f')));
        assert_eq!(parse_words(&["-f", ""]), Err(UsageError::EmptyValue('f')));
        assert_eq!(parse_words(&["-P", ""]), Err(UsageError::EmptyValue('P')));
        assert_eq!(
            parse_words(&["conf"]),
            Err(UsageError::Unexpected("conf".into()))
        );
        assert_eq!(parse_words(&["-"]), Err(UsageError::Unexpected("-".into())));
        assert_eq!(
            parse_words(&["--", "x"]),
            Err(UsageError::Unexpected("x".into()))
        );
        assert_eq!(parse_words(&["-F", "--"]).map(|o| o.foreground), Ok(true));
        assert_eq!(
            parse_words(&["-t", "--genkeys"]),
            Err(UsageError::CheckAndGenkeys)
        );
    }
}
