//! Security events, counted (`stoa_security_events_total`) and kept (`security_events`)
//! for the admin console. Recording never waits on the database: events go through a
//! bounded queue to a writer that stores them in batches. A full queue, or a batch the
//! database refused, drops events, counted in `stoa_security_events_dropped_total` (the
//! counter by event stays exact either way).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::Db;
use crate::metrics::{Metrics, SecurityEvent};

/// Events waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;
/// The most events one statement stores.
const BATCH: usize = 256;

struct Entry {
    at: DateTime<Utc>,
    event: SecurityEvent,
    user: Option<Uuid>,
}

pub struct SecurityLog {
    queue: mpsc::Sender<Entry>,
    /// Taken by [`SecurityLog::spawn_writer`] (once).
    pending: Mutex<Option<mpsc::Receiver<Entry>>>,
    metrics: Arc<Metrics>,
}

impl SecurityLog {
    pub fn new(metrics: Arc<Metrics>) -> SecurityLog {
        let (queue, receiver) = mpsc::channel(QUEUE);
        SecurityLog {
            queue,
            pending: Mutex::new(Some(receiver)),
            metrics,
        }
    }

    /// Counts `event` and queues it for storing, with the account it concerns if any.
    pub fn record(&self, event: SecurityEvent, user: Option<Uuid>) {
        self.metrics.count_security_event(event);
        let entry = Entry {
            at: Utc::now(),
            event,
            user,
        };
        if self.queue.try_send(entry).is_err() {
            self.metrics.security_events_dropped.inc();
        }
    }

    /// Starts the writer (serving processes only; a second call does nothing).
    pub fn spawn_writer(&self, database: Arc<Db>) {
        let Some(mut receiver) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = store(&database, &batch).await {
                    metrics.security_events_dropped.inc_by(batch.len() as u64);
                    tracing::warn!(error = %e, events = batch.len(), "could not store security events");
                }
                batch.clear();
            }
        });
    }
}

async fn store(database: &Db, batch: &[Entry]) -> Result<(), sqlx::Error> {
    let at: Vec<DateTime<Utc>> = batch.iter().map(|e| e.at).collect();
    let events: Vec<&str> = batch.iter().map(|e| e.event.as_str()).collect();
    let users: Vec<Option<Uuid>> = batch.iter().map(|e| e.user).collect();
    // An account deleted meanwhile: the event stays, without it.
    sqlx::query(
        "INSERT INTO security_events (at, event, user_id)
         SELECT e.at, e.event, u.id
         FROM unnest($1::timestamptz[], $2::text[], $3::uuid[]) AS e(at, event, user_id)
         LEFT JOIN users u ON u.id = e.user_id",
    )
    .bind(at)
    .bind(events)
    .bind(users)
    .execute(&**database.pool())
    .await?;
    Ok(())
}
