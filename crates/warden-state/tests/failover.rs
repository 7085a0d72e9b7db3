//! The no-lost-ack check over in-process failovers (real disks, loopback TCP), and proof that
//! it catches a primary that acknowledges before replicating.

use warden_core::state::AckLevel;
use warden_state::failover::{FailoverRun, run};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn no_acknowledged_write_is_lost_at_standby_over_failovers() {
    let report = runtime()
        .block_on(run(&FailoverRun {
            failovers: 30,
            standbys: 1,
            ack: AckLevel::Standby,
            seed: 1,
            break_acks: false,
        }))
        .expect("run");
    assert_eq!(report.failovers, 30);
    assert!(report.acked > 100, "{report:?}");
    assert_eq!(report.lost, 0, "{:?}", report.problems);
    assert_eq!(report.stale_acks, 0);
}

#[test]
fn no_acknowledged_write_is_lost_at_quorum_with_two_standbys() {
    let report = runtime()
        .block_on(run(&FailoverRun {
            failovers: 20,
            standbys: 2,
            ack: AckLevel::Quorum,
            seed: 2,
            break_acks: false,
        }))
        .expect("run");
    assert_eq!(report.failovers, 20);
    assert!(report.acked > 100, "{report:?}");
    assert_eq!(report.lost, 0, "{:?}", report.problems);
}

#[test]
fn the_check_catches_acknowledgements_given_before_replication() {
    let report = runtime()
        .block_on(run(&FailoverRun {
            failovers: 30,
            standbys: 1,
            ack: AckLevel::Standby,
            seed: 3,
            break_acks: true,
        }))
        .expect("run");
    assert!(
        report.lost > 0,
        "the broken acks went unnoticed: {report:?}"
    );
    assert!(!report.problems.is_empty());
}
