//! Read routing with a streaming replica (`STOA_DATABASE_READ_URL`).
//!
//! Which pool serves a read:
//! - Writes, and reads on the security paths (sign-in, sessions, revocation, MFA, admin),
//!   always use the primary. Only content reads ask here: articles, lists, the feed, tags,
//!   comments, profiles and the caller's own user.
//! - The replica serves nothing while it may be further behind than
//!   `STOA_DB_READ_MAX_LAG`: `lag` keeps a *watermark*, an instant such that everything
//!   the primary had committed by then has been replayed on the replica.
//! - Read-your-writes: a caller who wrote reads from the primary until the watermark has
//!   passed their write, on every pod: each write is announced on a Redis channel
//!   (`writes`) before its response leaves. While a pod does not follow that channel, it
//!   cannot know who wrote elsewhere, so signed-in callers read from the primary there.
//!   Anonymous callers have no writes to see and read from the replica.
//! - Cache fills read from the primary: a value read from a lagging replica after a
//!   write's invalidation would be served to every reader until the TTL.

pub mod lag;
pub mod writes;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::Guard;
use prometheus_client::metrics::counter::Counter;
use uuid::Uuid;

use crate::config::ReadReplicaConfig;
use crate::db::{Db, Pool};
use crate::kv::Kv;
use crate::metrics::{Metrics, ReadLabels};

/// Who a content read is for.
#[derive(Debug, Clone, Copy)]
pub enum Reader {
    /// A signed-in caller: sees their own writes.
    Caller(Uuid),
    Anonymous,
    /// A read whose answer goes into the shared cache.
    CacheFill,
}

impl Reader {
    /// `viewer`'s read, or a cache fill when the answer is to be cached.
    pub fn of(viewer: Option<Uuid>, fills_cache: bool) -> Reader {
        match viewer {
            Some(id) => Reader::Caller(id),
            None if fills_cache => Reader::CacheFill,
            None => Reader::Anonymous,
        }
    }
}

impl Reader {
    /// The signed-in caller, if any.
    pub fn caller(self) -> Option<Uuid> {
        match self {
            Reader::Caller(id) => Some(id),
            Reader::Anonymous | Reader::CacheFill => None,
        }
    }
}

/// Where a read went, and why (`stoa_db_reads_total{pool, reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Replica,
    /// The replica may be further behind than `STOA_DB_READ_MAX_LAG`.
    ReplicaBehind,
    /// The caller wrote something the replica may not have replayed yet.
    OwnWrite,
    /// Writes made elsewhere may be unknown here (the writes feed is down, was down
    /// recently, or forgot older marks).
    WritesUnknown,
    CacheFill,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Replica,
        Route::ReplicaBehind,
        Route::OwnWrite,
        Route::WritesUnknown,
        Route::CacheFill,
    ];

    fn labels(self) -> ReadLabels {
        let (pool, reason) = match self {
            Route::Replica => ("replica", "current"),
            Route::ReplicaBehind => ("primary", "replica_behind"),
            Route::OwnWrite => ("primary", "own_write"),
            Route::WritesUnknown => ("primary", "writes_unknown"),
            Route::CacheFill => ("primary", "cache_fill"),
        };
        ReadLabels { pool, reason }
    }
}

/// Instants as nanoseconds since the process's epoch, so they fit in atomics; 0 is
/// "never".
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

/// Notes the largest mark the writers' map forgets: a forgotten writer is treated as
/// having written then.
#[derive(Clone, Default)]
struct Forgotten(Arc<AtomicU64>);

impl quick_cache::Lifecycle<Uuid, u64> for Forgotten {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut Self::RequestState, _: Uuid, marked: u64) {
        self.0.fetch_max(marked, Ordering::AcqRel);
    }
}

type WriterMarks = quick_cache::sync::Cache<
    Uuid,
    u64,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    Forgotten,
>;

/// How many writers' marks a pod keeps (a mark only matters until the watermark passes
/// it, a few hundred milliseconds normally; one forgotten while it still matters sends
/// every signed-in read to the primary until then).
const WRITER_MARKS: usize = 100_000;

/// The routing state of a pod with a replica.
pub struct Routing {
    clock: Clock,
    max_lag: u64,
    /// See the module comment; 0 until the replica has been seen to catch up once.
    watermark: AtomicU64,
    /// Each writer's last write, as this pod learnt of it (after it committed).
    writers: WriterMarks,
    forgotten: Forgotten,
    /// Writes before this instant may be missing from `writers` (the feed was down).
    unknown_before: AtomicU64,
    feed_live: AtomicBool,
    kv: Option<Arc<Kv>>,
    metrics: Arc<Metrics>,
    counts: [Counter; Route::ALL.len()],
}

impl Routing {
    fn new(config: &ReadReplicaConfig, kv: Option<Arc<Kv>>, metrics: Arc<Metrics>) -> Self {
        let forgotten = Forgotten::default();
        Routing {
            clock: Clock(Instant::now()),
            max_lag: u64::try_from(config.max_lag.as_nanos()).unwrap_or(u64::MAX),
            watermark: AtomicU64::new(0),
            writers: WriterMarks::with(
                WRITER_MARKS,
                WRITER_MARKS as u64,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                forgotten.clone(),
            ),
            forgotten,
            unknown_before: AtomicU64::new(0),
            feed_live: AtomicBool::new(false),
            kv,
            counts: Route::ALL.map(|route| metrics.db_reads.get_or_create(&route.labels()).clone()),
            metrics,
        }
    }

    /// Where `reader`'s read goes now.
    fn route(&self, reader: Reader) -> Route {
        let now = self.clock.now();
        let watermark = self.watermark.load(Ordering::Acquire);
        if watermark == 0 || now.saturating_sub(watermark) > self.max_lag {
            return Route::ReplicaBehind;
        }
        match reader {
            Reader::Anonymous => Route::Replica,
            Reader::CacheFill => Route::CacheFill,
            Reader::Caller(user) => {
                if !self.feed_live.load(Ordering::Acquire) {
                    return Route::WritesUnknown;
                }
                let unknown = self
                    .unknown_before
                    .load(Ordering::Acquire)
                    .max(self.forgotten.0.load(Ordering::Acquire));
                if unknown >= watermark {
                    Route::WritesUnknown
                } else if self.writers.get(&user).is_some_and(|w| w >= watermark) {
                    Route::OwnWrite
                } else {
                    Route::Replica
                }
            }
        }
    }

    /// Records that `user` wrote (their write has committed).
    fn mark(&self, user: Uuid) {
        self.writers.insert(user, self.clock.now());
    }

    /// Anyone may have written until now (announcements missed or unreadable): every
    /// signed-in read goes to the primary until the replica has caught up with this instant.
    fn anyone_may_have_written(&self) {
        self.unknown_before
            .fetch_max(self.clock.now(), Ordering::AcqRel);
    }

    /// Everything the primary had committed by `at` (a `Clock` reading) has been replayed.
    fn advance_watermark(&self, at: u64) {
        self.watermark.fetch_max(at, Ordering::AcqRel);
    }

    /// Whether a replica `staleness` behind serves reads.
    fn is_current(&self, staleness: Option<Duration>) -> bool {
        staleness.is_some_and(|s| s.as_nanos() <= u128::from(self.max_lag))
    }

    /// How far behind the replica may be, as of now (`None`: not seen caught up yet).
    fn staleness(&self) -> Option<Duration> {
        match self.watermark.load(Ordering::Acquire) {
            0 => None,
            mark => Some(Duration::from_nanos(self.clock.now().saturating_sub(mark))),
        }
    }
}

/// A pod's read routing: every read on the primary without a replica.
#[derive(Clone)]
pub struct Reads {
    routing: Option<Arc<Routing>>,
}

impl Reads {
    pub fn new(
        config: Option<&ReadReplicaConfig>,
        kv: Option<Arc<Kv>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reads {
            routing: config.map(|config| Arc::new(Routing::new(config, kv, metrics))),
        }
    }

    /// Whether a replica is configured (writes are then recorded and announced).
    pub fn enabled(&self) -> bool {
        self.routing.is_some()
    }

    pub fn routing(&self) -> Option<&Arc<Routing>> {
        self.routing.as_ref()
    }

    /// The replica as readiness reports it (`None` without one): whether it serves reads,
    /// and how far behind it may be (`None`: not seen caught up yet).
    pub fn replica_status(&self) -> Option<(bool, Option<Duration>)> {
        let routing = self.routing.as_ref()?;
        let staleness = routing.staleness();
        Some((routing.is_current(staleness), staleness))
    }

    /// The pool `reader`'s content read goes to. Hold the guard only for the query.
    pub fn pool(&self, database: &Db, reader: Reader) -> Guard<Arc<Pool>> {
        if let Some(routing) = &self.routing {
            let route = routing.route(reader);
            routing.counts[route as usize].inc();
            if route == Route::Replica
                && let Some(replica) = database.replica()
            {
                return replica;
            }
        }
        database.pool()
    }

    /// Records `user`'s committed write here and announces it to every pod; returns once
    /// Redis has taken the announcement (or failed to), so it is out before the response.
    pub async fn wrote(&self, user: Uuid) {
        let Some(routing) = &self.routing else { return };
        routing.mark(user);
        if let Some(kv) = &routing.kv {
            let announced = kv.run(|conn| writes::announce(conn, user)).await;
            if announced.is_none() {
                routing.metrics.read_write_announcements_failed.inc();
            }
        }
    }
}

/// Where the extractors and handlers of a writing request note who wrote (put there by
/// the `record_writes` middleware, which announces it once the response is ready).
#[derive(Clone, Default)]
pub struct Writer(Arc<OnceLock<Uuid>>);

impl Writer {
    /// Notes `user` as the request's writer, if the request is a write with a replica.
    pub fn note(extensions: &axum::http::Extensions, user: Uuid) {
        if let Some(writer) = extensions.get::<Writer>() {
            writer.set(user);
        }
    }

    /// Notes `user` as the writer (a handler that creates the caller).
    pub fn set(&self, user: Uuid) {
        let _ = self.0.set(user);
    }

    pub fn get(&self) -> Option<Uuid> {
        self.0.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Followed;

    fn routing_with(max_lag: Duration) -> Routing {
        let config = ReadReplicaConfig {
            url: crate::config::Secret::new("postgres://standby/stoa"),
            max_connections: 2,
            max_lag,
            lag_check_interval: Duration::from_millis(10),
        };
        Routing::new(&config, None, Arc::new(Metrics::new(0)))
    }

    /// A watermark taken now, as the lag monitor would after the replica caught up.
    fn caught_up(routing: &Routing) {
        routing.advance_watermark(routing.clock.now());
    }

    #[test]
    fn nothing_goes_to_a_replica_not_seen_current() {
        let routing = routing_with(Duration::from_secs(5));
        assert_eq!(routing.route(Reader::Anonymous), Route::ReplicaBehind);
        caught_up(&routing);
        assert_eq!(routing.route(Reader::Anonymous), Route::Replica);
        let stale = routing_with(Duration::from_millis(100));
        caught_up(&stale);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(stale.route(Reader::Anonymous), Route::ReplicaBehind);
        assert_eq!(stale.route(Reader::CacheFill), Route::ReplicaBehind);
    }

    #[test]
    fn cache_fills_always_read_the_primary() {
        let routing = routing_with(Duration::from_secs(5));
        caught_up(&routing);
        assert_eq!(routing.route(Reader::CacheFill), Route::CacheFill);
    }

    #[test]
    fn a_writer_reads_the_primary_until_the_replica_has_their_write() {
        let routing = routing_with(Duration::from_secs(5));
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        caught_up(&routing);
        assert_eq!(
            routing.route(Reader::Caller(alice)),
            Route::WritesUnknown,
            "not following the writes feed: anyone may have written elsewhere"
        );
        routing.feed_live.store(true, Ordering::Release);
        assert_eq!(routing.route(Reader::Caller(alice)), Route::Replica);
        routing.mark(alice);
        assert_eq!(routing.route(Reader::Caller(alice)), Route::OwnWrite);
        assert_eq!(routing.route(Reader::Caller(bob)), Route::Replica);
        caught_up(&routing);
        assert_eq!(routing.route(Reader::Caller(alice)), Route::Replica);
    }

    #[test]
    fn after_a_feed_outage_every_caller_reads_the_primary_until_the_replica_catches_up() {
        let routing = routing_with(Duration::from_secs(5));
        let metrics = Metrics::new(0);
        caught_up(&routing);
        routing.set_live(true, &metrics);
        let carol = Uuid::new_v4();
        assert_eq!(routing.route(Reader::Caller(carol)), Route::WritesUnknown);
        caught_up(&routing);
        assert_eq!(routing.route(Reader::Caller(carol)), Route::Replica);
        // A forgotten mark counts as a write by anyone at that time.
        routing
            .forgotten
            .0
            .store(routing.clock.now(), Ordering::Release);
        assert_eq!(routing.route(Reader::Caller(carol)), Route::WritesUnknown);
    }
}
