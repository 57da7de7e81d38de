//! The key set that encrypts second-factor (TOTP) secrets at rest: its file format,
//! validation, generation and rotation.
//!
//! # File format (shared with the operator)
//!
//! A directory (a mounted Kubernetes Secret, separate from the signing keys) holds one
//! file, `mfa-keys.json`:
//!
//! ```json
//! {
//!   "keys": [
//!     { "kid": "m-2026…", "state": "active", "algorithm": "XChaCha20-Poly1305",
//!       "createdAt": "2026-12-05T15:00:00Z", "key": "<32 bytes, base64url>" }
//!   ]
//! }
//! ```
//!
//! - `state`: `active` (encrypts and decrypts; exactly one) or `retired` (decrypts only:
//!   kept until every secret it sealed has been sealed again under the active key, which
//!   stoa-api does by itself when it loads a set whose active key changed).
//! - Every ciphertext records the `kid` that sealed it, so keys can rotate.
//!
//! Unlike the signing keys these are not rotated on a schedule by the operator: a key can
//! only be dropped once nothing is sealed under it, which only the database knows, so
//! rotation is an explicit step (`stoa-api mfa-keys rotate`, docs/operations.md).

use std::collections::HashSet;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub const MFA_KEYS_FILE: &str = "mfa-keys.json";
pub const ALGORITHM: &str = "XChaCha20-Poly1305";
pub const KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MfaKeyState {
    Active,
    Retired,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MfaKeyEntry {
    pub kid: String,
    pub state: MfaKeyState,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The 32-byte key, base64url without padding.
    pub key: String,
}

/// Never prints the key.
impl std::fmt::Debug for MfaKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaKeyEntry")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn default_algorithm() -> String {
    ALGORITHM.into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaKeySetFile {
    pub keys: Vec<MfaKeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum MfaKeySetError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid MFA key set: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("MFA key set must contain exactly one active key, found {0}")]
    ActiveCount(usize),
    #[error("duplicate MFA kid {0:?}")]
    DuplicateKid(String),
    #[error("MFA key {kid:?}: unsupported algorithm {algorithm:?} (only {ALGORITHM})")]
    Algorithm { kid: String, algorithm: String },
    #[error("MFA key {kid:?}: key must be {KEY_BYTES} bytes, base64url without padding")]
    InvalidKey { kid: String },
    #[error("MFA key {kid:?}: kid must be 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidKid { kid: String },
}

/// A validated key.
pub struct ParsedMfaKey {
    pub kid: String,
    pub state: MfaKeyState,
    pub key: [u8; KEY_BYTES],
}

impl MfaKeySetFile {
    /// The key set in `dir` and the exact bytes it was parsed from (a watcher's baseline).
    pub fn read_dir_with_bytes(dir: &Path) -> Result<(MfaKeySetFile, Vec<u8>), MfaKeySetError> {
        let path = dir.join(MFA_KEYS_FILE);
        let bytes = std::fs::read(&path).map_err(|source| MfaKeySetError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file = Self::from_slice(&bytes).map_err(|source| MfaKeySetError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Ok((file, bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<MfaKeySetFile, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Checks the invariants and decodes every key.
    pub fn parse(&self) -> Result<Vec<ParsedMfaKey>, MfaKeySetError> {
        let active = self
            .keys
            .iter()
            .filter(|k| k.state == MfaKeyState::Active)
            .count();
        if active != 1 {
            return Err(MfaKeySetError::ActiveCount(active));
        }
        let mut seen = HashSet::new();
        self.keys
            .iter()
            .map(|entry| {
                let kid = || entry.kid.clone();
                let kid_ok = !entry.kid.is_empty()
                    && entry.kid.len() <= 64
                    && entry
                        .kid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !kid_ok {
                    return Err(MfaKeySetError::InvalidKid { kid: kid() });
                }
                if !seen.insert(entry.kid.as_str()) {
                    return Err(MfaKeySetError::DuplicateKid(kid()));
                }
                if entry.algorithm != ALGORITHM {
                    return Err(MfaKeySetError::Algorithm {
                        kid: kid(),
                        algorithm: entry.algorithm.clone(),
                    });
                }
                let key = URL_SAFE_NO_PAD
                    .decode(entry.key.as_bytes())
                    .ok()
                    .and_then(|bytes| <[u8; KEY_BYTES]>::try_from(bytes).ok())
                    .ok_or_else(|| MfaKeySetError::InvalidKey { kid: kid() })?;
                Ok(ParsedMfaKey {
                    kid: kid(),
                    state: entry.state,
                    key,
                })
            })
            .collect()
    }

    /// A new active key; the active one becomes `retired` (still decrypts). Retired keys
    /// are kept: drop one with [`MfaKeySetFile::drop_retired`] once nothing uses it.
    pub fn rotate(&mut self) -> &MfaKeyEntry {
        for key in &mut self.keys {
            key.state = MfaKeyState::Retired;
        }
        self.keys.insert(0, generate_mfa_key());
        &self.keys[0]
    }

    /// Removes the retired key `kid`; false when there is no such retired key.
    pub fn drop_retired(&mut self, kid: &str) -> bool {
        let before = self.keys.len();
        self.keys
            .retain(|k| !(k.kid == kid && k.state == MfaKeyState::Retired));
        self.keys.len() != before
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and enums cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Writes `mfa-keys.json` into `dir` (mode 0600), replacing it atomically.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{MFA_KEYS_FILE}.tmp"));
        crate::keys::write_private(&tmp, &self.to_json())?;
        std::fs::rename(tmp, dir.join(MFA_KEYS_FILE))
    }
}

/// A fresh random key, active. The kid is random too: it names the key in every
/// ciphertext and must never be reused for different key material.
pub fn generate_mfa_key() -> MfaKeyEntry {
    let key: [u8; KEY_BYTES] = rand::random();
    let id: [u8; 9] = rand::random();
    MfaKeyEntry {
        kid: format!("m-{}", URL_SAFE_NO_PAD.encode(id)),
        state: MfaKeyState::Active,
        algorithm: default_algorithm(),
        created_at: Some(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        key: URL_SAFE_NO_PAD.encode(key),
    }
}

/// A key set with one active key.
pub fn generate_mfa_keyset() -> MfaKeySetFile {
    MfaKeySetFile {
        keys: vec![generate_mfa_key()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_set_round_trips_and_rotation_keeps_the_old_key_for_decryption() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = generate_mfa_keyset();
        set.write_dir(dir.path()).unwrap();
        let (read, _) = MfaKeySetFile::read_dir_with_bytes(dir.path()).unwrap();
        let first = read.parse().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].state, MfaKeyState::Active);
        let old = set.keys[0].kid.clone();
        let new = set.rotate().kid.clone();
        assert_ne!(old, new);
        let parsed = set.parse().unwrap();
        let state = |kid: &str| parsed.iter().find(|k| k.kid == kid).unwrap().state;
        assert_eq!(state(&new), MfaKeyState::Active);
        assert_eq!(state(&old), MfaKeyState::Retired);
        assert!(!set.drop_retired(&new), "the active key is never dropped");
        assert!(set.drop_retired(&old));
        assert_eq!(set.parse().unwrap().len(), 1);
    }

    #[test]
    fn invalid_sets_are_refused_with_the_reason_and_without_the_key() {
        let mut set = generate_mfa_keyset();
        set.keys[0].key = "c2hvcnQ".into();
        let error = set.parse().err().unwrap();
        assert!(matches!(error, MfaKeySetError::InvalidKey { .. }));
        let mut two = generate_mfa_keyset();
        two.keys.push(generate_mfa_key());
        assert!(matches!(two.parse(), Err(MfaKeySetError::ActiveCount(2))));
        let mut duplicate = generate_mfa_keyset();
        duplicate.rotate();
        duplicate.keys[1].kid = duplicate.keys[0].kid.clone();
        assert!(matches!(
            duplicate.parse(),
            Err(MfaKeySetError::DuplicateKid(_))
        ));
        let entry = generate_mfa_key();
        assert!(!format!("{entry:?}").contains(&entry.key));
    }
}
