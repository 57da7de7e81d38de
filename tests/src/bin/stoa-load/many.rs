//! Many connections at once: the "10,000 concurrent users" target. Each simulated user
//! holds one HTTP/1.1 keep-alive connection for the whole run, driven one of two ways:
//!
//! - **open loop**: requests are due on a fixed schedule (the offered rate spread evenly
//!   over the connections, so each connection sits idle between its requests, as a user's
//!   does) whatever the pace of the answers. Latency is counted from when a request was
//!   due, not from when it could be sent, so a server that falls behind cannot hide its
//!   queue behind a client that politely waits (no coordinated omission).
//! - **closed loop**: every connection sends its next request as soon as the last one is
//!   answered, far more than the server admits at once. What matters there is that the
//!   requests it sheds are answered fast, with `Retry-After`, and the admitted ones keep
//!   their latency; admitted and shed answers are timed separately.
//!
//! wrk cannot do either: it has no rate option, and it times every answer alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How one run drives its connections.
pub struct Plan {
    pub connections: usize,
    /// Requests per second over all connections, or `None` for a closed loop.
    pub rate: Option<f64>,
    pub warm_up: Duration,
    pub duration: Duration,
    /// Path and query of the request every connection repeats.
    pub path: String,
}

/// What a run measured (over the measured time only, not the warm-up).
pub struct Outcome {
    /// Requests answered 2xx, and their latency in µs.
    pub admitted: Histogram<u64>,
    /// Requests answered 503 (shed), and their latency in µs.
    pub shed: Histogram<u64>,
    /// 503 answers without a `Retry-After` header.
    pub shed_without_retry_after: u64,
    /// Answers with any other status.
    pub other_status: u64,
    /// Requests that got no answer (connection reset or closed, timeout).
    pub failed: u64,
    /// Seconds the measured part lasted.
    pub seconds: f64,
    /// Seconds it took to open every connection.
    pub connect_seconds: f64,
}

impl Outcome {
    pub fn answered(&self) -> u64 {
        self.admitted.len() + self.shed.len() + self.other_status
    }
}

/// Counts shared by every connection's task.
struct Tally {
    admitted: Mutex<Histogram<u64>>,
    shed: Mutex<Histogram<u64>>,
    shed_without_retry_after: AtomicU64,
    other_status: AtomicU64,
    failed: AtomicU64,
}

/// Longest time a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections opened at once while setting up (more would overflow the server's accept
/// queue and measure SYN retries instead of the server).
const CONNECTING_AT_ONCE: usize = 256;

pub async fn run(server: SocketAddr, plan: &Plan) -> anyhow::Result<Outcome> {
    let host = server.to_string();
    let started = Instant::now();
    let senders = connect_all(server, plan.connections).await?;
    let connect_seconds = started.elapsed().as_secs_f64();

    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let tally = Arc::new(Tally {
        admitted: Mutex::new(histogram()?),
        shed: Mutex::new(histogram()?),
        shed_without_retry_after: AtomicU64::new(0),
        other_status: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // Leave the connections a moment to settle, then start every schedule from one instant.
    let start = Instant::now() + Duration::from_millis(200);
    let measured_from = start + plan.warm_up;
    let end = measured_from + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, sender) in senders.into_iter().enumerate() {
        let user = User {
            sender,
            request: request(&plan.path, &host)?,
            tally: tally.clone(),
            measured_from,
            end,
        };
        match plan.rate {
            Some(rate) => {
                // Connection `index` sends requests index, index + n, index + 2n, ... of
                // one global schedule of `rate` per second.
                let every = Duration::from_secs_f64(plan.connections as f64 / rate);
                let first = start + Duration::from_secs_f64(index as f64 / rate);
                tasks.spawn(user.open_loop(first, every));
            }
            None => {
                tasks.spawn(user.closed_loop(start));
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    let tally = Arc::try_unwrap(tally)
        .ok()
        .context("every connection's task has finished")?;
    Ok(Outcome {
        admitted: tally
            .admitted
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        shed: tally.shed.into_inner().unwrap_or_else(|e| e.into_inner()),
        shed_without_retry_after: tally.shed_without_retry_after.into_inner(),
        other_status: tally.other_status.into_inner(),
        failed: tally.failed.into_inner(),
        seconds: plan.duration.as_secs_f64(),
        connect_seconds,
    })
}

/// Opens `count` HTTP/1.1 connections to `server`.
async fn connect_all(
    server: SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<SendRequest<Empty<Bytes>>>> {
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..count {
        let connecting = connecting.clone();
        opening.spawn(async move {
            let _turn = connecting.acquire_owned().await?;
            let stream = TcpStream::connect(server).await.map_err(|e| {
                if e.raw_os_error() == Some(24) {
                    anyhow::anyhow!(
                        "out of file descriptors: raise the limit (`ulimit -n`) above the connection count"
                    )
                } else {
                    anyhow::Error::new(e).context(format!("connecting to {server}"))
                }
            })?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            anyhow::Ok(sender)
        });
    }
    let mut senders = Vec::with_capacity(count);
    while let Some(opened) = opening.join_next().await {
        senders.push(opened??);
    }
    Ok(senders)
}

fn request(path: &str, host: &str) -> anyhow::Result<Request<Empty<Bytes>>> {
    Ok(Request::get(path)
        .header(header::HOST, host)
        .body(Empty::new())?)
}

/// One simulated user: a connection and what it reports to.
struct User {
    sender: SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
    tally: Arc<Tally>,
    measured_from: Instant,
    end: Instant,
}

impl User {
    /// Sends at `first`, `first + every`, ... until the end; a request due while the last
    /// is still unanswered goes as soon as it is, and its wait counts in its latency.
    async fn open_loop(mut self, first: Instant, every: Duration) {
        let mut due = first;
        while due < self.end {
            tokio::time::sleep_until(due).await;
            if !self.send(due).await {
                return;
            }
            due += every;
        }
    }

    async fn closed_loop(mut self, start: Instant) {
        tokio::time::sleep_until(start).await;
        loop {
            let now = Instant::now();
            if now >= self.end || !self.send(now).await {
                return;
            }
        }
    }

    /// Sends one request due at `due` and records its answer; false once the connection
    /// is unusable.
    async fn send(&mut self, due: Instant) -> bool {
        let measured = due >= self.measured_from;
        let copy = self.request_copy();
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.sender.ready().await?;
            let response = self.sender.send_request(copy).await?;
            let status = response.status();
            let retry_after = response.headers().contains_key(header::RETRY_AFTER);
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, retry_after))
        })
        .await;
        let latency = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (status, retry_after) = match answered {
            Ok(Ok(answer)) => answer,
            _ => {
                if measured {
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
        };
        if !measured {
            return true;
        }
        let histogram = if status.is_success() {
            &self.tally.admitted
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            if !retry_after {
                self.tally
                    .shed_without_retry_after
                    .fetch_add(1, Ordering::Relaxed);
            }
            &self.tally.shed
        } else {
            self.tally.other_status.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        if let Ok(mut histogram) = histogram.lock() {
            histogram.saturating_record(latency);
        }
        true
    }

    fn request_copy(&self) -> Request<Empty<Bytes>> {
        let mut copy = Request::new(Empty::new());
        *copy.uri_mut() = self.request.uri().clone();
        *copy.headers_mut() = self.request.headers().clone();
        copy
    }
}
