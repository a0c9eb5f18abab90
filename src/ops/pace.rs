//! `--rate` for replays: parsing `N`, `N/s`, `N/m`, and a pacer that spaces writes
//! evenly so a replay never bursts into a topic the workers are draining.

use std::time::Duration;

use tokio::time::Instant;

/// Parses `--rate`: `N`, `N/s` or `N/m`, N > 0; returns records per second.
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, per_seconds) = match text.trim().split_once('/') {
        None => (text.trim(), 1.0),
        Some((n, "s" | "sec")) => (n, 1.0),
        Some((n, "m" | "min")) => (n, 60.0),
        Some(_) => return Err(format!("{text:?}: expected N, N/s or N/m")),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n / per_seconds),
        _ => Err(format!(
            "{text:?}: the rate must be a positive number, as in 50/s"
        )),
    }
}

/// Spaces writes evenly at a fixed rate; an idle spell does not buy a burst.
pub(crate) struct Pacer {
    period: Duration,
    /// When the next write may go; `None` before the first.
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / per_second),
            next: None,
        }
    }

    /// Waits for the next slot.
    pub async fn wait(&mut self) {
        let now = Instant::now();
        let at = self.next.map_or(now, |next| next.max(now));
        tokio::time::sleep_until(at).await;
        self.next = Some(at + self.period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_per_second_and_per_minute() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate(" 0.5/sec "), Ok(0.5));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        for bad in ["0", "-1/s", "fast", "5/h", "NaN", "inf/s", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_writes_and_does_not_burst_after_idling() {
        let mut pacer = Pacer::new(10.0);
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(400),
            "first at once, then every 100 ms"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_end = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(
            idle_end.elapsed(),
            Duration::from_millis(100),
            "one slot, not a backlog of 20"
        );
    }
}
