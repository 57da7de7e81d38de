//! Sign-in with identity providers: `STOA_AUTH_PROVIDERS` (which providers, as JSON), the
//! front-end addresses a sign-in may return to, and the flow's lifetimes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::settings::{EnvReader, Setting, Value};
use super::{ConfigError, PublicOrigin, invalid, read_secret_file};

/// Google's issuer (`"type": "google"`).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// GitHub's endpoints (`"type": "github"`), each overridable.
pub const GITHUB_AUTHORIZATION_URL: &str = "https://github.com/login/oauth/authorize";
pub const GITHUB_TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
pub const GITHUB_API_URL: &str = "https://api.github.com";

#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// The enabled providers, in the order they are listed for a front end.
    pub providers: Vec<ProviderConfig>,
    /// Where a sign-in may send the browser back to: exact URLs. The first is the default.
    pub return_to: Vec<String>,
    /// Callbacks are `<origin>/api/auth/oauth/<name>/callback` (`STOA_PUBLIC_URL`).
    pub public_origin: Option<PublicOrigin>,
    /// How long a browser has to come back from the provider.
    pub flow_ttl: Duration,
    /// How long the front end has to exchange the one-time code it came back with.
    pub handoff_ttl: Duration,
    /// An account without a password may set one (or change its email) this long after
    /// a provider sign-in.
    pub recent_sign_in: Duration,
    /// Each call to a provider (discovery, keys, token, user info).
    pub provider_timeout: Duration,
    /// How long a provider's discovery document and keys are used before fetched again
    /// (a token signed with a key not among them fetches them at once).
    pub provider_metadata_ttl: Duration,
}

impl SignInConfig {
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The redirect URI registered with the provider.
    pub fn callback_url(&self, provider: &str) -> Option<String> {
        self.public_origin
            .as_ref()
            .map(|o| format!("{}/api/auth/oauth/{provider}/callback", o.origin))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// In URLs and stored with each linked identity: lower-case letters, digits and `-`.
    pub name: String,
    /// What a front end shows ("Sign in with …").
    pub display_name: String,
    pub protocol: Protocol,
    pub client_id: String,
    /// Read at each code exchange, so a rotated secret is used at once.
    pub client_secret_file: PathBuf,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// OpenID Connect, set up by discovery from the issuer.
    Oidc { issuer: String, trust: EmailTrust },
    /// GitHub's OAuth 2.0 with its REST API for the user and their emails.
    GitHub {
        authorization_url: String,
        token_url: String,
        api_url: String,
    },
}

/// When a provider's email counts as verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTrust {
    /// `email_verified: true` (OIDC Core, standard claims).
    EmailVerified,
    /// Microsoft's `email` is not verified; its optional claim `xms_edov` ("email domain
    /// owner verified") says when it may be trusted.
    MicrosoftDomainOwnerVerified,
}

/// `STOA_AUTH_PROVIDERS`, as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default = "enabled")]
    enabled: bool,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// `oidc` only.
    #[serde(default)]
    issuer: Option<String>,
    /// `microsoft` only: `common` (any work or personal account), `organizations`,
    /// `consumers` or a tenant id.
    #[serde(default)]
    tenant: Option<String>,
    /// `github` only (GitHub Enterprise Server, or a test double).
    #[serde(default)]
    authorization_url: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    api_url: Option<String>,
}

fn enabled() -> bool {
    true
}

/// Every provider listed, disabled ones included (they are dropped after validation).
#[derive(Debug, Clone, Default)]
struct ProviderList(Vec<(ProviderConfig, bool)>);

impl Value for ProviderList {
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Ok(ProviderList::default());
        }
        let raw: Vec<RawProvider> = serde_json::from_str(raw).map_err(|e| {
            format!("{e} (expected a JSON array such as [{{\"name\":\"google\",\"type\":\"google\",\"clientId\":\"…\",\"clientSecretFile\":\"/path\"}}])")
        })?;
        let mut list = Vec::with_capacity(raw.len());
        for provider in raw {
            let enabled = provider.enabled;
            let provider = provider_config(provider)?;
            if list
                .iter()
                .any(|(p, _): &(ProviderConfig, bool)| p.name == provider.name)
            {
                return Err(format!("{:?} is listed twice", provider.name));
            }
            list.push((provider, enabled));
        }
        Ok(ProviderList(list))
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            return "(none)".into();
        }
        self.0
            .iter()
            .map(|(p, enabled)| {
                let off = if *enabled { "" } else { ", disabled" };
                match &p.protocol {
                    Protocol::Oidc { issuer, .. } => {
                        format!("{} (OpenID Connect {issuer}{off})", p.name)
                    }
                    Protocol::GitHub { .. } => format!("{} (GitHub{off})", p.name),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn provider_config(raw: RawProvider) -> Result<ProviderConfig, String> {
    let name = raw.name;
    let named = |what: &str| format!("provider {name:?}: {what}");
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(named(
            "`name` must be 1-32 lower-case letters, digits or '-'",
        ));
    }
    if raw.client_id.trim().is_empty() {
        return Err(named("`clientId` is empty"));
    }
    let only = |field: &str, set: bool, kind: &str| {
        if set {
            Err(named(&format!("`{field}` applies to type {kind} only")))
        } else {
            Ok(())
        }
    };
    let github_urls =
        raw.authorization_url.is_some() || raw.token_url.is_some() || raw.api_url.is_some();
    let oidc_scopes = || {
        vec![
            "openid".to_owned(),
            "email".to_owned(),
            "profile".to_owned(),
        ]
    };
    let (protocol, default_name, default_scopes) = match raw.kind.as_str() {
        "oidc" => {
            only("tenant", raw.tenant.is_some(), "microsoft")?;
            only("authorizationUrl/tokenUrl/apiUrl", github_urls, "github")?;
            let issuer = raw
                .issuer
                .ok_or_else(|| named("type oidc needs `issuer`"))?;
            let issuer = https_url(&issuer, true).map_err(|r| named(&format!("`issuer` {r}")))?;
            (
                Protocol::Oidc {
                    issuer,
                    trust: EmailTrust::EmailVerified,
                },
                name.clone(),
                oidc_scopes(),
            )
        }
        "google" => {
            only("issuer", raw.issuer.is_some(), "oidc")?;
            only("tenant", raw.tenant.is_some(), "microsoft")?;
            only("authorizationUrl/tokenUrl/apiUrl", github_urls, "github")?;
            (
                Protocol::Oidc {
                    issuer: GOOGLE_ISSUER.into(),
                    trust: EmailTrust::EmailVerified,
                },
                "Google".into(),
                oidc_scopes(),
            )
        }
        "microsoft" => {
            only("issuer", raw.issuer.is_some(), "oidc")?;
            only("authorizationUrl/tokenUrl/apiUrl", github_urls, "github")?;
            let tenant = raw.tenant.unwrap_or_else(|| "common".into());
            if tenant.is_empty()
                || !tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(named(
                    "`tenant` must be common, organizations, consumers or a tenant id",
                ));
            }
            (
                Protocol::Oidc {
                    issuer: format!("https://login.microsoftonline.com/{tenant}/v2.0"),
                    trust: EmailTrust::MicrosoftDomainOwnerVerified,
                },
                "Microsoft".into(),
                oidc_scopes(),
            )
        }
        "github" => {
            only("issuer", raw.issuer.is_some(), "oidc")?;
            only("tenant", raw.tenant.is_some(), "microsoft")?;
            let url = |value: Option<String>, default: &str, field: &str| {
                https_url(value.as_deref().unwrap_or(default), false)
                    .map_err(|r| named(&format!("`{field}` {r}")))
            };
            (
                Protocol::GitHub {
                    authorization_url: url(
                        raw.authorization_url,
                        GITHUB_AUTHORIZATION_URL,
                        "authorizationUrl",
                    )?,
                    token_url: url(raw.token_url, GITHUB_TOKEN_URL, "tokenUrl")?,
                    api_url: url(raw.api_url, GITHUB_API_URL, "apiUrl")?,
                },
                "GitHub".into(),
                vec!["read:user".to_owned(), "user:email".to_owned()],
            )
        }
        other => {
            return Err(named(&format!(
                "unknown type {other:?} (expected oidc, google, microsoft or github)"
            )));
        }
    };
    let scopes = raw.scopes.unwrap_or(default_scopes);
    if matches!(protocol, Protocol::Oidc { .. }) && !scopes.iter().any(|s| s == "openid") {
        return Err(named("OpenID Connect needs the `openid` scope"));
    }
    Ok(ProviderConfig {
        display_name: raw.display_name.unwrap_or(default_name),
        name,
        protocol,
        client_id: raw.client_id,
        client_secret_file: raw.client_secret_file,
        scopes,
    })
}

/// An https URL (plain http only for a loopback host, as a local test provider is),
/// without a trailing slash when `issuer` (an issuer is compared as a string).
fn https_url(value: &str, issuer: bool) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err("must be https (http only on a loopback host)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must have no query or fragment".into());
    }
    Ok(if issuer {
        value.trim_end_matches('/').to_owned()
    } else {
        value.to_owned()
    })
}

/// `STOA_AUTH_RETURN_TO`: the exact addresses a sign-in may return the browser to.
#[derive(Debug, Clone, Default)]
struct ReturnTo(Vec<String>);

impl Value for ReturnTo {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut urls = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let url = url::Url::parse(entry).map_err(|e| format!("{entry:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(format!("{entry:?} must be an http(s) URL"));
            }
            if url.fragment().is_some() {
                return Err(format!("{entry:?} must have no fragment"));
            }
            urls.push(entry.to_owned());
        }
        Ok(ReturnTo(urls))
    }
    fn show(&self) -> String {
        self.0.join(",")
    }
}

pub(super) fn read<F: Fn(&str) -> Option<String>>(
    s: &mut EnvReader<'_, F>,
    public_origin: Option<&PublicOrigin>,
) -> Result<SignInConfig, ConfigError> {
    let secs = Duration::from_secs;
    let listed = s.read(Setting::new("STOA_AUTH_PROVIDERS", ProviderList::default()))?;
    let return_to = s
        .read(Setting::new("STOA_AUTH_RETURN_TO", ReturnTo::default()))?
        .0;
    let flow_ttl = s.read(
        Setting::new("STOA_AUTH_FLOW_TTL", secs(10 * 60))
            .at_least(secs(30))
            .at_most(
                secs(3600),
                "an unused authorization request stays valid that long",
            ),
    )?;
    let handoff_ttl = s.read(
        Setting::new("STOA_AUTH_HANDOFF_TTL", secs(60))
            .at_least(secs(5))
            .at_most(secs(600), "the one-time code is a credential that long"),
    )?;
    let recent_sign_in = s.read(
        Setting::new("STOA_AUTH_RECENT_SIGN_IN", secs(10 * 60))
            .at_least(secs(60))
            .at_most(
                secs(3600),
                "a stolen access token could set the first password within it",
            ),
    )?;
    let provider_timeout = s.read(
        Setting::new("STOA_AUTH_PROVIDER_TIMEOUT", secs(10)).at_least(Duration::from_millis(100)),
    )?;
    let provider_metadata_ttl =
        s.read(Setting::new("STOA_AUTH_PROVIDER_METADATA_TTL", secs(3600)).at_least(secs(1)))?;
    let providers: Vec<ProviderConfig> = listed
        .0
        .into_iter()
        .filter_map(|(provider, enabled)| enabled.then_some(provider))
        .collect();
    if !providers.is_empty() {
        if public_origin.is_none() {
            return Err(ConfigError::Missing {
                name: "STOA_PUBLIC_URL",
                hint: " with STOA_AUTH_PROVIDERS: each provider calls back to <STOA_PUBLIC_URL>/api/auth/oauth/<name>/callback",
            });
        }
        if return_to.is_empty() {
            return Err(ConfigError::Missing {
                name: "STOA_AUTH_RETURN_TO",
                hint: " with STOA_AUTH_PROVIDERS: the front-end page(s) a sign-in returns to, e.g. https://app.example.com/oauth",
            });
        }
        // Fail at start-up, not at the first sign-in, on a secret that is not there.
        for provider in &providers {
            let path = provider.client_secret_file.display().to_string();
            read_secret_file(&path).map_err(|reason| {
                invalid(
                    "STOA_AUTH_PROVIDERS",
                    &provider.name,
                    format!("cannot read clientSecretFile {path}: {reason}"),
                )
            })?;
        }
    }
    Ok(SignInConfig {
        providers,
        return_to,
        public_origin: public_origin.cloned(),
        flow_ttl,
        handoff_ttl,
        recent_sign_in,
        provider_timeout,
        provider_metadata_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ProviderList, String> {
        ProviderList::parse(json)
    }

    #[test]
    fn presets_fill_in_issuers_scopes_and_names() {
        let list = parse(
            r#"[{"name":"google","type":"google","clientId":"g","clientSecretFile":"/s/g"},
                {"name":"ms","type":"microsoft","clientId":"m","clientSecretFile":"/s/m"},
                {"name":"gh","type":"github","clientId":"h","clientSecretFile":"/s/h","enabled":false},
                {"name":"corp","type":"oidc","issuer":"https://sso.corp.example/","clientId":"c","clientSecretFile":"/s/c","displayName":"Corp"}]"#,
        )
        .unwrap();
        let [(google, true), (ms, true), (gh, false), (corp, true)] = &list.0[..] else {
            panic!("{list:?}");
        };
        assert_eq!(
            google.protocol,
            Protocol::Oidc {
                issuer: GOOGLE_ISSUER.into(),
                trust: EmailTrust::EmailVerified
            }
        );
        assert_eq!(google.display_name, "Google");
        assert_eq!(
            ms.protocol,
            Protocol::Oidc {
                issuer: "https://login.microsoftonline.com/common/v2.0".into(),
                trust: EmailTrust::MicrosoftDomainOwnerVerified
            }
        );
        assert_eq!(gh.scopes, ["read:user", "user:email"]);
        assert!(
            matches!(&gh.protocol, Protocol::GitHub { api_url, .. } if api_url == GITHUB_API_URL)
        );
        assert_eq!(corp.display_name, "Corp");
        // Issuers are compared as strings: no trailing slash.
        assert!(
            matches!(&corp.protocol, Protocol::Oidc { issuer, .. } if issuer == "https://sso.corp.example")
        );
        assert_eq!(corp.scopes, ["openid", "email", "profile"]);
    }

    #[test]
    fn mistakes_are_refused_with_the_provider_named() {
        for (json, says) in [
            (
                r#"[{"name":"x","type":"oidc","clientId":"c","clientSecretFile":"/s"}]"#,
                "needs `issuer`",
            ),
            (
                r#"[{"name":"x","type":"oidc","issuer":"http://sso.example","clientId":"c","clientSecretFile":"/s"}]"#,
                "must be https",
            ),
            (
                r#"[{"name":"X","type":"google","clientId":"c","clientSecretFile":"/s"}]"#,
                "lower-case",
            ),
            (
                r#"[{"name":"x","type":"facebook","clientId":"c","clientSecretFile":"/s"}]"#,
                "unknown type",
            ),
            (
                r#"[{"name":"x","type":"google","clientId":"c","clientSecretFile":"/s","tenant":"t"}]"#,
                "microsoft only",
            ),
            (
                r#"[{"name":"x","type":"google","clientId":"c","clientSecretFile":"/s","scopes":["email"]}]"#,
                "`openid` scope",
            ),
            (
                r#"[{"name":"x","type":"google","clientId":"c","clientSecretFile":"/s"},{"name":"x","type":"github","clientId":"c","clientSecretFile":"/s"}]"#,
                "listed twice",
            ),
            (
                r#"[{"name":"x","type":"google","clientId":"c","clientSecret":"inline"}]"#,
                "unknown field `clientSecret`",
            ),
        ] {
            let error = parse(json).unwrap_err();
            assert!(error.contains(says), "{json}: {error}");
        }
    }

    /// The whole configuration in dev mode with `pairs` set.
    fn config(pairs: &[(&str, String)]) -> Result<crate::config::Config, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        crate::config::Config::from_env(
            &crate::config::Env::new(move |k| map.get(k).cloned()),
            true,
        )
    }

    #[test]
    fn providers_need_a_public_url_a_return_address_and_a_readable_secret() {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "s3cret\n").unwrap();
        let providers = |file: &str| {
            format!(
                r#"[{{"name":"google","type":"google","clientId":"c","clientSecretFile":"{file}"}}]"#
            )
        };
        let file = secret.path().display().to_string();
        let public = ("STOA_PUBLIC_URL", "https://api.example.com".to_owned());
        let back = (
            "STOA_AUTH_RETURN_TO",
            "https://app.example.com/oauth".to_owned(),
        );

        let missing = |e: Result<_, ConfigError>| match e {
            Err(ConfigError::Missing { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            missing(config(&[
                ("STOA_AUTH_PROVIDERS", providers(&file)),
                back.clone()
            ])),
            "STOA_PUBLIC_URL"
        );
        assert_eq!(
            missing(config(&[
                ("STOA_AUTH_PROVIDERS", providers(&file)),
                public.clone()
            ])),
            "STOA_AUTH_RETURN_TO"
        );
        let unreadable = config(&[
            ("STOA_AUTH_PROVIDERS", providers("/nonexistent/secret")),
            public.clone(),
            back.clone(),
        ]);
        let error = unreadable.unwrap_err().to_string();
        assert!(
            error.contains("cannot read clientSecretFile /nonexistent/secret"),
            "{error}"
        );

        let ok = config(&[("STOA_AUTH_PROVIDERS", providers(&file)), public, back]).unwrap();
        assert_eq!(ok.sign_in.providers.len(), 1);
        assert_eq!(
            ok.sign_in.callback_url("google").as_deref(),
            Some("https://api.example.com/api/auth/oauth/google/callback")
        );
        // What check-config prints names the provider, never its secret.
        let shown = ok.redacted();
        assert!(!format!("{shown:?}").contains("s3cret"));
        // Without providers, none of it is needed.
        assert!(config(&[]).unwrap().sign_in.providers.is_empty());
    }

    #[test]
    fn return_addresses_are_exact_urls() {
        assert_eq!(
            ReturnTo::parse("https://app.example.com/oauth, http://localhost:5173/")
                .unwrap()
                .0,
            ["https://app.example.com/oauth", "http://localhost:5173/"]
        );
        assert!(ReturnTo::parse("/relative").is_err());
        assert!(ReturnTo::parse("javascript:alert(1)").is_err());
        assert!(ReturnTo::parse("https://app.example.com/#/x").is_err());
    }
}
