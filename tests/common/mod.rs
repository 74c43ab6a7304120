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
pub mod procs;
pub mod tmp;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
pub use tmp::TempDir;

/// The port an installed dhisd may hold; no test may touch it.
pub const FORBIDDEN_PORT: u16 = 58800;

/// Set to `1` to let real-dhisd tests return early when dhisd is missing.
pub const SKIP_ENV: &str = "DHID_SKIP_REAL_DHISD";

/// Ports already handed out by this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port on 127.0.0.1 chosen by the OS, free at the time of the call,
/// never [`FORBIDDEN_PORT`] and never handed out before by this process.
///
/// The port is also checked free on the wildcard address, since both
/// dhisd and dhid bind `0.0.0.0`.
pub fn free_udp_port() -> u16 {
    const ATTEMPTS: usize = 500;
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = guard.get_or_insert_with(HashSet::new);
    for _ in 0..ATTEMPTS {
        let port = match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(s) => match s.local_addr() {
                Ok(a) => a.port(),
                Err(_) => continue,
            },
            Err(e) => panic!("free_udp_port: cannot bind 127.0.0.1:0: {e}"),
        };
        if port == FORBIDDEN_PORT || handed.contains(&port) {
            continue;
        }
        let wildcard = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        if UdpSocket::bind(wildcard).is_err() {
            continue;
        }
        handed.insert(port);
        return port;
    }
    panic!("free_udp_port: no new free port after {ATTEMPTS} attempts");
}

/// Calls `cond` every `poll` until it returns true or `timeout` has passed;
/// returns its last answer. Bounded in time and in the number of calls.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let poll = poll.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    let max_calls = (timeout.as_millis() / poll.as_millis()).saturating_add(2);
    let mut calls = 0u128;
    loop {
        if cond() {
            return true;
        }
        calls += 1;
        let now = Instant::now();
        if now >= deadline || calls >= max_calls {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
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
