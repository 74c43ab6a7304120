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
    /// Lock and write `path`. Returns the pid file and, if it held the pid
    /// of a dhid that is gone, that pid (for one log line).
    pub fn create(path: &Path) -> Result<(PidFile, Option<i32>), String> {
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

        let stale = read_pid(&mut lock).filter(|&p| p != std::process::id() as i32);
        lock.set_len(0).map_err(|e| describe(path, "truncate", e))?;
        lock.rewind().map_err(|e| describe(path, "rewind", e))?;
        writeln!(lock, "{}", std::process::id()).map_err(|e| describe(path, "write", e))?;
        lock.sync_data().map_err(|e| describe(path, "write", e))?;
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

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|&p: &i32| p > 0)
}
