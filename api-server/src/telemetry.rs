//! Logging: JSON lines in production, human-readable in `--dev`.
//!
//! A request never waits for stdout. Formatted lines are appended to an in-memory batch
//! under a short lock; a writer thread takes the whole batch every `FLUSH_EVERY` and
//! writes it with one call. When `STOA_LOG_QUEUE_LINES` lines are already waiting (a slow
//! log collector), further lines are dropped rather than waited for, and counted
//! (`stoa_log_lines_dropped_total`).
//!
//! Why not a channel to the writer (tracing-appender's design, used before): a writer that
//! blocks on the channel is woken for nearly every line, and under load those wake-ups and
//! context switches cost a quarter of `/healthz`'s throughput (measured with `perf` and
//! wrk); waking on a timer costs nothing per line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};

/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// The batch lines go to, once logging is initialised.
static BATCH: OnceLock<Arc<Batch>> = OnceLock::new();
/// Set when lines are JSON: access lines are then written here directly (see `access`).
static JSON_ACCESS_LINES: OnceLock<Arc<Batch>> = OnceLock::new();

/// Lines dropped because the queue was full, since start.
pub fn dropped_lines() -> u64 {
    BATCH
        .get()
        .map_or(0, |batch| batch.dropped.load(Ordering::Relaxed))
}

/// Lines waiting to be written.
struct Batch {
    queued: Mutex<Queued>,
    max_lines: usize,
    dropped: AtomicU64,
    /// Signalled to stop the writer (which then writes what is left).
    stop: Condvar,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    lines: usize,
    stopping: bool,
}

impl Batch {
    /// Queues one line, or drops and counts it when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut queued = self.lock();
        if queued.lines >= self.max_lines {
            drop(queued);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            queued.bytes.extend_from_slice(line);
            queued.lines += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs on the writer thread until told to stop, then writes what is left.
    fn write_out(&self, out: &mut impl Write) {
        let mut spare = Vec::new();
        loop {
            let stopping = {
                let queued = self.lock();
                let (mut queued, _) = self
                    .stop
                    .wait_timeout_while(queued, FLUSH_EVERY, |q| !q.stopping)
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut queued.bytes, &mut spare);
                queued.lines = 0;
                queued.stopping
            };
            if !spare.is_empty() {
                // Nowhere to report a failing stdout; the next batch tries again.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
            }
            if stopping {
                return;
            }
        }
    }
}

/// The writer the formatter writes each line to (one `write` call per line).
#[derive(Clone)]
struct BatchWriter(Arc<Batch>);

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the writer thread; dropping it writes out what is queued (at the end of `main`).
#[must_use = "dropping the guard stops the log writer"]
pub struct Logging {
    batch: Arc<Batch>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Logging {
    fn drop(&mut self) {
        self.batch.lock().stopping = true;
        self.batch.stop.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Logging as `config` says: format, filter, queue size.
pub fn init(config: &Config) -> Logging {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, logging) = start_writer(config.log_queue_lines, std::io::stdout());
    let _ = BATCH.set(logging.batch.clone());
    if config.log_format == LogFormat::Json {
        let _ = JSON_ACCESS_LINES.set(logging.batch.clone());
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Only with a DSN: otherwise no event pays for the error-tracking filter.
    let sentry = config.sentry_dsn.is_some();
    // `try_init`: tests may initialise more than once.
    let _ = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(sentry.then(crate::error_tracking::tracing_layer))
            .try_init(),
        LogFormat::Pretty => builder
            .compact()
            .finish()
            .with(sentry.then(crate::error_tracking::tracing_layer))
            .try_init(),
    };
    logging
}

impl Batch {
    fn new(max_lines: usize) -> Arc<Batch> {
        Arc::new(Batch {
            queued: Mutex::default(),
            max_lines,
            dropped: AtomicU64::new(0),
            stop: Condvar::new(),
        })
    }
}

/// One request, as the access log records it.
pub struct AccessEntry<'a> {
    pub request_id: &'a str,
    pub method: &'static str,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
}

/// Logs a request (target `stoa::access`; `error` for a 5xx, else `info`).
///
/// In JSON format the line is formatted here, byte for byte as the JSON formatter writes
/// an event (same keys, same order), and queued directly: the generic formatter's visitor
/// and `fmt` machinery cost about a quarter of `/healthz`'s throughput, this a fraction of
/// it. The level filter (`STOA_LOG`) applies as to any event.
pub fn access(entry: &AccessEntry<'_>) {
    let failed = entry.status >= 500;
    let Some(batch) = JSON_ACCESS_LINES.get() else {
        access_event(entry);
        return;
    };
    let enabled = if failed {
        tracing::enabled!(target: "stoa::access", tracing::Level::ERROR)
    } else {
        tracing::enabled!(target: "stoa::access", tracing::Level::INFO)
    };
    if !enabled {
        return;
    }
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        if json_access_line(line, entry, std::time::SystemTime::now()).is_ok() {
            batch.push(line);
        }
    });
}

/// The access line as a `tracing` event, for every format but JSON.
fn access_event(entry: &AccessEntry<'_>) {
    let AccessEntry {
        request_id,
        method,
        path,
        status,
        latency_ms,
    } = *entry;
    if status >= 500 {
        tracing::error!(target: "stoa::access", request_id, method, path, status, latency_ms, "request failed");
    } else {
        tracing::info!(target: "stoa::access", request_id, method, path, status, latency_ms, "request");
    }
}

fn json_access_line(
    line: &mut Vec<u8>,
    entry: &AccessEntry<'_>,
    now: std::time::SystemTime,
) -> std::io::Result<()> {
    let (level, message) = if entry.status >= 500 {
        ("ERROR", "request failed")
    } else {
        ("INFO", "request")
    };
    write!(
        line,
        r#"{{"timestamp":"{}","level":"{level}","message":"{message}","request_id":"#,
        humantime::format_rfc3339_micros(now)
    )?;
    serde_json::to_writer(&mut *line, entry.request_id)?;
    write!(line, r#","method":"{}","path":"#, entry.method)?;
    serde_json::to_writer(&mut *line, entry.path)?;
    write!(line, r#","status":{},"latency_ms":"#, entry.status)?;
    serde_json::to_writer(&mut *line, &entry.latency_ms)?;
    line.extend_from_slice(b",\"target\":\"stoa::access\"}\n");
    Ok(())
}

fn start_writer(max_lines: usize, mut out: impl Write + Send + 'static) -> (BatchWriter, Logging) {
    let batch = Batch::new(max_lines);
    let for_thread = batch.clone();
    let writer = std::thread::Builder::new()
        .name("stoa-log".into())
        .spawn(move || for_thread.write_out(&mut out))
        .map_err(|e| eprintln!("cannot start the log writer thread ({e}); logs go nowhere"))
        .ok();
    (BatchWriter(batch.clone()), Logging { batch, writer })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_within_the_flush_interval_and_all_of_them_at_stop() {
        let sink = Sink::default();
        let (mut writer, logging) = start_writer(100, sink.clone());
        writer.write_all(b"one\n").unwrap();
        std::thread::sleep(FLUSH_EVERY * 5);
        assert_eq!(&*sink.0.lock().unwrap(), b"one\n");
        writer.write_all(b"two\n").unwrap();
        drop(logging);
        assert_eq!(&*sink.0.lock().unwrap(), b"one\ntwo\n");
    }

    /// The hand-written access line is the line the JSON formatter writes for the same
    /// event (the format log pipelines already parse).
    #[test]
    fn access_lines_are_byte_for_byte_the_json_formatters_lines() {
        let entry = AccessEntry {
            request_id: "req \"1\"\u{7}",
            method: "GET",
            path: "/api/articles/a\\b",
            status: 503,
            latency_ms: 0.089_994_999_999_999_99,
        };
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer({
                let sink = sink.clone();
                move || sink.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || access_event(&entry));
        let formatted = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let timestamp = &formatted[r#"{"timestamp":""#.len()..][..27];
        let now = humantime::parse_rfc3339(timestamp).unwrap();
        let mut ours = Vec::new();
        json_access_line(&mut ours, &entry, now).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), formatted);
    }

    #[test]
    fn lines_beyond_the_queue_limit_are_dropped_and_counted_not_waited_for() {
        // No writer thread yet: the queue only fills.
        let batch = Batch::new(3);
        let mut writer = BatchWriter(batch.clone());
        for n in 0..5 {
            writer.write_all(format!("{n}\n").as_bytes()).unwrap();
        }
        assert_eq!(batch.dropped.load(Ordering::Relaxed), 2);
        batch.lock().stopping = true;
        let mut out = Vec::new();
        batch.write_out(&mut out);
        assert_eq!(out, b"0\n1\n2\n");
    }
}
