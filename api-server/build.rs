//! Link settings for the `stoa-api` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the migrations, but Cargo only sees the files it read: a new
    // migration would not rebuild the crate (the rule sqlx documents for `migrate!`).
    println!("cargo:rerun-if-changed=../migrations");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // Relative relocations packed as DT_RELR (glibc 2.36 and later, GNU ld 2.38 and
    // later; the build and runtime images are Debian 12: glibc 2.36, binutils 2.40). The
    // position-independent binary carries one 24-byte relocation for each pointer in its
    // read-only data, and the loader reads every one at start-up: 524 KiB that stayed
    // resident in every replica, against a few KiB packed (docs/benchmarks.md, "Memory
    // budget"). An older linker ignores the option with a warning; a binary that uses it
    // names the glibc version it needs, so an older glibc refuses it at once.
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=stoa-api=-Wl,-z,pack-relative-relocs");
    }
    order_startup_code();
}

/// Places the functions listed in `startup-order.txt` (scripts/startup-order.sh) next to
/// each other. Start-up runs 2.4 MiB of code spread over the whole binary, and the kernel
/// maps each page it faults in with its neighbours (fault-around, 64 KiB): placed
/// together, a release replica keeps about 5 MiB of its code resident at idle instead of
/// 12 (docs/benchmarks.md, "Memory budget"). Names the build does not define, as after a
/// dependency update, are skipped; `make bench` says how many still match.
///
/// Only where rust-lld links: the default for x86_64-unknown-linux-gnu since Rust 1.90
/// (the workspace needs 1.94), unless a linker is configured. GNU ld has no such option.
fn order_startup_code() {
    const LIST: &str = "startup-order.txt";
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    // Set by Cargo when `target.<triple>.linker` is configured.
    let linker_configured = std::env::var_os("RUSTC_LINKER").is_some();
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let linker_flags = ["linker", "fuse-ld", "link-self-contained"];
    let linker_in_flags = linker_flags.iter().any(|flag| rustflags.contains(flag));
    if target != "x86_64-unknown-linux-gnu"
        || profile != "release"
        || linker_configured
        || linker_in_flags
    {
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = std::path::Path::new(&dir).join(LIST);
    if list.is_file() {
        let list = list.display();
        println!("cargo:rustc-link-arg-bin=stoa-api=-Wl,--symbol-ordering-file={list}");
        println!("cargo:rustc-link-arg-bin=stoa-api=-Wl,--no-warn-symbol-ordering");
    }
}
