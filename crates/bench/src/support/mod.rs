//! Helpers shared by the rows, so that no row module imports another: the engine's stream
//! window, the daemon's batch sizes and store options, its batch stages as a "ms per batch"
//! line reports them, and what the machine says about a directory's bytes and a process's CPU
//! time. The Kafka harness of the end-to-end rows is [`kafka`].

pub mod kafka;

use journeyd_store_rocksdb::StoreOptions;
use journeyd_types::{time, Millis};
use std::path::Path;

/// The start and span of the engine's stream (30 days, so waits fall due inside it).
pub fn stream_window() -> (Millis, Millis) {
    let start = time::parse_rfc3339("2026-01-05T00:00:00Z").expect("a valid time");
    (start, 30 * time::DAY)
}

/// Events per batch (the daemon's `processing.batch_max_messages`).
pub const BATCH: usize = 1000;
/// Due timers read per batch at most (the daemon's `processing.timer_batch`).
pub const TIMER_BATCH: usize = 5000;

/// The store options of the daemon's defaults (`[store]` in the config).
pub fn daemon_store_options() -> StoreOptions {
    let config = journeyd::config::Config::default();
    StoreOptions {
        block_cache_bytes: (config.store.block_cache_mb as usize) << 20,
        state_cache_bytes: (config.store.state_cache_mb as usize) << 20,
        sync_writes: config.store.sync_writes,
        ..StoreOptions::default()
    }
}

/// The service's batch stages (`journeyd_batch_seconds{stage}`) a "ms per batch" line reports,
/// in its order.
pub const STAGES: [&str; 7] = [
    "collect",
    "prepare",
    "process",
    "produce",
    "write",
    "produce_wait",
    "write_wait",
];

/// What a "ms per batch" line says, after its count of batches.
pub const STAGES_LINE: &str = "all / collect / decode + due-timer scan / process / produce + acks / write / waiting for the previous batch's acks / for its write (sends and writes overlap the next batch)";

/// A "ms per batch" line's figures: ms per batch in all, then per stage of [`STAGES`].
pub fn stages_figures(all_ms: f64, stage_ms: [f64; STAGES.len()]) -> String {
    std::iter::once(all_ms)
        .chain(stage_ms)
        .map(|ms| format!("{ms:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Bytes of every file under `dir`, and of its SST files.
pub(crate) fn dir_bytes(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut all, mut sst) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, s) = dir_bytes(&entry.path())?;
            all += a;
            sst += s;
        } else {
            all += meta.len();
            if entry.path().extension().is_some_and(|e| e == "sst") {
                sst += meta.len();
            }
        }
    }
    Ok((all, sst))
}

/// The CPU time the process has used so far, all its threads (user + system), in seconds:
/// fields 14 and 15 of `/proc/PID/stat`, in clock ticks (`USER_HZ`, which Linux fixes at 100
/// for this interface).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_secs_of(&stat)
}

fn cpu_secs_of(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system_ticks_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 50 ticks.
        let stat = "4242 (jour) neyd) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_secs_of(stat), Some(3.0));
        assert_eq!(cpu_secs_of("4242 (journeyd) S 1"), None);
        // This process has used some CPU, and /proc says so.
        assert!(cpu_secs(std::process::id()).is_some());
    }
}
