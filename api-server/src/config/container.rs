//! What the container allows this process, read once at start-up to size defaults: its
//! memory limit decides how many connections it accepts by default.

use std::path::Path;

/// The memory the rest of the process may take at its defaults: itself at idle (17 MiB),
/// its caches when full (the replica's cache copy 8 MiB, verified tokens about 6 MiB,
/// queued log lines about 6 MiB), two password hashes at once (2 × 19 MiB), and room for
/// the requests in flight.
pub const RESERVED_BYTES: u64 = 96 << 20;

/// What an open connection holds at worst: hyper's read and write buffers (8 KiB each), its
/// task, and a request in flight. Measured with 10,000 connections: 17 KiB each at two
/// requests a second, 31 KiB each with a request in flight on every one (docs/benchmarks.md,
/// "Memory budget").
pub const BYTES_PER_CONNECTION: u64 = 32 << 10;

/// The default connection limit without a memory limit, or with room for more.
pub const MOST_CONNECTIONS: usize = 10_000;

/// The default connection limit never goes below this.
pub const FEWEST_CONNECTIONS: usize = 256;

/// The cgroup memory limit (v2 `memory.max`, else v1 `memory.limit_in_bytes`), or `None`
/// when there is none.
pub fn memory_limit() -> Option<u64> {
    let v2 = Path::new("/sys/fs/cgroup/memory.max");
    let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    [v2, v1]
        .into_iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| parse_limit(&text))
}

/// `max` (v2) and the near-`i64::MAX` page-rounded value (v1) both mean no limit.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|bytes| *bytes < 1 << 60)
}

/// Connections that fit beside the reserved memory in `limit`.
pub fn connections_within(limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return MOST_CONNECTIONS;
    };
    let room = limit.saturating_sub(RESERVED_BYTES) / BYTES_PER_CONNECTION;
    usize::try_from(room)
        .unwrap_or(MOST_CONNECTIONS)
        .clamp(FEWEST_CONNECTIONS, MOST_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_from_either_cgroup_version() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("134217728\n"), Some(128 << 20));
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn the_connection_default_follows_the_memory_limit() {
        assert_eq!(connections_within(None), MOST_CONNECTIONS);
        assert_eq!(connections_within(Some(128 << 20)), 1024);
        assert_eq!(connections_within(Some(256 << 20)), 5120);
        assert_eq!(connections_within(Some(1 << 30)), MOST_CONNECTIONS);
        assert_eq!(connections_within(Some(64 << 20)), FEWEST_CONNECTIONS);
    }
}
