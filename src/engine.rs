//! All records of one dhid: routing of datagrams to records, the shared
//! serial counter, and one deadline heap, so that a wake-up costs work only
//! for the records whose time has come. No I/O here either.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;

use log::debug;

use crate::config::RecordConfig;
use crate::record::{Ctx, Event, OfflineReason, Policy, Record, Status, Time, Transmit};
use crate::wire;

/// Queue capacity kept after a burst has drained.
const QUEUE_KEPT: usize = 64;

pub struct Engine {
    records: Vec<Record>,
    /// (HostID, record) sorted: records with one HostID sit together, and a
    /// lookup is a binary search without a heap block per record.
    by_hostid: Vec<(u32, usize)>,
    ctx: Ctx,
    /// (deadline, record); an entry is current only if it equals
    /// `scheduled[record]`, stale ones are skipped when they come up.
    heap: BinaryHeap<Reverse<(Time, usize)>>,
    scheduled: Vec<Option<Time>>,
    /// Records whose OFFLINE_REQ may have taken a session they share with
    /// other records down; those are re-authenticated once it is sent.
    shared_offline: Vec<(u64, Ipv4Addr, u32)>,
    /// Records removed by a reload that still send OFFLINE_REQ copies.
    retired: Vec<Record>,
    policy: Policy,
    next_uid: u64,
}

/// How a new record table maps onto the old one (SIGHUP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// For each new record, the old record it continues, if any.
    pub kept: Vec<Option<usize>>,
    /// Old records that are gone.
    pub removed: Vec<usize>,
    /// For each new record, whether its password or key changed.
    pub auth_changed: Vec<bool>,
}

impl Engine {
    pub fn new(configs: &[RecordConfig], port: u16, seed: u64, policy: Policy, now: Time) -> Self {
        let records: Vec<Record> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Record::new(i, i as u64, c, &policy, now))
            .collect();
        let mut engine = Engine {
            scheduled: Vec::new(),
            next_uid: records.len() as u64,
            records,
            by_hostid: Vec::new(),
            ctx: Ctx::new(port, seed, policy),
            heap: BinaryHeap::new(),
            shared_offline: Vec::new(),
            retired: Vec::new(),
            policy,
        };
        engine.index();
        engine
    }

    /// Rebuild the HostID map and the deadline heap after the table changed.
    fn index(&mut self) {
        self.by_hostid = self.records.iter().map(|r| (r.hostid, r.index)).collect();
        self.by_hostid.sort_unstable();
        self.heap.clear();
        self.scheduled = vec![None; self.records.len()];
        for i in 0..self.records.len() {
            self.reschedule(i);
        }
    }

    /// Which records of a new configuration continue ours: the same
    /// HostID with the same servers in the same order.
    pub fn plan_reload(&self, new: &[RecordConfig]) -> ReloadPlan {
        let old = &self.records;
        let mut taken = vec![false; old.len()];
        let kept: Vec<Option<usize>> = new
            .iter()
            .map(|c| {
                let (_, i) = *self
                    .with_hostid(c.hostid)
                    .iter()
                    .find(|&&(_, i)| !taken[i] && old[i].same_as(c))?;
                taken[i] = true;
                Some(i)
            })
            .collect();
        let auth_changed = kept
            .iter()
            .zip(new)
            .map(|(k, c)| k.is_some_and(|i| !old[i].same_auth(&c.auth)))
            .collect();
        let removed = (0..old.len()).filter(|&i| !taken[i]).collect();
        ReloadPlan {
            kept,
            removed,
            auth_changed,
        }
    }

    /// First step of a reload: take the removed records offline. Their
    /// events still name the old table, so drain them before `apply`.
    pub fn retire(&mut self, now: Time, plan: &ReloadPlan) {
        for &i in &plan.removed {
            self.take_offline(now, i, OfflineReason::Removed);
        }
    }

    /// Second step of a reload: the new table.
    pub fn apply(&mut self, now: Time, configs: &[RecordConfig], plan: &ReloadPlan) {
        let mut old: Vec<Option<Record>> = std::mem::take(&mut self.records)
            .into_iter()
            .map(Some)
            .collect();
        for &i in &plan.removed {
            if let Some(mut r) = old[i].take()
                && r.has_resend()
            {
                r.retire();
                self.retired.push(r);
            }
        }
        for (k, config) in configs.iter().enumerate() {
            let record = match plan.kept[k].and_then(|i| old[i].take()) {
                Some(mut r) => {
                    r.update(k, config, plan.auth_changed[k], now, &mut self.ctx);
                    r
                }
                None => {
                    self.next_uid += 1;
                    Record::new(k, self.next_uid, config, &self.policy, now)
                }
            };
            self.records.push(record);
        }
        self.index();
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
        // Stale entries wait until their time comes; when they outnumber
        // the live ones, the heap is rebuilt from the live ones alone.
        if self.heap.len() > 2 * self.records.len() + 64 {
            let live = self.scheduled.iter().enumerate();
            let live = live.filter_map(|(i, at)| at.map(|at| Reverse((at, i))));
            self.heap = live.collect();
        }
    }

    /// The earliest deadline of any record.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        let retired = self.retired.iter().map(Record::deadline).min();
        while let Some(Reverse((at, i))) = self.heap.peek().copied() {
            if self.scheduled[i] == Some(at) {
                return Some(retired.map_or(at, |r| r.min(at)));
            }
            self.heap.pop();
        }
        retired
    }

    pub fn handle_timeout(&mut self, now: Time) {
        // Records whose last OFFLINE_REQ copy went out in this call; their
        // shared sessions are dealt with once, after all of them.
        let mut done = self.handle_retired(now);
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
            if had_resend && !self.records[i].has_resend() {
                done.push(self.records[i].uid);
            }
            self.reschedule(i);
        }
        self.after_offline_copies(&mut done);
    }

    /// Serve the retired records' deadlines; returns the uids whose last
    /// copy went out.
    fn handle_retired(&mut self, now: Time) -> Vec<u64> {
        let mut done = Vec::new();
        for r in &mut self.retired {
            if r.deadline() <= now {
                r.on_timeout(now, &mut self.ctx);
                if !r.has_resend() {
                    done.push(r.uid);
                }
            }
        }
        self.retired.retain(Record::has_resend);
        done
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
        let same = self.with_hostid(h.hostid);
        if same.is_empty() {
            debug!(
                "dropped {} from {src}: unknown HostID {}",
                msg.body.name(),
                h.hostid
            );
            return;
        }
        let records = &self.records;
        let found = same
            .iter()
            .find_map(|&(_, i)| records[i].match_server(src, h.rport).map(|s| (i, s)));
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

    /// The entries of the records with `hostid`, in table order.
    fn with_hostid(&self, hostid: u32) -> &[(u32, usize)] {
        let first = self.by_hostid.partition_point(|&(id, _)| id < hostid);
        let len = self.by_hostid[first..].partition_point(|&(id, _)| id == hostid);
        &self.by_hostid[first..first + len]
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
            self.shared_offline
                .push((self.records[i].uid, *dest.ip(), sid));
        }
        self.records[i].take_offline(now, reason, &mut self.ctx);
        self.reschedule(i);
    }

    /// True while OFFLINE_REQ copies are still to go out.
    pub fn sending_offline(&self) -> bool {
        self.records
            .iter()
            .chain(&self.retired)
            .any(Record::has_resend)
    }

    /// dhisd gives one session id to every host that logs in within the
    /// same second and takes offline whichever host holds the id named in
    /// an OFFLINE_REQ (PROTOCOL.md 8.2, 8.5). So once the last copy of the
    /// records `done` is out, every record of ours still online at that
    /// server with one of their session ids logs in again, to be online
    /// there for sure. One pass over the table for all of them: after USR2
    /// with ten thousand records that is the difference that matters.
    fn after_offline_copies(&mut self, done: &mut [u64]) {
        if done.is_empty() || self.shared_offline.is_empty() {
            return;
        }
        done.sort_unstable();
        let mut sessions = Vec::new();
        self.shared_offline.retain(|&(owner, ip, sid)| {
            let finished = done.binary_search(&owner).is_ok();
            if finished {
                sessions.push((ip, sid));
            }
            !finished
        });
        if sessions.is_empty() {
            return;
        }
        sessions.sort_unstable();
        for j in 0..self.records.len() {
            let Some((dest, sid)) = self.records[j].session() else {
                continue;
            };
            if sessions.binary_search(&(*dest.ip(), sid)).is_ok() {
                let id = self.records[j].hostid;
                debug!("[{id}] shares a session id just taken offline; logging in again");
                self.records[j].reauthenticate(&mut self.ctx);
                self.reschedule(j);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.ctx.transmits.pop_front();
        // A start-up burst of ten thousand leaves a big queue behind; keep
        // a small one, which steady state never outgrows.
        if t.is_none() && self.ctx.transmits.capacity() > QUEUE_KEPT {
            self.ctx.transmits.shrink_to(QUEUE_KEPT);
        }
        t
    }

    /// Give back a datagram the socket could not take; it goes first.
    pub fn unsend(&mut self, t: Transmit) {
        self.ctx.transmits.push_front(t);
    }

    pub fn has_transmits(&self) -> bool {
        !self.ctx.transmits.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.ctx.events.pop_front();
        if e.is_none() && self.ctx.events.capacity() > QUEUE_KEPT {
            self.ctx.events.shrink_to(QUEUE_KEPT);
        }
        e
    }
}
