//! Shared harness for the integration tests.
//!
//! Each test file says `mod common;` and uses the parts it needs:
//!
//! * [`free_udp_port`], [`wait_until`]: ports and bounded waiting;
//! * [`TempDir`]: a private directory, removed on drop;
//! * [`Dhisd`], [`DbHost`]: the real dhisd 5.3 on a free loopback port;
//!   [`require_dhisd!`] at the top of every test that needs it;
//! * [`Dhid`], [`Captured`]: the daemon under test in the foreground with
//!   its stderr captured line by line;
//! * [`HookProbe`]: a shell script to use as OnCmd/OffCmd that logs calls;
//! * [`qrc_keys`], [`conf_password`], [`conf_qrc`]: keys and dhid.conf text.
//!
//! Every process the harness starts carries a private environment tag, so
//! the harness can find and end exactly its own processes (and their
//! children, such as dhisd's log engine) by pid, never by name.

#![allow(dead_code)]

pub mod conf;
pub mod dhid;
pub mod dhisd;
pub mod hookprobe;
pub mod pids;
pub mod procs;
pub mod tmp;

// Each test file uses a part of these.
#[allow(unused_imports)]
pub use conf::{conf_password, conf_qrc, qrc_keys};
#[allow(unused_imports)]
pub use dhid::{Captured, Dhid};
#[allow(unused_imports)]
pub use dhisd::{DbHost, Dhisd, dhisd_available};
#[allow(unused_imports)]
pub use hookprobe::{HookCall, HookProbe};
#[allow(unused_imports)]
pub use pids::{FORBIDDEN_PORT, wait_until};
#[allow(unused_imports)]
pub use tmp::TempDir;

/// Set to `1` to let real-dhisd tests return early when dhisd is missing.
pub const SKIP_ENV: &str = "DHID_SKIP_REAL_DHISD";

/// A free UDP port for a test (see [`pids::free_udp_port`]); panics when
/// there is none.
pub fn free_udp_port() -> u16 {
    pids::free_udp_port().unwrap_or_else(|e| panic!("free_udp_port: {e}"))
}

/// The decision behind [`require_dhisd!`]: true when the real dhisd can be
/// run, false when it cannot and the skip variable is set; panics
/// otherwise, so that a real-dhisd test never passes without a dhisd.
pub fn dhisd_required() -> bool {
    if dhisd_available() {
        return true;
    }
    let why = dhisd::unavailable_reason();
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("note: real dhisd unavailable ({why}); test skipped ({SKIP_ENV}=1)");
        return false;
    }
    panic!(
        "this test needs the real dhisd 5.3, which is unavailable: {why}. \
         Install it (`apt-get install -y dhis-server`, run as root) or set \
         {SKIP_ENV}=1 to skip real-dhisd tests"
    );
}

/// First statement of every test that runs the real dhisd: fails the test
/// when dhisd cannot run, unless `DHID_SKIP_REAL_DHISD=1`, in which case it
/// prints a note and returns from the test.
#[macro_export]
macro_rules! require_dhisd {
    () => {
        if !$crate::common::dhisd_required() {
            return;
        }
    };
}
