//! The replica's watermark: how far behind the primary it may be.
//!
//! Every `STOA_DB_READ_LAG_CHECK_INTERVAL` the monitor notes the time, then reads the
//! primary's WAL insert position: every transaction committed before that time ends at or
//! before it. Once the replica's replay position reaches a sample, the sample's time is the
//! new watermark. Comparing positions instead of replay timestamps keeps an idle primary
//! from looking like a lagging replica, and needs no clocks to agree.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use crate::reads::Routing;

/// The primary's WAL insert position, in bytes.
const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

/// The replica's replay position (a server that is not in recovery, say the primary under
/// another address, has replayed everything it has).
const REPLAY_POSITION: &str = "SELECT (coalesce(pg_last_wal_replay_lsn(), pg_current_wal_insert_lsn()) - '0/0'::pg_lsn)::int8";

/// Samples waiting for the replica; older ones are dropped first (a later sample reached
/// gives a later watermark anyway).
const MAX_PENDING: usize = 256;

/// WAL page size (PostgreSQL's default `XLOG_BLCKSZ`) and the longest page header.
const WAL_PAGE: i64 = 8192;
const WAL_PAGE_HEADER_MAX: i64 = 40;

/// Whether a replica that has replayed up to `replayed` has everything before the primary's
/// insert position `sampled`. An insert position just past a page header (no record
/// starts there yet) is reached at the page's start: the last record ended there.
fn reached(replayed: i64, sampled: i64) -> bool {
    let into_page = sampled.rem_euclid(WAL_PAGE);
    let needed = if into_page <= WAL_PAGE_HEADER_MAX {
        sampled - into_page
    } else {
        sampled
    };
    replayed >= needed
}

/// Follows the replica's progress for as long as the process runs.
pub fn spawn(routing: Arc<Routing>, database: Arc<Db>, interval: Duration, timeout: Duration) {
    tokio::spawn(async move {
        let mut pending: VecDeque<(u64, i64)> = VecDeque::new();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            ticks.tick().await;
            let at = routing.clock.now();
            // Each pool guard lives for its own statement only.
            let sampled = tokio::time::timeout(
                timeout,
                sqlx::query_scalar::<_, i64>(PRIMARY_POSITION).fetch_one(&**database.pool()),
            )
            .await;
            if let Ok(Ok(position)) = sampled {
                if pending.len() == MAX_PENDING {
                    pending.pop_front();
                }
                pending.push_back((at, position));
            }
            let Some(replica) = database.replica() else {
                return;
            };
            let replayed = tokio::time::timeout(
                timeout,
                sqlx::query_scalar::<_, i64>(REPLAY_POSITION).fetch_one(&**replica),
            )
            .await;
            drop(replica);
            match replayed {
                Ok(Ok(replayed)) => {
                    if warned {
                        tracing::info!("read replica answers again");
                        warned = false;
                    }
                    let mut caught_up = None;
                    while let Some(&(at, position)) = pending.front()
                        && reached(replayed, position)
                    {
                        caught_up = Some(at);
                        pending.pop_front();
                    }
                    if let Some(at) = caught_up {
                        routing.advance_watermark(at);
                    }
                }
                Ok(Err(error)) if !warned => {
                    tracing::warn!(
                        error = crate::db::describe_error(&error),
                        "read replica unreachable: reads go to the primary"
                    );
                    warned = true;
                }
                Err(_) if !warned => {
                    tracing::warn!("read replica did not answer in time: reads go to the primary");
                    warned = true;
                }
                _ => {}
            }
            publish(&routing);
        }
    });
}

/// Brings the staleness gauge and the replica's `stoa_dependency_up` up to date.
fn publish(routing: &Routing) {
    let staleness = routing.staleness();
    let seconds = staleness.map_or(f64::INFINITY, |s| s.as_secs_f64());
    routing.metrics.db_replica_staleness.set(seconds);
    routing
        .metrics
        .set_dependency_up("read_replica", routing.is_current(staleness));
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn a_sample_is_reached_at_or_past_its_position() {
        assert!(reached(0x1_0000_1000, 0x1_0000_1000));
        assert!(reached(0x1_0000_2000, 0x1_0000_1000));
        assert!(!reached(0x1_0000_0FF8, 0x1_0000_1000 + 100));
    }

    #[test]
    fn a_position_just_past_a_page_header_is_reached_at_the_page_start() {
        // A primary at rest right after a page boundary: its insert position is past the
        // header, while the replica's replay ends where the last record did.
        let page = 5 * 8192;
        assert!(reached(page, page + 24));
        assert!(reached(page, page + 40));
        assert!(!reached(page - 8, page + 24));
        assert!(!reached(page, page + 48));
    }
}
