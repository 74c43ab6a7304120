//! The pid file: written once start-up has succeeded, locked for the life
//! of the daemon so that a second dhid with the same file refuses to start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

fn describe(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!(
        "cannot {what} pid file {} (set with -P): {e}",
        path.display()
    )
}

impl PidFile {
    /// Lock and write `path`. Returns the pid file and what it held
    /// before, if anything (for one log line).
    pub fn create(path: &Path) -> Result<(PidFile, Option<Previous>), String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| describe(path, "open", e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let holder = read_pid(&mut file)
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default();
                return Err(format!(
                    "another dhid{holder} is running with pid file {} (set with -P)",
                    path.display()
                ));
            }
            Err((_, e)) => return Err(describe(path, "lock", e)),
        };

        let old = read_bytes(&mut lock).unwrap_or_default();
        let stale = previous(&old);
        // Written over the old text, then cut to length: emptying the file
        // first would free its block, which on a file system mounted with
        // `discard` waits for the disk (a quarter of a millisecond here).
        // Padded with newlines over a longer old text, so that a reader in
        // between (`kill $(cat dhid.pid)`) never sees a tail of old digits.
        let pid = format!("{}\n", std::process::id());
        let mut text = pid.clone().into_bytes();
        // (Up to one page: a pid file is a few bytes, whatever was there.)
        text.resize(text.len().max(old.len().min(4096)), b'\n');
        lock.rewind().map_err(|e| describe(path, "rewind", e))?;
        lock.write_all(&text)
            .map_err(|e| describe(path, "write", e))?;
        lock.set_len(pid.len() as u64)
            .map_err(|e| describe(path, "truncate", e))?;
        Ok((
            PidFile {
                path: path.to_path_buf(),
                _lock: lock,
            },
            stale,
        ))
    }

    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What a pid file held when dhid took it over. Nobody held its lock, so
/// no dhid of ours was using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// The pid of a process that is gone.
    Gone(i32),
    /// A live process that did not lock the file: not a dhid of this kind
    /// (an old C dhid, or a recycled pid).
    Unlocked(i32),
    /// Not a pid at all.
    Garbage,
}

impl std::fmt::Display for Previous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Previous::Gone(pid) => write!(f, "pid {pid} is gone"),
            Previous::Unlocked(pid) => write!(f, "pid {pid} runs but did not lock it"),
            Previous::Garbage => f.write_str("it did not hold a pid"),
        }
    }
}

fn previous(old: &[u8]) -> Option<Previous> {
    let text = std::str::from_utf8(old).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    let Some(pid) = parse_pid(text) else {
        return Some(Previous::Garbage);
    };
    if pid == std::process::id() as i32 {
        return None;
    }
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    Some(if alive {
        Previous::Unlocked(pid)
    } else {
        Previous::Gone(pid)
    })
}

fn read_pid(file: &mut File) -> Option<i32> {
    parse_pid(std::str::from_utf8(&read_bytes(file)?).ok()?)
}

fn read_bytes(file: &mut File) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    file.rewind().ok()?;
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse().ok().filter(|&p: &i32| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dhid-pidfile-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join("dhid.pid")
    }

    #[test]
    fn longer_old_text_is_replaced_whole() {
        let path = temp_path("long");
        fs::write(&path, "not a pid at all, and longer than one\n").unwrap();
        let (pidfile, stale) = PidFile::create(&path).unwrap();
        assert_eq!(stale, Some(Previous::Garbage));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        pidfile.remove();
        assert!(!path.exists());
        let _ = fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn a_gone_pid_is_reported() {
        let path = temp_path("gone");
        // Above the kernel's largest pid (4194304), so never alive.
        fs::write(&path, "99999999\n").unwrap();
        let (pidfile, stale) = PidFile::create(&path).unwrap();
        assert_eq!(stale, Some(Previous::Gone(99999999)));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        pidfile.remove();
        let _ = fs::remove_dir(path.parent().unwrap());
    }
}
