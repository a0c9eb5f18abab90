//! What to send and when: human durations (`30s`, `500ms`, `2m`), and the send plan —
//! N requests open-loop at a fixed rate (each one at its own instant, however many are
//! still outstanding), or as fast as a bounded number of outstanding sends allows.

use std::time::Duration;

/// Parses `500ms`, `30s`, `1.5s`, `2m`, `1h`: a non-negative number and a unit.
/// A bare number is refused, so `--timeout 120` cannot silently mean milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m or h (e.g. 30s)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// How many requests, and how they are spread in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Requests to send; at least 1.
    pub requests: u64,
    /// Requests per second, open loop; `None` sends as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Most sends outstanding at once when there is no rate.
    pub concurrency: usize,
}

impl Plan {
    /// From the command line: `--requests N [--rate R]` or `--rate R --duration D`.
    pub fn new(
        requests: Option<u64>,
        rate: Option<f64>,
        duration: Option<Duration>,
        concurrency: usize,
    ) -> Result<Plan, String> {
        if let Some(rate) = rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("--rate must be a positive number, not {rate}"));
            }
        }
        let requests = match (requests, rate, duration) {
            (Some(_), _, Some(_)) => {
                return Err("give --requests or --duration, not both".into());
            }
            (Some(n), _, None) => n,
            (None, Some(rate), Some(d)) => (rate * d.as_secs_f64()).round() as u64,
            (None, None, Some(_)) => return Err("--duration needs --rate".into()),
            (None, _, None) => {
                return Err("say how much to send: --requests N, or --rate R --duration D".into())
            }
        };
        if requests == 0 {
            return Err("the plan sends no request: raise --requests, --rate or --duration".into());
        }
        if concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        Ok(Plan {
            requests,
            rate,
            concurrency,
        })
    }

    /// When request `index` is due, counted from the start of sending; `None` without a rate.
    pub(crate) fn due(&self, index: u64) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(index as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("30", "needs a unit"),
            ("", "needs a unit"),
            ("s", "number"),
            ("10 s", "unknown unit"),
            ("5d", "unknown unit"),
            ("-1s", "number"),
            ("1.2.3s", "number"),
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn rate_and_duration_give_the_count() {
        let plan = Plan::new(None, Some(200.0), Some(Duration::from_secs(30)), 8).unwrap();
        assert_eq!(plan.requests, 6000);
        assert_eq!(plan.due(0), Some(Duration::ZERO));
        assert_eq!(plan.due(400), Some(Duration::from_secs(2)));
        assert_eq!(
            plan.due(5999),
            Some(Duration::from_secs_f64(5999.0 / 200.0))
        );
    }

    #[test]
    fn requests_alone_go_as_fast_as_allowed() {
        let plan = Plan::new(Some(10), None, None, 4).unwrap();
        assert_eq!(plan.due(9), None);
        assert_eq!(plan.due(plan.requests - 1), None, "no rate: no schedule");
        let paced = Plan::new(Some(10), Some(5.0), None, 4).unwrap();
        assert_eq!(paced.due(5), Some(Duration::from_secs(1)));
    }

    #[test]
    fn contradictory_or_empty_plans_are_refused() {
        let d = Some(Duration::from_secs(1));
        assert!(Plan::new(Some(5), Some(1.0), d, 1).is_err());
        assert!(Plan::new(None, None, d, 1).is_err());
        assert!(Plan::new(None, None, None, 1).is_err());
        assert!(Plan::new(None, Some(0.0), d, 1).is_err());
        assert!(Plan::new(None, Some(f64::NAN), d, 1).is_err());
        assert!(Plan::new(None, Some(0.1), Some(Duration::from_secs(1)), 1).is_err());
        assert!(Plan::new(Some(0), None, None, 1).is_err());
        assert!(Plan::new(Some(1), None, None, 0).is_err());
    }
}
