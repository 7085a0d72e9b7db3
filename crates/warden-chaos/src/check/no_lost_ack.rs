//! **no lost ack**: the stateful workload (`warden workload counter`) reads its counter and
//! writes the next value, so the values it acknowledges tell what its state held. After every
//! failover the new primary must go on from every value acknowledged before it:
//!
//! - every epoch's first acknowledged value is above every value acknowledged at `standby`
//!   under the epochs before it (an acknowledged write that the new primary lacked would make
//!   it write that value again);
//! - within an epoch the values grow (the writer is sequential; a value can be skipped when
//!   a write was applied and its writer died before it printed the acknowledgement);
//! - nothing is acknowledged under an epoch after a newer epoch acknowledged its first write
//!   (a deposed primary must be fenced).
//!
//! Writes acknowledged at `local` may be lost with their primary (that is the level's
//! meaning); they are counted by [`lost_local`], not reported as violations.

use std::collections::BTreeMap;

use super::Violation;
use crate::record::{Record, StateAck};

/// The checker's name.
pub const NAME: &str = "no-lost-ack";

/// Acknowledgements by epoch, each in value order.
fn by_epoch(acks: &[StateAck]) -> BTreeMap<u64, Vec<&StateAck>> {
    let mut m: BTreeMap<u64, Vec<&StateAck>> = BTreeMap::new();
    for a in acks {
        m.entry(a.epoch).or_default().push(a);
    }
    for v in m.values_mut() {
        v.sort_by_key(|a| a.value);
    }
    m
}

/// Writes acknowledged at `level` under an epoch whose successor started at or below them:
/// (count, the epoch, the highest lost value, the successor's first value).
fn lost(acks: &[StateAck], level: &str) -> Vec<(u64, u64, u64, u64)> {
    let epochs = by_epoch(acks);
    let mut out = Vec::new();
    let mut before: Vec<&StateAck> = Vec::new();
    for list in epochs.values() {
        let first = list[0].value;
        let gone: Vec<&&StateAck> = before
            .iter()
            .filter(|a| a.ack == level && a.value >= first)
            .collect();
        if let Some(top) = gone.iter().map(|a| a.value).max() {
            out.push((gone.len() as u64, gone[0].epoch, top, first));
        }
        before.extend(list.iter().copied());
    }
    out
}

/// Writes acknowledged at `local` that a later primary did not have (allowed at that level).
pub fn lost_local(record: &Record) -> u64 {
    lost(&record.acks, "local").iter().map(|l| l.0).sum()
}

/// Check the record.
pub fn check(record: &Record) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, epoch, top, first) in lost(&record.acks, "standby") {
        out.push(Violation::new(
            NAME,
            record.end_ms,
            format!(
                "{n} write(s) acknowledged at standby under epoch {epoch} (up to value {top}) \
                 were lost: a later epoch started at value {first}"
            ),
        ));
    }
    let epochs = by_epoch(&record.acks);
    for (epoch, list) in &epochs {
        for w in list.windows(2) {
            if w[1].value <= w[0].value {
                out.push(Violation::new(
                    NAME,
                    w[1].t_ms,
                    format!(
                        "epoch {epoch}: value {} acknowledged after {} ({} on {}): a write was lost",
                        w[1].value, w[0].value, w[1].task, w[1].agent
                    ),
                ));
            }
        }
    }
    // A deposed epoch acknowledges nothing once a newer one has.
    let firsts: Vec<(u64, u64)> = epochs
        .iter()
        .map(|(e, l)| (*e, l.iter().map(|a| a.t_ms).min().unwrap_or(0)))
        .collect();
    for a in &record.acks {
        if let Some((newer, at)) = firsts.iter().find(|(e, t)| *e > a.epoch && *t < a.t_ms) {
            out.push(Violation::new(
                NAME,
                a.t_ms,
                format!(
                    "value {} acknowledged under epoch {} by {} on {} after epoch {newer} \
                     acknowledged its first write (at {at} ms)",
                    a.value, a.epoch, a.task, a.agent
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::record;

    fn ack(epoch: u64, value: u64, t_ms: u64, level: &str) -> StateAck {
        StateAck {
            task: "ledger/0".into(),
            agent: "agent-1".into(),
            value,
            epoch,
            ack: level.into(),
            t_ms,
        }
    }

    #[test]
    fn a_failover_that_keeps_every_ack_passes() {
        let mut r = record();
        r.acks = vec![
            ack(1, 1, 10, "standby"),
            ack(1, 2, 20, "standby"),
            ack(1, 3, 30, "standby"),
            // The write of 4 was applied, not acknowledged: the next epoch goes on after it.
            ack(2, 5, 900, "standby"),
            ack(2, 6, 910, "standby"),
        ];
        assert!(check(&r).is_empty(), "{:?}", check(&r));
        assert_eq!(lost_local(&r), 0);
    }

    #[test]
    fn an_acknowledged_write_the_new_primary_lacks_is_reported() {
        let mut r = record();
        r.acks = vec![
            ack(1, 1, 10, "standby"),
            ack(1, 2, 20, "standby"),
            ack(1, 3, 30, "standby"),
            // The new primary only had 2: it writes 3 again.
            ack(2, 3, 900, "standby"),
        ];
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("1 write(s) acknowledged at standby under epoch 1")
        );
        // At `local` the same loss is the level's meaning: counted, not a violation.
        for a in &mut r.acks {
            a.ack = "local".into();
        }
        assert!(check(&r).is_empty());
        assert_eq!(lost_local(&r), 1);
    }

    #[test]
    fn an_ack_under_a_deposed_epoch_is_reported() {
        let mut r = record();
        r.acks = vec![
            ack(1, 1, 10, "standby"),
            ack(2, 3, 500, "standby"),
            // The deposed primary still acknowledges, after epoch 2 did.
            ack(1, 2, 600, "standby"),
        ];
        let v = check(&r);
        assert!(
            v.iter().any(|v| v.message.contains("after epoch 2")),
            "{v:?}"
        );
    }

    #[test]
    fn a_value_written_twice_within_an_epoch_is_reported() {
        let mut r = record();
        r.acks = vec![ack(1, 1, 10, "standby"), ack(1, 3, 20, "standby")];
        assert!(check(&r).is_empty(), "a skipped value is no loss");
        r.acks.push(ack(1, 3, 30, "standby"));
        assert_eq!(check(&r).len(), 1);
    }
}
