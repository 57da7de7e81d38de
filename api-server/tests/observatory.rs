#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The grade Mozilla's HTTP Observatory gives the API as an Ingress exposes it: the
//! scanner (npm `@mdn/mdn-http-observatory`, run by tests/browser/observatory.mjs) scans a
//! live server behind a TLS terminator with a certificate from a throw-away CA, plain http
//! redirected to https. Every one of its tests must pass, and the grade must be A+, for
//! the API's root (what the Observatory grades for a host) and for the documentation page
//! (HTML with scripts: its own, stricter policy).
//! Without node or `npm ci` in tests/browser it says SKIP, unless STOA_REQUIRE_TOOLS=1.
mod common;

use std::path::{Path, PathBuf};

use common::TestApp;
use common::tls::ThrowawayCa;
use sqlx::PgPool;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn scanner_available() -> bool {
    let has_node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let reason = if !has_node {
        "node is not installed"
    } else if !browser_dir()
        .join("node_modules/@mdn/mdn-http-observatory")
        .exists()
    {
        "the HTTP Observatory scanner is not installed (npm ci --ignore-scripts --prefix tests/browser)"
    } else {
        return true;
    };
    assert!(
        std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "the Observatory test is required (STOA_REQUIRE_TOOLS=1): {reason}"
    );
    eprintln!("SKIP: {reason}");
    false
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_http_observatory_grades_the_api_a_plus(pool: PgPool) {
    if !scanner_available() {
        return;
    }
    let ca = ThrowawayCa::new();
    // As the operator configures it behind an Ingress with TLS.
    let app = TestApp::spawn_with(pool, &[("STOA_PUBLIC_URL", "https://localhost")]).await;
    for page in ["/", "/api/docs/"] {
        let report = grade(&app, &ca, page).await;
        let failed: Vec<_> = report["tests"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, test)| test["pass"] != true)
            .map(|(name, test)| format!("{name}: {}", test["result"]))
            .collect();
        assert!(
            failed.is_empty(),
            "{page}: failed Observatory tests: {failed:?}"
        );
        assert_eq!(report["testsPassed"], report["testsQuantity"]);
        assert_eq!(report["status"], 200, "{page} answers");
        assert_eq!(report["grade"], "A+", "{page}: {report}");
    }
}

/// The scanner's report for `page` of `app`, behind the TLS terminator.
async fn grade(app: &TestApp, ca: &ThrowawayCa, page: &str) -> serde_json::Value {
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("observatory.mjs"))
        .arg(app.url(""))
        .arg(&ca.cert)
        .arg(&ca.key)
        .arg(page)
        .env("NODE_EXTRA_CA_CERTS", &ca.ca)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{page}: {report}");
    report
}
