//! Whether the service is ready: it holds an assignment, every assigned partition has been
//! read to its head, and batches are landing (none has waited longer than
//! `processing.stall_timeout_secs` to be acknowledged and written).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Batches taken into processing and not landed yet, and when the pipeline last moved.
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Moving>,
}

#[derive(Debug, Clone, Copy)]
struct Moving {
    /// Batches begun (taken from the consumer or the timer index) and not yet written.
    outstanding: usize,
    /// When a batch last landed, or when the pipeline last went from idle to busy.
    last: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            inner: Mutex::new(Moving {
                outstanding: 0,
                last: Instant::now(),
            }),
        }
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Moving> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A batch is taken into processing.
    pub fn begun(&self) {
        let mut m = self.lock();
        if m.outstanding == 0 {
            m.last = Instant::now();
        }
        m.outstanding += 1;
    }

    /// A batch is written (its actions acknowledged, its state and offsets in the store).
    pub fn landed(&self) {
        let mut m = self.lock();
        m.outstanding = m.outstanding.saturating_sub(1);
        m.last = Instant::now();
    }

    /// How long the oldest outstanding work has gone without a batch landing, when that is
    /// longer than `bound`.
    pub fn stalled(&self, bound: Duration) -> Option<Duration> {
        let m = *self.lock();
        let waited = m.last.elapsed();
        (m.outstanding > 0 && waited > bound).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_stalls_when_begun_work_does_not_land_within_the_bound() {
        let p = Progress::default();
        let bound = Duration::from_millis(50);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(p.stalled(bound), None, "idle is not stalled");
        p.begun();
        assert_eq!(
            p.stalled(bound),
            None,
            "idle until now: the wait starts now"
        );
        p.begun();
        std::thread::sleep(Duration::from_millis(80));
        assert!(p.stalled(bound).is_some_and(|w| w >= bound));
        p.landed();
        assert_eq!(p.stalled(bound), None, "a batch landed");
        std::thread::sleep(Duration::from_millis(80));
        assert!(p.stalled(bound).is_some(), "the second has not");
        p.landed();
        assert_eq!(p.stalled(bound), None, "all landed");
    }
}
