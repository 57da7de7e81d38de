//! JWT access tokens: issued with the active key of the key set, verified against any key
//! the set still knows (`next`, `active`, `retiring`), so rotation never breaks a token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sha2::{Digest, Sha256};

use crate::auth::Role;
use crate::keys::{KeySetError, KeySetFile, KeyState, public_x};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// Token id, used for revocation.
    pub jti: Uuid,
    /// The refresh-token family (login session) this token belongs to; revoking the
    /// family (logout, reuse detection, password change) also rejects its access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<Uuid>,
    /// Absent for ordinary users (the tokens of most callers stay as they were).
    #[serde(default, skip_serializing_if = "Role::is_user")]
    pub role: Role,
}

/// A key set ready for use: the signer, the verifiers and the published JWKS.
pub struct KeyRing {
    signer_kid: String,
    signer: EncodingKey,
    verifiers: HashMap<String, DecodingKey>,
    /// `/.well-known/jwks.json`, rendered once per key set.
    jwks_json: Arc<str>,
    kids: Vec<(String, KeyState)>,
    /// Per loaded key, the secret that derives refresh-token successors (active key first;
    /// see `auth::refresh::successor`).
    successor_secrets: Vec<[u8; 32]>,
    /// Per loaded key, the secret that signs list cursors (active key first; see
    /// `http::cursor`).
    cursor_secrets: Vec<[u8; 32]>,
    /// Which key set this is in the process's history (set by [`TokenService`]): cached
    /// verifications are valid only for the ring that verified them.
    generation: u64,
}

#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    kid: &'a str,
    x: String,
}

impl KeyRing {
    pub fn from_file(file: &KeySetFile) -> Result<KeyRing, KeySetError> {
        let parsed = file.parse()?;
        let mut verifiers = HashMap::with_capacity(parsed.len());
        let mut jwks = Vec::with_capacity(parsed.len());
        let mut signer = None;
        for (entry, key) in file.keys.iter().zip(&parsed) {
            let x = public_x(&key.signing_key);
            let decoding =
                DecodingKey::from_ed_components(&x).map_err(|_| KeySetError::InvalidKey {
                    kid: key.kid.clone(),
                })?;
            verifiers.insert(key.kid.clone(), decoding);
            jwks.push(Jwk {
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                use_: "sig",
                kid: &key.kid,
                x,
            });
            if key.state == KeyState::Active {
                let encoding =
                    EncodingKey::from_ed_pem(entry.private_key_pem.as_bytes()).map_err(|_| {
                        KeySetError::InvalidKey {
                            kid: key.kid.clone(),
                        }
                    })?;
                signer = Some((key.kid.clone(), encoding));
            }
        }
        // `parse` guarantees exactly one active key.
        let (signer_kid, signer) = signer.ok_or(KeySetError::ActiveCount(0))?;
        let jwks_json = serde_json::json!({ "keys": jwks }).to_string().into();
        // One secret per key and purpose (the purpose in the derivation keeps them apart),
        // the active key's first.
        let derived = |purpose: &[u8]| {
            let mut secrets: Vec<(bool, [u8; 32])> = parsed
                .iter()
                .map(|key| {
                    let secret = Sha256::new()
                        .chain_update(purpose)
                        .chain_update(key.signing_key.to_bytes())
                        .finalize()
                        .into();
                    (key.state != KeyState::Active, secret)
                })
                .collect();
            secrets.sort_by_key(|(not_active, _)| *not_active);
            secrets.into_iter().map(|(_, s)| s).collect()
        };
        Ok(KeyRing {
            successor_secrets: derived(b"stoa/refresh-successor/v1"),
            cursor_secrets: derived(b"stoa/cursor/v1"),
            signer_kid,
            signer,
            verifiers,
            jwks_json,
            kids: parsed.into_iter().map(|k| (k.kid, k.state)).collect(),
            generation: 0,
        })
    }

    pub fn kids(&self) -> &[(String, KeyState)] {
        &self.kids
    }

    pub fn jwks_json(&self) -> Arc<str> {
        self.jwks_json.clone()
    }

    /// Secrets for refresh-token successors, the active key's first. Every replica loads
    /// the same key set, so every replica derives the same successor.
    pub fn successor_secrets(&self) -> &[[u8; 32]] {
        &self.successor_secrets
    }

    /// Secrets for list cursors, the active key's first.
    pub fn cursor_secrets(&self) -> &[[u8; 32]] {
        &self.cursor_secrets
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
    #[error("token is invalid")]
    Invalid,
}

pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

/// Issues and verifies access tokens. The key ring can be swapped at run time.
pub struct TokenService {
    ring: ArcSwap<KeyRing>,
    issuer: String,
    audience: String,
    ttl: Duration,
    validation: Validation,
    /// Tokens whose signature and claims were verified, by SHA-256 of the token: a client
    /// sends the same token for its whole lifetime, and an Ed25519 verification costs tens
    /// of microseconds. Entries are checked for expiry on every hit and carry the
    /// generation of the key set that verified them: a hit from another key set verifies
    /// again (a verification racing a key-set swap may insert after the swap's clear).
    /// Revocation is checked per request, separately.
    verified: quick_cache::sync::Cache<[u8; 32], (u64, Claims)>,
    /// The generation the next swapped-in key set gets.
    generations: std::sync::atomic::AtomicU64,
}

impl TokenService {
    pub fn new(
        ring: KeyRing,
        issuer: String,
        audience: String,
        ttl: Duration,
        leeway: Duration,
        cache_entries: usize,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        TokenService {
            ring: ArcSwap::from_pointee(ring),
            issuer,
            audience,
            ttl,
            validation,
            verified: quick_cache::sync::Cache::new(cache_entries.max(1)),
            generations: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    pub fn replace_ring(&self, mut ring: KeyRing) {
        ring.generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ring.store(Arc::new(ring));
        // A removed key must stop its tokens at once.
        self.verified.clear();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(
        &self,
        user_id: Uuid,
        role: Role,
        family: Option<Uuid>,
    ) -> anyhow::Result<IssuedToken> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: Uuid::now_v7(),
            fam: family,
            role,
        };
        let ring = self.ring.load();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.signer_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &ring.signer)?;
        Ok(IssuedToken { token, claims })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_with(&self.ring.load(), token)
    }

    /// Verifies against `ring`, the key set loaded when the verification began.
    fn verify_with(&self, ring: &KeyRing, token: &str) -> Result<Claims, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((generation, claims)) = self.verified.get(&digest)
            && generation == ring.generation
        {
            // Same rule as the library's: expired once `exp` is behind now by the leeway.
            let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
            if claims.exp.saturating_add(leeway) < chrono::Utc::now().timestamp() {
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        let claims = self.verify_signature(ring, token)?;
        self.verified
            .insert(digest, (ring.generation, claims.clone()));
        Ok(claims)
    }

    fn verify_signature(&self, ring: &KeyRing, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = ring.verifiers.get(&kid).ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_key, generate_keyset};

    fn service(file: &KeySetFile, ttl: Duration) -> TokenService {
        TokenService::new(
            KeyRing::from_file(file).unwrap(),
            "stoa".into(),
            "stoa-api".into(),
            ttl,
            Duration::from_secs(0),
            16,
        )
    }

    #[test]
    fn issued_tokens_verify_and_carry_a_kid() {
        let tokens = service(&generate_keyset(), Duration::from_secs(60));
        let user = Uuid::new_v4();
        let issued = tokens.issue(user, Role::User, None).unwrap();
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(
            header.kid.as_deref(),
            Some(tokens.ring().kids()[0].0.as_str())
        );
        assert_eq!(tokens.verify(&issued.token).unwrap().sub, user);
    }

    #[test]
    fn tokens_from_other_keys_issuers_or_tampering_are_rejected() {
        let tokens = service(&generate_keyset(), Duration::from_secs(60));
        let stranger = service(&generate_keyset(), Duration::from_secs(60));
        let foreign = stranger
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        assert_eq!(tokens.verify(&foreign), Err(TokenError::UnknownKey));
        assert_eq!(tokens.verify("not.a.jwt"), Err(TokenError::Malformed));

        let token = tokens
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        let mut tampered = token.clone();
        tampered.replace_range(token.len() - 3.., "AAA");
        assert_eq!(tokens.verify(&tampered), Err(TokenError::Invalid));
    }

    #[test]
    fn retiring_keys_still_verify_after_rotation() {
        let mut file = generate_keyset();
        let tokens = service(&file, Duration::from_secs(60));
        let old = tokens
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        file.keys[0].state = KeyState::Retiring;
        file.keys.push(generate_key(KeyState::Active));
        tokens.replace_ring(KeyRing::from_file(&file).unwrap());
        assert!(tokens.verify(&old).is_ok());
        let new = tokens
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        assert_eq!(
            jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
            file.keys[1].kid
        );
    }

    #[test]
    fn a_verified_token_is_remembered_but_still_expires_and_dies_with_its_key() {
        let file = generate_keyset();
        let tokens = service(&file, Duration::from_secs(1));
        let issued = tokens.issue(Uuid::new_v4(), Role::User, None).unwrap();
        assert_eq!(tokens.verify(&issued.token).unwrap(), issued.claims);
        // The second use is answered from the cache, with the same claims.
        assert_eq!(tokens.verified.len(), 1);
        assert_eq!(tokens.verify(&issued.token).unwrap(), issued.claims);
        assert_eq!(tokens.verified.len(), 1);

        // A key set without the token's key: refused at once, cache or not.
        let still_valid = tokens
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        assert!(tokens.verify(&still_valid).is_ok());
        tokens.replace_ring(KeyRing::from_file(&generate_keyset()).unwrap());
        assert_eq!(tokens.verify(&still_valid), Err(TokenError::UnknownKey));

        // A remembered token expires like any other (leeway 0 here).
        tokens.replace_ring(KeyRing::from_file(&file).unwrap());
        assert!(tokens.verify(&issued.token).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(tokens.verify(&issued.token), Err(TokenError::Expired));
    }

    /// A verification that began under the old key set and finishes after the swap (and
    /// after the swap cleared the cache) must not leave the removed key's token usable.
    #[test]
    fn a_verification_racing_a_key_set_swap_does_not_keep_a_removed_keys_token() {
        let tokens = service(&generate_keyset(), Duration::from_secs(60));
        let token = tokens
            .issue(Uuid::new_v4(), Role::User, None)
            .unwrap()
            .token;
        let before_swap = tokens.ring();
        tokens.replace_ring(KeyRing::from_file(&generate_keyset()).unwrap());
        // The racing verification completes, against the ring it loaded, and caches.
        assert!(tokens.verify_with(&before_swap, &token).is_ok());
        assert_eq!(tokens.verified.len(), 1);
        assert_eq!(tokens.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn the_admin_role_travels_in_the_token_and_ordinary_tokens_do_not_mention_roles() {
        let tokens = service(&generate_keyset(), Duration::from_secs(60));
        let admin = tokens.issue(Uuid::new_v4(), Role::Admin, None).unwrap();
        assert_eq!(tokens.verify(&admin.token).unwrap().role, Role::Admin);
        let user = tokens.issue(Uuid::new_v4(), Role::User, None).unwrap();
        assert_eq!(tokens.verify(&user.token).unwrap().role, Role::User);
        let payload = |token: &str| {
            let part = token.split('.').nth(1).unwrap();
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part)
                    .unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        assert_eq!(payload(&admin.token)["role"], "admin");
        assert!(payload(&user.token).get("role").is_none());
    }

    #[test]
    fn jwks_lists_every_public_key_and_no_private_material() {
        let mut file = generate_keyset();
        file.keys.push(generate_key(KeyState::Next));
        let ring = KeyRing::from_file(&file).unwrap();
        let jwks: serde_json::Value = serde_json::from_str(&ring.jwks_json()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert!(jwks["keys"][0].get("d").is_none());
    }
}
