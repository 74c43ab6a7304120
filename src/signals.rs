//! Signals become flags plus a byte on a pipe that wakes the poll loop;
//! the handlers do nothing else (the C dhid did all its work in them).

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Hup,
    Usr1,
    Usr2,
    Term,
    Int,
    Child,
}

const HANDLED: [(i32, Sig); 6] = [
    (SIGHUP, Sig::Hup),
    (SIGUSR1, Sig::Usr1),
    (SIGUSR2, Sig::Usr2),
    (SIGTERM, Sig::Term),
    (SIGINT, Sig::Int),
    (SIGCHLD, Sig::Child),
];

pub struct Signals {
    wake: UnixStream,
    flags: Vec<(Arc<AtomicBool>, Sig)>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let (wake, writer) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for (number, sig) in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(number, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(number, writer.try_clone()?)?;
            flags.push((flag, sig));
        }
        Ok(Signals { wake, flags })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The signals that arrived since the last call, in a fixed order.
    pub fn take(&mut self) -> Vec<Sig> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(flag, _)| flag.swap(false, Ordering::Relaxed))
            .map(|(_, sig)| *sig)
            .collect()
    }
}
