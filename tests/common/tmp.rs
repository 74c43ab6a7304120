//! Private temporary directories, removed on drop (also when a test
//! panics). Set `DHID_KEEP_TMP=1` to keep them for a post-mortem.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under `std::env::temp_dir()`, unique per call; its name is
/// lower case (dhid lower-cases OnCmd paths) and shows the test's name.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new directory; `label` says what it is for.
    pub fn new(label: &str) -> TempDir {
        let base = std::env::temp_dir();
        let test = std::thread::current().name().unwrap_or("").to_string();
        let tail = format!("{}-{}", sanitize(label, 16), sanitize(&test, 32));
        for _ in 0..1000 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("dhid-test-{}-{n}-{tail}", std::process::id());
            let path = base.join(name);
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("TempDir: cannot create {}: {e}", path.display()),
            }
        }
        panic!("TempDir: no unused name under {}", base.display());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` in this directory (mode 0644).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        self.write_mode(name, contents, 0o644)
    }

    /// Writes `contents` to `name` with the given mode, atomically: a new
    /// file is written in full, closed, then renamed over `name`.
    pub fn write_mode(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.join(name);
        let tmp = self.join(&format!(".{name}.new"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
        f.write_all(contents.as_bytes())
            .and_then(|()| f.sync_all())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        drop(f);
        // The umask may have removed bits: set the mode asked for.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", tmp.display()));
        fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("DHID_KEEP_TMP").as_deref() == Ok("1") {
            eprintln!("note: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Lower case, `[a-z0-9_-]` only, the last `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.len() > max {
        out = out[out.len() - max..].to_string();
    }
    out
}
