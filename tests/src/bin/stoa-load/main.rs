//! `stoa-load`: seeds realistic data through the API, then drives the main read and write
//! endpoints with a fixed number of keep-alive connections and reports throughput and
//! latency percentiles per scenario, plus each scenario's throughput as a share of two
//! limits measured in the same run: `bare` (the `stoa-bare` binary: one axum route, no
//! middleware, answering the bytes stoa-api answered for `/api/tags`) and `/healthz` (a
//! stoa-api handler with no I/O behind the whole middleware stack).
//!
//! With `--database-url` it also reports database transactions per request (from
//! `pg_stat_database.xact_commit`): every statement Stoa sends is its own transaction, so
//! this is the number of statements each request costs.
//!
//! ```text
//! cargo run --release -p stoa-tests --bin stoa-load -- --url http://127.0.0.1:8080 \
//!     --connections 64 --duration 10s --database-url postgres://postgres@127.0.0.1/stoa_bench
//! ```

mod many;
mod seed;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use seed::{Seed, TAGS, call, seed};

#[derive(Parser, Debug)]
#[command(about = "Load harness for stoa-api")]
struct Args {
    /// Base URL of a running stoa-api.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent keep-alive connections per scenario.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time per scenario (after a 1 s warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Users to create while seeding (each follows the next 20, so their feeds are the
    /// wide shape: many authors with a few articles each).
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Articles to create while seeding, by the users in turn.
    #[arg(long, default_value_t = 1000)]
    articles: usize,
    /// Articles by each of the 3 prolific authors, written before all the others (the
    /// `feed_prolific` shape: a reader following a few authors whose articles sit behind
    /// everything newer the site published).
    #[arg(long, default_value_t = 150)]
    prolific_articles: usize,
    /// Comma-separated scenarios to run (default: all). See `--list`.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Database of the server, to count database transactions per request.
    #[arg(long)]
    database_url: Option<String>,
    /// The server's admin `/metrics`, to report each scenario's cache hit ratio.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The `stoa-bare` binary (default: next to this one). `--bare none` skips the limit.
    #[arg(long)]
    bare: Option<std::path::PathBuf>,
    /// Who sends the requests of read scenarios: this program (`reqwest`), or `wrk` (C,
    /// far cheaper per request, so the server rather than the client is measured; two
    /// threads). Writes always use reqwest.
    #[arg(long, value_enum, default_value_t = Engine::Reqwest)]
    engine: Engine,
    /// Connections held open by the `many_*` scenarios (the file-descriptor limit of this
    /// process and of the server must exceed it: `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    many_connections: usize,
    /// Requests per second offered by `many_open`, spread over its connections.
    #[arg(long, default_value_t = 20_000.0)]
    many_rate: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Reqwest,
    Wrk,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    }
}

const SCENARIOS: &[(&str, &str)] = &[
    (
        "bare",
        "GET /api/tags on stoa-bare: one axum route, no middleware, the same bytes (the limit)",
    ),
    ("healthz", "GET /healthz: the no-I/O baseline"),
    ("articles_list", "GET /api/articles (20 items, anonymous)"),
    (
        "articles_list_auth",
        "GET /api/articles?limit=20 as a user (favorited/following flags)",
    ),
    ("articles_by_tag", "GET /api/articles?tag=<popular tag>"),
    (
        "articles_search",
        "GET /api/articles?q=<word in some titles> (full-text search, ranked)",
    ),
    (
        "articles_deep_offset",
        "GET /api/articles?limit=20&offset=<90% of the articles> (a deep page by offset)",
    ),
    (
        "articles_deep_cursor",
        "GET /api/articles?limit=20&cursor=<after 90% of the articles> (the same page by cursor)",
    ),
    ("article_get", "GET /api/articles/:slug (anonymous)"),
    (
        "read_mix",
        "anonymous browsing: list pages 1-5, a popular tag, articles by slug, tags",
    ),
    (
        "feed",
        "GET /api/articles/feed as a user following 20 authors with ~20 articles each",
    ),
    (
        "feed_prolific",
        "GET /api/articles/feed as a user following 3 authors with 150 older articles each",
    ),
    ("tags", "GET /api/tags"),
    ("user_get", "GET /api/user as a user"),
    ("profile", "GET /api/profiles/:username as a user"),
    ("comment_create", "POST /api/articles/:slug/comments"),
    (
        "favorite_toggle",
        "POST then DELETE /api/articles/:slug/favorite",
    ),
    ("article_create", "POST /api/articles"),
    (
        "many_open",
        "GET /api/tags over --many-connections (10,000) keep-alive connections, open loop at --many-rate (20,000/s) in all: each connection idle between its requests",
    ),
    (
        "many_closed",
        "GET /api/tags over 10,000 connections, closed loop (each sends again once answered): more than the server admits, so it sheds; admitted and shed answers timed apart",
    ),
];

struct Stats {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
}

/// The request a scenario sends as its `i`-th call from `worker`. Over ~80 lines: one arm
/// per scenario, the table of what each one measures.
fn request_for<'a>(
    name: &str,
    seed: &'a Seed,
    worker: usize,
    i: u64,
) -> Option<(Method, String, Option<&'a str>, Option<Value>)> {
    let token = Some(seed.tokens[worker % seed.tokens.len()].as_str());
    let slug = &seed.slugs[(worker * 7919 + i as usize) % seed.slugs.len()];
    let user = &seed.usernames[i as usize % seed.usernames.len()];
    Some(match name {
        "healthz" => (Method::GET, "/healthz".into(), None, None),
        "articles_list" => (Method::GET, "/api/articles".into(), None, None),
        "articles_list_auth" => (Method::GET, "/api/articles?limit=20".into(), token, None),
        "articles_by_tag" => (
            Method::GET,
            format!("/api/articles?tag={}", seed.popular_tag),
            None,
            None,
        ),
        "articles_search" => (
            Method::GET,
            format!("/api/articles?q={}", TAGS[i as usize % TAGS.len()]),
            None,
            None,
        ),
        "articles_deep_offset" => (
            Method::GET,
            format!("/api/articles?limit=20&offset={}", seed.deep_offset),
            None,
            None,
        ),
        "articles_deep_cursor" => (
            Method::GET,
            format!("/api/articles?limit=20&cursor={}", seed.deep_cursor),
            None,
            None,
        ),
        "article_get" => (Method::GET, format!("/api/articles/{slug}"), None, None),
        "read_mix" => {
            let path = match i % 4 {
                0 => format!("/api/articles?offset={}", (i / 4 % 5) * 20),
                1 => format!("/api/articles?tag={}", seed.popular_tag),
                2 => format!("/api/articles/{slug}"),
                _ => "/api/tags".into(),
            };
            (Method::GET, path, None, None)
        }
        "feed" => (Method::GET, "/api/articles/feed".into(), token, None),
        "feed_prolific" => {
            let reader = &seed.prolific_readers[worker % seed.prolific_readers.len()];
            (
                Method::GET,
                "/api/articles/feed".into(),
                Some(reader.as_str()),
                None,
            )
        }
        "tags" | "bare" => (Method::GET, "/api/tags".into(), None, None),
        "user_get" => (Method::GET, "/api/user".into(), token, None),
        "profile" => (Method::GET, format!("/api/profiles/{user}"), token, None),
        "comment_create" => (
            Method::POST,
            format!("/api/articles/{slug}/comments"),
            token,
            Some(json!({"comment": {"body": "Load comment"}})),
        ),
        "favorite_toggle" => {
            // Alternate on the same article so every call changes something.
            let slug = &seed.slugs[(worker * 7919 + (i / 2) as usize) % seed.slugs.len()];
            let method = if i.is_multiple_of(2) {
                Method::POST
            } else {
                Method::DELETE
            };
            (
                method,
                format!("/api/articles/{slug}/favorite"),
                token,
                Some(json!({})),
            )
        }
        "article_create" => (
            Method::POST,
            "/api/articles".into(),
            token,
            Some(
                json!({"article": {"title": format!("Bench {UNIQUE}"), "description": "d", "body": "b", "tagList": [ANY_TAG]}}),
            ),
        ),
        _ => return None,
    })
}

/// One request of a scenario; reads the whole body without parsing it (the harness should
/// spend as little CPU as possible next to the server). Returns whether it succeeded.
async fn one(client: &Client, base: &str, name: &str, seed: &Seed, worker: usize, i: u64) -> bool {
    let Some((method, path, token, body)) = request_for(name, seed, worker, i) else {
        return false;
    };
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        req = req.header("Authorization", format!("Token {token}"));
    }
    if let Some(body) = &body {
        let body = body
            .to_string()
            .replace(UNIQUE, &format!("{worker}-{i}"))
            .replace(ANY_TAG, TAGS[i as usize % TAGS.len()]);
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    match req.send().await {
        Ok(res) => {
            let ok = res.status().is_success();
            res.bytes().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

async fn run_scenario(
    client: &Client,
    base: &str,
    name: &'static str,
    seed: Arc<Seed>,
    connections: usize,
    duration: Duration,
) -> Stats {
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let workers = (0..connections).map(|worker| {
        let client = client.clone();
        let base = base.to_owned();
        let seed = seed.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let begin = Instant::now();
                if begin >= deadline {
                    break;
                }
                let success = one(&client, &base, name, &seed, worker, i).await;
                if begin >= measure_from {
                    let _ = histogram.record(begin.elapsed().as_micros().max(1) as u64);
                    if success { ok += 1 } else { errors += 1 }
                }
            }
            Stats {
                histogram,
                ok,
                errors,
            }
        })
    });
    let mut total = Stats {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        ok: 0,
        errors: 0,
    };
    for stats in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        let _ = total.histogram.add(&stats.histogram);
        total.ok += stats.ok;
        total.errors += stats.errors;
    }
    total
}

/// The bare-handler limit, running in its own process.
struct Bare {
    url: String,
    _process: tokio::process::Child,
    _body: tempfile::NamedTempFile,
}

/// Starts `stoa-bare` with the bytes stoa-api answers for `/api/tags` now (after seeding).
async fn start_bare(
    client: &Client,
    base: &str,
    binary: Option<&std::path::Path>,
) -> anyhow::Result<Option<Bare>> {
    use tokio::io::AsyncBufReadExt;
    let binary = match binary {
        Some(path) if path.as_os_str() == "none" => return Ok(None),
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("stoa-bare"),
    };
    let tags = client
        .get(format!("{base}/api/tags"))
        .send()
        .await?
        .bytes()
        .await?;
    let mut body = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut body, &tags)?;
    let mut child = tokio::process::Command::new(&binary)
        .arg("--body-file")
        .arg(body.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (or pass --bare none)", binary.display()))?;
    let stdout = child.stdout.take().context("stoa-bare stdout")?;
    let mut first = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut first)
        .await?;
    Ok(Some(Bare {
        url: format!("http://{}", first.trim()),
        _process: child,
        _body: body,
    }))
}

/// What wrk sends for a scenario: requests (method and path) taken in turn, the tokens
/// to present (`token_run` consecutive requests share one, so a favorite's POST and its
/// DELETE come from the same user) and one body, in which [`UNIQUE`] becomes a number no
/// other request of the run has.
struct WrkRequests {
    requests: Vec<(Method, String)>,
    tokens: Vec<String>,
    token_run: u64,
    body: Option<String>,
}

/// Replaced in a request's body by a number unique to the request (article titles).
const UNIQUE: &str = "{unique}";
/// Replaced in a request's body by one of [`TAGS`] in turn: new articles are tagged as the
/// seeded ones are, not all with one tag (whose count row every create would queue on).
const ANY_TAG: &str = "{tag}";

/// The requests of a scenario, taken from [`request_for`] so both engines send the same
/// requests. `None` if they differ in their bodies (besides [`UNIQUE`]).
fn wrk_requests(name: &str, seed: &Seed) -> Option<WrkRequests> {
    let (mut requests, mut seen, mut tokens) = (Vec::new(), HashSet::new(), BTreeSet::new());
    let mut body: Option<Option<String>> = None;
    let spread = seed.slugs.len().max(seed.usernames.len()) as u64;
    for worker in 0..seed.tokens.len() {
        for i in 0..spread {
            let (method, path, token, this_body) = request_for(name, seed, worker, i)?;
            let this_body = this_body.map(|b| b.to_string());
            match &body {
                None => body = Some(this_body),
                Some(first) if *first == this_body => {}
                Some(_) => return None,
            }
            if seen.insert((method.clone(), path.clone())) {
                requests.push((method, path));
            }
            tokens.extend(token.map(str::to_owned));
        }
    }
    Some(WrkRequests {
        requests,
        tokens: tokens.into_iter().collect(),
        token_run: if name == "favorite_toggle" { 2 } else { 1 },
        body: body?,
    })
}

/// A wrk script taking the requests in turn (with the tokens, as `Authorization: Token`),
/// which prints one machine-readable line at the end.
fn wrk_script(requests: &WrkRequests) -> String {
    let list = |items: &mut dyn Iterator<Item = String>| {
        items
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let body = requests
        .body
        .as_ref()
        .map_or("nil".to_owned(), |b| format!("{b:?}"));
    format!(
        r#"local methods = {{{methods}}}
local paths = {{{paths}}}
local tokens = {{{tokens}}}
local body = {body}
local unique = {unique:?}
local any_tag = {any_tag:?}
local tags_in_turn = {{{tags_in_turn}}}
local i = 0
-- The warm-up and the measurement are two wrk runs: numbers differ between them too.
local started = os.time()
-- Set in each thread's state by setup (a global: a local here would shadow it).
thread_id = 0
threads = 0
setup = function(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
request = function()
  i = i + 1
  local headers = {{}}
  if #tokens > 0 then headers["Authorization"] = "Token " .. tokens[(math.floor(i / {run}) % #tokens) + 1] end
  local this = body
  if body then
    headers["Content-Type"] = "application/json"
    this = string.gsub(body, unique, started .. "-" .. thread_id .. "-" .. i, 1)
    this = string.gsub(this, any_tag, tags_in_turn[(i % #tags_in_turn) + 1], 1)
  end
  local k = (i % #paths) + 1
  return wrk.format(methods[k], paths[k], headers, this)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d\n", summary.requests,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.duration))
end
"#,
        methods = list(&mut requests.requests.iter().map(|(m, _)| m.to_string())),
        paths = list(&mut requests.requests.iter().map(|(_, p)| p.clone())),
        tokens = list(&mut requests.tokens.iter().cloned()),
        run = requests.token_run,
        unique = UNIQUE,
        any_tag = ANY_TAG,
        tags_in_turn = list(&mut TAGS.iter().map(|t| t.to_string())),
    )
}

/// The server's cache lookups so far (`stoa_cache_requests_total`).
#[derive(Clone, Copy)]
struct CacheLookups {
    hits: u64,
    total: u64,
}

async fn cache_lookups(client: &Client, metrics_url: Option<&str>) -> Option<CacheLookups> {
    let text = client
        .get(metrics_url?)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut lookups = CacheLookups { hits: 0, total: 0 };
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("stoa_cache_requests_total{") else {
            continue;
        };
        let value: u64 = line.rsplit(' ').next()?.parse().ok()?;
        lookups.total += value;
        if labels.contains(r#"outcome="hit""#) {
            lookups.hits += value;
        }
    }
    Some(lookups)
}

/// What one wrk run measured.
struct WrkRun {
    requests: u64,
    errors: u64,
    /// p50, p90, p99 and max, in microseconds.
    latency: [u64; 4],
    seconds: f64,
}

async fn wrk(
    base: &str,
    script: &std::path::Path,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkRun> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}")])
        // wrk takes whole seconds.
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(script)
        .arg(base)
        .output()
        .await
        .context("running wrk (Debian package wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK "))
        .with_context(|| {
            format!(
                "wrk printed no result: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let n: Vec<u64> = line
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("wrk's result line")?;
    anyhow::ensure!(n.len() == 7, "wrk's result line: {line}");
    Ok(WrkRun {
        requests: n[0],
        errors: n[1],
        latency: [n[2], n[3], n[4], n[5]],
        seconds: n[6] as f64 / 1e6,
    })
}

async fn transactions(pool: &Option<sqlx::PgPool>) -> Option<i64> {
    let pool = pool.as_ref()?;
    sqlx::query_scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .ok()
}

/// Whether `name` is one of the many-connection scenarios, and if so whether it is the
/// open-loop one.
fn many_scenario(name: &str) -> Option<bool> {
    match name {
        "many_open" => Some(true),
        "many_closed" => Some(false),
        _ => None,
    }
}

/// Runs a many-connection scenario and prints its line (latency of the admitted requests;
/// errors: no answer or an unexpected status, and in the open loop every shed request)
/// and, for shed requests, a second line with their own latency.
async fn run_many(
    base: &str,
    name: &str,
    open: bool,
    args: &Args,
    bare: Option<f64>,
) -> anyhow::Result<Value> {
    let server = reqwest::Url::parse(base)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .context("the server's address")?;
    let plan = many::Plan {
        connections: args.many_connections,
        rate: open.then_some(args.many_rate),
        warm_up: Duration::from_secs(1),
        duration: args.duration,
        path: "/api/tags".to_owned(),
    };
    let outcome = many::run(server, &plan).await?;
    let rps = outcome.answered() as f64 / outcome.seconds;
    let errors = outcome.failed + outcome.other_status + if open { outcome.shed.len() } else { 0 };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let admitted = &outcome.admitted;
    let share_of_bare = bare.map(|b| rps / b * 100.0);
    println!(
        "{:20} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>9}   ({} connections opened in {:.1} s{})",
        name,
        rps,
        ms(admitted, 0.5),
        ms(admitted, 0.9),
        ms(admitted, 0.99),
        admitted.max() as f64 / 1000.0,
        errors,
        share_of_bare.map_or_else(|| "-".into(), |s| format!("{s:.1}%")),
        plan.connections,
        outcome.connect_seconds,
        plan.rate
            .map_or_else(String::new, |r| format!(", {r:.0} req/s offered")),
    );
    let shed = &outcome.shed;
    if !shed.is_empty() {
        println!(
            "{:20} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}   (answered 503: {:.1}% of answers; {} without Retry-After)",
            "  shed (503)",
            shed.len() as f64 / outcome.seconds,
            ms(shed, 0.5),
            ms(shed, 0.9),
            ms(shed, 0.99),
            shed.max() as f64 / 1000.0,
            shed.len() as f64 * 100.0 / outcome.answered().max(1) as f64,
            outcome.shed_without_retry_after,
        );
    }
    Ok(json!({
        "scenario": name, "requests_per_second": rps,
        "p50_ms": ms(admitted, 0.5), "p90_ms": ms(admitted, 0.9), "p99_ms": ms(admitted, 0.99),
        "max_ms": admitted.max() as f64 / 1000.0, "errors": errors, "engine": "stoa-load",
        "ratio_to_bare": share_of_bare.map(|s| s / 100.0),
        "connections": plan.connections, "offered_rate": plan.rate,
        "shed": shed.len(), "shed_p50_ms": ms(shed, 0.5), "shed_p99_ms": ms(shed, 0.99),
        "shed_without_retry_after": outcome.shed_without_retry_after,
        "failed": outcome.failed, "other_status": outcome.other_status,
    }))
}

/// Longer than most: the run in the order it prints (set-up, then each scenario's line),
/// each step a call to the helpers above.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for (name, description) in SCENARIOS {
            println!("{name:20} {description}");
        }
        return Ok(());
    }
    let selected: Vec<&'static str> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|(n, _)| *n).collect()
    } else {
        let mut names = vec!["bare", "healthz"];
        for s in &args.scenarios {
            let found = SCENARIOS
                .iter()
                .find(|(n, _)| n == s)
                .with_context(|| format!("unknown scenario {s:?}; see --list"))?;
            if !names.contains(&found.0) {
                names.push(found.0);
            }
        }
        names
    };
    let base = args.url.trim_end_matches('/').to_owned();
    let client = Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (status, _) = call(&client, Method::GET, &format!("{base}/readyz"), None, None)
        .await
        .with_context(|| format!("cannot reach {base}; is stoa-api running?"))?;
    if status != StatusCode::OK {
        bail!("{base}/readyz answered {status}: the server is not ready");
    }
    let pool = match &args.database_url {
        Some(url) => Some(
            sqlx::PgPool::connect(url)
                .await
                .context("connecting to --database-url")?,
        ),
        None => None,
    };
    let seed = Arc::new(
        seed(
            &client,
            &base,
            args.users.max(6),
            args.articles.max(1),
            args.prolific_articles.max(1),
        )
        .await?,
    );
    if let Some(pool) = &pool {
        // Statistics and a visibility map as a database that has been running a while has
        // them (autovacuum would take a minute to visit the seeded tables): plans are
        // measured as production runs them, index-only scans included.
        sqlx::query("VACUUM (ANALYZE)")
            .execute(pool)
            .await
            .context("VACUUM (ANALYZE) after seeding")?;
    }
    let bare = start_bare(&client, &base, args.bare.as_deref()).await?;
    // Let PostgreSQL finish what seeding left it (WAL, autovacuum) before the first
    // measurement, which is the limit every other figure is divided by.
    tokio::time::sleep(Duration::from_secs(3)).await;

    println!(
        "{:20} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>9}",
        "scenario",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "vs bare",
        "vs healthz",
        "tx/req",
        "cache hit"
    );
    let (mut baseline, mut limit) = (None, None);
    let mut results = Vec::new();
    for name in selected {
        let target = match (name, &bare) {
            ("bare", Some(bare)) => bare.url.as_str(),
            ("bare", None) => continue,
            _ => base.as_str(),
        };
        if let Some(open) = many_scenario(name) {
            let result = run_many(&base, name, open, &args, limit).await?;
            results.push(result);
            continue;
        }
        let tx_before = transactions(&pool).await;
        let cache_before = cache_lookups(&client, args.metrics_url.as_deref()).await;
        let by_wrk = match (args.engine, wrk_requests(name, &seed)) {
            (Engine::Wrk, Some(requests)) => {
                let mut script = tempfile::NamedTempFile::new()?;
                std::io::Write::write_all(&mut script, wrk_script(&requests).as_bytes())?;
                // Warm-up, then the measurement.
                wrk(
                    target,
                    script.path(),
                    args.connections,
                    Duration::from_secs(1),
                )
                .await?;
                Some(wrk(target, script.path(), args.connections, args.duration).await?)
            }
            _ => None,
        };
        // (requests, errors, req/s, [p50, p90, p99, max] in µs)
        let (requests, errors, rps, latency) = match &by_wrk {
            Some(run) => (
                run.requests,
                run.errors,
                run.requests as f64 / run.seconds.max(0.001),
                run.latency,
            ),
            None => {
                let stats = run_scenario(
                    &client,
                    target,
                    name,
                    seed.clone(),
                    args.connections,
                    args.duration,
                )
                .await;
                let q = |q: f64| stats.histogram.value_at_quantile(q);
                let requests = stats.ok + stats.errors;
                (
                    requests,
                    stats.errors,
                    requests as f64 / args.duration.as_secs_f64(),
                    [q(0.5), q(0.9), q(0.99), stats.histogram.max()],
                )
            }
        };
        let tx_after = transactions(&pool).await;
        // Over warm-up and measurement alike: the share of the scenario's cache lookups
        // that were hits (in Redis or a replica's own copy).
        let cache_hit = match (
            cache_before,
            cache_lookups(&client, args.metrics_url.as_deref()).await,
        ) {
            (Some(before), Some(after)) if after.total > before.total => {
                Some((after.hits - before.hits) as f64 / (after.total - before.total) as f64)
            }
            _ => None,
        };
        match name {
            "bare" => limit = Some(rps),
            "healthz" => baseline = Some(rps),
            _ => {}
        }
        let ratio = baseline.map(|b| rps / b * 100.0).unwrap_or(100.0);
        let share_of_bare = limit.map(|b| rps / b * 100.0);
        // Transactions counted over warm-up and measurement; divide by everything sent.
        let tx_per_req = match (tx_before, tx_after) {
            (Some(before), Some(after)) if requests > 0 => {
                let sent = (requests as f64 * (args.duration.as_secs_f64() + 1.0)
                    / args.duration.as_secs_f64())
                .max(1.0);
                Some((after - before - 2) as f64 / sent)
            }
            _ => None,
        };
        let [p50, p90, p99, max] = latency.map(|us| us as f64 / 1000.0);
        println!(
            "{:20} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>9} {:>9.1}% {:>8} {:>9}",
            name,
            rps,
            p50,
            p90,
            p99,
            max,
            errors,
            share_of_bare.map_or_else(|| "-".into(), |s| format!("{s:.1}%")),
            ratio,
            tx_per_req.map_or_else(|| "-".into(), |t| format!("{t:.2}")),
            cache_hit.map_or_else(|| "-".into(), |h| format!("{:.1}%", h * 100.0)),
        );
        results.push(json!({
            "scenario": name, "requests_per_second": rps, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "max_ms": max, "errors": errors, "ratio_to_healthz": ratio / 100.0, "engine": if by_wrk.is_some() { "wrk" } else { "reqwest" },
            "ratio_to_bare": share_of_bare.map(|s| s / 100.0),
            "db_transactions_per_request": tx_per_req,
            "cache_hit_ratio": cache_hit,
        }));
    }
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&json!({
                "connections": args.connections, "duration_seconds": args.duration.as_secs_f64(), "results": results
            }))?,
        )?;
    }
    Ok(())
}
