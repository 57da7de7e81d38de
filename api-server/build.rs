//! Link settings for the `stoa-api` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
}
