//! An OpenID Connect provider: discovery, the code exchange, and the ID token's validation
//! (OIDC Core 3.1.3.7), with the provider's keys fetched again when a token names a key
//! Stoa has not seen (the provider rotated its keys).

use std::time::Instant;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKey, CoreProviderMetadata,
    CoreTokenResponse,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndUserName, EndUserPictureUrl, EndUserUsername, IdTokenVerifier, JsonWebKeySet,
    LocalizedClaim, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    Scope, SubjectIdentifier, TokenResponse,
};
use tokio::sync::Mutex;

use super::{Authorization, Context, FlowSecrets, ProviderError, ProviderIdentity};
use crate::config::{EmailTrust, ProviderConfig, Secret};

/// Microsoft's multi-tenant discovery documents name their issuer with this placeholder;
/// each token's `iss` carries the user's tenant (its `tid`) in its place.
const TENANT_PLACEHOLDER: &str = "{tenantid}";

pub(super) struct Oidc {
    issuer: String,
    trust: EmailTrust,
    client_id: String,
    scopes: Vec<String>,
    context: Context,
    fetched: Mutex<Option<Fetched>>,
}

#[derive(Clone)]
struct Fetched {
    metadata: CoreProviderMetadata,
    at: Instant,
}

/// Why the keys are wanted: any recent copy will do, or the copy in hand lacked the key
/// a token was signed with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Cached,
    Refetch,
}

impl Oidc {
    pub(super) fn new(
        provider: &ProviderConfig,
        issuer: &str,
        trust: EmailTrust,
        context: Context,
    ) -> Oidc {
        Oidc {
            issuer: issuer.to_owned(),
            trust,
            client_id: provider.client_id.clone(),
            scopes: provider.scopes.clone(),
            context,
            fetched: Mutex::new(None),
        }
    }

    /// The discovery document with the keys, fetched at first use and again when older
    /// than `STOA_AUTH_PROVIDER_METADATA_TTL` or when `Refetch` asks (a token named a key
    /// not in the copy held). ID tokens reach Stoa only from the provider's own token
    /// endpoint, so no outsider can make it refetch at will.
    async fn metadata(&self, freshness: Freshness) -> Result<CoreProviderMetadata, ProviderError> {
        let mut fetched = self.fetched.lock().await;
        if let Some(held) = fetched.as_ref()
            && freshness == Freshness::Cached
            && held.at.elapsed() < self.context.metadata_ttl
        {
            return Ok(held.metadata.clone());
        }
        let metadata = self.discover().await?;
        *fetched = Some(Fetched {
            metadata: metadata.clone(),
            at: Instant::now(),
        });
        Ok(metadata)
    }

    /// Discovery (OIDC Discovery 1.0, section 4), done here rather than by
    /// `CoreProviderMetadata::discover_async` because Microsoft's multi-tenant documents
    /// name a templated issuer, which that function refuses.
    async fn discover(&self) -> Result<CoreProviderMetadata, ProviderError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            ProviderError::Unavailable(format!("{what}: {e}"))
        };
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let response = self
            .context
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unavailable("discovery", &e))?;
        let metadata: CoreProviderMetadata = response
            .json()
            .await
            .map_err(|e| unavailable("discovery document", &e))?;
        // The document must be the issuer's own (OIDC Discovery 4.3).
        let issuer = metadata.issuer().as_str();
        if issuer != self.issuer && !self.is_multi_tenant(issuer) {
            return Err(ProviderError::Unavailable(format!(
                "discovery names issuer {issuer:?}, not {:?}",
                self.issuer
            )));
        }
        let jwks: JsonWebKeySet<CoreJsonWebKey> =
            JsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.context.http)
                .await
                .map_err(|e| unavailable("keys", &e))?;
        Ok(metadata.set_jwks(jwks))
    }

    /// Whether `issuer` is Microsoft's templated multi-tenant issuer for this provider.
    fn is_multi_tenant(&self, issuer: &str) -> bool {
        self.trust == EmailTrust::MicrosoftDomainOwnerVerified
            && issuer.contains(TENANT_PLACEHOLDER)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
        secret: Option<Secret>,
    ) -> Result<Bound, ProviderError> {
        let redirect = RedirectUrl::new(self.context.redirect_url.clone())
            .map_err(|e| ProviderError::Unavailable(format!("redirect URL: {e}")))?;
        let issuer = metadata.issuer().as_str().to_owned();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            secret.map(|s| ClientSecret::new(s.expose().to_owned())),
        )
        .set_redirect_uri(redirect);
        Ok(Bound { client, issuer })
    }

    pub(super) async fn authorize(
        &self,
        secrets: FlowSecrets<'_>,
    ) -> Result<Authorization, ProviderError> {
        let client = self.client(self.metadata(Freshness::Cached).await?, None)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = secrets.state.to_owned();
        let nonce = secrets.nonce.to_owned();
        let (url, _, _) = client
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Authorization {
            url,
            pkce_verifier: verifier.secret().clone(),
        })
    }

    pub(super) async fn complete(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: &str,
        secret: Secret,
    ) -> Result<ProviderIdentity, ProviderError> {
        let metadata = self.metadata(Freshness::Cached).await?;
        let client = self.client(metadata, Some(secret.clone()))?;
        let tokens: CoreTokenResponse = client
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| ProviderError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.context.http)
            .await
            .map_err(|e| ProviderError::CodeRefused(e.to_string()))?;
        let id_token = tokens
            .id_token()
            .ok_or(ProviderError::Incomplete("an ID token"))?;
        let nonce = Nonce::new(nonce.to_owned());
        let verified = match self.verify(&client, id_token, tokens.access_token(), &nonce) {
            Err(Invalid::UnknownKey) => {
                // The provider signs with a key newer than our copy of its keys.
                let metadata = self.metadata(Freshness::Refetch).await?;
                let client = self.client(metadata, Some(secret))?;
                let verified = self.verify(&client, id_token, tokens.access_token(), &nonce);
                verified.map(|v| (v, client))
            }
            verified => verified.map(|v| (v, client)),
        };
        let (verified, client) =
            verified.map_err(|e| ProviderError::InvalidIdToken(e.to_string()))?;
        self.identity(&client, verified, tokens.access_token())
            .await
    }

    /// OIDC Core 3.1.3.7: signature (with the provider's keys, RS256 and the other
    /// asymmetric algorithms it lists), `iss`, `aud` (only our client besides trusted
    /// audiences: none), `azp`, `exp` and `iat` with the leeway, `nonce`, and `at_hash`
    /// when present (3.1.3.8: it is optional in the code flow).
    fn verify(
        &self,
        bound: &Bound,
        id_token: &CoreIdToken,
        access_token: &AccessToken,
        nonce: &Nonce,
    ) -> Result<Verified, Invalid> {
        let leeway = chrono::Duration::from_std(self.context.leeway).unwrap_or_default();
        let max_age = chrono::Duration::from_std(self.context.max_token_age).unwrap_or_default();
        let raw = id_token.to_string();
        let payload = payload_of(&raw).ok_or(Invalid::Claims("the payload is not JSON".into()))?;
        let multi_tenant = self.is_multi_tenant(&bound.issuer);
        let verifier: IdTokenVerifier<'_, CoreJsonWebKey> = bound
            .client
            .id_token_verifier()
            // A multi-tenant issuer is a template: checked below against the token's tenant.
            .require_issuer_match(!multi_tenant)
            // `exp` is compared with this clock: turned back by the leeway.
            .set_time_fn(move || chrono::Utc::now() - leeway)
            .set_issue_time_verifier_fn(move |iat| {
                let now = chrono::Utc::now();
                if iat > now + leeway {
                    Err(format!("issued in the future ({iat})"))
                } else if iat < now - max_age {
                    Err(format!("issued too long ago ({iat})"))
                } else {
                    Ok(())
                }
            });
        let claims = id_token.claims(&verifier, nonce).map_err(|e| {
            use openidconnect::{ClaimsVerificationError, SignatureVerificationError};
            match e {
                ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                ) => Invalid::UnknownKey,
                other => Invalid::Claims(other.to_string()),
            }
        })?;
        if multi_tenant {
            check_tenant_issuer(&bound.issuer, claims.issuer().as_str(), &payload)?;
        }
        check_azp(
            claims.authorized_party().map(|azp| azp.as_str()),
            claims.audiences().len(),
            &self.client_id,
        )?;
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| Invalid::Claims(e.to_string()))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| Invalid::Claims(e.to_string()))?;
            let actual = AccessTokenHash::from_token(access_token, alg, key)
                .map_err(|e| Invalid::Claims(e.to_string()))?;
            if actual != *expected {
                return Err(Invalid::Claims(
                    "at_hash does not match the access token".into(),
                ));
            }
        }
        let (username_hint, picture) =
            profile(claims.preferred_username(), claims.name(), claims.picture());
        Ok(Verified {
            subject: claims.subject().clone(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified(),
            username_hint,
            picture,
            payload,
        })
    }

    /// Who signed in: the ID token's claims, completed from the UserInfo endpoint when
    /// the token carries no email (a provider may send profile claims only there).
    async fn identity(
        &self,
        bound: &Bound,
        mut verified: Verified,
        access_token: &AccessToken,
    ) -> Result<ProviderIdentity, ProviderError> {
        if verified.email.is_none() {
            let request = bound
                .client
                .user_info(access_token.clone(), Some(verified.subject.clone()))
                .map_err(|e| ProviderError::Unavailable(format!("userinfo: {e}")))?;
            let info: openidconnect::core::CoreUserInfoClaims = request
                .request_async(&self.context.http)
                .await
                .map_err(|e| ProviderError::Unavailable(format!("userinfo: {e}")))?;
            verified.email = info.email().map(|e| e.as_str().to_owned());
            verified.email_verified = info.email_verified();
            let (username_hint, picture) =
                profile(info.preferred_username(), info.name(), info.picture());
            verified.username_hint = verified.username_hint.or(username_hint);
            verified.picture = verified.picture.or(picture);
        }
        let email_verified = match self.trust {
            EmailTrust::EmailVerified => verified.email_verified == Some(true),
            EmailTrust::MicrosoftDomainOwnerVerified => truthy(verified.payload.get("xms_edov")),
        };
        Ok(ProviderIdentity {
            subject: verified.subject.as_str().to_owned(),
            email: verified.email,
            email_verified,
            username_hint: verified.username_hint,
            picture: verified.picture,
        })
    }
}

type Client = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// A client for one exchange, with the issuer its discovery document names.
struct Bound {
    client: Client,
    issuer: String,
}

/// azp (OIDC Core 3.1.3.7 steps 4 and 5), which the library leaves to its callers: when
/// present it must be this client, and with several audiences it must be present.
fn check_azp(azp: Option<&str>, audiences: usize, client_id: &str) -> Result<(), Invalid> {
    match azp {
        Some(azp) if azp != client_id => {
            Err(Invalid::Claims(format!("azp {azp:?} is not this client")))
        }
        None if audiences > 1 => Err(Invalid::Claims("several audiences and no azp".into())),
        _ => Ok(()),
    }
}

/// A username to start from (`preferred_username`, else the name) and the picture, from
/// an ID token's or UserInfo's profile claims.
fn profile(
    username: Option<&EndUserUsername>,
    name: Option<&LocalizedClaim<EndUserName>>,
    picture: Option<&LocalizedClaim<EndUserPictureUrl>>,
) -> (Option<String>, Option<String>) {
    let hint = username.map(|u| u.as_str().to_owned()).or_else(|| {
        name.and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
    });
    let picture = picture
        .and_then(|p| p.get(None))
        .map(|p| p.as_str().to_owned());
    (hint, picture)
}

/// The claims Stoa reads from a verified ID token.
struct Verified {
    subject: SubjectIdentifier,
    email: Option<String>,
    email_verified: Option<bool>,
    username_hint: Option<String>,
    picture: Option<String>,
    /// Every claim, for provider-specific ones (`tid`, `xms_edov`).
    payload: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
enum Invalid {
    #[error("signed with a key the provider does not publish")]
    UnknownKey,
    #[error("{0}")]
    Claims(String),
}

/// A multi-tenant token's `iss` must be the templated issuer with the token's own tenant
/// (`tid`) in place of the placeholder (Microsoft identity platform, "Validate the issuer").
fn check_tenant_issuer(
    template: &str,
    issuer: &str,
    payload: &serde_json::Value,
) -> Result<(), Invalid> {
    let tenant = payload
        .get("tid")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or(Invalid::Claims(
            "a multi-tenant token names no tenant (tid)".into(),
        ))?;
    let expected = template.replace(TENANT_PLACEHOLDER, tenant);
    if issuer == expected {
        Ok(())
    } else {
        Err(Invalid::Claims(format!(
            "issuer {issuer:?} is not {expected:?}"
        )))
    }
}

/// The claims of a compact JWS, decoded (only after its signature was checked, or to
/// read what the library has checked already).
fn payload_of(jwt: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A boolean claim that some issuers send as a string.
fn truthy(value: Option<&serde_json::Value>) -> bool {
    match value {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

    #[test]
    fn a_multi_tenant_issuer_must_name_the_tokens_own_tenant() {
        let tid = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let payload = serde_json::json!({ "tid": tid });
        let own = format!("https://login.microsoftonline.com/{tid}/v2.0");
        assert!(check_tenant_issuer(TEMPLATE, &own, &payload).is_ok());
        // Another tenant's issuer, with this token's tid: refused.
        let other = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
        assert!(check_tenant_issuer(TEMPLATE, other, &payload).is_err());
        // The template itself, or no tenant at all: refused.
        assert!(check_tenant_issuer(TEMPLATE, TEMPLATE, &payload).is_err());
        assert!(check_tenant_issuer(TEMPLATE, &own, &serde_json::json!({})).is_err());
        let sneaky = serde_json::json!({ "tid": "x/v2.0/../evil" });
        let forged = "https://login.microsoftonline.com/x/v2.0/../evil/v2.0";
        assert!(check_tenant_issuer(TEMPLATE, forged, &sneaky).is_err());
    }

    #[test]
    fn microsoft_email_trust_reads_xms_edov_in_its_several_spellings() {
        assert!(truthy(Some(&serde_json::json!(true))));
        assert!(truthy(Some(&serde_json::json!("true"))));
        assert!(truthy(Some(&serde_json::json!("1"))));
        assert!(truthy(Some(&serde_json::json!(1))));
        assert!(!truthy(Some(&serde_json::json!(false))));
        assert!(!truthy(Some(&serde_json::json!("false"))));
        assert!(!truthy(None));
    }
}
