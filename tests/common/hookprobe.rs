//! A shell script to configure as OnCmd/OffCmd; each call appends the
//! line `"$0 $*"` to a log file. dhid runs `PROGRAM HOSTID ADDR REST`, so
//! with `OnCmd /dir/probe.sh on` a call logs `/dir/probe.sh 1000
//! 127.0.0.1 on`: the configured word after the path tags the event.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tmp::TempDir;
use super::wait_until;

/// One logged call, split into words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookCall {
    /// `$0`: the script's path.
    pub script: String,
    /// `$1`: the hostid as dhid passed it.
    pub hostid: String,
    /// `$2`: the address (`0.0.0.0` before any AUTH_ACK).
    pub addr: String,
    /// `$3...`: the configured words; the first is the event tag.
    pub args: Vec<String>,
}

impl HookCall {
    /// The event tag (first configured word), or "".
    pub fn tag(&self) -> &str {
        self.args.first().map_or("", String::as_str)
    }
}

/// The probe script and its log, in a private directory.
pub struct HookProbe {
    script: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl HookProbe {
    pub fn new() -> HookProbe {
        let dir = TempDir::new("hook");
        let log = dir.join("hook.log");
        let text = dir.path().display().to_string();
        // dhid lower-cases OnCmd lines and the shell splits them on blanks.
        assert!(
            text == text.to_lowercase()
                && !text.contains(|c: char| c.is_whitespace() || "'\"\\$`;".contains(c)),
            "HookProbe: the temporary directory {text:?} must be lower case, without blanks \
             or shell quoting characters (set TMPDIR to such a directory)"
        );
        let body = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$0 $*\" >> '{}'\n",
            log.display()
        );
        let script = dir.write_mode("probe.sh", &body, 0o755);
        HookProbe { script, log, dir }
    }

    pub fn script(&self) -> &Path {
        &self.script
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `SCRIPT TAG`: the value of an OnCmd/OffCmd line.
    pub fn cmd(&self, tag: &str) -> String {
        format!("{} {tag}", self.script.display())
    }

    /// `OnCmd SCRIPT TAG`.
    pub fn on_cmd(&self, tag: &str) -> String {
        format!("OnCmd {}", self.cmd(tag))
    }

    /// `OffCmd SCRIPT TAG`.
    pub fn off_cmd(&self, tag: &str) -> String {
        format!("OffCmd {}", self.cmd(tag))
    }

    /// Every logged line so far, oldest first.
    pub fn read_hook_log(&self) -> Vec<String> {
        match fs::read(&self.log) {
            Ok(b) => String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every logged call so far, parsed.
    pub fn calls(&self) -> Vec<HookCall> {
        self.read_hook_log()
            .iter()
            .filter_map(|l| parse_call(l))
            .collect()
    }

    /// Calls whose event tag is `tag`.
    pub fn count(&self, tag: &str) -> usize {
        self.calls().iter().filter(|c| c.tag() == tag).count()
    }

    /// Waits until at least `n` calls have the event tag `tag`.
    pub fn wait_count(&self, tag: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || self.count(tag) >= n)
    }

    /// Forgets the calls logged so far.
    pub fn clear(&self) {
        let _ = fs::remove_file(&self.log);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for HookProbe {
    fn default() -> Self {
        HookProbe::new()
    }
}

fn parse_call(line: &str) -> Option<HookCall> {
    let mut w = line.split_whitespace().map(str::to_string);
    Some(HookCall {
        script: w.next()?,
        hostid: w.next()?,
        addr: w.next()?,
        args: w.collect(),
    })
}
