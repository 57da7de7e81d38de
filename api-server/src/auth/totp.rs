//! Time-based one-time passwords (RFC 6238) as authenticator apps use them: HMAC-SHA1,
//! 6 digits, 30-second steps, a 160-bit secret; a code is accepted for the current step
//! and one step either side (clock drift). Which step matched is returned, so the caller
//! can refuse a code for a step already used (no replay within the window).
//! Recovery codes: 80 random bits each, shown once, stored as SHA-256.

use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

pub const DIGITS: usize = 6;
pub const STEP_SECONDS: u64 = 30;
/// Steps accepted on either side of the current one.
const DRIFT_STEPS: u64 = 1;
const SECRET_BYTES: usize = 20;
pub const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "Stoa";

#[derive(Debug, thiserror::Error)]
#[error("invalid TOTP parameters: {0}")]
pub struct TotpError(String);

/// A user's authenticator.
pub struct Authenticator {
    totp: TOTP,
}

impl Authenticator {
    /// A new random secret.
    pub fn generate_secret() -> Vec<u8> {
        rand::random::<[u8; SECRET_BYTES]>().to_vec()
    }

    pub fn new(secret: Vec<u8>, account: &str) -> Result<Authenticator, TotpError> {
        // The provisioning URI separates issuer and account with ':'.
        let account = account.replace(':', "_");
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            0,
            STEP_SECONDS,
            secret,
            Some(ISSUER.to_owned()),
            account,
        )
        .map(|totp| Authenticator { totp })
        .map_err(|e| TotpError(e.to_string()))
    }

    /// `otpauth://totp/Stoa:<account>?secret=…&issuer=Stoa` for the authenticator app
    /// (usually shown as a QR code).
    pub fn provisioning_uri(&self) -> String {
        self.totp.get_url()
    }

    /// The secret in base32, for typing into an app by hand.
    pub fn secret_base32(&self) -> String {
        self.totp.get_secret_base32()
    }

    /// The time step (`unix / 30`) that `code` is valid for, looking at the step of
    /// `unix` and one either side; `None` if it matches none.
    pub fn matching_step(&self, code: &str, unix: u64) -> Option<u64> {
        let code = code.trim();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = unix / STEP_SECONDS;
        (now.saturating_sub(DRIFT_STEPS)..=now + DRIFT_STEPS)
            // `check` compares in constant time.
            .find(|step| self.totp.check(code, step * STEP_SECONDS))
    }
}

/// Fresh recovery codes as shown to the user (`XXXX-XXXX-XXXX-XXXX`, base32) and the
/// hashes to store.
pub fn generate_recovery_codes() -> Vec<(String, Vec<u8>)> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let bytes: [u8; 10] = rand::random();
            // totp-rs's Base32 (RFC 4648, unpadded), the one that encodes TOTP secrets too.
            let plain = totp_rs::Secret::Raw(bytes.to_vec())
                .to_encoded()
                .to_string();
            let shown = plain
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            let hash = recovery_code_hash(&shown);
            (shown, hash)
        })
        .collect()
}

/// The stored form of a recovery code as typed: case, spaces and dashes do not matter.
pub fn recovery_code_hash(typed: &str) -> Vec<u8> {
    let normal: String = typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Sha256::new()
        .chain_update(b"stoa/recovery-code/v1")
        .chain_update(normal.as_bytes())
        .finalize()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B: the reference secrets (ASCII "1234567890" repeated to 20, 32
    /// and 64 bytes), 8 digits, 30-second steps.
    #[test]
    fn the_rfc_6238_test_vectors_hold() {
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        let seed = |len: usize| b"1234567890".iter().copied().cycle().take(len).collect();
        let totp =
            |algorithm, len| TOTP::new(algorithm, 8, 0, 30, seed(len), None, "rfc".into()).unwrap();
        let (sha1, sha256, sha512) = (
            totp(Algorithm::SHA1, 20),
            totp(Algorithm::SHA256, 32),
            totp(Algorithm::SHA512, 64),
        );
        for (time, a, b, c) in vectors {
            assert_eq!(sha1.generate(time), a, "SHA1 at {time}");
            assert_eq!(sha256.generate(time), b, "SHA256 at {time}");
            assert_eq!(sha512.generate(time), c, "SHA512 at {time}");
        }
    }

    /// The authenticator the API uses, on the RFC's SHA1 secret: the 6-digit code is the
    /// last six digits of the RFC's 8-digit one (the same truncation, modulo 10^6).
    #[test]
    fn codes_match_their_step_and_the_neighbouring_ones_only() {
        let secret = b"12345678901234567890".to_vec();
        let authenticator = Authenticator::new(secret, "jake").unwrap();
        assert_eq!(authenticator.matching_step("287082", 59), Some(1));
        assert_eq!(
            authenticator.matching_step("081804", 1111111109),
            Some(37037036)
        );
        // One step of drift either way is accepted, two are not.
        assert_eq!(
            authenticator.matching_step("081804", 1111111109 + 30),
            Some(37037036)
        );
        assert_eq!(
            authenticator.matching_step("081804", 1111111109 - 30),
            Some(37037036)
        );
        assert_eq!(authenticator.matching_step("081804", 1111111109 + 60), None);
        for garbage in ["", "28708", "2870822", "28708a", "-87082"] {
            assert_eq!(authenticator.matching_step(garbage, 59), None, "{garbage}");
        }
    }

    #[test]
    fn the_provisioning_uri_names_the_issuer_account_and_secret() {
        let authenticator = Authenticator::new(Authenticator::generate_secret(), "ja:ke").unwrap();
        let uri = authenticator.provisioning_uri();
        assert!(uri.starts_with("otpauth://totp/Stoa:ja_ke?"), "{uri}");
        assert!(uri.contains(&format!("secret={}", authenticator.secret_base32())));
        assert!(uri.contains("issuer=Stoa"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let (shown, hash) = &codes[0];
        assert_eq!(shown.len(), 19, "{shown}");
        assert_eq!(
            &recovery_code_hash(&shown.to_lowercase().replace('-', " ")),
            hash
        );
        let mut hashes: Vec<_> = codes.iter().map(|(_, h)| h.clone()).collect();
        hashes.dedup();
        assert_eq!(hashes.len(), RECOVERY_CODES);
    }
}
