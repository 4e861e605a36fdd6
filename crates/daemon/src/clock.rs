//! The processing clock: real time, or real time sped up for demos (`--clock-speed N`).

use journeyd_types::Millis;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A clock that can run faster than real time from the moment it starts.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_wall: Millis,
    origin: Instant,
    speed: f64,
}

/// Real time in milliseconds since the epoch.
pub fn wall_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

impl Clock {
    /// A clock starting now at real time, running `speed` times faster.
    pub fn new(speed: f64) -> Clock {
        Clock {
            origin_wall: wall_now(),
            origin: Instant::now(),
            speed,
        }
    }

    /// The current processing time.
    pub fn now(&self) -> Millis {
        let elapsed = self.origin.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.origin_wall + elapsed as Millis
    }

    /// How fast it runs.
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_ahead() {
        let real = Clock::new(1.0);
        let fast = Clock::new(3600.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let ahead = fast.now() - real.now();
        assert!(
            ahead >= 60_000,
            "20 ms at 3600x is over a minute, got {ahead} ms"
        );
    }
}
