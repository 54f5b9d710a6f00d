//! Jittered exponential backoff for calls to a controller that may be away.

use std::time::Duration;

/// Backoff state: 100 ms doubling to `max`, with ±25 % jitter so a fleet does not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl Backoff {
    /// Backoff capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// The next pause (and grows the one after).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0; // 0..1
        base.mul_f64(0.75 + jitter * 0.5)
    }

    /// Waits the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the shortest pause after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Whether a gRPC failure is worth retrying (the controller is away or restarting, or — for
/// `ALREADY_EXISTS` — an earlier try of the same call is still ending there: a bundle upload cut
/// off on this side may still be open on the controller's for a moment, and it takes one upload
/// of a lease at a time).
pub fn transient(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable
            | Unknown
            | DeadlineExceeded
            | Cancelled
            | ResourceExhausted
            | Internal
            | AlreadyExists
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_still_open_on_the_controller_is_waited_for() {
        assert!(transient(&tonic::Status::already_exists(
            "being uploaded already"
        )));
        assert!(!transient(&tonic::Status::invalid_argument("too large")));
        assert!(!transient(&tonic::Status::aborted("lease lost")));
    }

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(75) && d[0] <= Duration::from_millis(125));
        assert!(d[7] <= Duration::from_millis(2500) && d[7] >= Duration::from_millis(1500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
