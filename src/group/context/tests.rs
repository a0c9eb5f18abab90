//! Group pacing's rules in a controller, through the adaptive-concurrency service against
//! `tower_test`'s mock (the harness of `backend::concurrency`'s service tests): a refused
//! call's permit held back, a climb handed out on time. Moved here from
//! `backend/concurrency/tests/service.rs` with the rules they test.

use std::time::Duration;

use super::GroupContext;
use crate::backend::concurrency::tests::service::{
    fixed, ok, ranging, request, send, status, Harness,
};
use crate::backend::concurrency::{Controller, Peers};
use crate::group::share::{GroupShare, Member};

/// This worker ("me", busy) in a group whose limit stays at `limit` unless back-pressure
/// lowers it, beside `others`.
fn in_group(limit: usize, others: Vec<Member>) -> Harness {
    let harness = fixed(limit);
    join(&harness.2, others);
    harness
}

/// Makes `controller` this worker ("me", busy) in a group beside `others`.
fn join(controller: &Controller, others: Vec<Member>) {
    controller.set_peers(Some(Box::new(GroupContext::new(GroupShare {
        key: "me".into(),
        demand: 100,
        others,
        echo: Duration::ZERO,
    }))));
}

fn member(key: &str, demand: usize, held: usize) -> Member {
    Member {
        key: key.into(),
        demand,
        held,
        in_flight: held,
    }
}

/// One call served in 100 ms (the smoothed round trip), then one refused after 10 ms:
/// how long after the refusal a permit was free again.
async fn permit_free_after_a_refusal((service, handle, _): &mut Harness) -> Duration {
    for (after, answer) in [(100, Ok(ok())), (10, Err(status(429, None)))] {
        assert!(service.poll_ready().is_ready());
        let call = service.call(request());
        let (_, reply) = handle.next_request().await.expect("call reached the mock");
        tokio::time::advance(Duration::from_millis(after)).await;
        match answer {
            Ok(response) => reply.send_response(response),
            Err(error) => reply.send_error(error),
        }
        let _ = call.await;
    }
    let refused = tokio::time::Instant::now();
    while service.poll_ready().is_pending() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    refused.elapsed()
}

#[tokio::test(start_paused = true)]
async fn in_a_group_a_refused_calls_permit_comes_back_a_round_trip_after_it_was_sent() {
    // Refused after 10 ms of a 100 ms round trip: out for 90 ms more, so a share that meets
    // a backend the others fill sends one call per round trip into it, not one per
    // millisecond.
    let mut harness = in_group(1, vec![member("idle", 0, 0)]);
    let waited = permit_free_after_a_refusal(&mut harness).await;
    assert_eq!(harness.2.limit(), 1);
    assert!(
        (Duration::from_millis(90)..=Duration::from_millis(92)).contains(&waited),
        "{waited:?}"
    );
    // Alone, the refusal's level is counted and the cut is enough: back at once.
    let mut harness = fixed(1);
    assert_eq!(
        permit_free_after_a_refusal(&mut harness).await,
        Duration::ZERO
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_whose_cut_took_none_of_this_workers_permits_keeps_its_permit_too() {
    // Of the group's 3, the other member's share is 2 (the unit left over goes to it, first
    // by key), this worker's 1. This worker's call is refused at the group's level 3 and
    // the limit falls to 2: the other member's share shrinks, this worker's stays 1, and
    // its permit would go straight back into the backend the other member fills until it
    // hears of the cut.
    let mut harness = in_group(3, vec![member("a", 100, 1)]);
    assert_eq!(harness.2.permits(), 1);
    let waited = permit_free_after_a_refusal(&mut harness).await;
    assert_eq!((harness.2.limit(), harness.2.permits()), (2, 1));
    assert!(
        (Duration::from_millis(90)..=Duration::from_millis(92)).contains(&waited),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_a_group_a_doubling_is_handed_out_on_time_while_no_call_finishes() {
    // The group's 4 doubles to 8 once this worker's 2 calls are answered: its share goes
    // from 2 to 4, paced over the 100 ms round trip. The calls sent next are all that
    // happens for a round trip (a burst's first calls finish together): the increase still
    // comes out on time, one permit at once and the other half a round trip later. Handed
    // out only as calls start and finish, it never came before the next answers.
    let (mut service, mut handle, controller) = ranging(4, 64);
    join(&controller, vec![member("a", 100, 2)]);
    assert_eq!(controller.permits(), 2);
    let (calls, replies) = send(&mut service, &mut handle, 2).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    for reply in replies {
        reply.send_response(ok());
    }
    for call in calls {
        assert_eq!(call.await, Ok(ok()));
    }
    assert_eq!((controller.limit(), controller.permits()), (8, 4));

    let doubled = tokio::time::Instant::now();
    let mut waits = Vec::new();
    let mut sent = Vec::new();
    for permit in 1..=4 {
        let free = tokio::time::timeout(Duration::from_secs(1), async {
            while service.poll_ready().is_pending() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            free.is_ok(),
            "permit {permit} of 4 did not come while no call finished"
        );
        waits.push(doubled.elapsed());
        sent.push(service.call(request()));
    }
    assert_eq!(controller.in_flight(), 4);
    assert!(waits[2] <= Duration::from_millis(2), "{waits:?}");
    assert!(
        (Duration::from_millis(49)..=Duration::from_millis(52)).contains(&waits[3]),
        "{waits:?}"
    );
}

/// A worker alone: every provided answer of [`Peers`].
#[derive(Debug)]
struct Lone;

impl Peers for Lone {}

fn context(others: Vec<Member>, echo: Duration) -> GroupContext {
    GroupContext::new(GroupShare {
        key: "me".into(),
        demand: 100,
        others,
        echo,
    })
}

#[test]
fn alone_in_the_group_every_rule_is_a_lone_workers() {
    let context = context(Vec::new(), Duration::from_millis(150));
    let alone = Lone;
    assert_eq!(context.permits(16), 16);
    assert_eq!(
        context.calls_per_success(16, 16),
        alone.calls_per_success(16, 16)
    );
    assert_eq!(context.overshoot_floor(16), alone.overshoot_floor(16));
    assert_eq!(
        context.failed_probe_cut(17, 16),
        alone.failed_probe_cut(17, 16)
    );
    let srtt = Duration::from_millis(100);
    assert_eq!(
        context.probe_heard_after(srtt),
        alone.probe_heard_after(srtt)
    );
    assert_eq!(context.steady_probe_due(100), alone.steady_probe_due(100));
    assert_eq!(context.regain_probe_every(), alone.regain_probe_every());
    assert_eq!(context.refusal_hold(0.1, 0.01, false), Duration::ZERO);
    assert!(!context.paces_climbs_on_time());
}

#[test]
fn beside_busy_members_refusals_read_low_and_the_members_take_turns() {
    let echo = Duration::from_millis(150);
    let second = context(vec![member("a", 100, 8), member("z", 100, 8)], echo);
    // This worker's 8 successes of a limit of 24 stand for the group's 24.
    assert_eq!(second.calls_per_success(24, 8), 3.0);
    assert_eq!(second.overshoot_floor(16), 16);
    assert_eq!(second.failed_probe_cut(17, 15), 16, "one below the reading");
    assert_eq!(
        second.failed_probe_cut(16, 16),
        16,
        "never below the good level"
    );
    let srtt = Duration::from_millis(100);
    assert_eq!(second.probe_heard_after(srtt), srtt + 2 * echo);
    // Second by key among the busy: half a count more, and half a second more below a
    // fallen level.
    assert_eq!(second.steady_probe_due(100), 150);
    assert_eq!(second.regain_probe_every(), Duration::from_millis(1500));
    assert!(second.paces_climbs_on_time());
    // A refusal that took none of this worker's permits holds its permit for the rest of
    // the round trip; one that took some does not.
    assert_eq!(
        second.refusal_hold(0.1, 0.01, false),
        Duration::from_secs_f64(0.09)
    );
    assert_eq!(second.refusal_hold(0.1, 0.01, true), Duration::ZERO);
}
