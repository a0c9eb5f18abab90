//! The policy's transitions as functions: windows, refusals and peers' estimates go in,
//! the limit and the phase come out; no semaphore, no clock (instants are values). Peers
//! are a stand-in answering as a group of two equally busy workers would; group pacing's
//! own answers are tested in `crate::group::context`.

use std::time::Duration;

use tokio::time::Instant;

use super::phase::{Phase, Regain, REGAIN_SETTLES};
use super::Estimate;
use super::Policy;
use crate::backend::concurrency::evidence::{Gauges, Verdict};
use crate::backend::concurrency::peers::{Alone, Peers};
use crate::backend::concurrency::ConcurrencySettings;

const RTT: Duration = Duration::from_millis(132);

/// A worker sharing the backend with one other as busy as itself: half the limit each, and
/// the answers group pacing gives.
#[derive(Debug, Default)]
struct Pair {
    /// How long a change takes to reach the other and come back.
    echo: Duration,
}

impl Peers for Pair {
    fn calls_per_success(&self, _limit: usize, _permits: usize) -> f64 {
        2.0
    }
    fn overshoot_floor(&self, proven: usize) -> usize {
        proven
    }
    fn failed_probe_cut(&self, bound: usize, good: usize) -> usize {
        bound.saturating_sub(1).max(good)
    }
    fn probe_heard_after(&self, srtt: Duration) -> Duration {
        srtt + 2 * self.echo
    }
    fn regain_probe_every(&self) -> Duration {
        Duration::from_secs(1)
    }
}

fn settings(initial: usize) -> ConcurrencySettings {
    ConcurrencySettings {
        initial,
        ..ConcurrencySettings::default()
    }
}

/// A policy at a steady `limit`, known to be good (and confirmed), and the time.
fn steady(limit: usize) -> (Policy, Instant) {
    let now = Instant::now();
    let mut policy = Policy::new(settings(limit), now);
    policy.set_good(limit);
    (policy, now)
}

/// This worker's part of the limit: all of it alone, half beside a [`Pair`].
fn part(peers: &dyn Peers) -> f64 {
    1.0 / peers.calls_per_success(2, 1).max(1.0)
}

/// Round trips from `from`, each carrying this worker's part of the limit and closing with
/// a clean window that reached it: the limit after each, with the time since `from`.
fn serve(
    policy: &mut Policy,
    peers: &dyn Peers,
    from: Instant,
    rounds: usize,
) -> Vec<(Duration, usize)> {
    let mut now = from;
    let mut limits = Vec::new();
    for _ in 0..rounds {
        let limit = policy.limit();
        let calls = ((limit as f64 * part(peers)).round() as usize).max(1);
        now += RTT;
        for _ in 0..calls {
            policy.count_success(peers.calls_per_success(limit, calls));
        }
        let clean = Verdict::Clean {
            reached: true,
            top_level: limit,
        };
        policy.on_window(clean, RTT.as_secs_f64(), peers, now);
        limits.push((now.duration_since(from), policy.limit()));
    }
    limits
}

/// The distinct limits in `limits`, in order.
fn steps(limits: &[(Duration, usize)]) -> Vec<usize> {
    let mut seen: Vec<usize> = Vec::new();
    for (_, limit) in limits {
        if seen.last() != Some(limit) {
            seen.push(*limit);
        }
    }
    seen
}

/// When the limit first went above `level`.
fn first_above(limits: &[(Duration, usize)], level: usize) -> Duration {
    limits
        .iter()
        .find(|(_, limit)| *limit > level)
        .map(|(at, _)| *at)
        .expect("the limit went above it")
}

/// A refusal of a call sent at `started` as the `level`-th in flight.
fn refuse(policy: &mut Policy, peers: &dyn Peers, level: usize, started: Instant, now: Instant) {
    policy.on_refusal((level, started), None, RTT.as_secs_f64(), peers, now);
}

#[tokio::test(start_paused = true)]
async fn the_search_doubles_every_clean_round_trip_until_its_first_refusal() {
    let now = Instant::now();
    let mut policy = Policy::new(settings(8), now);
    assert_eq!(policy.phase, Phase::Search);
    assert_eq!(steps(&serve(&mut policy, &Alone, now, 2)), [16, 32]);
    let later = now + 3 * RTT;
    refuse(&mut policy, &Alone, 27, later, later);
    assert_eq!((policy.limit(), policy.good), (26, 26));
    assert_eq!(policy.phase, Phase::Steady);
    assert!(!policy.confirmed, "one reading");
    assert_eq!(policy.overshoot.ended, Some(later));
}

#[tokio::test(start_paused = true)]
async fn an_unconfirmed_good_level_is_probed_four_times_as_often_until_a_probe_fails() {
    let (mut policy, now) = steady(16);
    policy.confirmed = false;
    // 100 calls a probe, a quarter of them unconfirmed: the second round trip of 16.
    assert_eq!(steps(&serve(&mut policy, &Alone, now, 2)), [16, 17]);
    let probe = policy.limit();
    let later = now + 3 * RTT;
    refuse(&mut policy, &Alone, probe, later, later);
    assert!(policy.confirmed);
    assert_eq!(policy.probe_counts(), (1, 1));
    let (mut confirmed, now) = steady(16);
    assert_eq!(
        first_above(&serve(&mut confirmed, &Alone, now, 10), 16),
        RTT * 7
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_falls_below_its_refusal_and_beside_peers_one_further() {
    for (peers, expected) in [(&Alone as &dyn Peers, 17), (&Pair::default(), 16)] {
        let (mut policy, now) = steady(16);
        // A probe two above the good level, refused at its top.
        policy.set_limit(18, now);
        refuse(&mut policy, peers, 18, now, now);
        // Alone, the refusal's level is this worker's own calls: 17 is the reading.
        // Beside peers it counts theirs as reckoned, and 17 was often refused too.
        assert_eq!(policy.limit(), expected, "{peers:?}");
        assert_eq!(policy.probe_counts().1, 1);
        assert_eq!(policy.good, 16);
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_falls_due_after_as_many_of_the_backends_calls_beside_peers_as_alone() {
    let (mut alone, now) = steady(16);
    let alone = first_above(&serve(&mut alone, &Alone, now, 20), 16);
    let (mut paired, now) = steady(16);
    let paired = first_above(&serve(&mut paired, &Pair::default(), now, 20), 16);
    // Alone 16 calls a round trip, 100 by the seventh; beside a busy peer this worker's 8
    // stand for the backend's 16.
    assert_eq!(alone, RTT * 7);
    assert_eq!(paired, alone, "not twice as long");
}

#[tokio::test(start_paused = true)]
async fn a_second_refusal_below_the_good_level_before_getting_back_lowers_it() {
    let (mut policy, now) = steady(32);
    refuse(&mut policy, &Alone, 20, now, now);
    assert_eq!((policy.limit(), policy.good), (19, 32), "suspect only");
    assert_eq!(policy.phase, Phase::Steady);
    // The run of refusals ends; the next one, below 32 again, confirms the fall.
    policy.on_window(Verdict::Unclear, RTT.as_secs_f64(), &Alone, now + RTT);
    let later = now + 2 * RTT;
    refuse(&mut policy, &Alone, 17, later, later);
    assert_eq!((policy.limit(), policy.good), (16, 16));
    assert!(
        matches!(policy.phase, Phase::Regain(r) if r.former == 32),
        "another tenant may give it back: {:?}",
        policy.phase
    );
}

#[tokio::test(start_paused = true)]
async fn below_the_former_level_probes_step_by_one_and_go_back_to_it_past_a_failed_one() {
    let climb = |failed_below: Option<usize>| {
        let (mut policy, now) = steady(16);
        policy.phase = Phase::Regain(Regain {
            former: 32,
            since: now,
            failed_below,
        });
        let limits = serve(&mut policy, &Alone, now + REGAIN_SETTLES, 60);
        steps(&limits)[..3].to_vec()
    };
    // A probe to 17 had failed: 17 and 18 holding now is capacity come back.
    assert_eq!(climb(Some(17)), [17, 18, 32]);
    // None had: this may be a climb back from a cut below the capacity.
    assert_eq!(climb(None), [17, 18, 19]);
}

#[tokio::test(start_paused = true)]
async fn below_the_former_level_a_probe_comes_by_time_when_the_count_is_far_off() {
    let first_probe = |peers: &dyn Peers| {
        let (mut policy, now) = steady(16);
        policy.phase = Phase::Regain(Regain {
            former: 32,
            since: now,
            failed_below: None,
        });
        for _ in 0..3 {
            policy.probe_failed(true, now);
        }
        first_above(&serve(&mut policy, peers, now, 40), 16)
    };
    // The first round trip that ends at or after the wait.
    assert_eq!(first_probe(&Alone), RTT * 16, "alone: 2 s");
    assert_eq!(first_probe(&Pair::default()), RTT * 8, "peers' wait: 1 s");
}

#[tokio::test(start_paused = true)]
async fn below_the_former_level_a_probe_holds_once_the_peers_refusal_could_have_been_heard() {
    // From the probe to 17 to the step to 18, every call answered.
    let next_step_after = |echo: Duration| {
        let (mut policy, now) = steady(16);
        policy.phase = Phase::Regain(Regain {
            former: 32,
            since: now,
            failed_below: None,
        });
        let limits = serve(&mut policy, &Pair { echo }, now + REGAIN_SETTLES, 40);
        first_above(&limits, 17) - first_above(&limits, 16)
    };
    // The peer hears of the probe an echo after it, and this worker hears of the peer's
    // refusal an echo later.
    let echoed = next_step_after(Duration::from_millis(150));
    assert!(echoed >= RTT + Duration::from_millis(300), "{echoed:?}");
    let at_once = next_step_after(Duration::ZERO);
    assert!(at_once < echoed, "{at_once:?}");
}

#[tokio::test(start_paused = true)]
async fn the_first_searchs_overshoot_reads_no_lower_than_the_level_it_proved_beside_peers() {
    for (peers, expected) in [(&Alone as &dyn Peers, 12), (&Pair::default(), 16)] {
        let now = Instant::now();
        let mut policy = Policy::new(settings(16), now);
        // The first search: 16 held for a clean round trip, so the limit doubled.
        assert_eq!(steps(&serve(&mut policy, peers, now, 1)), [32]);
        // A call of the overshoot is refused at a level read as 13: alone that is this
        // worker's own calls, and the capacity. Beside peers their calls are reckoned, and
        // while everyone paces the doubling in they read low; 16 just held.
        refuse(&mut policy, peers, 13, now + RTT, now + RTT);
        assert_eq!(
            (policy.limit(), policy.good),
            (expected, expected),
            "{peers:?}"
        );
        // A call sent well after the search ended and refused at 11 reads what it says
        // either way: the capacity may have fallen, and nothing the search proved holds.
        let later = now + 4 * RTT;
        policy.on_window(Verdict::Unclear, RTT.as_secs_f64(), peers, later);
        refuse(&mut policy, peers, 11, later, later);
        assert_eq!(policy.limit(), 10, "{peers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_a_peers_refusal_ended_failed_here_too() {
    let (mut policy, now) = steady(16);
    policy.confirmed = false;
    // The peers probe 17 over 16 known good; one of them is refused and cuts to 16.
    let probe = Estimate {
        limit: 17,
        recover_to: 16,
        version: policy.version() + 1,
    };
    assert!(policy.adopt(probe, now));
    let cut = Estimate {
        limit: 16,
        recover_to: 16,
        version: policy.version() + 1,
    };
    assert!(policy.adopt(cut, now));
    assert_eq!(policy.probe_counts().1, 1);
    assert_eq!(
        policy.schedule.due(100, 1),
        200,
        "the next probe waits twice as long"
    );
    assert!(
        policy.confirmed,
        "the search's quick probes end when any worker's probe fails"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peers_estimate_is_taken_only_when_newer_and_of_equals_the_lower() {
    let (mut policy, now) = steady(16);
    let version = policy.version();
    let older = Estimate {
        limit: 4,
        recover_to: 4,
        version: version.saturating_sub(1),
    };
    assert!(version == 0 || !policy.adopt(older, now));
    let equal = Estimate {
        limit: 12,
        recover_to: 20,
        version,
    };
    assert!(policy.adopt(equal, now));
    assert_eq!(
        (policy.limit(), policy.good),
        (12, 16),
        "the more cautious of each"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_every_increase_until_it_has_passed() {
    let (mut policy, now) = steady(8);
    policy.set_limit(4, now);
    policy.on_refusal(
        (5, now + RTT),
        Some(Duration::from_secs(1)),
        0.132,
        &Alone,
        now + RTT,
    );
    let held = serve(&mut policy, &Alone, now + RTT, 6);
    assert_eq!(steps(&held), [4], "no climb within the second");
    let after = serve(&mut policy, &Alone, now + Duration::from_secs(2), 1);
    assert_eq!(steps(&after), [8]);
}

#[tokio::test(start_paused = true)]
async fn queueing_cuts_the_limit_to_the_calls_being_served_with_a_little_queue() {
    let (mut policy, now) = steady(40);
    // Half of each round trip queueing at 40 in flight: 20 were being served.
    let queueing = Verdict::Queueing {
        level: 40.0,
        queueing: 0.5,
        measured: 0.5,
    };
    policy.on_window(queueing, RTT.as_secs_f64(), &Alone, now);
    // 20 over (1 - tolerance / 2).
    assert_eq!((policy.limit(), policy.good), (21, 21));
    assert!(matches!(policy.phase, Phase::Regain(r) if r.former == 40));
}

#[tokio::test(start_paused = true)]
async fn the_backends_own_queue_cuts_by_what_waits_once_the_last_cut_can_show() {
    let (mut policy, now) = steady(16);
    let gauges = Gauges {
        running: 16.0,
        waiting: 3.0,
        kv_cache_usage: None,
        lag: Duration::from_secs(1),
    };
    policy.on_gauges(&gauges, now);
    assert_eq!((policy.limit(), policy.good), (13, 13));
    // Half a second later the gauges may still show the old load: no second cut.
    policy.on_gauges(&gauges, now + Duration::from_millis(500));
    assert_eq!(policy.limit(), 13);
    policy.on_gauges(&gauges, now + Duration::from_secs(1));
    assert_eq!(policy.limit(), 10);
}
