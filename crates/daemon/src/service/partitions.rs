//! The input partitions assigned to this process, how far each has been read, and so which
//! timers may fire.

use crate::clock::wall_now;
use journeyd_store::Millis;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The input partitions assigned to this process, and how far each has been read.
///
/// A customer's timer fires only where the partition their events come from is assigned, has
/// been read to its head once since the assignment (after a restart a dead member may hold
/// some partitions for a session timeout, and a new assignment has a backlog), and has been
/// read up to the timer's due time: its *watermark*, the newest message timestamp consumed
/// from it (never later than the wall clock: a producer's clock may run ahead), or, when the
/// partition is quiet, the time the broker last confirmed there was nothing more to read. So
/// an event never loses the race against a timer it came before, even when consumption lags.
///
/// "Read to its head" means read up to the high watermark the broker gave in its first answer
/// after the assignment: the backlog that was there when the partition came. Under steady
/// input the position never meets the moving high watermark at the moment of a question (a
/// broker that holds fetches for `fetch.wait.max.ms` keeps it a fetch behind), but it always
/// passes the first one.
#[derive(Debug, Default)]
pub struct Partitions {
    partitions: Mutex<BTreeMap<(String, i32), PartitionRead>>,
    /// Whether the group has given this process an assignment (possibly empty) that still
    /// holds.
    assigned: AtomicBool,
    /// The partition numbers assigned whose customers are not restored from the changelog
    /// yet: paused, their timers wait, their batches in flight write nothing of them.
    restoring: Mutex<BTreeMap<i32, Restoring>>,
}

/// Where a partition's restore is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Restoring {
    /// Assigned, the restore not started.
    Pending,
    /// Under way.
    Running,
    /// Stopped with this error: the partition stays paused.
    Failed(String),
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionRead {
    /// The next offset to read: the offset consumption resumed from (when the store knew it),
    /// then one past the last message consumed.
    next: Option<i64>,
    /// The high watermark of the broker's first answer after the assignment: reading up to it
    /// reads the backlog the partition came with.
    head: Option<i64>,
    /// Read to the head of the partition once since it was assigned.
    at_head: bool,
    /// Everything appended before this time (ms) has been read.
    watermark: Millis,
    /// When a message last came from it.
    received: Option<Instant>,
    /// When the broker was last asked for its watermarks.
    probed: Option<Instant>,
}

impl PartitionRead {
    /// Marks the partition read to its head when reading has reached the head it came with.
    fn reached_head(&mut self, at: (&str, i32)) {
        let reached = match (self.next, self.head) {
            (Some(next), Some(head)) => next >= head,
            _ => false,
        };
        if reached && !self.at_head {
            self.at_head = true;
            let (topic, partition) = at;
            tracing::info!(
                topic,
                partition,
                next = self.next,
                head = self.head,
                "Partition read to its head; its timers fire."
            );
        }
    }
}

/// How long a partition may go without a message before the broker is asked whether it is
/// quiet or the reading is behind; also the least time between two questions about one
/// partition.
const QUIET: Duration = Duration::from_millis(300);

impl Partitions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), PartitionRead>> {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the partitions of an assignment (cooperative: added to those held).
    pub fn assign(&self, tpl: &TopicPartitionList) {
        let mut m = self.lock();
        for el in tpl.elements() {
            let next = match el.offset() {
                KafkaOffset::Offset(n) => Some(n),
                _ => None,
            };
            m.insert(
                (el.topic().to_owned(), el.partition()),
                PartitionRead {
                    next,
                    ..PartitionRead::default()
                },
            );
        }
        self.assigned.store(true, Ordering::SeqCst);
    }

    /// Gives up revoked partitions.
    pub fn revoke(&self, tpl: &TopicPartitionList) {
        let mut m = self.lock();
        for el in tpl.elements() {
            m.remove(&(el.topic().to_owned(), el.partition()));
        }
        let mut r = self.restores();
        r.retain(|p, _| m.keys().any(|(_, q)| q == p));
    }

    /// Gives up every partition: the assignment was lost.
    pub fn clear(&self) {
        self.lock().clear();
        self.restores().clear();
        self.assigned.store(false, Ordering::SeqCst);
    }

    fn restores(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Restoring>> {
        self.restoring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks partition numbers as waiting for their restore.
    pub fn to_restore(&self, numbers: impl IntoIterator<Item = i32>) {
        let mut r = self.restores();
        for p in numbers {
            r.insert(p, Restoring::Pending);
        }
    }

    /// The partitions waiting for their restore, marked as under way.
    pub fn start_restores(&self) -> Vec<i32> {
        let mut r = self.restores();
        r.iter_mut()
            .filter(|(_, s)| **s == Restoring::Pending)
            .map(|(p, s)| {
                *s = Restoring::Running;
                *p
            })
            .collect()
    }

    /// Whether partition number `p` is assigned and its restore under way (not failed).
    pub fn restore_running(&self, p: i32) -> bool {
        self.restores().get(&p) == Some(&Restoring::Running)
    }

    /// Records that partition `p`'s restore stopped with `error`.
    pub fn restore_failed(&self, p: i32, error: String) {
        if let Some(s) = self.restores().get_mut(&p) {
            *s = Restoring::Failed(error);
        }
    }

    /// Partition `p` is restored and reading resumes at `resume` (per input topic): its
    /// backlog is counted from there.
    pub fn restored(&self, p: i32, resume: &[(String, i64)]) {
        self.restores().remove(&p);
        let mut m = self.lock();
        for ((topic, q), part) in m.iter_mut() {
            if *q == p {
                *part = PartitionRead {
                    next: resume.iter().find(|(t, _)| t == topic).map(|(_, n)| *n),
                    ..PartitionRead::default()
                };
            }
        }
    }

    /// Whether partition number `p` is this process's to write: assigned and restored.
    pub fn owns(&self, p: i32) -> bool {
        let restoring = self.restores().contains_key(&p);
        !restoring && self.lock().keys().any(|(_, q)| *q == p)
    }

    /// Whether partition number `p` is assigned here (restored or not).
    pub fn assigned(&self, p: i32) -> bool {
        self.lock().keys().any(|(_, q)| *q == p)
    }

    /// The partition numbers this process owns (see [`Partitions::owns`]).
    pub fn owned(&self) -> std::collections::BTreeSet<i32> {
        // One lock at a time (`revoke` takes them the other way round).
        let restoring: std::collections::BTreeSet<i32> = self.restores().keys().copied().collect();
        self.lock()
            .keys()
            .map(|(_, p)| *p)
            .filter(|p| !restoring.contains(p))
            .collect()
    }

    /// Whether any partition waits for its restore to start.
    pub fn any_pending(&self) -> bool {
        self.restores().values().any(|s| *s == Restoring::Pending)
    }

    /// Whether any partition waits for, or is under, a restore.
    pub fn any_restoring(&self) -> bool {
        !self.restores().is_empty()
    }

    /// Advances the positions and watermarks past the messages just consumed.
    pub fn consumed(&self, msgs: &[OwnedMessage]) {
        let now = Instant::now();
        let wall = wall_now();
        let mut m = self.lock();
        for msg in msgs {
            let at = (msg.topic(), msg.partition());
            let Some(part) = m.get_mut(&(msg.topic().to_owned(), msg.partition())) else {
                continue;
            };
            part.next = Some(part.next.unwrap_or(0).max(msg.offset() + 1));
            part.received = Some(now);
            // The broker's log-append time where the topic keeps it, else the producer's
            // create time; never later than now, whatever the producer's clock says.
            if let Some(ts) = msg.timestamp().to_millis() {
                part.watermark = part.watermark.max(ts.min(wall));
            }
            part.reached_head(at);
        }
    }

    /// Takes the consumer's positions (the next offset it will fetch, per partition): they
    /// move where no message tells, as when consumption resumed from the group's committed
    /// offset rather than the store's.
    pub fn positions(&self, tpl: &TopicPartitionList) {
        let mut m = self.lock();
        for el in tpl.elements() {
            let KafkaOffset::Offset(n) = el.offset() else {
                continue;
            };
            let at = (el.topic(), el.partition());
            if let Some(part) = m.get_mut(&(el.topic().to_owned(), el.partition())) {
                part.next = Some(part.next.map_or(n, |next| next.max(n)));
                part.reached_head(at);
            }
        }
    }

    /// Whether every assigned partition has been read to its head.
    pub fn all_at_head(&self) -> bool {
        self.lock().values().all(|part| part.at_head)
    }

    /// Whether this process holds an assignment and every partition of it has been read to
    /// its head (see the type's doc). Why not, when not.
    pub fn caught_up(&self) -> Result<(), String> {
        if !self.assigned.load(Ordering::SeqCst) {
            return Err("no partitions assigned yet: joining the consumer group".to_owned());
        }
        {
            let r = self.restores();
            if let Some((p, Restoring::Failed(error))) =
                r.iter().find(|(_, s)| matches!(s, Restoring::Failed(_)))
            {
                return Err(format!("the restore of partition {p} failed: {error}"));
            }
            if !r.is_empty() {
                let list: Vec<String> = r.keys().map(i32::to_string).collect();
                return Err(format!(
                    "restoring partitions {} from the changelog",
                    list.join(", ")
                ));
            }
        }
        let m = self.lock();
        let behind: Vec<String> = m
            .iter()
            .filter(|(_, part)| !part.at_head)
            .map(|((topic, partition), _)| format!("{topic}/{partition}"))
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "catching up with {} of {} partitions: {}",
                behind.len(),
                m.len(),
                behind.join(", ")
            ))
        }
    }

    /// Whether some assigned partition has been read to its head (its timers may fire).
    pub fn any_at_head(&self) -> bool {
        self.lock().values().any(|part| part.at_head)
    }

    /// The partitions to ask the broker about: not read to their head yet, or quiet (no
    /// message for a while), and not asked about lately. Marks them asked.
    fn to_probe(&self) -> Vec<(String, i32, Option<i64>)> {
        let mut m = self.lock();
        m.iter_mut()
            .filter(|(_, part)| !part.at_head || part.received.is_none_or(|t| t.elapsed() >= QUIET))
            .filter(|(_, part)| part.probed.is_none_or(|t| t.elapsed() >= QUIET))
            .map(|((topic, partition), part)| {
                part.probed = Some(Instant::now());
                (topic.clone(), *partition, part.next)
            })
            .collect()
    }

    /// Records an answer: the partition's watermarks, asked at `asked_at` while `next` was its
    /// next offset to read. The first answer since the assignment sets the head to reach. When
    /// `next` had reached the high watermark, everything appended before the question has been
    /// read.
    fn answer(
        &self,
        at: (&str, i32),
        next: Option<i64>,
        (low, high): (i64, i64),
        asked_at: Millis,
    ) {
        let (topic, partition) = at;
        let mut m = self.lock();
        let Some(part) = m.get_mut(&(topic.to_owned(), partition)) else {
            return;
        };
        if part.head.is_none() {
            part.head = Some(high);
            if part.next.is_none() && low == high {
                // Nothing read, no stored offset, and nothing to read.
                part.next = Some(high);
            }
        }
        // Retention removed what was left to read: reading resumes at the log's start.
        if part.next.is_some_and(|n| n < low) {
            part.next = Some(low);
        }
        part.reached_head(at);
        let read = match next {
            Some(next) => next >= high,
            None => low == high,
        };
        if read && part.at_head {
            part.watermark = part.watermark.max(asked_at.min(wall_now()));
        }
    }

    /// Asks the broker about the partitions [`Partitions::to_probe`] names, from a thread of its
    /// own with a client of its own, so the service loop never waits for the answers. Stops
    /// when `stop` is set.
    pub(super) fn probe_in_background(
        self: &Arc<Self>,
        config: ClientConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, KafkaError> {
        let client: BaseConsumer = config.create()?;
        let partitions = self.clone();
        Ok(std::thread::Builder::new()
            .name("journeyd-watermarks".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (topic, partition, next) in partitions.to_probe() {
                        let asked_at = wall_now();
                        if let Ok(marks) =
                            client.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                        {
                            partitions.answer((&topic, partition), next, marks, asked_at);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("a thread for the watermark probes"))
    }

    /// Whether a timer of partition number `p` due at `due` may fire: every input topic's
    /// partition `p` assigned here is read to its head and past `due`, and there is one.
    pub fn fires(&self, p: i32, due: Millis) -> bool {
        if self.restores().contains_key(&p) {
            return false;
        }
        let m = self.lock();
        let mut parts = m.iter().filter(|((_, q), _)| *q == p).peekable();
        parts.peek().is_some() && parts.all(|(_, part)| part.at_head && part.watermark >= due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn tpl(parts: &[(&str, i32)]) -> TopicPartitionList {
        let mut t = TopicPartitionList::new();
        for (topic, p) in parts {
            t.add_partition(topic, *p);
        }
        t
    }

    fn msg(topic: &str, partition: i32, ts: Millis) -> OwnedMessage {
        msg_at(topic, partition, 0, ts)
    }

    fn at_head(o: &Partitions, topic: &str, p: i32) {
        o.lock().get_mut(&(topic.to_owned(), p)).unwrap().at_head = true;
    }

    #[test]
    fn a_timer_fires_only_where_its_partition_is_owned_read_and_past_its_due_time() {
        let o = Partitions::default();
        assert!(!o.fires(0, 0), "nothing assigned");
        o.assign(&tpl(&[("a", 0), ("b", 0), ("a", 1)]));
        o.consumed(&[msg("a", 0, 10), msg("b", 0, 10)]);
        assert!(!o.fires(0, 5), "assigned, but not read to the head yet");
        at_head(&o, "a", 0);
        assert!(
            !o.fires(0, 5),
            "partition 0 of every input topic must be read"
        );
        at_head(&o, "b", 0);
        assert!(o.fires(0, 5));
        assert!(o.fires(0, 10));
        assert!(!o.fires(0, 11), "not read past the due time");
        o.consumed(&[msg("a", 0, 20)]);
        assert!(!o.fires(0, 15), "topic b's partition 0 is still at 10");
        o.consumed(&[msg("b", 0, 30), msg("x", 0, 99)]);
        assert!(o.fires(0, 20));
        assert!(!o.fires(1, 0), "partition 1 not read to its head");
        assert!(!o.fires(2, 0), "partition 2 not assigned");
        o.revoke(&tpl(&[("b", 0)]));
        assert!(o.fires(0, 20), "topic a alone now");
        assert!(!o.fires(0, 21));
        o.clear();
        assert!(!o.fires(0, 0));
    }

    fn msg_at(topic: &str, partition: i32, offset: i64, ts: Millis) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.to_owned(),
            Timestamp::CreateTime(ts),
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_partition_is_read_to_its_head_once_reading_passes_the_head_it_came_with() {
        let o = Partitions::default();
        assert!(o.caught_up().is_err(), "no assignment yet");
        let mut seeded = TopicPartitionList::new();
        seeded
            .add_partition_offset("a", 0, KafkaOffset::Offset(5))
            .unwrap();
        seeded.add_partition("b", 0);
        seeded.add_partition("c", 0);
        o.assign(&seeded);
        assert_eq!(o.to_probe().len(), 3, "new partitions are asked about");
        assert!(o.to_probe().is_empty(), "not again at once");
        o.answer(("a", 0), Some(5), (0, 7), 100);
        assert!(!o.lock()[&("a".to_owned(), 0)].at_head, "5 < 7: behind");
        o.answer(("b", 0), None, (3, 4), 100);
        assert!(
            !o.lock()[&("b".to_owned(), 0)].at_head,
            "unknown position, not empty"
        );
        o.answer(("c", 0), None, (4, 4), 120);
        assert!(
            o.lock()[&("c".to_owned(), 0)].at_head,
            "an empty partition is read"
        );
        assert_eq!(o.lock()[&("c".to_owned(), 0)].watermark, 120);
        let e = o.caught_up().unwrap_err();
        assert!(
            e.contains("2 of 3") && e.contains("a/0") && e.contains("b/0"),
            "{e}"
        );
        // Steady input: every later answer's high watermark is ahead of the position, as when
        // a broker holds each fetch. Reading past the first head is enough.
        o.consumed(&[msg_at("a", 0, 5, 50)]);
        o.answer(("a", 0), Some(6), (0, 9), 110);
        assert!(!o.lock()[&("a".to_owned(), 0)].at_head, "6 < 7");
        o.consumed(&[msg_at("a", 0, 6, 60), msg_at("b", 0, 3, 70)]);
        {
            let m = o.lock();
            assert!(
                m[&("a".to_owned(), 0)].at_head,
                "7 reached, though the head moved to 9"
            );
            assert_eq!(
                m[&("a".to_owned(), 0)].watermark,
                60,
                "read up to its newest message"
            );
            assert!(m[&("b".to_owned(), 0)].at_head, "4 reached");
        }
        assert_eq!(o.caught_up(), Ok(()));
        // An older message never moves the position back; a quiet partition read to the high
        // watermark is read up to the question.
        o.consumed(&[msg_at("a", 0, 0, 10)]);
        assert_eq!(o.lock()[&("a".to_owned(), 0)].next, Some(7));
        o.answer(("a", 0), Some(7), (0, 7), 130);
        assert_eq!(o.lock()[&("a".to_owned(), 0)].watermark, 130);
        o.clear();
        assert!(o.caught_up().is_err(), "the assignment was lost");
    }

    #[test]
    fn the_consumer_position_and_retention_also_bring_a_partition_to_its_head() {
        let o = Partitions::default();
        let mut seeded = TopicPartitionList::new();
        // Resumed from the group's committed offset (unknown here) on a quiet partition.
        seeded.add_partition("a", 0);
        // Resumed from a stored offset that retention has since removed.
        seeded
            .add_partition_offset("b", 0, KafkaOffset::Offset(3))
            .unwrap();
        o.assign(&seeded);
        o.answer(("a", 0), None, (0, 40), 100);
        o.answer(("b", 0), Some(3), (10, 10), 100);
        assert!(!o.all_at_head());
        assert!(
            o.lock()[&("b".to_owned(), 0)].at_head,
            "nothing left to read: the log starts at the head"
        );
        let mut positions = TopicPartitionList::new();
        positions
            .add_partition_offset("a", 0, KafkaOffset::Offset(40))
            .unwrap();
        // A partition not held here is left alone.
        positions
            .add_partition_offset("z", 0, KafkaOffset::Offset(1))
            .unwrap();
        o.positions(&positions);
        assert!(o.all_at_head(), "the consumer stands at the head");
        assert_eq!(o.caught_up(), Ok(()));
    }

    #[test]
    fn a_producer_clock_ahead_of_the_wall_clock_does_not_move_the_watermark_past_now() {
        let o = Partitions::default();
        o.assign(&tpl(&[("a", 0)]));
        let ahead = wall_now() + 3_600_000;
        o.consumed(&[msg_at("a", 0, 0, ahead)]);
        let w = o.lock()[&("a".to_owned(), 0)].watermark;
        assert!(w <= wall_now() && w > wall_now() - 60_000, "{w}");
    }
}
