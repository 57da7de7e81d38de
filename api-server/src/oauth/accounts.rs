//! Which Stoa account a provider's identity is, by the rules that keep accounts safe:
//!
//! - an identity already linked signs in to its account;
//! - a signed-in user linking a provider gets the identity on their account, unless it is
//!   someone else's, and only once that same user confirms it with their own token (so a
//!   link started by one account cannot be finished in another person's browser with
//!   their provider account);
//! - a verified email that matches an account is never linked silently: the sign-in stops
//!   until that account's password is proven (or its owner links while signed in);
//! - an unverified email is never matched, nor used for a new account;
//! - otherwise the first sign-in creates an account with a username derived from the
//!   profile and made unique.

use uuid::Uuid;

use super::ProviderIdentity;
use crate::db::Pool;
use crate::error::{ApiError, ApiResult, ResultExt};
use crate::validate;

/// What the callback does with a provider's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Sign in to this account (`created`: it was made just now).
    SignIn {
        user_id: Uuid,
        created: bool,
    },
    /// Linking: the identity is free and the account has none of this provider; it is
    /// linked once the account confirms.
    ConfirmLink {
        user_id: Uuid,
    },
    /// Linking: the identity is this account's already.
    AlreadyLinked {
        user_id: Uuid,
    },
    /// The verified email is this account's, not linked to the identity: the account's
    /// password must be proven first.
    NeedsPassword {
        user_id: Uuid,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No account is linked, and the provider vouches for no email to create one with.
    EmailNotVerified,
    /// Linking: the identity is linked to another account.
    IdentityTaken,
    /// Linking: the account has another identity of this provider.
    ProviderAlreadyLinked,
}

impl Refusal {
    /// The `stoa_error` a front end is sent back with.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::EmailNotVerified => "email_not_verified",
            Refusal::IdentityTaken => "identity_taken",
            Refusal::ProviderAlreadyLinked => "provider_already_linked",
        }
    }
}

/// Decides, and writes what the decision needs (a new account with its identity, the
/// identity's last use), in one transaction.
pub async fn resolve(
    db: &Pool,
    provider: &str,
    identity: &ProviderIdentity,
    link_to: Option<Uuid>,
) -> ApiResult<Resolution> {
    // Two first sign-ins of one identity at once: the second one's insert meets the
    // first's row and, run again, signs in to the account the first made.
    for _ in 0..2 {
        match resolve_once(db, provider, identity, link_to).await {
            Err(ApiError::Conflict(_)) => continue,
            other => return other,
        }
    }
    resolve_once(db, provider, identity, link_to).await
}

async fn resolve_once(
    db: &Pool,
    provider: &str,
    identity: &ProviderIdentity,
    link_to: Option<Uuid>,
) -> ApiResult<Resolution> {
    let mut tx = db.begin().await?;
    let email = valid_email(identity);
    let linked: Option<Uuid> = sqlx::query_scalar(
        "UPDATE user_identities SET last_used_at = now(), email = $3, email_verified = $4
         WHERE provider = $1 AND subject = $2 RETURNING user_id",
    )
    .bind(provider)
    .bind(&identity.subject)
    .bind(email)
    .bind(identity.email_verified)
    .fetch_optional(&mut tx)
    .await?;
    let resolution = match (linked, link_to) {
        (Some(owner), Some(user)) if owner != user => Resolution::Refused(Refusal::IdentityTaken),
        (Some(owner), Some(_)) => Resolution::AlreadyLinked { user_id: owner },
        (Some(owner), None) => Resolution::SignIn {
            user_id: owner,
            created: false,
        },
        (None, Some(user)) => {
            let has_one: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM user_identities WHERE user_id = $1 AND provider = $2)",
            )
            .bind(user)
            .bind(provider)
            .fetch_one(&mut tx)
            .await?;
            if has_one {
                Resolution::Refused(Refusal::ProviderAlreadyLinked)
            } else {
                Resolution::ConfirmLink { user_id: user }
            }
        }
        (None, None) => match email.filter(|_| identity.email_verified) {
            None => Resolution::Refused(Refusal::EmailNotVerified),
            Some(email) => {
                let owner: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
                        .bind(email)
                        .fetch_optional(&mut tx)
                        .await?;
                match owner {
                    Some(user_id) => Resolution::NeedsPassword { user_id },
                    None => {
                        let user_id = create_account(&mut tx, identity, email).await?;
                        link(&mut tx, provider, identity, user_id).await?;
                        Resolution::SignIn {
                            user_id,
                            created: true,
                        }
                    }
                }
            }
        },
    };
    tx.commit().await?;
    Ok(resolution)
}

/// Links the identity to `user_id`, in the caller's transaction (409 on `identity` when
/// another account has it, on `provider` when this one has another of the provider's).
pub async fn link(
    tx: &mut crate::db::Tx,
    provider: &str,
    identity: &ProviderIdentity,
    user_id: Uuid,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO user_identities (provider, subject, user_id, email, email_verified)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(provider)
    .bind(&identity.subject)
    .bind(user_id)
    .bind(valid_email(identity))
    .bind(identity.email_verified)
    .execute(&mut *tx)
    .await
    .on_constraint("user_identities_pkey", || {
        ApiError::conflict("identity", "is linked to another account")
    })
    .on_constraint("user_identities_user_provider_key", || {
        ApiError::conflict("provider", "is already linked to this account")
    })?;
    Ok(())
}

/// The provider's email, if it is one Stoa could store.
fn valid_email(identity: &ProviderIdentity) -> Option<&str> {
    identity.email.as_deref().filter(|e| validate::email(e))
}

/// A new account without a password, named after the profile: the hint as it is if free,
/// else with a random suffix. The email was checked free just before; a registration
/// taking it meanwhile is a conflict, and the caller runs again (and finds it taken).
async fn create_account(
    tx: &mut crate::db::Tx,
    identity: &ProviderIdentity,
    email: &str,
) -> ApiResult<Uuid> {
    let base = username_base(identity.username_hint.as_deref(), email);
    for attempt in 0..6 {
        let candidate = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{:04}", rand::random::<u16>() % 10_000)
        };
        // Checked in the statement, so a taken name is no error (which would end the
        // transaction) but no row.
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash, image)
             SELECT $1, $2, '', $3
             WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1))
             RETURNING id",
        )
        .bind(&candidate)
        .bind(email)
        .bind(
            identity
                .picture
                .as_deref()
                .filter(|p| validate::image_url(p)),
        )
        .fetch_optional(&mut *tx)
        .await
        .on_constraint("users_email_key", || {
            ApiError::conflict("email", "has already been taken")
        })
        .on_constraint("users_username_key", || {
            ApiError::conflict("username", "has already been taken")
        })
        .on_constraint("users_username_lower_key", || {
            ApiError::conflict("username", "has already been taken")
        })?;
        if let Some(id) = id {
            return Ok(id);
        }
    }
    Err(ApiError::conflict("username", "could not be made unique"))
}

/// A username from the provider's hint (or the email's local part): whitespace becomes
/// `-`, what usernames may not hold is dropped, and it is cut to leave room for a suffix.
pub fn username_base(hint: Option<&str>, email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    let from = |s: &str| -> String {
        let mut name = String::new();
        for c in s.trim().chars() {
            if c.is_whitespace() {
                if !name.ends_with('-') {
                    name.push('-');
                }
            } else if c != '/' && !c.is_control() {
                name.push(c);
            }
            if name.chars().count() >= 48 {
                break;
            }
        }
        name.trim_matches('-').to_owned()
    };
    [hint.map(from), Some(from(local))]
        .into_iter()
        .flatten()
        .find(|n| validate::username(n))
        .unwrap_or_else(|| "user".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_come_from_the_profile_and_always_validate() {
        assert_eq!(
            username_base(Some("Ada Lovelace"), "ada@example.com"),
            "Ada-Lovelace"
        );
        assert_eq!(username_base(Some("octo/cat"), "o@example.com"), "octocat");
        assert_eq!(
            username_base(Some("  \t "), "grace.h@example.com"),
            "grace.h"
        );
        assert_eq!(username_base(None, "@example.com"), "user");
        let long = "x".repeat(200);
        let name = username_base(Some(&long), "x@example.com");
        assert_eq!(name.chars().count(), 48);
        assert!(validate::username(&format!("{name}-1234")));
    }
}
