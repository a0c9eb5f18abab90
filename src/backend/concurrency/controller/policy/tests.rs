//! The policy alone, in a group and out of it, driven call by call on a clock of its own:
//! what a failed probe costs, when the next probe is due, how a climb below the level the
//! capacity fell from goes.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::State;
use crate::backend::concurrency::controller::CallTicket;
use crate::backend::concurrency::{ConcurrencySettings, Estimate, GroupShare, Member};
use crate::backend::BackendError;

const RTT: Duration = Duration::from_millis(132);

/// A worker at a steady `limit`, known to be good (`recover_to`), and the time.
fn steady(limit: usize) -> (State, Semaphore, Instant) {
    let now = Instant::now();
    let settings = ConcurrencySettings {
        initial: limit,
        ..ConcurrencySettings::default()
    };
    let mut state = State::new(settings, now);
    state.recover_to = limit;
    (state, Semaphore::new(limit), now)
}

/// This worker ("me") beside one other member as busy as it is.
fn beside_a_busy_member(held: usize) -> GroupShare {
    GroupShare {
        key: "me".into(),
        demand: 100,
        others: vec![Member {
            key: "other".into(),
            demand: 100,
            held,
            in_flight: held,
        }],
        echo: Duration::ZERO,
    }
}

fn sent(state: &mut State, semaphore: &Semaphore, now: Instant) -> CallTicket {
    let (level, own, epoch) = state.start(semaphore, now);
    CallTicket {
        level,
        own,
        started: now,
        tokens: 32,
        epoch,
    }
}

fn too_many_requests() -> BackendError {
    BackendError::Status {
        status: 429,
        message: String::new(),
        retry_after: None,
    }
}

/// Round trips of `RTT` from `from`, each sending as many calls as this worker has
/// permits and answering every one: the limit after each, with the time since `from`.
fn serve(
    state: &mut State,
    semaphore: &Semaphore,
    from: Instant,
    rounds: usize,
) -> Vec<(Duration, usize)> {
    let mut now = from;
    let mut limits = Vec::new();
    for _ in 0..rounds {
        let calls = state.permits().max(1);
        let tickets: Vec<CallTicket> = (0..calls).map(|_| sent(state, semaphore, now)).collect();
        now += RTT;
        for ticket in tickets {
            state.on_success(semaphore, ticket, 32, now);
            state.on_finished(semaphore, now);
        }
        limits.push((now.duration_since(from), state.limit()));
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

#[tokio::test(start_paused = true)]
async fn in_a_group_a_failed_probe_falls_two_below_the_level_it_was_refused_at() {
    for (grouped, expected) in [(false, 17), (true, 16)] {
        let (mut state, semaphore, now) = steady(16);
        if grouped {
            state.set_group(&semaphore, Some(beside_a_busy_member(8)), now);
        }
        // A probe two above the good level, refused at its top.
        state.set_limit(&semaphore, 18, now);
        let mut ticket = sent(&mut state, &semaphore, now);
        ticket.level = 18;
        state.on_back_pressure(&semaphore, ticket, &too_many_requests(), now);
        // Alone, the refusal's level is this worker's own calls: 17 is the reading. In a
        // group it counts the other's calls as reckoned, and 17 was often refused too.
        assert_eq!(state.limit(), expected, "grouped: {grouped}");
        assert_eq!(state.failed_probes, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_another_members_refusal_ended_failed_here_too() {
    let (mut state, semaphore, now) = steady(16);
    state.set_group(&semaphore, Some(beside_a_busy_member(8)), now);
    state.tentative = true;
    // The group probes 17 over 16 known good; another member is refused and cuts to 16.
    let probe = Estimate {
        limit: 17,
        recover_to: 16,
        version: state.version + 1,
    };
    assert!(state.adopt(&semaphore, probe, now));
    let cut = Estimate {
        limit: 16,
        recover_to: 16,
        version: state.version + 1,
    };
    assert!(state.adopt(&semaphore, cut, now));
    assert_eq!(state.failed_probes, 1);
    assert_eq!(state.probe_backoff, 2, "the next probe waits twice as long");
    assert!(
        !state.tentative,
        "a first search's quick probes end when any member's probe fails"
    );
}

/// When the first probe above 16 came, alone or beside a busy member, from a steady 16
/// that `prepare` may change.
fn first_probe(grouped: bool, prepare: impl Fn(&mut State, Instant)) -> Duration {
    let (mut state, semaphore, now) = steady(16);
    if grouped {
        state.set_group(&semaphore, Some(beside_a_busy_member(8)), now);
    }
    prepare(&mut state, now);
    let limits = serve(&mut state, &semaphore, now, 40);
    limits
        .iter()
        .find(|(_, limit)| *limit > 16)
        .map(|(at, _)| *at)
        .expect("a probe")
}

#[tokio::test(start_paused = true)]
async fn in_a_group_a_probe_falls_due_after_as_many_calls_as_alone() {
    let alone = first_probe(false, |_, _| {});
    let grouped = first_probe(true, |_, _| {});
    // Alone 16 calls a round trip: 100 calls in 7, judged at the end of the next window.
    // In a group of two, this worker's 8 a round trip stand for the group's 16.
    assert_eq!(alone, RTT * 8);
    assert_eq!(grouped, alone, "not twice as long");
}

#[tokio::test(start_paused = true)]
async fn below_the_former_level_probes_step_by_one_and_go_back_to_it_past_a_failed_one() {
    let climb = |failed_at: Option<usize>| {
        let (mut state, semaphore, now) = steady(16);
        state.former = Some((32, now));
        state.failed_below_former = failed_at;
        let from = now + super::judge::FORMER_SETTLES;
        let limits = serve(&mut state, &semaphore, from, 60);
        steps(&limits)[..4].to_vec()
    };
    // A probe to 17 had failed: 17 and 18 holding now is capacity come back.
    assert_eq!(climb(Some(17)), [16, 17, 18, 32]);
    // None had: this may be a climb back from a cut below the capacity.
    assert_eq!(climb(None), [16, 17, 18, 19]);
}

#[tokio::test(start_paused = true)]
async fn below_the_former_level_a_group_probes_every_second() {
    // The capacity fell from 32 a while ago; probes by count are far off.
    let fallen = |state: &mut State, now: Instant| {
        state.former = Some((32, now));
        state.probe_backoff = 8;
    };
    // The first round trip that ends at or after the wait.
    assert_eq!(first_probe(false, fallen), RTT * 16, "alone: 2 s");
    assert_eq!(first_probe(true, fallen), RTT * 8, "in a group: 1 s");
}

#[tokio::test(start_paused = true)]
async fn in_a_group_a_probe_below_the_former_level_holds_once_the_others_could_have_refused_it() {
    // From the probe to 17 to the step to 18, every call answered.
    let next_step_after = |echo: Duration| {
        let (mut state, semaphore, now) = steady(16);
        let mut group = beside_a_busy_member(8);
        group.echo = echo;
        state.set_group(&semaphore, Some(group), now);
        state.former = Some((32, now));
        let limits = serve(
            &mut state,
            &semaphore,
            now + super::judge::FORMER_SETTLES,
            40,
        );
        let at = |level: usize| {
            limits
                .iter()
                .find(|(_, limit)| *limit >= level)
                .map(|(at, _)| *at)
                .expect("reached")
        };
        at(18) - at(17)
    };
    // The other member hears of the probe an echo after it, and this one hears of the
    // other's refusal an echo later.
    let echoed = next_step_after(Duration::from_millis(150));
    assert!(echoed >= RTT + Duration::from_millis(300), "{echoed:?}");
    let at_once = next_step_after(Duration::ZERO);
    assert!(at_once < echoed, "{at_once:?}");
}

#[tokio::test(start_paused = true)]
async fn in_a_group_the_first_searchs_overshoot_reads_no_lower_than_the_level_it_proved() {
    for (grouped, expected) in [(false, 12), (true, 16)] {
        let now = Instant::now();
        let settings = ConcurrencySettings {
            initial: 16,
            ..ConcurrencySettings::default()
        };
        let mut state = State::new(settings, now);
        let semaphore = Semaphore::new(16);
        if grouped {
            state.set_group(&semaphore, Some(beside_a_busy_member(8)), now);
        }
        // The first search: 16 held for a clean round trip, so the limit doubled.
        let limits = serve(&mut state, &semaphore, now, 1);
        assert_eq!(steps(&limits), [32], "grouped: {grouped}");
        // A call of the overshoot is refused at a level read as 13: alone that is this
        // worker's own calls, and the capacity. In a group the others' calls are reckoned,
        // and while everyone paces the doubling in they read low; 16 just held.
        let mut ticket = sent(&mut state, &semaphore, now + RTT);
        ticket.level = 13;
        state.on_back_pressure(&semaphore, ticket, &too_many_requests(), now + RTT);
        assert_eq!(state.limit(), expected, "grouped: {grouped}");
        assert_eq!(state.recover_to, expected, "grouped: {grouped}");
        // A call sent well after the search ended and refused at 11 reads what it says
        // either way: the capacity may have fallen, and nothing the search proved holds.
        let later = now + 4 * RTT;
        let mut ticket = sent(&mut state, &semaphore, later);
        ticket.level = 11;
        state.on_back_pressure(&semaphore, ticket, &too_many_requests(), later);
        assert_eq!(state.limit(), 10, "grouped: {grouped}");
    }
}
