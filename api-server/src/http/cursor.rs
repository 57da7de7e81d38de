//! Cursor pagination beside `limit`/`offset`: a page ends with `nextCursor`, and
//! `?cursor=` returns the items after it. A cursor holds the position of the last item
//! (its `created_at` and `id`: lists are ordered by both, newest first), so a page after
//! it is a keyset condition, stable under concurrent inserts (new items land before the
//! cursor, never shift the next page) and as cheap on page 1000 as on page 2.
//!
//! Opaque and tamper-evident: base64url of the position, a fingerprint of the list it
//! belongs to (kind and filters) and an HMAC-SHA256 tag under a secret derived from the
//! signing key set (any loaded key verifies, so a key rotation does not break cursors in
//! flight). A cursor from another list, edited or forged is a 422.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

const TAG_BYTES: usize = 16;
const PAYLOAD_BYTES: usize = 24;

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub created_at: DateTime<Utc>,
    pub id: i64,
}

/// The list a cursor belongs to: its kind and filters, e.g. `["articles", tag, author,
/// favorited]`. A cursor is valid only for the same list.
pub fn fingerprint(parts: &[Option<&[u8]>]) -> [u8; 8] {
    let mut digest = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ; absent differs from "".
        match part {
            Some(text) => {
                digest.update([1]);
                digest.update((text.len() as u64).to_be_bytes());
                digest.update(text);
            }
            None => digest.update([0]),
        }
    }
    let mut out = [0; 8];
    out.copy_from_slice(&digest.finalize()[..8]);
    out
}

/// HMAC-SHA256 under `secret` over `message`.
fn hmac(secret: &[u8; 32], message: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for part in message {
        mac.update(part);
    }
    mac
}

fn payload(position: Position, list: [u8; 8]) -> [u8; PAYLOAD_BYTES] {
    let mut out = [0; PAYLOAD_BYTES];
    out[..8].copy_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
    out[8..16].copy_from_slice(&position.id.to_be_bytes());
    out[16..].copy_from_slice(&list);
    out
}

/// The cursor for the items after `position` in `list`.
pub fn encode(secrets: &[[u8; 32]], position: Position, list: [u8; 8]) -> Option<String> {
    let secret = secrets.first()?;
    let payload = payload(position, list);
    let mut bytes = Vec::with_capacity(PAYLOAD_BYTES + TAG_BYTES);
    bytes.extend_from_slice(&payload);
    let tag = hmac(secret, &[&payload]).finalize().into_bytes();
    bytes.extend_from_slice(&tag[..TAG_BYTES]);
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The position in `cursor`, if it was made by this service for `list`.
pub fn decode(secrets: &[[u8; 32]], cursor: &str, list: [u8; 8]) -> Option<Position> {
    if cursor.len() > 128 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    if bytes.len() != PAYLOAD_BYTES + TAG_BYTES {
        return None;
    }
    let (payload, tag) = bytes.split_at(PAYLOAD_BYTES);
    // `verify_truncated_left` compares in constant time.
    let genuine = secrets
        .iter()
        .any(|secret| hmac(secret, &[payload]).verify_truncated_left(tag).is_ok());
    if !genuine || payload[16..] != list {
        return None;
    }
    let micros = i64::from_be_bytes(payload[..8].try_into().ok()?);
    let id = i64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some(Position {
        created_at: DateTime::from_timestamp_micros(micros)?,
        id,
    })
}

/// `?cursor=` of a request for `list`: 422 unless genuine and for this list, or when
/// combined with `offset`.
pub fn resolve(
    state: &AppState,
    cursor: Option<&str>,
    offset: i64,
    list: [u8; 8],
) -> Result<Option<Position>, ApiError> {
    // `cursor=` (a client passing on an absent `nextCursor`) is the first page.
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    if offset != 0 {
        return Err(ApiError::field("cursor", "cannot be combined with offset"));
    }
    decode(state.tokens.ring().cursor_secrets(), cursor, list)
        .map(Some)
        .ok_or_else(|| ApiError::field("cursor", "is invalid or belongs to another list"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: 42,
        }
    }

    #[test]
    fn a_cursor_round_trips_for_its_own_list_only() {
        let secrets = [[7; 32]];
        let list = fingerprint(&[Some(b"articles"), Some(b"rust"), None, None]);
        let cursor = encode(&secrets, position(), list).unwrap();
        assert_eq!(decode(&secrets, &cursor, list), Some(position()));
        let other = fingerprint(&[Some(b"articles"), Some(b"go"), None, None]);
        assert_eq!(decode(&secrets, &cursor, other), None);
        // A key set that no longer knows the key: refused.
        assert_eq!(decode(&[[8; 32]], &cursor, list), None);
        // After a rotation the old key still verifies while it is loaded.
        assert_eq!(decode(&[[8; 32], [7; 32]], &cursor, list), Some(position()));
    }

    #[test]
    fn edited_or_forged_cursors_are_refused() {
        let secrets = [[7; 32]];
        let list = fingerprint(&[Some(b"feed")]);
        let cursor = encode(&secrets, position(), list).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[15] ^= 1; // a later id
        assert_eq!(
            decode(&secrets, &URL_SAFE_NO_PAD.encode(&bytes), list),
            None
        );
        for garbage in ["", "abc", "!!!!", &"A".repeat(200)] {
            assert_eq!(decode(&secrets, garbage, list), None, "{garbage}");
        }
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            fingerprint(&[Some(b"ab"), Some(b"c")]),
            fingerprint(&[Some(b"a"), Some(b"bc")])
        );
        assert_ne!(fingerprint(&[None]), fingerprint(&[Some(b"")]));
    }
}
