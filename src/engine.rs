//! All records of one dhid: routing of datagrams to records, the shared
//! serial counter, and one deadline heap, so that a wake-up costs work only
//! for the records whose time has come. No I/O here either.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;

use log::debug;

use crate::config::RecordConfig;
use crate::record::{Ctx, Event, OfflineReason, Policy, Record, Status, Time, Transmit};
use crate::wire;

pub struct Engine {
    records: Vec<Record>,
    by_hostid: HashMap<u32, Vec<usize>>,
    ctx: Ctx,
    /// (deadline, record); an entry is current only if it equals
    /// `scheduled[record]`, stale ones are skipped when they come up.
    heap: BinaryHeap<Reverse<(Time, usize)>>,
    scheduled: Vec<Option<Time>>,
    /// Records whose OFFLINE_REQ may have taken a session they share with
    /// other records down; those are re-authenticated once it is sent.
    shared_offline: Vec<(usize, Ipv4Addr, u32)>,
}

impl Engine {
    pub fn new(configs: &[RecordConfig], port: u16, seed: u64, policy: Policy, now: Time) -> Self {
        let records: Vec<Record> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Record::new(i, c, &policy, now))
            .collect();
        let mut by_hostid: HashMap<u32, Vec<usize>> = HashMap::new();
        for r in &records {
            by_hostid.entry(r.hostid).or_default().push(r.index);
        }
        let mut engine = Engine {
            scheduled: vec![None; records.len()],
            records,
            by_hostid,
            ctx: Ctx::new(port, seed, policy),
            heap: BinaryHeap::new(),
            shared_offline: Vec::new(),
        };
        for i in 0..engine.records.len() {
            engine.reschedule(i);
        }
        engine
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn status(&self, record: usize) -> Status {
        self.records[record].status()
    }

    fn reschedule(&mut self, i: usize) {
        let deadline = self.records[i].deadline();
        if self.scheduled[i] != Some(deadline) {
            self.scheduled[i] = Some(deadline);
            self.heap.push(Reverse((deadline, i)));
        }
    }

    /// The earliest deadline of any record.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        while let Some(Reverse((at, i))) = self.heap.peek().copied() {
            if self.scheduled[i] == Some(at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(Reverse((at, i))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.scheduled[i] != Some(at) {
                continue;
            }
            self.scheduled[i] = None;
            let had_resend = self.records[i].has_resend();
            self.records[i].on_timeout(now, &mut self.ctx);
            self.after_offline_copies(i, had_resend);
            self.reschedule(i);
        }
    }

    pub fn handle_datagram(&mut self, now: Time, src: Ipv4Addr, data: &[u8]) {
        let msg = match wire::decode(data) {
            Ok(msg) => msg,
            Err(e) => {
                debug!("dropped datagram from {src}: {e}");
                return;
            }
        };
        let h = msg.header;
        let Some(candidates) = self.by_hostid.get(&h.hostid) else {
            debug!(
                "dropped {} from {src}: unknown HostID {}",
                msg.body.name(),
                h.hostid
            );
            return;
        };
        let found = candidates
            .iter()
            .find_map(|&i| self.records[i].match_server(src, h.rport).map(|s| (i, s)));
        let Some((i, server)) = found else {
            debug!(
                "[{}] dropped {} from {src} rport {}: not one of the record's servers",
                h.hostid,
                msg.body.name(),
                h.rport
            );
            return;
        };
        self.records[i].on_message(now, server, src, &msg, &mut self.ctx);
        self.reschedule(i);
    }

    pub fn handle_resolved(&mut self, record: usize, server: usize, addrs: Vec<Ipv4Addr>) {
        if let Some(r) = self.records.get_mut(record) {
            r.on_resolved(server, addrs, &mut self.ctx);
            self.reschedule(record);
        }
    }

    /// USR2 (and TERM, INT): OFFLINE_REQ for every online record, then a
    /// whole period before polling again.
    pub fn take_all_offline(&mut self, now: Time, reason: OfflineReason) {
        for i in 0..self.records.len() {
            self.take_offline(now, i, reason);
        }
    }

    pub fn take_offline(&mut self, now: Time, i: usize, reason: OfflineReason) {
        if let Some((dest, sid)) = self.records[i].session() {
            self.shared_offline.push((i, *dest.ip(), sid));
        }
        self.records[i].take_offline(now, reason, &mut self.ctx);
        self.reschedule(i);
    }

    /// True while OFFLINE_REQ copies are still to go out.
    pub fn sending_offline(&self) -> bool {
        self.records.iter().any(Record::has_resend)
    }

    /// dhisd gives one session id to every host that logs in within the
    /// same second and takes offline whichever host holds the id named in
    /// an OFFLINE_REQ (PROTOCOL.md 8.2, 8.5). So once record `i`'s last
    /// copy is out, every record of ours still online at that server with
    /// the same session id logs in again, to be online there for sure.
    fn after_offline_copies(&mut self, i: usize, had_resend: bool) {
        if !had_resend || self.records[i].has_resend() {
            return;
        }
        let (done, rest): (Vec<_>, Vec<_>) = self
            .shared_offline
            .drain(..)
            .partition(|&(owner, _, _)| owner == i);
        self.shared_offline = rest;
        for (_, ip, sid) in done {
            for j in 0..self.records.len() {
                let Some((dest, s)) = self.records[j].session() else {
                    continue;
                };
                if *dest.ip() == ip && s == sid {
                    let id = self.records[j].hostid;
                    debug!("[{id}] shares a session id just taken offline; logging in again");
                    self.records[j].reauthenticate(&mut self.ctx);
                    self.reschedule(j);
                }
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ctx.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.ctx.events.pop_front()
    }
}
