//! GitHub: OAuth 2.0 without OpenID Connect. The code is exchanged (with PKCE, which
//! GitHub supports since 2025) for an access token, which reads the user
//! (`GET /user`: its numeric id is the stable subject) and their emails
//! (`GET /user/emails`: only a primary, verified one is vouched for).

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use super::{Authorization, Context, FlowSecrets, ProviderError, ProviderIdentity};
use crate::config::{ProviderConfig, Secret};

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

pub(super) struct GitHub {
    client: Client,
    api_url: String,
    scopes: Vec<String>,
    context: Context,
}

#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    avatar_url: Option<String>,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    primary: bool,
    verified: bool,
}

impl GitHub {
    pub(super) fn new(
        provider: &ProviderConfig,
        authorization_url: &str,
        token_url: &str,
        api_url: &str,
        context: Context,
    ) -> anyhow::Result<GitHub> {
        let client = BasicClient::new(ClientId::new(provider.client_id.clone()))
            .set_auth_uri(AuthUrl::new(authorization_url.to_owned())?)
            .set_token_uri(TokenUrl::new(token_url.to_owned())?)
            .set_redirect_uri(RedirectUrl::new(context.redirect_url.clone())?);
        Ok(GitHub {
            client,
            api_url: api_url.trim_end_matches('/').to_owned(),
            scopes: provider.scopes.clone(),
            context,
        })
    }

    pub(super) fn authorize(&self, secrets: FlowSecrets<'_>) -> Authorization {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = secrets.state.to_owned();
        let (url, _) = self
            .client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .url();
        Authorization {
            url,
            pkce_verifier: verifier.secret().clone(),
        }
    }

    pub(super) async fn complete(
        &self,
        code: String,
        pkce_verifier: String,
        secret: Secret,
    ) -> Result<ProviderIdentity, ProviderError> {
        let tokens = self
            .client
            .clone()
            .set_client_secret(ClientSecret::new(secret.expose().to_owned()))
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.context.http)
            .await
            .map_err(|e| ProviderError::CodeRefused(e.to_string()))?;
        let token = tokens.access_token().secret();
        let user: User = self.get(token, "/user").await?;
        let emails: Vec<Email> = self.get(token, "/user/emails").await?;
        let primary = emails.iter().find(|e| e.primary);
        Ok(ProviderIdentity {
            subject: user.id.to_string(),
            email: primary.map(|e| e.email.clone()),
            email_verified: primary.is_some_and(|e| e.verified),
            username_hint: Some(user.login),
            picture: user.avatar_url,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        path: &str,
    ) -> Result<T, ProviderError> {
        let unavailable =
            |e: reqwest::Error| ProviderError::Unavailable(format!("GitHub {path}: {e}"));
        self.context
            .http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)
    }
}
