//! The service loop: Kafka in, engine, Kafka out, RocksDB.
//!
//! Each batch goes through these steps, in order:
//! 1. consume up to `batch_max_messages` (a pause of 2 ms closes the batch, and it waits at
//!    most `batch_linger_ms` once the first came);
//! 2. decode; undecodable or invalid messages are routed to the dead-letter topic;
//! 3. add the timers that are due (only once consumption has caught up after a start, so a
//!    backlog of events is seen before the timers it may overtake);
//! 4. run the batch through the engine (no writes);
//! 5. produce the actions and dead letters and wait until Kafka acknowledges every one;
//! 6. write states, timer index and consumed offsets in one atomic store write;
//! 7. commit the offsets to Kafka too (only for lag dashboards: the store's offsets are the
//!    ones used on restart, seeded into every assignment).
//!
//! Batches overlap: while batch N's actions wait for their acknowledgements (5) and batch N-1
//! is written (6), batch N+1 is consumed and processed (1-4), reading the states and timers
//! through the writes not yet in the store ([`crate::processor::Unwritten`]). Sends go out in
//! batch order (by default N+1's only after N's are acknowledged; with
//! `processing.batches_in_flight` above 1, queued after N's: see [`crate::sending`]) and
//! writes land in batch order, each after its batch's acknowledgements. The due timers of
//! batch N+1 (3) and their customers' states are read while batch N runs (4), through the
//! entries N fires, and patched with N's write once it is known
//! ([`crate::processor::Prefetched`]).
//!
//! A crash anywhere before 6 replays the batch from the same stored states: the same actions
//! (same ids, same content) are produced again, and channel adapters de-duplicate on the id.
//! A failure in 5 retries the same sends, in 6 the same write, so nothing is lost in a Kafka
//! outage. A write that retrying cannot help (an invalid write, a corrupt store) stops the
//! service with its error instead: the batch runs again after a restart.
//!
//! The parts: [`clients`] (the Kafka clients and rebalances), [`partitions`] (how far each
//! assigned partition is read, so which timers fire), [`intake`] (collecting and decoding a
//! batch), [`landing`] (acknowledged batches counted, written, committed) and [`readiness`].

mod clients;
mod intake;
mod landing;
mod partitions;
mod readiness;
mod restoring;
mod standby;
mod sweep;
mod transaction;

pub use clients::{clients, producer, Context};
pub use intake::{collect, BATCH_GAP};
pub use partitions::Partitions;
pub use readiness::Progress;
pub use standby::Lanes;
pub use sweep::Sweeps;
pub mod audience;

use crate::clock::{wall_now, Clock};
use crate::config::{Config, Encoding};
use crate::dead_letters::DeadLetter;
use crate::metrics::Metrics;
use crate::processor::{run_batch_logged, Output, Prefetched, Unwritten, Work};
use crate::sending::{InFlight, Sender, Sent};
pub(crate) use clients::probe_client_config;
pub(crate) use clients::{client_config, Role};
use intake::{prepare, Decoders};
use journeyd_codec::{ActionEncoder, Format};
use journeyd_engine::{Engine, Status};
use journeyd_store::{Millis, Store, WriteSet};
use landing::{Handover, Landing};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// State shared by the loop, the HTTP endpoint and the signal handlers.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The engine in use (swapped whole on reload).
    pub engine: RwLock<Arc<Engine>>,
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The metrics.
    pub metrics: Metrics,
    /// The processing clock.
    pub clock: Clock,
    /// The input partitions assigned here and how far each is read (the consumer's context
    /// keeps them up to date).
    pub partitions: Arc<Partitions>,
    /// Batches begun and landed: whether the pipeline moves.
    pub progress: Progress,
    /// The customers whose processing failed.
    pub quarantine: crate::quarantine::Quarantine,
    /// The events restored states hold already (see [`crate::changelog::guards`]).
    pub guards: Arc<crate::changelog::guards::Guards>,
    /// Who may write each changelog partition into the store now: a restore or a standby
    /// round (see [`standby`]).
    pub lanes: Lanes,
    /// Set by SIGHUP: reload the journeys between batches.
    pub reload: AtomicBool,
    /// Journey statuses other than running, as the control topic says, with the time each
    /// was set (see [`crate::admin::control`]). The engine in use has them; a reload keeps them.
    pub statuses: RwLock<std::collections::BTreeMap<String, (Status, Millis)>>,
    /// The sweeps under way after a stop or a resume (see [`sweep`]).
    pub sweeps: Sweeps,
    /// The audience runs under way (see [`audience`]).
    pub runs: audience::Runs,
    /// Each input partition's counts as its owner last published them, with the partition's
    /// position then (see [`crate::admin::published`]), for the deployment's sums.
    pub published_counts: RwLock<crate::admin::published::Published>,
}

impl Shared {
    /// The current engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The statuses other than running, by journey id, with when each was set.
    pub fn statuses(&self) -> std::collections::BTreeMap<String, (Status, Millis)> {
        self.statuses
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The status of journey `id`.
    pub fn status_of(&self, id: &str) -> Status {
        self.statuses().get(id).map_or(Status::Running, |(s, _)| *s)
    }

    /// Sets journey `id`'s status (from the control topic): recorded, and the engine in use
    /// swapped for one with it.
    pub fn set_status(&self, id: &str, status: Status, at: Millis) {
        // The statuses' lock is held across the engine swap, and a reload takes them in the
        // same order: a reload racing a change cannot swap in an engine without it.
        let mut map = self
            .statuses
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = map.get(id).map_or(Status::Running, |(s, _)| *s);
        if status == Status::Running {
            map.remove(id);
        } else {
            map.insert(id.to_owned(), (status, at));
        }
        let mut engine = self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *engine = Arc::new(engine.with_status(id, status));
        drop(engine);
        drop(map);
        // A stop ends instances and cancels sends; a resume releases parked sends: at once,
        // for every customer (pause and drain change nothing until a customer's next step).
        // (A resume from draining too: a drain after a pause leaves instances parked.)
        let sweeps = status != before
            && (status == Status::Stopped
                || (status == Status::Running
                    && matches!(before, Status::Paused | Status::Draining)));
        if sweeps {
            self.sweeps.start(id, status, at, self.partitions.owned());
        }
    }

    /// Swaps in `engine` with the statuses in force (taking the locks in the order
    /// [`Shared::set_status`] does).
    fn swap_engine(&self, engine: Engine) {
        let map = self
            .statuses
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let engine = map
            .iter()
            .fold(engine, |e, (id, (status, _))| e.with_status(id, *status));
        // A panic elsewhere while the lock was held leaves the old engine whole (it is
        // swapped in one assignment): take the lock all the same.
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(engine);
    }

    /// Whether the service is ready (`/readyz`): it holds an assignment, every assigned
    /// partition has been read to its head, and no batch has waited longer than
    /// `processing.stall_timeout_secs` to land. Why not, when not.
    pub fn readiness(&self) -> Result<(), String> {
        self.partitions.caught_up()?;
        let bound = Duration::from_secs(self.config.processing.stall_timeout_secs);
        match self.progress.stalled(bound) {
            None => Ok(()),
            Some(waited) => Err(format!(
                "stalled: no batch has landed for {} s (processing.stall_timeout_secs = {}); \
                 the log says what it is retrying",
                waited.as_secs(),
                bound.as_secs()
            )),
        }
    }
}

/// Swaps in the journeys of the folder, if they are all valid; else keeps the running ones.
pub fn reload(shared: &Shared) {
    let settings = journeyd_engine::Settings {
        history_limit: shared.config.processing.history_limit,
        ..Default::default()
    };
    match crate::catalog::load(
        &shared.config.journeys.dir,
        shared.store.as_ref(),
        settings,
        wall_now(),
    ) {
        Ok(loaded) => {
            if let Err(error) = shared.store.put_journeys(&loaded.new_versions) {
                tracing::error!(%error, "Cannot save the new journey versions; keeping the running journeys.");
                shared.metrics.reloads.with_label_values(&["refused"]).inc();
                return;
            }
            let n = loaded.engine.journeys().len();
            // The new journeys keep the statuses the control topic set.
            shared.swap_engine(loaded.engine);
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::info!(
                journeys = n,
                new_versions = loaded.new_versions.len(),
                "Journeys reloaded."
            );
        }
        Err(error) => {
            shared.metrics.reloads.with_label_values(&["refused"]).inc();
            tracing::error!(%error, "Journey reload refused; the running journeys stay.");
        }
    }
}

/// Runs the service loop until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let changelog = shared.config.changelog_topic();
    let mut changelog_partitions = 0;
    if let Some(topic) = &changelog {
        // Until the broker answers and the inputs exist; a wrong changelog stops the start.
        loop {
            let client = probe_client_config(&shared.config);
            let checked = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = crate::changelog::topic::ensure(&shared.config, &client, topic) => r,
            };
            match checked {
                Ok(n) => {
                    changelog_partitions = n;
                    break;
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "Cannot check the changelog topic yet; trying again in 2 s.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    // Every journey status recorded so far is in force before any input is processed.
    let _control = match shared.config.control_topic() {
        Some(topic) => loop {
            let followed = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = async {
                    crate::admin::control::ensure(&shared.config, &topic).await?;
                    crate::admin::control::follow(shared.clone(), topic.clone(), shutdown.clone()).await
                } => r,
            };
            match followed {
                Ok(thread) => break Some(thread),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "Cannot read the control topic yet; trying again in 2 s.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                Err(error) => return Err(error.into()),
            }
        },
        None => None,
    };
    // Each partition's counts, for the deployment's sums: in the background, never in the way.
    let _published = crate::admin::published::start(&shared, &shutdown);
    let (consumer, producer) = clients(&shared)?;
    let _standby = match &changelog {
        Some(topic) if shared.config.store.standby_replicas > 0 => Some(standby::start(
            shared.clone(),
            topic.clone(),
            changelog_partitions,
        )),
        _ => None,
    };
    let transactional = shared.config.processing.guarantee == crate::config::Guarantee::ExactlyOnce;
    if transactional {
        transaction::init(&shared.config, &producer, &shutdown).await?;
        tracing::info!("Exactly once: each batch is one Kafka transaction.");
    }
    let mut restores = restoring::Restores::new(changelog.clone());
    let partitions = shared.partitions.clone();
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes =
        partitions.probe_in_background(probe_client_config(&shared.config), stop_probes.clone())?;
    let registry = shared
        .config
        .schema_registry
        .as_ref()
        .map(|r| r.url.clone());
    let decoder = Arc::new(Decoders::new(&shared.config));
    let encoder = Arc::new(match (shared.config.outputs.actions_format, &registry) {
        (Encoding::Avro, Some(url)) => ActionEncoder::with_registry(url.clone()),
        (Encoding::Avro, None) => ActionEncoder::new(Format::Avro),
        (Encoding::Json, _) => ActionEncoder::new(Format::Json),
    });
    let mut past = Landing {
        sender: Sender {
            producer: producer.clone(),
            encoder,
            config: Arc::new(shared.config.clone()),
            metrics: shared.metrics.clone(),
            shutdown: shutdown.clone(),
            refused_before: Default::default(),
        },
        sending: InFlight::new(),
        writing: None,
        unwritten: Unwritten::none(),
        changelog: changelog.clone(),
        stopped: false,
        transactional,
        rewound: false,
        committed: Default::default(),
    };
    let mut timers_backlogged = false;
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let mut last_positions = Instant::now();
    let in_flight = shared.config.processing.batches_in_flight;
    // The due timers of the next batch, read while the last batch ran, and that batch's write
    // (see `Prefetched`).
    let mut prefetched: Option<(PrefetchTask, Arc<WriteSet>)> = None;
    // Logged once, when the first partition is read to its head.
    let mut announced = false;
    tracing::info!(topics = ?shared.config.inputs.iter().map(|i| &i.topic).collect::<Vec<_>>(), "Consuming.");
    while !shutdown.is_cancelled() {
        if shared.reload.swap(false, Ordering::SeqCst) {
            let s = shared.clone();
            tokio::task::spawn_blocking(move || reload(&s)).await?;
        }
        let stage = |name: &str, since: Instant| {
            shared
                .metrics
                .batch_seconds
                .with_label_values(&[name])
                .observe(since.elapsed().as_secs_f64());
        };
        let collecting = Instant::now();
        // With more timers due than one batch fires, don't wait for messages in between: take
        // what is already there. (A 1 ms wait cost 4 ms per batch, timer resolution included.)
        let first_wait = if timers_backlogged {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        let (msgs, _idle) = collect(&consumer, &shared.config, first_wait).await;
        let collected = collecting.elapsed();
        intake::trace(&msgs, partitions.any_restoring());
        partitions.consumed(&msgs);
        // Partitions assigned since the last loop are restored beside it (once the batches
        // under way have landed: a write in flight must not land in the middle of a restore);
        // those restored resume once the batches under way have landed.
        if partitions.any_pending() && !past.drain(&shared, &consumer).await? {
            break;
        }
        restores.start(&shared);
        if restores.any_done() {
            if !past.drain(&shared, &consumer).await? {
                break;
            }
            restores.finish(&shared, &consumer);
        }
        if past.take_rewound() {
            // A transaction aborted: what was read since goes, and is read again; the audience
            // runs under way start again (their pages since went too).
            prefetched = None;
            shared.runs.reset();
            continue;
        }
        let mut begun = false;
        // Timers are read once a partition has been read to its head (each timer then waits
        // for its own partition: see `Partitions::fires`).
        if !partitions.all_at_head() && last_positions.elapsed() > Duration::from_millis(200) {
            // Local to the client: no broker round trip.
            if let Ok(tpl) = consumer.position() {
                partitions.positions(&tpl);
            }
            last_positions = Instant::now();
        }
        let caught_up = partitions.any_at_head();
        if caught_up && !announced {
            announced = true;
            tracing::info!("Caught up with the input topics; timers are firing.");
        }
        if !msgs.is_empty() {
            shared.progress.begun();
            begun = true;
        }
        let preparing = Instant::now();
        // Read beside the last batch: patched with its write. Not when collect waited (the
        // read is as old as the wait, and timers that fell due meanwhile would wait a loop
        // more), nor when not caught up then: read now.
        let early = match prefetched.take() {
            Some((task, write)) if collected <= PREFETCH_FRESH => {
                task.await?.ok().map(|p| (p, write))
            }
            _ => None,
        };
        let prepared = {
            let (s, d, sd) = (shared.clone(), decoder.clone(), shutdown.clone());
            let caught = caught_up;
            let partitions = partitions.clone();
            let unwritten = past.unwritten.clone();
            tokio::task::spawn_blocking(move || {
                let mut p = prepare(&s, &d, msgs, &sd)?;
                if caught {
                    let fires = |p| partitions.fires(p, Millis::MIN);
                    let limit = s.config.processing.timer_batch;
                    let due = match early {
                        Some((read, write)) => {
                            let patched = read.patch(&write, &fires);
                            p.backlogged = patched.more;
                            p.states = Some(patched.states);
                            Ok(patched.due)
                        }
                        None => unwritten
                            .due_timers_in(s.store.as_ref(), s.clock.now(), limit, &fires)
                            .inspect(|due| p.backlogged = due.len() >= limit),
                    };
                    let due = due.unwrap_or_else(|error| {
                        tracing::error!(%error, "Cannot read due timers.");
                        Vec::new()
                    });
                    // Only the timers their partition has been read past. Watermarks are
                    // real time: with a sped-up clock (demos) being read to the head is enough.
                    let real_time = s.clock.speed() == 1.0;
                    let due: Vec<_> = due
                        .into_iter()
                        .filter(|t| {
                            let at = if real_time { t.due } else { Millis::MIN };
                            t.partition.is_none_or(|p| partitions.fires(p, at))
                        })
                        .collect();
                    p.timers = due.len();
                    // Not when none could fire yet (their partitions are not read that far):
                    // then the loop waits for input instead of reading them again at once.
                    p.backlogged &= p.timers > 0;
                    p.work.extend(due.into_iter().map(|t| Work::Timer {
                        due: t.due,
                        customer: t.customer,
                        partition: t.partition,
                    }));
                    // A page of an audience run, between live batches, once its partition is
                    // read past the run's time (as its timers are).
                    let read_past = |p, at| partitions.fires(p, if real_time { at } else { Millis::MIN });
                    if let Err(error) = s.runs.schedule(&s.engine(), s.store.as_ref(), &partitions, s.clock.now(), &read_past) {
                        tracing::error!(%error, "Cannot read when the partitions had their audience runs; trying again.");
                    }
                    if s.runs.pending() {
                        match s.runs.next_page(s.store.as_ref(), &partitions, limit) {
                            Ok(page) => {
                                if let Some(Work::Audience { journey, .. }) = page.first() {
                                    s.metrics
                                        .audience_customers
                                        .with_label_values(&[journey.as_ref()])
                                        .inc_by(page.len() as u64);
                                }
                                p.backlogged |= !page.is_empty();
                                p.work.extend(page);
                            }
                            Err(error) => tracing::error!(%error, "Cannot read a page of an audience run; trying again."),
                        }
                    }
                    // A page of a sweep after a status change, between live batches.
                    if s.sweeps.pending() {
                        match s.sweeps.next_page(s.store.as_ref(), &partitions, limit) {
                            Ok(page) => {
                                p.backlogged |= !page.is_empty();
                                p.work.extend(page);
                            }
                            Err(error) => tracing::error!(%error, "Cannot read a page of a sweep; trying again."),
                        }
                    }
                }
                Some(p)
            })
            .await?
        };
        let Some(mut prepared) = prepared else {
            break;
        };
        if !begun && !prepared.work.is_empty() {
            shared.progress.begun();
        }
        if !prepared.work.is_empty() || !prepared.consumed.is_empty() {
            // Counted for batches only (not for idle waits), whether of messages or of timers.
            let m = &shared.metrics.batch_seconds;
            m.with_label_values(&["collect"])
                .observe(collected.as_secs_f64());
            stage("prepare", preparing);
        }
        timers_backlogged = prepared.backlogged;
        if last_gauges.elapsed() > Duration::from_secs(5) {
            let gauging = Instant::now();
            // Off the runtime: the store's counters and its next timer are reads.
            let s = shared.clone();
            tokio::task::spawn_blocking(move || update_gauges(&s));
            stage("gauges", gauging);
            last_gauges = Instant::now();
        }
        if prepared.consumed.is_empty() && prepared.work.is_empty() {
            // Nothing new: let the batches under way land and count (offsets, metrics) now.
            if !past.drain(&shared, &consumer).await? {
                break;
            }
            if past.take_rewound() {
                prefetched = None;
                shared.runs.reset();
            }
            continue;
        }
        // Process this batch while the previous one's actions are acknowledged and the one
        // before it is written: it reads through their writes.
        let started = Instant::now();
        // The next batch's due timers, read beside this one (through the entries it fires).
        let prefetch = caught_up.then(|| {
            let (s, partitions) = (shared.clone(), partitions.clone());
            let through = past.unwritten.with_fired(&prepared.work);
            tokio::task::spawn_blocking(move || {
                Prefetched::read(
                    &through,
                    s.store.as_ref(),
                    s.clock.now(),
                    s.config.processing.timer_batch,
                    &|p| partitions.fires(p, Millis::MIN),
                )
            })
        });
        // Through the unwritten writes, then the states read beside the last batch.
        let reading = match prepared.states.take() {
            Some(states) => past.unwritten.with_states(states),
            None => past.unwritten.clone(),
        };
        let mut backoff = crate::sending::RETRY_FIRST;
        let out = loop {
            let engine = shared.engine();
            let (s, work, consumed, unwritten) = (
                shared.clone(),
                prepared.work.clone(),
                prepared.consumed.clone(),
                reading.clone(),
            );
            let logged = changelog.is_some();
            let out = tokio::task::spawn_blocking(move || {
                run_batch_logged(
                    &engine,
                    s.store.as_ref(),
                    &unwritten,
                    &work,
                    &consumed,
                    logged,
                )
            })
            .await?;
            match out {
                Ok(o) => break Some(o),
                Err(error) if !error.is_transient() => {
                    tracing::error!(%error, "The batch could not read its states, and retrying cannot help: stopping. The batch runs again after a restart.");
                    return Err(anyhow::Error::new(error)
                        .context("a batch could not read its states from the store"));
                }
                Err(error) => {
                    tracing::error!(%error, retry_in = ?backoff, "The batch could not read its states; retrying.");
                    shared.metrics.batch_retries.inc();
                    tokio::select! {
                        () = shutdown.cancelled() => break None,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(crate::sending::RETRY_MOST);
                }
            }
        };
        let Some(out) = out else {
            // Stopping while retrying: the batch was not processed; it runs again after a
            // restart.
            break;
        };
        stage("process", started);
        tracing::debug!(
            messages = prepared.consumed.len(),
            timers = prepared.timers,
            actions = out.actions.len(),
            collect_ms = (preparing - collecting).as_secs_f64() * 1e3,
            total_ms = collecting.elapsed().as_secs_f64() * 1e3,
            "Batch processed; its actions go out after the previous batch's."
        );
        let Output {
            actions,
            write,
            tally,
            quarantined,
            owners,
            changes,
        } = out;
        if !transactional {
            // (With transactions once the batch commits: an aborted batch is read again, and
            // the guards it passed must still hold then.)
            shared.guards.passed(&prepared.consumed);
        }
        quarantine(&shared, quarantined, &mut prepared);
        if !shared.quarantine.is_empty() {
            shared
                .quarantine
                .lift(write.customers.iter().map(|(c, _)| c.as_str()));
        }
        // With the changelog, not those of partitions revoked meanwhile: the batch writes
        // nothing of them.
        let owned: Vec<journeyd_store::Offset> = write
            .offsets
            .iter()
            .filter(|o| changelog.is_none() || partitions.owns(o.partition))
            .cloned()
            .collect();
        consumer.context().processed(&owned);
        let write = Arc::new(write);
        past.unwritten.push(write.clone());
        prefetched = prefetch.map(|task| (task, write.clone()));
        // At most `batches_in_flight` batches on their way: the oldest must land first (its
        // actions acknowledged; then it is written, after the batch before it). Batches already
        // acknowledged land now, so their writes start.
        let waited = Instant::now();
        let mut landed = 0;
        let mut stopping = false;
        while !stopping && past.sending.must_land(in_flight) {
            stopping = !past.land(&shared, &consumer).await?;
            landed += 1;
        }
        if landed > 0 {
            stage("produce_wait", waited);
        }
        if stopping {
            break;
        }
        if past.take_rewound() {
            // This batch read through the aborted one: it is dropped, and read again (an
            // audience run's page in it too: the runs under way start again).
            prefetched = None;
            shared.runs.reset();
            continue;
        }
        if transactional {
            transaction::begin(&producer)
                .map_err(|e| anyhow::Error::new(e).context("cannot open a batch's transaction"))?;
        }
        // Queued after the batches on their way, so they keep batch order in every partition.
        past.sending.send(
            &past.sender,
            Sent {
                actions,
                dead: prepared.dead,
                then: Handover {
                    write,
                    owners,
                    changes,
                    topics: prepared.topics,
                    tally,
                    timestamps: prepared.timestamps,
                    timers: prepared.timers,
                },
            },
        );
    }
    restores.stop();
    past.drain(&shared, &consumer).await?;
    if transactional {
        // A batch left unwritten has its transaction open still: nothing of it shows.
        transaction::abort(&producer).await?;
    }
    tracing::info!("Stopping: flushing the producer.");
    let _ = producer.flush(Duration::from_secs(10));
    // A static member (group.instance.id) must not leave the group on its way out: its
    // partitions wait for it instead of moving to a replica without their state. Closing the
    // consumer (on drop) keeps it in the group; unsubscribing would not.
    if !shared.config.kafka.contains_key("group.instance.id") {
        consumer.unsubscribe();
    }
    stop_probes.store(true, Ordering::SeqCst);
    let _ = probes.join();
    Ok(())
}

/// How long collect may take for the due timers read beside the last batch to be used.
const PREFETCH_FRESH: Duration = Duration::from_millis(5);

/// A read of due timers under way beside a batch.
type PrefetchTask = tokio::task::JoinHandle<Result<Prefetched, journeyd_store::Error>>;

/// Sends the input of the customers whose processing failed to the dead-letter topic (reason
/// `processing_failed`, with the error), lists them, and counts them.
fn quarantine(
    shared: &Shared,
    quarantined: Vec<crate::processor::Quarantined>,
    prepared: &mut intake::Prepared,
) {
    for q in quarantined {
        if shared.quarantine.add(&q.customer, &q.error, wall_now()) {
            shared.metrics.quarantined.inc();
        }
        let mut timers = 0;
        for k in q.work {
            match prepared.sources.get_mut(k).and_then(Option::take) {
                Some(message) => prepared.dead.push(DeadLetter {
                    message,
                    reason: "processing_failed",
                    error: format!("customer `{}`: {}", q.customer, q.error),
                }),
                None => timers += 1,
            }
        }
        if timers > 0 {
            tracing::warn!(
                customer = q.customer,
                timers,
                retry_in_secs = crate::processor::QUARANTINE_RETRY / 1000,
                "A quarantined customer's timer is set again for later."
            );
        }
    }
}

/// Refreshes the gauges that come from the store.
pub fn update_gauges(shared: &Shared) {
    let m = &shared.metrics;
    m.timers_pending.set(shared.store.pending_timers() as i64);
    m.quarantined_now.set(shared.quarantine.len() as i64);
    m.customers.set(shared.store.customer_count() as i64);
    m.store_bytes.set(shared.store.size_bytes() as i64);
    let lag = match shared.store.next_timer() {
        Ok(Some((due, _))) => ((shared.clock.now() - due).max(0) as f64) / 1000.0,
        _ => 0.0,
    };
    m.timer_lag_seconds.set(lag);
    match crate::admin::report::owned_counts(shared) {
        Ok(counts) => m.partition_counts.set(&counts, &shared.engine()),
        Err(error) => tracing::warn!(%error, "Cannot read the partitions' counts."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_swaps_the_engine_even_after_a_panic_poisoned_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (config, shared) = crate::app::for_tests(dir.path());
        assert!(shared.engine().journeys().is_empty());
        // A thread panics while it holds the engine's lock.
        let s = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = s.engine.write().unwrap();
            panic!("a panic while the engine's lock is held");
        })
        .join();
        assert!(shared.engine.is_poisoned());
        std::fs::write(
            config.journeys.dir.join("welcome.yaml"),
            "journey: welcome\nversion: 1\nentry: { event: signup }\nsteps:\n  - id: hello\n    send: { channel: email, template: welcome }\n",
        )
        .unwrap();
        reload(&shared);
        assert_eq!(shared.engine().journeys().len(), 1, "swapped in");
        assert_eq!(
            shared.metrics.reloads.with_label_values(&["ok"]).get(),
            1,
            "counted as ok only because it was swapped in"
        );
    }
}
