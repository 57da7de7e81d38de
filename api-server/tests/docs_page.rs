#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The documentation page in a real browser: tests/browser/docs-page.mjs drives
//! `/api/docs/` in headless Chromium (Debian `chromium`, through playwright-core) against
//! a live server — every operation of the OpenAPI document listed, one "Try it out"
//! request run. Without node, Chromium or `npm ci` in tests/browser it says SKIP, unless
//! STOA_REQUIRE_TOOLS=1 (as in CI).
mod common;

use std::path::{Path, PathBuf};

use common::TestApp;
use sqlx::PgPool;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tool() -> Option<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !on_path("node") {
        return Some("node is not installed".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing (Debian package chromium)"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    None
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn the_docs_page_lists_every_operation_and_tries_one_out_in_chromium(pool: PgPool) {
    if let Some(reason) = missing_tool() {
        assert!(
            std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "the docs page test is required (STOA_REQUIRE_TOOLS=1): {reason}"
        );
        eprintln!("SKIP: {reason}");
        return;
    }
    let app = TestApp::spawn(pool).await;
    let token = app.register("reader").await;
    app.article(&token, "Seen in a browser", &["docs-page"])
        .await;

    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("docs-page.mjs"))
        .arg(app.url(""))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{seen}");
    assert!(seen["operations"].as_u64().unwrap() >= 19, "{seen}");
    assert_eq!(seen["tryItOut"]["code"], "200");
    // The body shown is the live server's answer, not an example from the document.
    assert!(
        seen["tryItOut"]["body"]
            .as_str()
            .unwrap()
            .contains("docs-page"),
        "{seen}"
    );
}
