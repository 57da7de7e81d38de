#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! What the served process holds in memory: a burst's memory goes back to the OS once the
//! burst is over, so a replica's resident size follows its load down as well as up.
mod common;

use std::time::Duration;

use common::{Served, url_of};
use sqlx::PgPool;

const MIB: u64 = 1024;

/// Hundreds of connections at once, each with a large body the server must read whole
/// (JSON that turns out invalid), take a few hundred MiB; once they have closed, the
/// process is back near its idle size within seconds, not holding its peak for good
/// (mimalloc frees a thread's pages only from that thread, and the runtime's workers go
/// quiet after a burst: `stoa_api::freed_memory`).
#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn memory_a_burst_took_is_returned_once_it_is_over(pool: PgPool) {
    let served = Served::start(&url_of(&pool), &[("STOA_BODY_LIMIT_BYTES", "2097152")]).await;
    let url = format!("http://{}/api/users", served.api);
    // No connection reuse: each request opens and closes its own, as a crowd of clients.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let warm = client.get(format!("http://{}/healthz", served.api));
    assert_eq!(warm.send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = served.resident_kib();

    // Not one valid byte: the server reads the whole body, then refuses it.
    let body = axum::body::Bytes::from(vec![b'x'; 1536 * 1024]);
    for _ in 0..2 {
        let requests = (0..250).map(|_| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        });
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.unwrap().status(), 422);
        }
    }
    // The burst must dwarf the tolerance below for the test to mean anything. How far the
    // 250 requests overlap depends on the machine's load: once in CI the peak was only
    // 124 MiB over idle, so four times the tolerance is asked, not 150 MiB.
    let peak = served.peak_kib();
    assert!(
        peak > idle + 96 * MIB,
        "the burst took only {} MiB over the idle {} MiB",
        (peak - idle) / MIB,
        idle / MIB
    );

    common::eventually_within(
        Duration::from_secs(10),
        "resident memory back within 24 MiB of idle",
        || async { served.resident_kib() < idle + 24 * MIB },
    )
    .await;
}

/// The binary's pointers in read-only data are relocated from a packed table (DT_RELR,
/// `api-server/build.rs`): as one 24-byte entry each, the table was 524 KiB that the
/// loader read at every start and that stayed resident in every replica.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_the_binary_packs_its_relative_relocations() {
    let readelf = std::process::Command::new("readelf")
        .args(["--dynamic", "--section-headers", "--wide"])
        .arg(env!("CARGO_BIN_EXE_stoa-api"))
        .output()
        .expect("readelf (GNU binutils, which the linker comes with) runs");
    assert!(readelf.status.success());
    let listing = String::from_utf8_lossy(&readelf.stdout);
    assert!(
        listing.contains("(RELR)"),
        "no DT_RELR entry in the dynamic section:\n{listing}"
    );
    // What is left in the unpacked table: relocations against symbols (libc's), a few KiB.
    let rela_bytes = listing
        .lines()
        .find(|line| line.contains(" .rela.dyn "))
        .and_then(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == ".rela.dyn")?;
            u64::from_str_radix(fields.get(at + 4)?, 16).ok()
        })
        .expect("a .rela.dyn section header");
    assert!(rela_bytes < 64 * 1024, ".rela.dyn is {rela_bytes} bytes");
}
