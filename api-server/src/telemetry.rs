//! Logging: JSON lines in production, human-readable in `--dev`.
//!
//! Lines go through a bounded in-memory queue to a writer thread, so a slow stdout (a
//! busy log collector) never blocks a request. When the queue is full, lines are dropped
//! rather than waited for, and counted (`stoa_log_lines_dropped_total`). The writer
//! thread drains everything queued into one buffer and flushes it when the queue is empty,
//! so a busy server makes one `write` per batch of lines, not one per line, and a quiet one
//! still has every line out at once.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it flushes what is queued (at the end of `main`).
#[must_use = "dropping the guard stops the log writer"]
pub struct Logging {
    _writer: WorkerGuard,
}

/// Lines dropped because the queue was full, since start.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Logging as `config` says: format, filter, queue size.
pub fn init(config: &Config) -> Logging {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(config.log_queue_lines)
        .thread_name("stoa-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // `try_init`: tests may initialise more than once.
    let _ = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    Logging { _writer: guard }
}
