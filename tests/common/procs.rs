//! Ending the harness's own processes, by pid.
//!
//! Every process the harness spawns gets [`TAG_VAR`] set to a value unique
//! to its handle (the handle's temporary directory); see `pids` for how
//! that mark finds them.

use std::time::Duration;

use nix::sys::signal::Signal;

pub use super::pids::is_alive;
use super::pids::{Mark, wait_until};

/// The environment variable that marks the harness's processes.
pub const TAG_VAR: &str = "DHID_TEST_INSTANCE";

pub const MARK: Mark = Mark(TAG_VAR);

const POLL: Duration = Duration::from_millis(10);

/// Waits until `pid` is gone or a zombie; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    wait_until(timeout, POLL, || !is_alive(pid))
}

/// Ends every live process tagged `tag`: SIGTERM, SIGKILL after `grace`.
/// Returns the pids still alive afterwards (normally none).
pub fn end_tagged(tag: &str, grace: Duration) -> Vec<i32> {
    let pids = MARK.pids(tag);
    if pids.is_empty() {
        return pids;
    }
    for &pid in &pids {
        MARK.signal(pid, tag, Signal::SIGTERM);
    }
    if wait_until(grace, POLL, || MARK.pids(tag).is_empty()) {
        return Vec::new();
    }
    // Bounded: a few rounds in case a dying parent had just forked.
    for _ in 0..3 {
        let left = MARK.pids(tag);
        if left.is_empty() {
            break;
        }
        for &pid in &left {
            MARK.signal(pid, tag, Signal::SIGKILL);
        }
        wait_until(Duration::from_secs(1), POLL, || MARK.pids(tag).is_empty());
    }
    MARK.pids(tag)
}
