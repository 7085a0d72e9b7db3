//! The ordered store writer: task slot writes, recovery records and events, in the order the
//! controller emitted them (two reports of one epoch land in order), batched.
//!
//! Whatever queued while the previous batch was written goes in the next one: its writes in
//! atomic batches of up to [`MAX_BATCH`] that touch each key once, its events in one append. A batch that does not apply as a whole (one epoch-checked write lost) is
//! written again one write at a time, so each write gets its own outcome. The outcome of
//! every epoch-checked slot write goes back to the controller as [`Input::Persisted`].

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warden_core::controller::{Event, Input, Write, WriteId, WriteOutcome};
use warden_store::{BatchOutcome, NewEvent, Store, TaskRecord, WriteOp};

use super::Job;
use crate::clock::{Clock, unix_now_ms};

/// Most writes in one atomic batch (well under etcd's default of 128 operations per
/// transaction).
pub(super) const MAX_BATCH: usize = 50;

/// Most events held for the store while it is slow or unreachable; beyond, the oldest are
/// dropped (and counted in a warning), so an etcd outage cannot run the server out of memory.
/// Writes are never dropped.
const MAX_QUEUED_EVENTS: usize = 100_000;

/// One item for the writer.
#[derive(Debug)]
pub(super) enum Queued {
    Write(Write),
    Event(NewEvent),
}

/// An event as the store keeps it.
pub(super) fn new_event(e: &Event) -> NewEvent {
    NewEvent {
        unix_ms: Clock::unix_ms(e.at),
        kind: e.kind.to_string(),
        agent: e.agent.as_ref().map(ToString::to_string),
        task: e.task.as_ref().map(ToString::to_string),
        message: e.message.clone(),
        data: match &e.transition {
            Some((from, to, cause)) => serde_json::json!({
                "from": from.as_str(), "to": to.as_str(), "cause": cause,
            }),
            None => serde_json::Value::Null,
        },
    }
}

/// Write what is queued until `cancel` fires, then what is left.
pub(super) async fn run(
    store: Arc<dyn Store>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    feedback: mpsc::UnboundedSender<Job>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            q = queued.recv() => q,
            () = cancel.cancelled() => None,
        };
        let mut items: Vec<Queued> = first.into_iter().collect();
        while let Ok(q) = queued.try_recv() {
            items.push(q);
        }
        if items.is_empty() {
            return; // cancelled (or every sender gone) with nothing left
        }
        drop_oldest_events(&mut items);
        let store = store.clone();
        match tokio::task::spawn_blocking(move || write_all(store.as_ref(), items)).await {
            Ok(outcomes) => {
                for (write, outcome) in outcomes {
                    let _ = feedback.send(Job::Input(Input::Persisted { write, outcome }));
                }
            }
            Err(e) => warn!(error = %e, "store writer panicked"),
        }
        if cancel.is_cancelled() && queued.is_empty() {
            return;
        }
    }
}

fn drop_oldest_events(items: &mut Vec<Queued>) {
    let events = items
        .iter()
        .filter(|q| matches!(q, Queued::Event(_)))
        .count();
    if events <= MAX_QUEUED_EVENTS {
        return;
    }
    let mut dropped = events - MAX_QUEUED_EVENTS;
    let total = dropped;
    items.retain(|q| match q {
        Queued::Event(_) if dropped > 0 => {
            dropped -= 1;
            false
        }
        _ => true,
    });
    warn!(
        dropped = total,
        "the store is behind: oldest events dropped"
    );
}

/// Write `items`: the writes in the order they were queued (two reports of one epoch land in
/// order), in atomic batches, then the events in the order they were queued, in one append.
/// Writes and events are ordered each among themselves, not with each other: an event says
/// what happened, it is no condition of a write, and batching them apart keeps a busy
/// controller (a report and its event alternate) at a few commits per drain instead of one per
/// item. Returns the outcomes of the epoch-checked slot writes.
fn write_all(store: &dyn Store, items: Vec<Queued>) -> Vec<(WriteId, WriteOutcome)> {
    let mut outcomes = Vec::new();
    let mut events = Vec::new();
    let mut ops = Vec::new();
    for item in items {
        match item {
            Queued::Event(e) => events.push(e),
            Queued::Write(w) => ops.push(to_ops(w)),
        }
    }
    apply_ops(store, ops, &mut outcomes);
    append_events(store, events);
    outcomes
}

fn append_events(store: &dyn Store, events: Vec<NewEvent>) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = store.append_events(&events) {
        warn!(error = %e, count = events.len(), "persist events");
    }
}

/// A write as store operations committed together, with the id its outcome is reported under
/// (slot and release writes).
fn to_ops(w: Write) -> (Option<WriteId>, Vec<WriteOp>) {
    if let Write::Release { id, spec, releases } = w {
        let mut ops = Vec::with_capacity(2);
        if let Some(spec) = spec {
            ops.push(WriteOp::PutJob(*spec));
        }
        ops.push(WriteOp::PutReleases(*releases));
        return (Some(id), ops);
    }
    let (id, op) = to_op(w);
    (id, vec![op])
}

/// A write as a store operation, with the id its outcome is reported under (slot writes).
fn to_op(w: Write) -> (Option<WriteId>, WriteOp) {
    match w {
        Write::Release { .. } => unreachable!("release writes are two operations: to_ops"),
        Write::Slot {
            id,
            expected,
            task,
            record,
        } => (
            Some(id),
            WriteOp::CasTask {
                expected,
                record: TaskRecord {
                    task,
                    epoch: record.epoch,
                    agent: record.agent,
                    state: record.state,
                    failures: record.failures,
                    updated_unix_ms: unix_now_ms(),
                    replica: record.replica,
                    version: record.version,
                },
            },
        ),
        Write::SlotState {
            task,
            epoch,
            state,
            failures,
        } => (
            None,
            WriteOp::PutTaskState {
                task,
                epoch,
                state,
                failures,
                updated_unix_ms: unix_now_ms(),
            },
        ),
        Write::Recovery(record) => (
            None,
            WriteOp::UpsertRecovery {
                record,
                unix_ms: unix_now_ms(),
            },
        ),
    }
}

/// The key an operation writes (a batch may touch each once).
fn key(op: &WriteOp) -> String {
    match op {
        WriteOp::CasTask { record, .. } => format!("task/{}", record.task),
        WriteOp::PutTaskState { task, .. } => format!("task/{task}"),
        WriteOp::UpsertRecovery { record, .. } => format!("recovery/{}", record.op),
        WriteOp::PutJob(j) => format!("job/{}", j.name),
        WriteOp::DeleteJob(j) | WriteOp::DeleteJobTasks(j) => format!("job/{j}"),
        WriteOp::PutReleases(r) => format!("releases/{}", r.job),
        WriteOp::DeleteReleases(j) => format!("releases/{j}"),
    }
}

/// Apply `ops` in order, in batches of distinct keys; each item's operations commit together.
fn apply_ops(
    store: &dyn Store,
    ops: Vec<(Option<WriteId>, Vec<WriteOp>)>,
    outcomes: &mut Vec<(WriteId, WriteOutcome)>,
) {
    let mut batch: Vec<(Option<WriteId>, Vec<WriteOp>)> = Vec::new();
    let mut keys = HashSet::new();
    let mut size = 0;
    for (id, group) in ops {
        let group_keys: Vec<String> = group.iter().map(key).collect();
        if size + group.len() > MAX_BATCH || group_keys.iter().any(|k| keys.contains(k)) {
            apply_batch(store, std::mem::take(&mut batch), outcomes);
            keys.clear();
            size = 0;
        }
        keys.extend(group_keys);
        size += group.len();
        batch.push((id, group));
    }
    apply_batch(store, batch, outcomes);
}

fn apply_batch(
    store: &dyn Store,
    batch: Vec<(Option<WriteId>, Vec<WriteOp>)>,
    outcomes: &mut Vec<(WriteId, WriteOutcome)>,
) {
    if batch.is_empty() {
        return;
    }
    let ops: Vec<WriteOp> = batch.iter().flat_map(|(_, g)| g.iter().cloned()).collect();
    if let Ok(BatchOutcome::Applied) = store.apply(&ops) {
        outcomes.extend(
            batch
                .iter()
                .filter_map(|(id, _)| Some(((*id)?, WriteOutcome::Applied))),
        );
        return;
    }
    // One write lost its condition (or the store failed): nothing was written. Each write
    // again on its own, for its own outcome.
    for (id, group) in batch {
        let outcome = match store.apply(&group) {
            Ok(BatchOutcome::Applied) => WriteOutcome::Applied,
            Ok(BatchOutcome::Conflict {
                current,
                stored_epoch,
                ..
            }) => WriteOutcome::Conflict {
                current: current.map(|r| r.to_view()),
                stored_epoch,
            },
            Err(e) => WriteOutcome::Failed(e.to_string()),
        };
        let op = &group[group.len() - 1];
        match (id, outcome) {
            (Some(id), outcome) => outcomes.push((id, outcome)),
            (None, WriteOutcome::Applied) => {}
            (None, WriteOutcome::Conflict { .. }) => {
                // A report about a copy the slot has moved past: fenced, as it should be.
                debug!(key = %key(op), "stale state report ignored by the store");
            }
            (None, WriteOutcome::Failed(e)) => warn!(key = %key(op), error = %e, "persist"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warden_core::planner::{SlotState, TaskView};
    use warden_core::{AgentId, FencingToken, TaskId};

    fn slot(id: u64, expected: u64, epoch: u64, task: &str) -> Queued {
        Queued::Write(Write::Slot {
            id: WriteId(id),
            expected: FencingToken(expected),
            task: TaskId::parse(task).unwrap(),
            record: TaskView {
                home: None,
                epoch: FencingToken(epoch),
                agent: Some(AgentId::new("a", 1)),
                state: SlotState::Starting,
                failures: 0,
                last_failure_at: None,
                replica: None,
                version: 0,
            },
        })
    }

    fn state(task: &str, epoch: u64, s: SlotState) -> Queued {
        Queued::Write(Write::SlotState {
            task: TaskId::parse(task).unwrap(),
            epoch: FencingToken(epoch),
            state: s,
            failures: 0,
        })
    }

    #[test]
    fn writes_land_in_order_and_a_lost_condition_costs_only_its_own_write() {
        let store = warden_store::MemStore::new();
        let items = vec![
            slot(1, 0, 1, "j/0"),
            // The same key again: the next batch, after the first one landed.
            state("j/0", 1, SlotState::Running),
            state("j/0", 1, SlotState::Failed),
            slot(2, 0, 1, "j/1"),
            // Expects an epoch the slot never had: lost, alone.
            slot(3, 7, 8, "j/2"),
            Queued::Event(NewEvent::new(1, "test", "between")),
            slot(4, 1, 2, "j/1"),
        ];
        let out = write_all(&store, items);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], (WriteId(1), WriteOutcome::Applied));
        assert_eq!(out[1], (WriteId(2), WriteOutcome::Applied));
        assert!(
            matches!(&out[2], (WriteId(3), WriteOutcome::Conflict { stored_epoch, .. })
                if *stored_epoch == FencingToken::NONE),
            "{out:?}"
        );
        assert_eq!(out[3], (WriteId(4), WriteOutcome::Applied));
        let j0 = store
            .get_task(&TaskId::parse("j/0").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(j0.state, SlotState::Failed, "the later report wins");
        let j1 = store
            .get_task(&TaskId::parse("j/1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(j1.epoch, FencingToken(2));
        assert_eq!(store.last_event_seq().unwrap(), 1);
    }

    #[test]
    fn batches_are_bounded_and_old_events_go_first() {
        let store = warden_store::MemStore::new();
        let items: Vec<Queued> = (0..(MAX_BATCH as u64 * 2 + 3))
            .map(|i| slot(i, 0, 1, &format!("j/{i}")))
            .collect();
        let out = write_all(&store, items);
        assert!(out.iter().all(|(_, o)| *o == WriteOutcome::Applied));
        assert_eq!(out.len(), MAX_BATCH * 2 + 3);
        let mut items: Vec<Queued> = (0..MAX_QUEUED_EVENTS + 5)
            .map(|i| Queued::Event(NewEvent::new(1, "e", i.to_string())))
            .collect();
        items.push(slot(999, 0, 1, "k/0"));
        drop_oldest_events(&mut items);
        assert_eq!(items.len(), MAX_QUEUED_EVENTS + 1);
        assert!(matches!(&items[0], Queued::Event(e) if e.message == "5"));
        assert!(
            matches!(items.last(), Some(Queued::Write(_))),
            "writes are kept"
        );
    }
}
