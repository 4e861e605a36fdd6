//! Prometheus metrics: one registry, registered once at start. Labels are low-cardinality only
//! (journey ids, channels, reasons, partitions): never a customer id.

use crate::processor::Tally;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric journeyd exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages consumed, by topic.
    pub events_consumed: IntCounterVec,
    /// Messages sent to the dead-letter topic, by reason.
    pub events_rejected: IntCounterVec,
    /// Actions produced and acknowledged, by channel and kind.
    pub actions: IntCounterVec,
    /// Journey entries, by journey.
    pub entries: IntCounterVec,
    /// Steps run, by journey.
    pub steps: IntCounterVec,
    /// Instance ends, by journey and reason.
    pub exits: IntCounterVec,
    /// Conversions, by journey.
    pub conversions: IntCounterVec,
    /// Suppressed sends, by reason.
    pub suppressions: IntCounterVec,
    /// Expressions that failed to evaluate, by journey.
    pub expression_failures: IntCounterVec,
    /// Stored states that could not be read.
    pub corrupt_states: IntCounter,
    /// Timers fired.
    pub timers_fired: IntCounter,
    /// Entries in the timer index.
    pub timers_pending: IntGauge,
    /// How late the oldest due timer is, in seconds (0 when none is due).
    pub timer_lag_seconds: prometheus::Gauge,
    /// Consumer lag in messages, by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// From an event's Kafka timestamp to the acknowledgement of its actions.
    pub event_to_action_seconds: Histogram,
    /// Time to process and commit one batch, by stage.
    pub batch_seconds: HistogramVec,
    /// Batches that had to be retried (Kafka or store trouble).
    pub batch_retries: IntCounter,
    /// Approximate RocksDB size.
    pub store_bytes: IntGauge,
    /// Customers in the store.
    pub customers: IntGauge,
    /// Journey reloads, by result (ok, refused).
    pub reloads: IntCounterVec,
    /// Actions Kafka refused for good, sent to the action dead-letter topic, by reason.
    pub actions_dead_lettered: IntCounterVec,
    /// Customers quarantined: their processing failed and their input was dead-lettered.
    pub quarantined: IntCounter,
    /// Customers quarantined now.
    pub quarantined_now: IntGauge,
    /// Dead letters Kafka refused too (logged, then dropped), by kind and reason.
    pub output_lost: IntCounterVec,
    /// Customers given an audience run, by journey.
    pub audience_customers: IntCounterVec,
    /// Changelog records read to restore partitions.
    pub restored_records: IntCounter,
    /// The counts kept with the partitions this replica owns (see
    /// `journeyd_engine::report`), set from the store with the other store gauges.
    pub partition_counts: PartitionGauges,
    /// Changelog records left to read to finish the restores under way.
    pub restore_remaining: IntGauge,
    /// Changelog records produced.
    pub changelog_records: IntCounter,
    /// Events skipped because a restored state already held them.
    pub events_already_applied: IntCounter,
    /// Changelog records read into standby copies.
    pub standby_records: IntCounter,
    /// Batch transactions committed (`exactly_once`).
    pub transactions_committed: IntCounter,
    /// Batch transactions aborted, each replayed from the last committed state
    /// (`exactly_once`).
    pub transactions_aborted: IntCounter,
}

/// Gauges set from the counts kept with the partitions this replica owns: they move with a
/// partition, so they are gauges, not counters.
#[derive(Debug, Clone)]
pub struct PartitionGauges {
    /// Entries, by journey.
    pub entered: IntGaugeVec,
    /// Goals reached, by journey.
    pub goals: IntGaugeVec,
    /// Times a step was reached, by journey and step.
    pub reached: IntGaugeVec,
    /// Instances waiting at a step now, by journey and step.
    pub waiting: IntGaugeVec,
    /// Sends emitted, by journey, step and channel.
    pub sent: IntGaugeVec,
    /// Sends suppressed, by journey, step and reason.
    pub suppressed: IntGaugeVec,
    /// The label sets of the last [`PartitionGauges::set`], by gauge.
    set_before: std::sync::Arc<std::sync::Mutex<[std::collections::BTreeSet<Vec<String>>; 6]>>,
}

impl PartitionGauges {
    fn new(r: &Registry) -> prometheus::Result<PartitionGauges> {
        const OWNED: &str = "summed over the input partitions this replica owns (kept with their state, so they move with a partition)";
        let vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, format!("{help}, {OWNED}.")), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(PartitionGauges {
            entered: vec(
                "journeyd_partition_entries",
                "Journey entries",
                &["journey"],
            )?,
            goals: vec("journeyd_partition_goals", "Goals reached", &["journey"])?,
            reached: vec(
                "journeyd_step_reached",
                "Times each step was reached",
                &["journey", "step"],
            )?,
            waiting: vec(
                "journeyd_step_waiting",
                "Instances waiting at each step now",
                &["journey", "step"],
            )?,
            sent: vec(
                "journeyd_step_sent",
                "Sends each step emitted, by channel",
                &["journey", "step", "channel"],
            )?,
            suppressed: vec(
                "journeyd_step_suppressed",
                "Sends of each step suppressed, by reason",
                &["journey", "step", "reason"],
            )?,
            set_before: Default::default(),
        })
    }

    /// Sets every gauge from `counts`; the label sets no longer counted go after the others
    /// are set, so a scrape meanwhile never misses a series that still counts.
    pub fn set(&self, counts: &journeyd_engine::report::Counts, engine: &journeyd_engine::Engine) {
        let mut now: [std::collections::BTreeSet<Vec<String>>; 6] = Default::default();
        let mut put = |k: usize, g: &IntGaugeVec, labels: Vec<&str>, n: i64| {
            g.with_label_values(&labels).set(n);
            now[k].insert(labels.into_iter().map(str::to_owned).collect());
        };
        for (j, c) in &counts.journeys {
            let j = j.as_str();
            put(0, &self.entered, vec![j], c.entered as i64);
            put(1, &self.goals, vec![j], c.goal_reached as i64);
            for (s, sc) in &c.steps {
                put(2, &self.reached, vec![j, s], sc.reached as i64);
                for (channel, n) in &sc.sent {
                    put(3, &self.sent, vec![j, s, channel], *n as i64);
                }
                for (reason, n) in &sc.suppressed {
                    put(4, &self.suppressed, vec![j, s, reason], *n as i64);
                }
            }
            for (s, n) in c.waiting_by_step(engine, j) {
                put(5, &self.waiting, vec![j, &s], n);
            }
        }
        let mut before = self.set_before.lock().unwrap_or_else(|p| p.into_inner());
        let gauges = [
            &self.entered,
            &self.goals,
            &self.reached,
            &self.sent,
            &self.suppressed,
            &self.waiting,
        ];
        for (k, g) in gauges.into_iter().enumerate() {
            for old in &before[k] {
                if !now[k].contains(old) {
                    let labels: Vec<&str> = old.iter().map(String::as_str).collect();
                    let _ = g.remove_label_values(&labels);
                }
            }
        }
        *before = now;
    }
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let int_counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let latency_buckets = vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
        ];
        let event_to_action_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "journeyd_event_to_action_seconds",
                "Seconds from an event's Kafka timestamp to the acknowledgement of the actions it caused.",
            )
            .buckets(latency_buckets.clone()),
        )?;
        r.register(Box::new(event_to_action_seconds.clone()))?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "journeyd_batch_seconds",
                "Seconds per batch stage (collect, prepare, process, produce, write, gauges).",
            )
            .buckets(latency_buckets),
            &["stage"],
        )?;
        r.register(Box::new(batch_seconds.clone()))?;
        let timer_lag_seconds = prometheus::Gauge::new(
            "journeyd_timer_lag_seconds",
            "How late the oldest due timer is, in seconds of the processing clock (0 when none is due).",
        )?;
        r.register(Box::new(timer_lag_seconds.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "journeyd_consumer_lag_messages",
                "Messages not yet consumed, by topic and partition.",
            ),
            &["topic", "partition"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        Ok(Metrics {
            restored_records: int_counter(
                "journeyd_restored_records_total",
                "Changelog records read to restore the customers of assigned partitions.",
            )?,
            restore_remaining: gauge(
                "journeyd_restore_remaining_records",
                "Changelog records left to read by the restores under way (0: none restoring).",
            )?,
            changelog_records: int_counter(
                "journeyd_changelog_records_total",
                "Changelog records produced and acknowledged.",
            )?,
            standby_records: int_counter(
                "journeyd_standby_records_total",
                "Changelog records read into the standby copies of partitions this replica does not own (store.standby_replicas).",
            )?,
            transactions_committed: int_counter(
                "journeyd_transactions_committed_total",
                "Batch transactions committed (processing.guarantee = exactly_once).",
            )?,
            transactions_aborted: int_counter(
                "journeyd_transactions_aborted_total",
                "Batch transactions aborted, each replayed from the last committed state (a rebalance moved the group on, or Kafka did not take all of the batch).",
            )?,
            events_already_applied: int_counter(
                "journeyd_events_already_applied_total",
                "Events read again after a restore whose effect the restored state already held: skipped.",
            )?,
            events_consumed: counter(
                &r,
                "journeyd_events_consumed_total",
                "Messages consumed, by topic.",
                &["topic"],
            )?,
            events_rejected: counter(
                &r,
                "journeyd_events_rejected_total",
                "Messages sent to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            actions: counter(
                &r,
                "journeyd_actions_total",
                "Actions produced and acknowledged, by channel and kind.",
                &["channel", "kind"],
            )?,
            entries: counter(
                &r,
                "journeyd_journey_entries_total",
                "Journey entries, by journey.",
                &["journey"],
            )?,
            steps: counter(
                &r,
                "journeyd_journey_steps_total",
                "Steps run, by journey.",
                &["journey"],
            )?,
            exits: counter(
                &r,
                "journeyd_journey_exits_total",
                "Journey instances ended, by journey and reason.",
                &["journey", "reason"],
            )?,
            conversions: counter(
                &r,
                "journeyd_journey_conversions_total",
                "Goals reached, by journey.",
                &["journey"],
            )?,
            suppressions: counter(
                &r,
                "journeyd_suppressions_total",
                "Sends suppressed by the contact policies, by reason.",
                &["reason"],
            )?,
            expression_failures: counter(
                &r,
                "journeyd_expression_failures_total",
                "CEL expressions that failed to evaluate (conditions count as false), by journey.",
                &["journey"],
            )?,
            corrupt_states: int_counter(
                "journeyd_corrupt_states_total",
                "Stored customer states that could not be read (the customer is quarantined).",
            )?,
            timers_fired: int_counter("journeyd_timers_fired_total", "Timers fired.")?,
            timers_pending: gauge("journeyd_timers_pending", "Entries in the timer index.")?,
            timer_lag_seconds,
            consumer_lag,
            event_to_action_seconds,
            batch_seconds,
            batch_retries: int_counter(
                "journeyd_batch_retries_total",
                "Batches retried after a Kafka or store failure.",
            )?,
            store_bytes: gauge(
                "journeyd_store_bytes",
                "Approximate size of the RocksDB store in bytes.",
            )?,
            customers: gauge("journeyd_customers", "Customers in the store.")?,
            reloads: counter(
                &r,
                "journeyd_journey_reloads_total",
                "Journey folder reloads, by result.",
                &["result"],
            )?,
            actions_dead_lettered: counter(
                &r,
                "journeyd_actions_dead_lettered_total",
                "Actions Kafka refused for good, sent to the action dead-letter topic, by reason.",
                &["reason"],
            )?,
            quarantined: int_counter(
                "journeyd_customers_quarantined_total",
                "Customers whose processing failed (an unreadable state, an engine failure): their input went to the dead-letter topic.",
            )?,
            quarantined_now: gauge(
                "journeyd_customers_quarantined",
                "Customers quarantined now: failed and not processed again since.",
            )?,
            partition_counts: PartitionGauges::new(&r)?,
            audience_customers: counter(
                &r,
                "journeyd_audience_customers_total",
                "Customers given an audience run (a run's progress), by journey.",
                &["journey"],
            )?,
            output_lost: counter(
                &r,
                "journeyd_output_lost_total",
                "Dead letters Kafka refused for good too (logged, then dropped), by kind and reason.",
                &["kind", "reason"],
            )?,
            registry: r,
        })
    }

    /// Adds a batch's counts.
    pub fn apply(&self, t: &Tally) {
        for (j, n) in &t.entries {
            self.entries.with_label_values(&[j.as_str()]).inc_by(*n);
        }
        for (j, n) in &t.steps {
            self.steps.with_label_values(&[j.as_str()]).inc_by(*n);
        }
        for ((j, reason), n) in &t.exits {
            self.exits
                .with_label_values(&[j.as_str(), reason])
                .inc_by(*n);
        }
        for (j, n) in &t.conversions {
            self.conversions.with_label_values(&[j.as_str()]).inc_by(*n);
        }
        for (reason, n) in &t.suppressions {
            self.suppressions.with_label_values(&[reason]).inc_by(*n);
        }
        for (j, n) in &t.expression_failures {
            self.expression_failures
                .with_label_values(&[j.as_str()])
                .inc_by(*n);
        }
        self.corrupt_states.inc_by(t.corrupt_states);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The sum of a counter over all its labels (for the demo summary and tests).
    pub fn total(c: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        c.collect()
            .iter()
            .flat_map(|mf| {
                mf.get_metric()
                    .iter()
                    .map(|m| m.get_counter().value() as u64)
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}
