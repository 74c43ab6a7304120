//! Name resolution off the poll loop: a lookup may take seconds when the
//! network is down, and no record may wait for another's name.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;

/// Who waits for a name: (record, server index).
pub type Waiter = (usize, usize);

pub struct Resolver {
    wake: UnixStream,
    waker: UnixStream,
    answers_tx: Sender<(String, Vec<Ipv4Addr>)>,
    answers: Receiver<(String, Vec<Ipv4Addr>)>,
    /// Names being looked up, with everyone waiting for each (a set: ten
    /// thousand records may wait for one name, and ask again on retries).
    pending: HashMap<String, HashSet<Waiter>>,
}

/// The IPv4 addresses of `host`, in the resolver's order, without
/// duplicates. DHIS is IPv4 only.
pub fn lookup(host: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    if let Ok(addrs) = (host, 0).to_socket_addrs() {
        for a in addrs {
            if let IpAddr::V4(v4) = a.ip()
                && !out.contains(&v4)
            {
                out.push(v4);
            }
        }
    }
    out
}

impl Resolver {
    pub fn new() -> io::Result<Resolver> {
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let (answers_tx, answers) = channel();
        Ok(Resolver {
            wake,
            waker,
            answers_tx,
            answers,
            pending: HashMap::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Ask for `host`; a lookup already running for it is shared.
    pub fn request(&mut self, host: &str, waiter: Waiter) -> io::Result<()> {
        if let Some(waiters) = self.pending.get_mut(host) {
            waiters.insert(waiter);
            return Ok(());
        }
        let tx = self.answers_tx.clone();
        let mut waker = self.waker.try_clone()?;
        let name = host.to_string();
        thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                let addrs = lookup(&name);
                if tx.send((name, addrs)).is_ok() {
                    let _ = waker.write_all(&[1]);
                }
            })?;
        self.pending
            .insert(host.to_string(), HashSet::from([waiter]));
        Ok(())
    }

    /// Finished lookups: each waiter with the addresses (empty: not yet).
    pub fn answers(&mut self) -> Vec<(Waiter, Vec<Ipv4Addr>)> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        while let Ok((name, addrs)) = self.answers.try_recv() {
            for waiter in self.pending.remove(&name).unwrap_or_default() {
                out.push((waiter, addrs.clone()));
            }
        }
        out
    }
}
