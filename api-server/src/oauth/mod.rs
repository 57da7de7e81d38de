//! Sign-in with identity providers: what Stoa asks of a provider and what it accepts back.
//!
//! Each provider is an authorization-code flow with PKCE (S256), `state` and (for OpenID
//! Connect) `nonce`; the HTTP side (`crate::http::oauth`) keeps those single-use and bound
//! to the browser, and `accounts` decides which Stoa account the provider's identity is.
//! OpenID Connect providers are set up by discovery and their ID tokens validated per OIDC
//! Core 3.1.3.7 (`oidc`); GitHub, OAuth 2.0 without OIDC, is asked for the user and their
//! verified emails over its REST API (`github`).

pub mod accounts;
mod github;
mod oidc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Protocol, ProviderConfig, Secret, SignInConfig, read_secret_file};

/// What a provider says about the person who signed in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderIdentity {
    /// The provider's stable id for them (never their email, which can change hands).
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider vouches for `email`; an unverified one is never matched with
    /// an account.
    pub email_verified: bool,
    /// A username to start from: `preferred_username`, a GitHub login, or a name.
    pub username_hint: Option<String>,
    pub picture: Option<String>,
}

/// Where to send the browser, and the secrets the callback needs to finish.
pub struct Authorization {
    pub url: url::Url,
    pub pkce_verifier: String,
}

/// The secrets of one authorization request, made by the caller and stored with it.
pub struct FlowSecrets<'a> {
    pub state: &'a str,
    pub nonce: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider could not be reached or answered badly: {0}")]
    Unavailable(String),
    #[error("the provider refused the authorization code: {0}")]
    CodeRefused(String),
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
    #[error("the provider's answer lacks {0}")]
    Incomplete(&'static str),
}

/// The configured providers, each with what it has fetched (discovery, keys).
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

pub struct Provider {
    pub config: ProviderConfig,
    backend: Backend,
}

enum Backend {
    Oidc(Box<oidc::Oidc>),
    GitHub(Box<github::GitHub>),
}

/// What every provider call shares.
#[derive(Clone)]
struct Context {
    http: reqwest::Client,
    /// The registered redirect URI.
    redirect_url: String,
    /// Clock skew allowed on `exp` and `iat` (`STOA_JWT_LEEWAY`).
    leeway: Duration,
    /// The oldest an ID token's `iat` may be: a flow's lifetime plus the leeway.
    max_token_age: Duration,
    metadata_ttl: Duration,
}

impl Providers {
    pub fn new(config: &SignInConfig, leeway: Duration) -> anyhow::Result<Providers> {
        // No client without providers: building one loads its TLS roots, about 0.2 MiB of
        // code and memory that a replica without social login would hold for nothing.
        if config.providers.is_empty() {
            return Ok(Providers {
                by_name: HashMap::new(),
            });
        }
        // Providers' endpoints answer directly; a redirect (to a login page, say) is an
        // error, never followed with a code or token in hand.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.provider_timeout)
            .user_agent(concat!("stoa-api/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut by_name = HashMap::new();
        for provider in &config.providers {
            let context = Context {
                http: http.clone(),
                redirect_url: config
                    .callback_url(&provider.name)
                    .ok_or_else(|| anyhow::anyhow!("STOA_PUBLIC_URL is required with providers"))?,
                leeway,
                max_token_age: config.flow_ttl + leeway,
                metadata_ttl: config.provider_metadata_ttl,
            };
            let backend = match &provider.protocol {
                Protocol::Oidc { issuer, trust } => {
                    Backend::Oidc(Box::new(oidc::Oidc::new(provider, issuer, *trust, context)))
                }
                Protocol::GitHub {
                    authorization_url,
                    token_url,
                    api_url,
                } => Backend::GitHub(Box::new(github::GitHub::new(
                    provider,
                    authorization_url,
                    token_url,
                    api_url,
                    context,
                )?)),
            };
            by_name.insert(
                provider.name.clone(),
                Arc::new(Provider {
                    config: provider.clone(),
                    backend,
                }),
            );
        }
        Ok(Providers { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }
}

impl Provider {
    /// The provider's authorization URL for one flow.
    pub async fn authorize(
        &self,
        secrets: FlowSecrets<'_>,
    ) -> Result<Authorization, ProviderError> {
        match &self.backend {
            Backend::Oidc(oidc) => oidc.authorize(secrets).await,
            Backend::GitHub(github) => Ok(github.authorize(secrets)),
        }
    }

    /// Exchanges the code the browser came back with, and says who signed in.
    pub async fn complete(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: &str,
    ) -> Result<ProviderIdentity, ProviderError> {
        let secret = client_secret(&self.config)?;
        match &self.backend {
            Backend::Oidc(oidc) => oidc.complete(code, pkce_verifier, nonce, secret).await,
            Backend::GitHub(github) => github.complete(code, pkce_verifier, secret).await,
        }
    }
}

/// The client secret as the file holds it now: read at each exchange, so a rotated
/// Secret is used as soon as Kubernetes updates the mount.
fn client_secret(provider: &ProviderConfig) -> Result<Secret, ProviderError> {
    read_secret_file(&provider.client_secret_file.display().to_string()).map_err(|reason| {
        tracing::error!(provider = %provider.name, %reason, "cannot read the provider's client secret");
        ProviderError::Unavailable("the client secret cannot be read".into())
    })
}
