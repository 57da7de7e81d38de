#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The SRE assets against real parts: promtool checks and unit-tests every alert, and a
//! real Prometheus scrapes real stoa-api pods (with Redis, under load) and the operator's
//! own metrics endpoint while the operator reconciles them; then every dashboard query,
//! every recording rule and every metric an alert names must return series. A query that
//! names a metric nobody exports fails here.
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`); without them the tests
//! say SKIP, unless STOA_REQUIRE_TOOLS=1 (as in CI).

mod common;
mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::load::Load;
use serde_json::{Value, json};
use sqlx::PgPool;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules_file() -> PathBuf {
    root().join("manifests/monitoring/stoa-rules.yaml")
}

/// The tool's path, or `None` (after one SKIP line) where it is not installed.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{name} is required (STOA_REQUIRE_TOOLS=1): install the Debian package prometheus"
        );
        eprintln!("SKIP: {name} is not installed (Debian package prometheus)");
    }
    found
}

fn yaml(path: &Path) -> serde_norway::Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every rule of the rule file: (record or alert name, expression, is an alert).
fn rules() -> Vec<(String, String, bool)> {
    let file = yaml(&rules_file());
    let mut out = Vec::new();
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_owned();
            match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(alert), _) => out.push((alert.to_owned(), expr, true)),
                (None, Some(record)) => out.push((record.to_owned(), expr, false)),
                _ => panic!("a rule with neither alert nor record: {rule:?}"),
            }
        }
    }
    out
}

#[test]
fn promtool_checks_the_rules_and_every_alert_is_tested_firing_and_not_firing() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", rules_file().to_str().unwrap()],
        vec!["test", "rules", "tests/monitoring/stoa-rules.test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Each alert has a case where it fires and one where it does not.
    let tests = yaml(&root().join("tests/monitoring/stoa-rules.test.yaml"));
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            if case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
            {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for (alert, _, is_alert) in rules() {
        if is_alert {
            assert!(firing.contains(&alert), "no test where {alert} fires");
            assert!(quiet.contains(&alert), "no test where {alert} stays quiet");
        }
    }
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let file = yaml(&rules_file());
    let mut alerts = 0;
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_default();
            // GitHub's anchor for a heading `### StoaX` is `#stoax`.
            assert!(
                url.ends_with(&format!("docs/operations.md#{}", alert.to_lowercase())),
                "{alert}: runbook_url {url:?}"
            );
            assert!(
                guide.contains(&format!("\n### {alert}\n")),
                "docs/operations.md has no section for {alert}"
            );
        }
    }
    assert!(alerts >= 12, "{alerts} alerts");
}

/// The dashboard's queries: (panel title, expression).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("manifests/monitoring/stoa-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(out.len() > 30, "the dashboard lost its panels");
    out
}

/// The metric names an expression reads (recording rules, with a colon, excluded).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // Label values and matchers are quoted or inside braces; drop them first.
    let mut depth = 0;
    let mut bare = String::new();
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    for word in bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("stoa_") || word == "up" {
            names.insert(word.to_owned());
        }
    }
    names
}

/// Waits up to 30 s for `check`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Prometheus {
    /// Killed when dropped.
    _process: tokio::process::Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            _process: child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        eventually("Prometheus ready", || async {
            prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// The query's result, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] != "success" {
            return Err(body["error"].as_str().unwrap_or("failed").to_owned());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Scrape configuration as a ServiceMonitor would produce it: job = the Stoa's Service,
/// namespace and pod as target labels; the operator's per-Stoa labels honoured.
fn scrape_config(
    pods: &[(String, String)],
    workers: &[(String, String)],
    operator: &str,
) -> String {
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules}]
scrape_configs:
  - job_name: stoa-operator
    honor_labels: true
    static_configs: [{{targets: ['{operator}']}}]
  - job_name: api
    static_configs:
",
        rules = rules_file().display()
    );
    let targets = |config: &mut String, pods: &[(String, String)]| {
        for (pod, address) in pods {
            config.push_str(&format!(
                "      - {{targets: ['{address}'], labels: {{namespace: {ns}, pod: {pod}}}}}\n",
                ns = harness::NAMESPACE
            ));
        }
    };
    targets(&mut config, pods);
    // The workers, through their own headless Service.
    config.push_str("  - job_name: api-worker\n    static_configs:\n");
    targets(&mut config, workers);
    config
}

#[sqlx::test(migrations = false)]
async fn every_dashboard_query_and_alert_reads_series_a_real_prometheus_scraped(pool: PgPool) {
    let Some(prometheus_binary) = tool("prometheus") else {
        return;
    };
    // Pools of 4, the default reserve, two pods that stay two (the autoscaler's decisions
    // are published without pods coming and going under the scraper); an identity
    // provider configured (never contacted), so its sign-in series exist.
    let mut stoa = harness::autoscaled_stoa(4, 10, 2, 2);
    stoa.spec.ingress = Some(serde_json::from_value(json!({"host": "api.example.com"})).unwrap());
    stoa.spec.auth = serde_json::from_value(json!({
        "returnTo": ["https://app.example.com/oauth"],
        "providers": [{"name": "corp", "type": "oidc", "issuer": "https://sso.example.com",
                       "clientId": "stoa", "clientSecretRef": {"name": "api-oauth", "key": "secret"}}]
    }))
    .unwrap();
    let mut client_secret = harness::database_secret("api-oauth", "");
    client_secret.data = Some(
        [(
            "secret".to_owned(),
            k8s_openapi::ByteString(b"client-secret".to_vec()),
        )]
        .into(),
    );
    let mut cluster = harness::install(
        &stoa,
        vec![
            harness::database_secret("api-db", &common::url_of(&pool)),
            client_secret,
        ],
    )
    .await;

    // The operator's real metrics endpoint, over the registry its reconciler writes to.
    cluster.metrics.leader.set(1);
    let health = stoa_operator::startup::Health::new(Arc::clone(&cluster.metrics));
    health.mark_started();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operator = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        axum::serve(listener, stoa_operator::startup::router(health))
            .await
            .unwrap();
    });

    let pods: Vec<(String, String)> = cluster
        .pods()
        .iter()
        .map(|p| (p.name.clone(), format!("{}:{}", p.ip, p.admin_port)))
        .collect();
    let workers: Vec<(String, String)> = cluster
        .workers()
        .iter()
        .map(|p| (p.name.clone(), format!("{}:{}", p.ip, p.admin_port)))
        .collect();
    assert!(!workers.is_empty());
    let prometheus = Prometheus::start(
        &prometheus_binary,
        &scrape_config(&pods, &workers, &operator),
    )
    .await;

    // Signed-in traffic through every pod, plus anonymous reads the cache serves.
    let load = Load::start(cluster.endpoints.clone(), 3, Duration::from_secs(2)).await;
    let anonymous = {
        let endpoints = cluster.endpoints.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..u64::MAX {
                let Some(base) = endpoints.pick(n) else { break };
                let path = ["/api/articles", "/api/tags"][usize::from(n % 2 == 0)];
                let _ = http.get(format!("{base}{path}")).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        cluster.step().await;
    }
    eventually("every target scraped", || async {
        prometheus
            .query("up == 1")
            .await
            .is_ok_and(|up| up.len() == pods.len() + workers.len() + 1)
    })
    .await;

    let mut problems = Vec::new();
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "5s")
            .replace("$namespace", harness::NAMESPACE)
            .replace("$job", "api")
    };
    let mut named = BTreeSet::new();
    let queries = dashboard_queries();
    for (panel, expr) in &queries {
        named.extend(metric_names(expr));
        match prometheus.query(&substitute(expr)).await {
            Ok(result) if result.is_empty() => {
                problems.push(format!("panel {panel:?}: no series for {expr}"));
            }
            Ok(result) => eprintln!("panel {panel:?}: {} series", result.len()),
            Err(e) => problems.push(format!("panel {panel:?}: {e} in {expr}")),
        }
    }
    let rules = rules();
    for (name, expr, is_alert) in &rules {
        named.extend(metric_names(expr));
        // Recording rules run in Prometheus itself: their results must exist.
        if !is_alert && prometheus.query(name).await.unwrap_or_default().is_empty() {
            problems.push(format!("recording rule {name}: no series"));
        }
        if *is_alert {
            eprintln!("alert {name} reads {:?}", metric_names(expr));
        }
    }
    for metric in &named {
        let found = prometheus
            .query(&format!("count({{__name__=\"{metric}\"}})"))
            .await
            .unwrap_or_default();
        if found.is_empty() {
            problems.push(format!("{metric}: named by a query, exported by nobody"));
        }
    }
    // Every rule loaded and evaluated without error.
    let loaded = prometheus.get("/api/v1/rules").await;
    let mut evaluated = 0;
    for group in loaded["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            evaluated += 1;
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {}: health {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    if evaluated != rules.len() {
        problems.push(format!(
            "{evaluated} rules loaded, {} in the file",
            rules.len()
        ));
    }
    let firing: Vec<Value> = prometheus.get("/api/v1/alerts").await["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    anonymous.abort();
    let tally = load.finish().await;
    eprintln!(
        "{} dashboard queries, {} rules, {} metric names checked; load {tally:?}; alerts pending or firing: {:?}",
        queries.len(),
        rules.len(),
        named.len(),
        firing
            .iter()
            .map(|a| a["labels"]["alertname"].clone())
            .collect::<Vec<_>>()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // A healthy service alerts on nothing. (The SLO alerts are left out: on a busy test
    // machine a debug build can be slow enough to make a latency alert pending.)
    let component_alerts: Vec<&Value> = firing
        .iter()
        .filter(|a| a["labels"]["slo"].is_null())
        .collect();
    assert!(component_alerts.is_empty(), "{component_alerts:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    drop(prometheus);
    cluster.shutdown().await;
}
