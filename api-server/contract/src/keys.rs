//! The signing key set: its file format, validation, and generation.
//!
//! # File format (shared with the operator)
//!
//! A directory (a mounted Kubernetes Secret) holds one file, `keyset.json`:
//!
//! ```json
//! {
//!   "keys": [
//!     { "kid": "Jx3…", "state": "active", "algorithm": "EdDSA",
//!       "createdAt": "2026-11-24T03:04:05Z",
//!       "privateKeyPem": "-----BEGIN PRIVATE KEY-----\n…\n-----END PRIVATE KEY-----\n" }
//!   ]
//! }
//! ```
//!
//! - `algorithm` is `EdDSA` (Ed25519); the key is PKCS#8 PEM.
//! - `state`: `next` (verifies only; published early so every pod knows it before it
//!   signs), `active` (signs and verifies; exactly one), `retiring` (verifies only, until
//!   the tokens it signed have expired).
//! - `kid` must be unique; [`generate_key`] uses the RFC 7638 JWK thumbprint.
//!
//! One file keeps updates atomic: the kubelet swaps the whole directory through its
//! `..data` symlink, and a reader never sees half a key set.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const KEYSET_FILE: &str = "keyset.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Active,
    Retiring,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyEntry {
    pub kid: String,
    pub state: KeyState,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub private_key_pem: String,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn default_algorithm() -> String {
    "EdDSA".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetFile {
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid key set: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("key set must contain exactly one active key, found {0}")]
    ActiveCount(usize),
    #[error("duplicate kid {0:?}")]
    DuplicateKid(String),
    #[error("key {kid:?}: unsupported algorithm {algorithm:?} (only EdDSA)")]
    Algorithm { kid: String, algorithm: String },
    #[error("key {kid:?}: invalid Ed25519 PKCS#8 private key")]
    InvalidKey { kid: String },
    #[error("key {kid:?}: kid must be 1-128 characters of [A-Za-z0-9_.-]")]
    InvalidKid { kid: String },
}

/// A validated key: its entry plus the parsed Ed25519 key.
pub struct ParsedKey {
    pub kid: String,
    pub state: KeyState,
    pub signing_key: SigningKey,
}

impl KeySetFile {
    pub fn read_dir(dir: &Path) -> Result<KeySetFile, KeySetError> {
        Self::read_dir_with_bytes(dir).map(|(file, _)| file)
    }

    /// The key set and the exact bytes it was parsed from (the baseline a watcher compares
    /// later reads against).
    pub fn read_dir_with_bytes(dir: &Path) -> Result<(KeySetFile, Vec<u8>), KeySetError> {
        let path = dir.join(KEYSET_FILE);
        let bytes = std::fs::read(&path).map_err(|source| KeySetError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file = serde_json::from_slice(&bytes).map_err(|source| KeySetError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Ok((file, bytes))
    }

    /// Checks the invariants and parses every key.
    pub fn parse(&self) -> Result<Vec<ParsedKey>, KeySetError> {
        let active = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .count();
        if active != 1 {
            return Err(KeySetError::ActiveCount(active));
        }
        let mut seen = HashSet::new();
        self.keys
            .iter()
            .map(|entry| {
                let kid_ok = !entry.kid.is_empty()
                    && entry.kid.len() <= 128
                    && entry
                        .kid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !kid_ok {
                    return Err(KeySetError::InvalidKid {
                        kid: entry.kid.clone(),
                    });
                }
                if !seen.insert(entry.kid.as_str()) {
                    return Err(KeySetError::DuplicateKid(entry.kid.clone()));
                }
                if entry.algorithm != "EdDSA" {
                    return Err(KeySetError::Algorithm {
                        kid: entry.kid.clone(),
                        algorithm: entry.algorithm.clone(),
                    });
                }
                let signing_key =
                    SigningKey::from_pkcs8_pem(&entry.private_key_pem).map_err(|_| {
                        KeySetError::InvalidKey {
                            kid: entry.kid.clone(),
                        }
                    })?;
                Ok(ParsedKey {
                    kid: entry.kid.clone(),
                    state: entry.state,
                    signing_key,
                })
            })
            .collect()
    }

    /// Writes `keyset.json` into `dir` (mode 0600), replacing it atomically.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{KEYSET_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_private(&tmp, &json)?;
        std::fs::rename(tmp, dir.join(KEYSET_FILE))
    }
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The public half as a JWK `x` value (base64url, no padding).
pub fn public_x(key: &SigningKey) -> String {
    URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())
}

/// RFC 7638 thumbprint of the Ed25519 public key: a stable, collision-free `kid`.
pub fn thumbprint(key: &SigningKey) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, public_x(key));
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A fresh Ed25519 key in the given state.
pub fn generate_key(state: KeyState) -> KeyEntry {
    let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = signing_key
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        // Encoding a freshly generated 32-byte key cannot fail; keep the error path honest anyway.
        .unwrap_or_default();
    KeyEntry {
        kid: thumbprint(&signing_key),
        state,
        algorithm: default_algorithm(),
        created_at: Some(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        private_key_pem: pem,
    }
}

/// A key set with one active key, ready for local use.
pub fn generate_keyset() -> KeySetFile {
    KeySetFile {
        keys: vec![generate_key(KeyState::Active)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_set_round_trips_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let set = generate_keyset();
        set.write_dir(dir.path()).unwrap();
        let parsed = KeySetFile::read_dir(dir.path()).unwrap().parse().unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].state, KeyState::Active);
        assert_eq!(parsed[0].kid, thumbprint(&parsed[0].signing_key));
    }

    #[test]
    fn invariants_are_enforced() {
        let mut set = generate_keyset();
        set.keys.push(generate_key(KeyState::Active));
        assert!(matches!(set.parse(), Err(KeySetError::ActiveCount(2))));

        let mut set = generate_keyset();
        let mut dup = generate_key(KeyState::Retiring);
        dup.kid = set.keys[0].kid.clone();
        set.keys.push(dup);
        assert!(matches!(set.parse(), Err(KeySetError::DuplicateKid(_))));

        let mut set = generate_keyset();
        set.keys[0].private_key_pem = "garbage".into();
        assert!(matches!(set.parse(), Err(KeySetError::InvalidKey { .. })));
    }

    #[test]
    fn debug_output_never_contains_private_keys() {
        let set = generate_keyset();
        assert!(!format!("{set:?}").contains("PRIVATE KEY"));
    }
}
