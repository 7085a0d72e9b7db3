//! How a new version replaces running copies: canaries, waves, the fast checks, the verdict.
//!
//! [`step`] is one look at a job in rollout. The controller gathers, for every slot, what the
//! rollout needs ([`SlotFacts`]: does its copy run the version rolled out, is it being
//! replaced, since when is it healthy, did it fail) and carries out what comes back: the slots
//! to replace now (the controller stops their copies; the planner starts them again at the new
//! version) and a verdict when there is one. Which copies run which version is kept in the
//! slots' records, so a rollout resumed by a new leader neither repeats nor skips a copy.
//!
//! The checks, while the rollout is not a revert:
//! - a copy of the new version that fails (exits, is killed, cannot start) fails the rollout;
//! - a copy of the new version whose health check fails after it passed fails it;
//! - a copy of the new version not healthy `healthy_deadline` after it was ordered fails it;
//! - no copy turning good for `progress_deadline` fails it.
//!
//! A copy is *good* once it has run healthy for `min_healthy_time`. Nothing here passes a copy
//! for lack of evidence: a copy that reports nothing is not good, and the deadline decides.
//! A revert (the version before, put back) has no canary and no checks and replaces every copy
//! at once: it must be fast, and there is nothing to go back to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::release::{RolloutPhase, UpdateSpec};
use crate::time::Time;

/// What the rollout needs to know of one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotFacts {
    /// The slot's copy was started from the version rolled out (or one with its template).
    pub current: bool,
    /// Chosen for replacement: its old copy is being stopped, or its new copy not yet ordered.
    pub replacing: bool,
    /// Its copy runs (reported running).
    pub running: bool,
    /// For a current copy: when it was ordered (`None`: before this rollout, or not known).
    pub ordered_at: Option<Time>,
    /// For a current copy: healthy since (its health check passes, or it has none and runs).
    pub healthy_since: Option<Time>,
    /// For a current copy: why it is bad (it failed, or its health check failed after it
    /// passed), with the evidence.
    pub bad: Option<String>,
}

/// A rollout's working state (the persisted part is [`crate::release::Rollout`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Where it stands.
    pub phase: RolloutPhase,
    /// A revert: no canary, no checks, every copy at once.
    pub revert: bool,
    /// An operator promoted it past the canaries.
    pub promoted: bool,
    /// When a copy last turned good (or the rollout began).
    pub last_progress: Time,
    /// When the last wave was ordered.
    pub last_wave: Option<Time>,
    /// Good copies at the last look.
    pub good: u32,
    /// The statistical judge ([`crate::judge`]): consecutive passing judgements.
    #[serde(default)]
    pub passes: u32,
    /// Consecutive failing judgements.
    #[serde(default)]
    pub failures: u32,
    /// When the judge last judged.
    #[serde(default)]
    pub judged_at: Option<Time>,
    /// The traffic step the canaries are at (`[update] traffic_steps`; the number of steps:
    /// past the last).
    #[serde(default)]
    pub step: u8,
    /// Since when the canaries have been good at this step.
    #[serde(default)]
    pub step_since: Option<Time>,
}

impl Run {
    /// The share of the traffic (percent) the canaries should get now, when the job has
    /// traffic steps and the rollout is in its canary phase.
    pub fn canary_share(&self, update: &UpdateSpec) -> Option<u8> {
        let steps = update.traffic_steps.as_slice();
        let last = steps.len().checked_sub(1)?;
        let canary_phase = matches!(
            self.phase,
            RolloutPhase::Canary | RolloutPhase::AwaitingPromotion
        );
        (canary_phase && !self.revert && !self.promoted)
            .then(|| steps[usize::from(self.step).min(last)])
    }
}

impl Run {
    /// A rollout beginning at `now`.
    pub fn new(update: &UpdateSpec, revert: bool, now: Time) -> Run {
        Run {
            phase: if update.canary > 0 && !revert {
                RolloutPhase::Canary
            } else {
                RolloutPhase::Rolling
            },
            revert,
            promoted: false,
            last_progress: now,
            last_wave: None,
            good: 0,
            passes: 0,
            failures: 0,
            judged_at: None,
            step: 0,
            step_since: None,
        }
    }
}

/// What a look at a rollout decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Slots (their index in the step's input) to replace now.
    pub replace: Vec<usize>,
    /// The phase changed to this (with why, for failures).
    pub verdict: Option<Verdict>,
    /// Look again then, if nothing changes before.
    pub wake_at: Option<Time>,
}

/// A change of a rollout's phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The canaries are good; waiting for an operator.
    AwaitPromotion,
    /// Past the canaries: the rest is replaced in waves.
    Rolling,
    /// The canaries went on to the next traffic step (its share, percent).
    Step(u8),
    /// Every copy runs the new version and is good.
    Succeeded,
    /// A check failed: the reason, with its evidence.
    Failed(String),
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// One look at a rollout: checks, progress, the next wave, the verdict.
pub fn step(update: &UpdateSpec, run: &mut Run, slots: &[SlotFacts], now: Time) -> Step {
    let mut s = Step::default();
    if !run.phase.is_active() {
        return s;
    }
    let wake = |t: Time, s: &mut Step| {
        s.wake_at = Some(s.wake_at.map_or(t, |w| w.min(t)));
    };
    let good_at = |f: &SlotFacts| {
        if run.revert {
            f.healthy_since
        } else {
            f.healthy_since.map(|t| t + update.min_healthy_time)
        }
    };
    let is_good = |f: &SlotFacts| f.current && f.running && good_at(f).is_some_and(|t| now >= t);
    let good = u32::try_from(slots.iter().filter(|f| is_good(f)).count()).unwrap_or(u32::MAX);
    if good > run.good {
        run.last_progress = now;
    }
    run.good = good;
    // Canaries good, the statistical judge not yet satisfied: the judge decides (a hold for
    // lack of requests is not a lack of progress), or an operator promotes.
    let steps = update.traffic_steps.as_slice();
    let stepping = run.phase == RolloutPhase::Canary
        && !run.promoted
        && !run.revert
        && good as usize >= update.canary as usize
        && usize::from(run.step) < steps.len();
    let judging = run.phase == RolloutPhase::Canary
        && !run.promoted
        && !stepping
        && good as usize >= update.canary as usize
        && update
            .analysis
            .is_some_and(|a| !a.dry_run && run.passes < a.passes);
    if judging || stepping {
        // Time spent judging or stepping traffic up is not time without progress.
        run.last_progress = now;
    }

    if !run.revert {
        // The fast checks: any bad copy of the new version, any copy late to turn healthy.
        for f in slots.iter().filter(|f| f.current) {
            if let Some(bad) = &f.bad {
                return fail(run, s, bad.clone());
            }
            if f.healthy_since.is_none()
                && let Some(ordered) = f.ordered_at
            {
                let deadline = ordered + update.healthy_deadline;
                if now >= deadline {
                    return fail(
                        run,
                        s,
                        format!(
                            "a copy of the new version is not healthy {} ms after it was started \
                             (healthy_deadline)",
                            ms(update.healthy_deadline)
                        ),
                    );
                }
                wake(deadline, &mut s);
            }
        }
        let stuck = run.last_progress + update.progress_deadline;
        if now >= stuck {
            return fail(
                run,
                s,
                format!(
                    "no copy of the new version turned good for {} ms (progress_deadline)",
                    ms(update.progress_deadline)
                ),
            );
        }
        if !judging && !stepping {
            // While judging, the judge's own schedule wakes the rollout.
            wake(stuck, &mut s);
        }
    }
    for f in slots {
        if f.current
            && f.running
            && let Some(t) = good_at(f)
            && now < t
        {
            wake(t, &mut s);
        }
    }

    let old: Vec<usize> = {
        // Copies that do not run are replaced first: that costs no running capacity.
        let mut old: Vec<usize> = (0..slots.len())
            .filter(|&i| !slots[i].current && !slots[i].replacing)
            .collect();
        old.sort_by_key(|&i| slots[i].running);
        old
    };
    let in_flight = slots
        .iter()
        .filter(|f| f.replacing || (f.current && !is_good(f)))
        .count();
    if old.is_empty() && in_flight == 0 {
        run.phase = RolloutPhase::Succeeded;
        s.verdict = Some(Verdict::Succeeded);
        s.wake_at = None;
        return s;
    }

    if run.phase == RolloutPhase::Canary {
        let canary = update.canary as usize;
        let chosen = slots.iter().filter(|f| f.current || f.replacing).count();
        if chosen < canary {
            s.replace = old.iter().copied().take(canary - chosen).collect();
            run.last_wave = Some(now);
            return s;
        }
        if stepping {
            let since = *run.step_since.get_or_insert(now);
            let next = since + update.step_time;
            if now < next {
                wake(next, &mut s);
                return s;
            }
            run.step = run.step.saturating_add(1);
            run.step_since = Some(now);
            // The judge's passes count from the new share's traffic.
            run.passes = 0;
            if let Some(&share) = steps.get(usize::from(run.step)) {
                s.verdict = Some(Verdict::Step(share));
                wake(now + update.step_time, &mut s);
                return s;
            }
            if update.analysis.is_some_and(|a| !a.dry_run) {
                return s; // judged at the last share before going on
            }
        }
        if (good as usize) < canary || judging {
            return s; // the canaries are being judged
        }
        if update.auto_promote || run.promoted {
            run.phase = RolloutPhase::Rolling;
            s.verdict = Some(Verdict::Rolling);
        } else {
            run.phase = RolloutPhase::AwaitingPromotion;
            s.verdict = Some(Verdict::AwaitPromotion);
            return s;
        }
    }
    if run.phase == RolloutPhase::AwaitingPromotion {
        if !run.promoted {
            return s;
        }
        run.phase = RolloutPhase::Rolling;
        s.verdict = Some(Verdict::Rolling);
    }
    // Rolling.
    let budget = if run.revert {
        old.len()
    } else {
        (update.max_parallel as usize).saturating_sub(in_flight)
    };
    if budget == 0 || old.is_empty() {
        return s;
    }
    if !run.revert
        && let Some(last) = run.last_wave
        && now < last + update.stagger
    {
        wake(last + update.stagger, &mut s);
        return s;
    }
    s.replace = old.into_iter().take(budget).collect();
    run.last_wave = Some(now);
    s
}

fn fail(run: &mut Run, mut s: Step, reason: String) -> Step {
    run.phase = RolloutPhase::Failed;
    s.verdict = Some(Verdict::Failed(reason));
    s.replace.clear();
    s.wake_at = None;
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: Time = Time::from_millis(1_000_000);

    fn at(ms: u64) -> Time {
        T0 + Duration::from_millis(ms)
    }

    fn old_running(n: usize) -> Vec<SlotFacts> {
        vec![
            SlotFacts {
                running: true,
                ..SlotFacts::default()
            };
            n
        ]
    }

    fn update(max_parallel: u32, canary: u32, auto_promote: bool) -> UpdateSpec {
        UpdateSpec {
            max_parallel,
            canary,
            auto_promote,
            min_healthy_time: Duration::from_secs(5),
            ..UpdateSpec::default()
        }
    }

    /// Start the replaced slots' new copies at `now`, healthy at once.
    fn start(slots: &mut [SlotFacts], which: &[usize], now: Time) {
        for &i in which {
            slots[i] = SlotFacts {
                current: true,
                running: true,
                ordered_at: Some(now),
                healthy_since: Some(now),
                ..SlotFacts::default()
            };
        }
    }

    #[test]
    fn traffic_steps_hold_the_canaries_at_each_share_for_step_time() {
        let u = UpdateSpec {
            traffic_steps: crate::release::TrafficSteps::try_from(vec![10, 50]).unwrap(),
            step_time: Duration::from_secs(10),
            ..update(2, 1, true)
        };
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(4);
        let s = step(&u, &mut run, &slots, at(0));
        assert_eq!(s.replace, vec![0]);
        assert_eq!(run.canary_share(&u), Some(10));
        start(&mut slots, &[0], at(0));
        // Good after min_healthy_time (5 s): the first share's time starts.
        let s = step(&u, &mut run, &slots, at(5_000));
        assert!(s.replace.is_empty() && s.verdict.is_none(), "{s:?}");
        assert_eq!(s.wake_at, Some(at(15_000)));
        let s = step(&u, &mut run, &slots, at(15_000));
        assert_eq!(s.verdict, Some(Verdict::Step(50)));
        assert_eq!(run.canary_share(&u), Some(50));
        // Long past progress_deadline would not matter: stepping is progress.
        let s = step(&u, &mut run, &slots, at(25_000));
        assert_eq!(s.verdict, Some(Verdict::Rolling));
        assert_eq!(run.canary_share(&u), None);
        assert_eq!(s.replace, vec![1, 2]);
        // A revert has no steps.
        let r = Run::new(&u, true, T0);
        assert_eq!(r.canary_share(&u), None);
    }

    #[test]
    fn waves_of_max_parallel_each_waiting_for_the_last_to_be_good() {
        let u = update(2, 0, false);
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(5);
        let s = step(&u, &mut run, &slots, T0);
        assert_eq!(s.replace, [0, 1]);
        for &i in &s.replace {
            slots[i].replacing = true;
        }
        // Nothing more while the wave is in flight.
        assert!(step(&u, &mut run, &slots, at(100)).replace.is_empty());
        start(&mut slots, &[0, 1], at(1_000));
        let s = step(&u, &mut run, &slots, at(1_000));
        assert!(s.replace.is_empty(), "not good before min_healthy_time");
        assert_eq!(s.wake_at, Some(at(6_000)));
        let s = step(&u, &mut run, &slots, at(6_000));
        assert_eq!(s.replace, [2, 3]);
        start(&mut slots, &[2, 3], at(6_000));
        let s = step(&u, &mut run, &slots, at(11_000));
        assert_eq!(s.replace, [4]);
        start(&mut slots, &[4], at(11_000));
        let s = step(&u, &mut run, &slots, at(16_000));
        assert_eq!(s.verdict, Some(Verdict::Succeeded));
        assert_eq!(run.phase, RolloutPhase::Succeeded);
    }

    #[test]
    fn canaries_wait_for_promotion_unless_auto() {
        let u = update(3, 1, false);
        let mut run = Run::new(&u, false, T0);
        assert_eq!(run.phase, RolloutPhase::Canary);
        let mut slots = old_running(4);
        let s = step(&u, &mut run, &slots, T0);
        assert_eq!(s.replace, [0], "one canary");
        start(&mut slots, &[0], at(500));
        assert!(step(&u, &mut run, &slots, at(1_000)).replace.is_empty());
        let s = step(&u, &mut run, &slots, at(5_500));
        assert_eq!(s.verdict, Some(Verdict::AwaitPromotion));
        assert!(s.replace.is_empty());
        assert!(step(&u, &mut run, &slots, at(60_000)).replace.is_empty());
        run.promoted = true;
        let s = step(&u, &mut run, &slots, at(61_000));
        assert_eq!(s.verdict, Some(Verdict::Rolling));
        assert_eq!(s.replace, [1, 2, 3]);

        let u = update(3, 1, true);
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(4);
        step(&u, &mut run, &slots, T0);
        start(&mut slots, &[0], T0);
        let s = step(&u, &mut run, &slots, at(5_000));
        assert_eq!(s.verdict, Some(Verdict::Rolling));
        assert_eq!(s.replace, [1, 2, 3]);
    }

    #[test]
    fn a_failed_or_unhealthy_new_copy_fails_the_rollout_at_once() {
        let u = update(1, 0, false);
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(3);
        step(&u, &mut run, &slots, T0);
        slots[0] = SlotFacts {
            current: true,
            ordered_at: Some(T0),
            bad: Some("web/0@2 failed: exit status 1".into()),
            ..SlotFacts::default()
        };
        let s = step(&u, &mut run, &slots, at(300));
        assert_eq!(
            s.verdict,
            Some(Verdict::Failed("web/0@2 failed: exit status 1".into()))
        );
        assert_eq!(run.phase, RolloutPhase::Failed);
        // Once failed, nothing more happens.
        assert_eq!(step(&u, &mut run, &slots, at(400)), Step::default());
    }

    #[test]
    fn a_copy_never_healthy_fails_at_the_healthy_deadline_not_before() {
        let u = update(1, 0, false);
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(2);
        step(&u, &mut run, &slots, T0);
        slots[0] = SlotFacts {
            current: true,
            running: true,
            ordered_at: Some(T0),
            ..SlotFacts::default()
        };
        let s = step(&u, &mut run, &slots, at(59_000));
        assert_eq!(s.verdict, None, "no evidence is no verdict");
        assert_eq!(s.wake_at, Some(at(60_000)));
        let s = step(&u, &mut run, &slots, at(60_000));
        assert!(matches!(s.verdict, Some(Verdict::Failed(_))));
    }

    #[test]
    fn no_progress_fails_at_the_progress_deadline() {
        let u = UpdateSpec {
            progress_deadline: Duration::from_secs(100),
            ..update(1, 0, false)
        };
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(2);
        slots[0].replacing = true; // its stop never confirmed
        let s = step(&u, &mut run, &slots, at(99_000));
        assert_eq!(s.verdict, None);
        let s = step(&u, &mut run, &slots, at(100_000));
        assert!(matches!(s.verdict, Some(Verdict::Failed(r)) if r.contains("progress_deadline")));
    }

    #[test]
    fn a_revert_replaces_everything_at_once_without_checks() {
        let u = update(1, 2, false);
        let mut run = Run::new(&u, true, T0);
        assert_eq!(run.phase, RolloutPhase::Rolling, "no canary for a revert");
        let mut slots = old_running(4);
        slots[3].running = false;
        slots[2].bad = Some("ignored: not a current copy".into());
        let s = step(&u, &mut run, &slots, T0);
        assert_eq!(s.replace, [3, 0, 1, 2], "every copy, the dead one first");
        start(&mut slots, &[0, 1, 2, 3], at(800));
        slots[1].bad = Some("a revert is not judged".into());
        let s = step(&u, &mut run, &slots, at(800));
        assert_eq!(s.verdict, Some(Verdict::Succeeded), "healthy is enough");
    }

    #[test]
    fn stagger_spaces_the_waves() {
        let u = UpdateSpec {
            stagger: Duration::from_secs(30),
            min_healthy_time: Duration::ZERO,
            ..update(1, 0, false)
        };
        let mut run = Run::new(&u, false, T0);
        let mut slots = old_running(2);
        assert_eq!(step(&u, &mut run, &slots, T0).replace, [0]);
        start(&mut slots, &[0], at(1_000));
        let s = step(&u, &mut run, &slots, at(2_000));
        assert!(s.replace.is_empty());
        assert_eq!(s.wake_at, Some(at(30_000)));
        assert_eq!(step(&u, &mut run, &slots, at(30_000)).replace, [1]);
    }
}
