//! What a running stoa-api pod reports about itself on its admin port, for the operator
//! to confirm that every pod follows a rotation before it takes the next step.
//!
//! `GET <pod IP>:<metrics port>` [`STATE_PATH`] answers a [`PodState`] as JSON. The admin
//! port is the one the NetworkPolicy opens only to the operator's and the monitoring
//! namespaces.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::KeyState;

pub const STATE_PATH: &str = "/state";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Every key of the key set the pod has loaded (signing and verifying).
    pub keys: Vec<LoadedKey>,
    /// The database credential the pod's pool connects with.
    pub database: LoadedCredential,
    /// The newest migration applied to the database, as the pod last read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// Requests being served right now.
    pub in_flight: u64,
    /// Total time spent serving requests since start, in seconds: its rate between two
    /// reads is the pod's average concurrency (what the autoscaler scales on).
    #[serde(default)]
    pub busy_seconds: f64,
    /// What the servers behind the pod allow (the autoscaler's capacity bound); absent
    /// until first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ServerLimits>,
    /// Worker pods only: the job queue as the worker last read it (what the operator
    /// scales the worker Deployment on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueDepth>,
}

/// The whole queue (every kind), as a worker reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    /// Jobs due now that wait for a worker.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    /// Age of the oldest due job still waiting, in seconds.
    pub oldest_due_seconds: f64,
}

/// Server-side connection limits, as the pod reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerLimits {
    /// PostgreSQL `max_connections`.
    pub postgres_max_connections: u32,
    /// Connections only superusers (and `pg_use_reserved_connections`) may use:
    /// `superuser_reserved_connections` + `reserved_connections`.
    pub postgres_reserved_connections: u32,
    /// Redis `maxclients`, when Redis is configured and lets the pod read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_max_clients: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedKey {
    pub kid: String,
    pub state: KeyState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedCredential {
    /// The database role the pool logs in as.
    pub user: String,
    /// [`credential_fingerprint`] of the URL in use.
    pub fingerprint: String,
}

/// Names one database URL without revealing it: the first 16 hex digits of its SHA-256.
/// The operator computes it for the URL it published and compares with what pods report.
pub fn credential_fingerprint(url: &str) -> String {
    let digest = Sha256::digest(url.trim().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_urls_apart_and_ignore_a_trailing_newline() {
        let a = credential_fingerprint("postgres://stoa_a:one@db/stoa");
        assert_eq!(a.len(), 16);
        assert_eq!(a, credential_fingerprint("postgres://stoa_a:one@db/stoa\n"));
        assert_ne!(a, credential_fingerprint("postgres://stoa_a:two@db/stoa"));
        assert!(!a.contains("one"));
    }

    #[test]
    fn the_report_reads_back_as_written() {
        let state = PodState {
            keys: vec![LoadedKey {
                kid: "k1".into(),
                state: KeyState::Next,
            }],
            database: LoadedCredential {
                user: "stoa_a".into(),
                fingerprint: credential_fingerprint("postgres://x"),
            },
            schema_version: Some(20261125000002),
            in_flight: 3,
            busy_seconds: 1.5,
            limits: Some(ServerLimits {
                postgres_max_connections: 100,
                postgres_reserved_connections: 3,
                redis_max_clients: None,
            }),
            queue: Some(QueueDepth {
                queued: 7,
                running: 2,
                oldest_due_seconds: 4.5,
            }),
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"inFlight\":3") && json.contains("\"state\":\"next\""));
        assert_eq!(serde_json::from_str::<PodState>(&json).unwrap(), state);
    }
}
