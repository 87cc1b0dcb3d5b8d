//! Backoff between retries of a failing request (object-store calls, start-up steps).

use std::time::{Duration, Instant};

/// Delays from `min`, doubling up to `max`, each stretched by a random 0–50 % (so that shards
/// and brokers that failed together do not retry together); optionally only until a deadline
/// or for a number of retries. One value per retried operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
    retries_left: Option<u32>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            max,
            deadline: None,
            retries_left: None,
        }
    }

    /// Retries only until `limit` from now.
    pub fn for_at_most(mut self, limit: Duration) -> Backoff {
        self.deadline = Some(Instant::now() + limit);
        self
    }

    /// At most `retries` retries.
    pub fn retries(mut self, retries: u32) -> Backoff {
        self.retries_left = Some(retries);
        self
    }

    /// Whether another retry is allowed (the deadline has not passed, retries are left).
    pub fn may_retry(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d) && self.retries_left != Some(0)
    }

    /// The base delay before the next retry (without its jitter), for log lines.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// The next delay, jittered, and moves on; None once no retry is allowed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if !self.may_retry() {
            return None;
        }
        if let Some(n) = &mut self.retries_left {
            *n -= 1;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(jitter(d))
    }

    /// Waits the next delay (on a shard, on its timer; elsewhere, by sleeping the thread) and
    /// returns true; false at once if no retry is allowed.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                crate::pause(d).await;
                true
            }
            None => false,
        }
    }
}

/// `d` stretched by 0–50 %, from the clock's nanoseconds (no random generator needed).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64((nanos % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        let bases: Vec<Duration> = (0..5)
            .map(|_| {
                let base = b.delay();
                let d = b.next_delay().unwrap();
                assert!(d >= base && d <= base + base / 2, "{d:?} from {base:?}");
                base
            })
            .collect();
        assert_eq!(bases, vec![ms(50), ms(100), ms(200), ms(300), ms(300)]);
    }

    #[test]
    fn retries_and_deadlines_end_the_retrying() {
        let ms = Duration::from_millis;
        let mut counted = Backoff::new(ms(1), ms(1)).retries(2);
        assert!(counted.next_delay().is_some() && counted.next_delay().is_some());
        assert!(counted.next_delay().is_none() && !counted.may_retry());
        let mut timed = Backoff::new(ms(1), ms(1)).for_at_most(Duration::ZERO);
        assert!(timed.next_delay().is_none());
        assert!(
            Backoff::new(ms(1), ms(1)).may_retry(),
            "unbounded by default"
        );
    }
}
