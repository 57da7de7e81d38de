//! Second-factor secrets encrypted at rest. A TOTP secret is sealed with
//! XChaCha20-Poly1305 under the active key of the MFA key set (`STOA_MFA_KEYS_DIR`, a
//! mounted Secret, never the database), with the user id as associated data: a sealed
//! secret copied onto another user's row does not open. Each row records the `kid` that
//! sealed it, so keys rotate: a retired key still opens, and [`reseal_all`] seals every
//! row again under the active key (run at start-up and whenever the key set changes).
//! Rows from before encryption (`secret` in the clear) are sealed by the same pass.

use std::collections::HashMap;
use std::sync::Arc;

use crate::db::Pool;
use arc_swap::ArcSwap;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use stoa_contract::mfa_keys::{MfaKeySetError, MfaKeySetFile, MfaKeyState};
use uuid::Uuid;

const NONCE_BYTES: usize = 24;
/// Domain separation for the associated data, with a version for a future format.
const AAD_PREFIX: &[u8] = b"stoa/totp-secret/v1:";
/// The key `serve --dev` uses when no key set is configured: fixed, so enrolments in a
/// development database survive a restart. Never a production key (the start-up log
/// says so, and production refuses to start without `STOA_MFA_KEYS_DIR`).
const DEV_KID: &str = "dev";
const DEV_KEY: [u8; 32] = *b"stoa-development-only-mfa-key-00";
const RESEAL_BATCH: i64 = 200;

/// A sealed secret as stored: the key id and `nonce || ciphertext || tag`.
pub struct Sealed {
    pub kid: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the MFA key {0:?} is not in the loaded key set")]
    UnknownKey(String),
    #[error("a sealed MFA secret failed authentication (wrong user, key or corrupted)")]
    Corrupt,
}

struct Keys {
    active: String,
    ciphers: HashMap<String, XChaCha20Poly1305>,
}

/// Seals and opens second-factor secrets; the key set can be swapped at run time.
pub struct SecretSealer {
    keys: ArcSwap<Keys>,
}

fn aad(user_id: Uuid) -> Vec<u8> {
    [AAD_PREFIX, user_id.as_bytes()].concat()
}

impl Keys {
    fn from_file(file: &MfaKeySetFile) -> Result<Keys, MfaKeySetError> {
        let parsed = file.parse()?;
        let active = parsed
            .iter()
            .find(|k| k.state == MfaKeyState::Active)
            .map(|k| k.kid.clone())
            .ok_or(MfaKeySetError::ActiveCount(0))?;
        let ciphers = parsed
            .into_iter()
            .map(|k| (k.kid, XChaCha20Poly1305::new(&k.key.into())))
            .collect();
        Ok(Keys { active, ciphers })
    }
}

impl SecretSealer {
    pub fn from_file(file: &MfaKeySetFile) -> Result<SecretSealer, MfaKeySetError> {
        Ok(SecretSealer {
            keys: ArcSwap::from_pointee(Keys::from_file(file)?),
        })
    }

    /// The fixed development key (`serve --dev` without `STOA_MFA_KEYS_DIR`).
    pub fn development() -> SecretSealer {
        SecretSealer {
            keys: ArcSwap::from_pointee(Keys {
                active: DEV_KID.into(),
                ciphers: HashMap::from([(DEV_KID.into(), XChaCha20Poly1305::new(&DEV_KEY.into()))]),
            }),
        }
    }

    /// Swaps in a new key set; on error the loaded one stays.
    pub fn replace(&self, file: &MfaKeySetFile) -> Result<(), MfaKeySetError> {
        self.keys.store(Arc::new(Keys::from_file(file)?));
        Ok(())
    }

    pub fn active_kid(&self) -> String {
        self.keys.load().active.clone()
    }

    /// The loaded key ids, the active one first.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.keys.load();
        let mut kids: Vec<String> = keys.ciphers.keys().cloned().collect();
        kids.sort_by_key(|kid| (*kid != keys.active, kid.clone()));
        kids
    }

    pub fn seal(&self, user_id: Uuid, secret: &[u8]) -> Sealed {
        let keys = self.keys.load();
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let cipher = &keys.ciphers[&keys.active];
        let aad = aad(user_id);
        // Encryption fails only for inputs beyond the cipher's limits (256 GiB).
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        Sealed {
            kid: keys.active.clone(),
            bytes: [nonce.as_slice(), &ciphertext].concat(),
        }
    }

    pub fn open(&self, user_id: Uuid, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let keys = self.keys.load();
        let cipher = keys
            .ciphers
            .get(kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_BYTES>()
            .ok_or(SealError::Corrupt)?;
        let aad = aad(user_id);
        cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }

    /// The secret of a `user_totp` row, whichever form it is stored in.
    pub fn open_row(&self, user_id: Uuid, row: &StoredSecret) -> Result<Vec<u8>, SealError> {
        match row {
            StoredSecret {
                clear: Some(secret),
                ..
            } => Ok(secret.clone()),
            StoredSecret {
                sealed: Some(sealed),
                kid: Some(kid),
                ..
            } => self.open(user_id, kid, sealed),
            _ => Err(SealError::Corrupt),
        }
    }
}

/// The secret columns of a `user_totp` row: `secret` (in the clear, only on rows from
/// before encryption) or `sealed_secret` with its `secret_key_id`.
#[derive(sqlx::FromRow)]
pub struct StoredSecret {
    #[sqlx(rename = "secret")]
    pub clear: Option<Vec<u8>>,
    #[sqlx(rename = "sealed_secret")]
    pub sealed: Option<Vec<u8>>,
    #[sqlx(rename = "secret_key_id")]
    pub kid: Option<String>,
}

/// What a [`reseal_all`] pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Rows sealed again under the active key (from the clear or a retired key).
    pub resealed: u64,
    /// Rows sealed under a key this process does not have (a newer pod's key, or a key
    /// dropped too early): left as they are.
    pub unreadable: u64,
}

/// Seals every row that is in the clear or under a key other than the active one, in
/// batches of one transaction each. Replicas may run it at once: rows another replica has
/// locked are skipped (it reseals them), and each pass visits every row once.
pub async fn reseal_all(pool: &Pool, sealer: &SecretSealer) -> Result<ResealReport, sqlx::Error> {
    let mut report = ResealReport::default();
    let mut after = Uuid::nil();
    loop {
        let active = sealer.active_kid();
        let mut tx = pool.begin().await?;
        #[derive(sqlx::FromRow)]
        struct Row {
            user_id: Uuid,
            #[sqlx(flatten)]
            stored: StoredSecret,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT user_id, secret, sealed_secret, secret_key_id FROM user_totp
             WHERE user_id > $1 AND (secret IS NOT NULL OR secret_key_id IS DISTINCT FROM $2)
             ORDER BY user_id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(after)
        .bind(&active)
        .bind(RESEAL_BATCH)
        .fetch_all(&mut tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        after = last.user_id;
        let (mut ids, mut sealed, mut kids) = (Vec::new(), Vec::new(), Vec::new());
        for Row { user_id, stored } in rows {
            match sealer.open_row(user_id, &stored) {
                Ok(secret) => {
                    let fresh = sealer.seal(user_id, &secret);
                    ids.push(user_id);
                    sealed.push(fresh.bytes);
                    kids.push(fresh.kid);
                }
                Err(error) => {
                    report.unreadable += 1;
                    tracing::warn!(target: "stoa::security", %user_id, %error,
                        "cannot reseal a second-factor secret; left as it is");
                }
            }
        }
        let updated = sqlx::query(
            "UPDATE user_totp t SET secret = NULL, sealed_secret = s.sealed, secret_key_id = s.kid
             FROM unnest($1::uuid[], $2::bytea[], $3::text[]) AS s(user_id, sealed, kid)
             WHERE t.user_id = s.user_id",
        )
        .bind(&ids)
        .bind(&sealed)
        .bind(&kids)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        report.resealed += updated.rows_affected();
    }
}

/// Second-factor secrets per sealing key (`None`: still in the clear), for
/// `stoa-api mfa-keys status`: a retired key can be dropped once it has no rows.
pub async fn rows_per_key(pool: &Pool) -> Result<Vec<(Option<String>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT CASE WHEN secret IS NOT NULL THEN NULL ELSE secret_key_id END AS kid, count(*)
         FROM user_totp GROUP BY 1 ORDER BY 1 NULLS FIRST",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_contract::mfa_keys::generate_mfa_keyset;

    #[test]
    fn a_sealed_secret_opens_only_for_its_user_and_key() {
        let sealer = SecretSealer::from_file(&generate_mfa_keyset()).unwrap();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = b"12345678901234567890";
        let sealed = sealer.seal(alice, secret);
        assert_eq!(sealed.kid, sealer.active_kid());
        assert!(!sealed.bytes.windows(secret.len()).any(|w| w == secret));
        assert_eq!(
            sealer.open(alice, &sealed.kid, &sealed.bytes).unwrap(),
            secret
        );
        assert_eq!(
            sealer.open(bob, &sealed.kid, &sealed.bytes),
            Err(SealError::Corrupt)
        );
        let mut flipped = sealed.bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(
            sealer.open(alice, &sealed.kid, &flipped),
            Err(SealError::Corrupt)
        );
        assert_eq!(
            sealer.open(alice, &sealed.kid, &[0; 3]),
            Err(SealError::Corrupt)
        );
        assert_eq!(
            sealer.open(alice, "m-other", &sealed.bytes),
            Err(SealError::UnknownKey("m-other".into()))
        );
        // Two seals of one secret differ (random nonces).
        assert_ne!(sealer.seal(alice, secret).bytes, sealed.bytes);
    }

    #[test]
    fn after_rotation_the_retired_key_still_opens_and_new_seals_use_the_new_key() {
        let mut file = generate_mfa_keyset();
        let sealer = SecretSealer::from_file(&file).unwrap();
        let user = Uuid::new_v4();
        let old = sealer.seal(user, b"secret");
        let new_kid = file.rotate().kid.clone();
        sealer.replace(&file).unwrap();
        assert_eq!(sealer.kids()[0], new_kid);
        assert_eq!(sealer.open(user, &old.kid, &old.bytes).unwrap(), b"secret");
        assert_eq!(sealer.seal(user, b"secret").kid, new_kid);
        file.drop_retired(&old.kid);
        sealer.replace(&file).unwrap();
        assert!(matches!(
            sealer.open(user, &old.kid, &old.bytes),
            Err(SealError::UnknownKey(_))
        ));
    }
}
