//! The evidence: what the calls and the backend's own gauges say about its load, kept
//! apart from what the policy decides with it. Calls are gathered into windows of about a
//! round trip (`window`); each window's latency is judged against the no-load baseline
//! (`baseline`) less the learned noise (`noise`), and ends in one [`Verdict`].

mod baseline;
mod noise;
mod window;

pub(super) use window::Window;

use std::time::Duration;

use tokio::time::Instant;

use super::ConcurrencySettings;
use baseline::Baseline;
use noise::NoiseFilter;

/// Weight of a new round trip in the smoothed RTT (TCP's 1/8).
const SRTT_GAIN: f64 = 0.125;
/// KV-cache use above which a vLLM server is about to preempt: no increase.
const KV_CACHE_FULL: f64 = 0.95;

/// One reading of the backend's own saturation gauges (vLLM, llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Gauges {
    /// Requests the server is serving now (all its clients').
    pub running: f64,
    /// Requests waiting inside the server for a slot.
    pub waiting: f64,
    /// Fraction of the KV cache in use (vLLM), in [0, 1].
    pub kv_cache_usage: Option<f64>,
    /// How long after a cut the gauges may still show the old load.
    pub lag: Duration,
}

impl Gauges {
    /// Whether an increase would only queue inside the server.
    fn saturated(&self) -> bool {
        self.waiting >= 1.0 || self.kv_cache_usage.is_some_and(|u| u >= KV_CACHE_FULL)
    }
}

/// What a window of evidence says about the limit it was gathered under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// A run of queueing cuts did not shorten the queue: it was noise, now learned; the
    /// limit goes back to where the run began.
    Noise { from: usize },
    /// More of the round trip than the tolerance was queueing, with the limit in use:
    /// `level` calls in flight (mean), `queueing` of the round trip (noise removed),
    /// `measured` (as measured).
    Queueing {
        level: f64,
        queueing: f64,
        measured: f64,
    },
    /// No queueing beyond the tolerance; `reached`, whether demand reached the limit (an
    /// increase would be used); `top_level`, the highest level a success was sent at.
    Clean { reached: bool, top_level: usize },
    /// Queueing while calls went out well below the limit (a crowd of retries, another
    /// tenant's burst), or a server whose gauges say it is full: nothing to act on.
    Unclear,
}

/// See the module documentation. Lives as long as its controller.
#[derive(Debug)]
pub(super) struct Evidence {
    /// Calls sent and not yet finished.
    in_flight: usize,
    /// Bumped when the limit rises, and when the calls of a cut have drained below it: only
    /// calls sent under the current limit judge it.
    epoch: u64,
    /// A cut is waiting for the calls in flight to drain below it before the next epoch.
    epoch_pending: bool,
    /// Smoothed round-trip time of successes, seconds: the length of a window.
    srtt: Option<f64>,
    window: Window,
    baseline: Baseline,
    noise: NoiseFilter,
    /// The backend's own gauges while they are read; they replace latency as the measure
    /// of queueing at the backend.
    gauges: Option<Gauges>,
}

impl Evidence {
    pub(super) fn new(settings: &ConcurrencySettings, now: Instant) -> Self {
        let tolerance = settings.queue_tolerance;
        Self {
            in_flight: 0,
            epoch: 0,
            epoch_pending: false,
            srtt: None,
            window: Window::new(now),
            baseline: Baseline::new(
                Duration::from_millis(settings.baseline_window_ms),
                tolerance / 2.0,
            ),
            noise: NoiseFilter::new(tolerance, settings.baseline_window_ms, now),
            gauges: None,
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The smoothed round trip in seconds, 0 before the first success.
    pub(super) fn srtt(&self) -> f64 {
        self.srtt.unwrap_or(0.0)
    }

    /// A call is sent while this worker holds `permits`, `unreleased` of them still being
    /// paced out: returns this worker's calls in flight, itself included, and the epoch.
    pub(super) fn sent(&mut self, permits: usize, unreleased: usize) -> (usize, u64) {
        self.in_flight += 1;
        // Only a level actually reached counts: with part of an increase still paced, a
        // window judged clean would double a limit never tried.
        self.window.reached_limit |= unreleased == 0 && self.in_flight >= permits;
        (self.in_flight, self.epoch)
    }

    /// A call finished, whatever its outcome, this worker holding `permits`.
    pub(super) fn finished(&mut self, permits: usize, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.epoch_pending && self.in_flight <= permits {
            self.epoch += 1;
            self.epoch_pending = false;
            self.window = Window::new(now);
        }
    }

    /// A success after `rtt` seconds and `tokens` tokens, of a call sent at `level` (with
    /// `own` of this worker's) in `epoch`.
    pub(super) fn succeeded(
        &mut self,
        rtt: f64,
        tokens: u64,
        (level, own, epoch): (usize, usize, u64),
        now: Instant,
    ) {
        self.srtt = Some(self.srtt.map_or(rtt, |s| s + SRTT_GAIN * (rtt - s)));
        let base = self.baseline.observe(tokens, rtt, now);
        if epoch == self.epoch && !self.epoch_pending {
            self.window.record(rtt, rtt - base, level, own);
        }
    }

    /// A call sent in the current window was refused: the refusal judges it.
    pub(super) fn refused(&mut self) {
        self.window.back_pressure = true;
    }

    /// The limit moved: up opens a new epoch and window at once; down waits for the calls
    /// sent above it to drain.
    pub(super) fn limit_moved(&mut self, up: bool, now: Instant) {
        if up {
            self.epoch += 1;
            self.epoch_pending = false;
            self.window = Window::new(now);
        } else {
            self.epoch_pending = true;
        }
    }

    /// Closes the window once it is one smoothed RTT long and holds back half this
    /// worker's calls in flight (completions bunch up: calls sent together finish
    /// together, and a smaller sample reads the bunching as queueing). `changed_at`: when
    /// the limit last moved; `unreleased`: permits of an increase still paced out.
    pub(super) fn close_window(
        &mut self,
        now: Instant,
        changed_at: Instant,
        unreleased: usize,
    ) -> Option<Window> {
        let srtt = self.srtt?;
        let window = &self.window;
        let samples = window.samples as f64;
        let elapsed = now.duration_since(window.opened).as_secs_f64();
        if samples < 1.0 || samples < window.own / samples / 2.0 || elapsed < srtt {
            return None;
        }
        // An increase still being paced out has not been tried yet: the window stays open
        // until it is (or trouble closes it), so the next step comes as soon as this one
        // is proven rather than a whole window later.
        let untried = !window.reached_limit && !window.back_pressure;
        if untried && unreleased > 0 {
            return None;
        }
        // Released but not yet taken up (the calls it was raised for are a moment from
        // starting): closed now, the window would prove nothing and cost a round trip
        // before the next step. It stays open up to a second round trip.
        if untried && window.opened == changed_at && elapsed < 2.0 * srtt {
            return None;
        }
        Some(std::mem::replace(&mut self.window, Window::new(now)))
    }

    /// What a closed `window` (free of refusals) says about `limit`; `steady`, whether the
    /// limit has held long enough to end a run of queueing cuts.
    pub(super) fn verdict(
        &mut self,
        window: &Window,
        limit: usize,
        steady: bool,
        now: Instant,
    ) -> Verdict {
        let measured = window.queueing_share();
        if let Some(from) = self.noise.learn(limit, measured, now) {
            return Verdict::Noise { from };
        }
        let clean = Verdict::Clean {
            reached: window.reached_limit,
            top_level: window.top_level,
        };
        if let Some(gauges) = self.gauges {
            // The server says itself what waits inside it: latency, which also grows as a
            // batching server's batch fills, decides nothing.
            return if gauges.saturated() {
                Verdict::Unclear
            } else {
                clean
            };
        }
        let tolerance = self.noise.tolerance();
        let queueing = (measured - self.noise.level(now)).max(0.0);
        let level = window.mean_level();
        if queueing > tolerance && level >= limit as f64 * (1.0 - tolerance) {
            Verdict::Queueing {
                level,
                queueing,
                measured,
            }
        } else if queueing <= tolerance {
            self.noise.settle(limit, steady);
            clean
        } else {
            Verdict::Unclear
        }
    }

    /// The limit was cut from `from` to `limit` for a window's `measured` queueing.
    pub(super) fn queueing_cut(&mut self, measured: f64, from: usize, limit: usize) {
        self.noise.cut(measured, from, limit);
    }

    /// A reading of the backend's own gauges (`None`: there are none, or they are gone).
    pub(super) fn set_gauges(&mut self, gauges: Option<Gauges>) {
        self.gauges = gauges;
    }
}
