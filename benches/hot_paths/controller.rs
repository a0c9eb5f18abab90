//! The adaptive controller's update: about a thousand calls started and finished against
//! a simulated backend of 24 slots that answers 429 above them, in rounds of as many
//! calls as the controller allows, in paused (virtual) time so every run takes the same
//! decisions. The limit grows from 8, overshoots, is cut and probes again.

use std::hint::black_box;
use std::time::Duration;

use gungraun::{library_benchmark, library_benchmark_group};
use sluice::backend::concurrency::{ConcurrencySettings, Controller};
use sluice::backend::{BackendError, ChatRequest, ChatResponse};
use sluice::envelope::Usage;
use tokio::runtime::Runtime;

use crate::fixtures;

/// Calls the simulated backend serves at once.
const SLOTS: usize = 24;
/// Calls made in all.
const CALLS: usize = 1_000;

pub struct Setup {
    runtime: Runtime,
    controller: Controller,
    request: ChatRequest,
    ok: Result<ChatResponse, BackendError>,
    refused: Result<ChatResponse, BackendError>,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    // Instants are read from the paused clock of the runtime the controller is made in.
    let controller = {
        let _entered = runtime.enter();
        Controller::new(ConcurrencySettings::default())
    };
    Setup {
        runtime,
        controller,
        request: ChatRequest::new(fixtures::chat_body(), None),
        ok: Ok(ChatResponse {
            body: fixtures::completion(),
            usage: Some(Usage {
                prompt_tokens: 214,
                completion_tokens: 71,
            }),
        }),
        refused: Err(BackendError::Status {
            status: 429,
            message: "too many requests".into(),
            retry_after: None,
        }),
    }
}

// Runs the rounds; returns the limit reached.
#[library_benchmark]
#[bench::slots_24_calls_1000(setup())]
fn update(setup: Setup) -> usize {
    let Setup {
        runtime,
        controller,
        request,
        ok,
        refused,
    } = setup;
    runtime.block_on(async {
        let mut calls = 0;
        let mut tickets = Vec::with_capacity(256);
        while calls < CALLS {
            let round = controller.permits().min(CALLS - calls);
            tickets.extend((0..round).map(|_| controller.start(black_box(&request))));
            // 100 ms plus 2 ms for each of the 71 tokens, give or take a few: the backend
            // serves its slots without queueing and refuses the rest at once.
            let rtt = 240 + (calls % 5) as u64;
            tokio::time::advance(Duration::from_millis(rtt)).await;
            for (i, ticket) in tickets.drain(..).enumerate() {
                let result = if i < SLOTS { &ok } else { &refused };
                controller.finish(ticket, Some(black_box(result)));
            }
            calls += round;
        }
    });
    black_box(controller.limit())
}

library_benchmark_group!(name = controller_group, benchmarks = [update]);
