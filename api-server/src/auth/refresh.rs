//! Opaque refresh tokens: 256 random bits, shown to the client once and stored only as a
//! SHA-256 hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

pub struct NewRefreshToken {
    /// What the client gets.
    pub token: String,
    /// What the database keeps.
    pub hash: Vec<u8>,
}

pub fn generate() -> NewRefreshToken {
    let bytes: [u8; 32] = rand::random();
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash(&token);
    NewRefreshToken { token, hash }
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The token that replaces `presented` on refresh: HMAC-SHA256 of it under a secret
/// derived from the signing key set. Deterministic, so when two tabs present the same token
/// at once, the one that loses the race can be given the very successor the winner got
/// (within the reuse grace) instead of logging the user out; unpredictable without the key
/// set, so a stolen spent token does not reveal its successor.
pub fn successor(secret: &[u8; 32], presented: &str) -> NewRefreshToken {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(presented.as_bytes());
    let token = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    let hash = hash(&token);
    NewRefreshToken { token, hash }
}

/// Who presents a refresh token, as far as a server can tell without breaking two tabs of
/// one browser: the first 16 bytes of SHA-256 of the `User-Agent` (empty when absent).
/// Not a secret and not proof of anything, but a thief replaying a spent token from
/// another program or browser no longer gets its successor within the grace.
pub fn client_fingerprint(headers: &axum::http::HeaderMap) -> [u8; 16] {
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .map_or(&[][..], |v| v.as_bytes());
    let digest = Sha256::new()
        .chain_update(b"stoa/refresh-client/v1")
        .chain_update(agent)
        .finalize();
    let mut fingerprint = [0; 16];
    fingerprint.copy_from_slice(&digest[..16]);
    fingerprint
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_and_hashed() {
        let a = super::generate();
        let b = super::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 43);
        assert_eq!(super::hash(&a.token), a.hash);
    }

    #[test]
    fn successors_are_deterministic_per_secret() {
        let presented = super::generate().token;
        let one = super::successor(&[1; 32], &presented);
        assert_eq!(one.token, super::successor(&[1; 32], &presented).token);
        assert_ne!(one.token, super::successor(&[2; 32], &presented).token);
        assert_eq!(one.token.len(), 43);
    }
}
