//! A real OpenID Provider for the sign-in tests (node-oidc-provider, started from
//! `tests/browser/oidc-provider.mjs` on a loopback port), and a browser's way through a
//! sign-in driven over HTTP: redirects followed by hand, cookies kept per site.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use super::TestApp;

pub const CLIENT_ID: &str = "stoa-test";
pub const CLIENT_SECRET: &str = "stoa-test-client-secret";
/// Where sign-ins return to (the only `STOA_AUTH_RETURN_TO` entry but one).
pub const RETURN_TO: &str = "https://app.example.com/oauth";
pub const OTHER_RETURN_TO: &str = "https://app.example.com/settings";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Why the provider cannot run here (no node, or `npm ci` not run in tests/browser).
pub fn missing() -> Option<String> {
    let node = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("node").is_file()));
    if !node {
        return Some("node is not installed".into());
    }
    if !browser_dir().join("node_modules/oidc-provider").exists() {
        return Some("oidc-provider is not installed (npm ci --prefix tests/browser)".into());
    }
    None
}

/// Whether the provider tests can run; panics when they are required (CI) and cannot.
pub fn available() -> bool {
    let Some(reason) = missing() else {
        return true;
    };
    assert!(
        std::env::var("STOA_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "the identity provider tests are required (STOA_REQUIRE_TOOLS=1): {reason}"
    );
    eprintln!("SKIP: {reason}");
    false
}

pub struct TestProvider {
    pub issuer: String,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl TestProvider {
    /// The provider with its test client (redirect URIs `redirects`) and `users`
    /// (`{"alice": {"email": …, "email_verified": true}}`).
    pub async fn start(redirects: &[String], users: Value) -> TestProvider {
        let config = json!({
            "port": 0,
            "clientId": CLIENT_ID,
            "clientSecret": CLIENT_SECRET,
            "redirectUris": redirects,
            "users": users,
        });
        let mut child = tokio::process::Command::new("node")
            .arg(browser_dir().join("oidc-provider.mjs"))
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(issuer) = line.strip_prefix("listening ") {
                    return issuer.to_owned();
                }
            }
            panic!("the provider exited before listening")
        })
        .await
        .expect("the provider starts");
        TestProvider {
            issuer,
            child,
            http: no_redirects(),
        }
    }

    /// The provider signs with a new key from now on (`keep`: the old one stays published).
    pub async fn rotate_keys(&self, keep: bool) {
        let url = format!(
            "{}/__test/rotate{}",
            self.issuer,
            if keep { "?keep=1" } else { "" }
        );
        let res = self.http.post(url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    /// The next ID token is re-signed with these changes (see oidc-provider.mjs).
    pub async fn tamper(&self, changes: Value) {
        let res = self
            .http
            .post(format!("{}/__test/tamper", self.issuer))
            .body(changes.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    pub fn stop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The settings that turn the provider on for `app_port`, with the client secret in
/// `secret_file`.
pub fn settings(
    provider: &TestProvider,
    app_port: u16,
    secret_file: &Path,
) -> Vec<(String, String)> {
    vec![
        ("STOA_LISTEN_ADDR".into(), format!("127.0.0.1:{app_port}")),
        (
            "STOA_PUBLIC_URL".into(),
            format!("http://127.0.0.1:{app_port}"),
        ),
        (
            "STOA_AUTH_PROVIDERS".into(),
            json!([{
                "name": "test", "type": "oidc", "displayName": "Test OP",
                "issuer": provider.issuer, "clientId": CLIENT_ID,
                "clientSecretFile": secret_file,
            }])
            .to_string(),
        ),
        (
            "STOA_AUTH_RETURN_TO".into(),
            format!("{RETURN_TO},{OTHER_RETURN_TO}"),
        ),
    ]
}

/// A browser: cookies per host (paths ignored: each site's own cookies go back to it).
#[derive(Default)]
pub struct Browser {
    cookies: HashMap<String, HashMap<String, String>>,
}

/// Where a sign-in ended: the front-end address Stoa sent the browser to.
#[derive(Debug)]
pub struct Landing {
    pub url: url::Url,
}

impl Landing {
    pub fn param(&self, name: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl Browser {
    fn cookie_header(&self, url: &url::Url) -> Option<String> {
        let jar = self.cookies.get(&host_of(url))?;
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep(&mut self, url: &url::Url, res: &reqwest::Response) {
        let jar = self.cookies.entry(host_of(url)).or_default();
        for value in res.headers().get_all(reqwest::header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap();
            let (name, content) = pair.split_once('=').unwrap();
            if content.is_empty() || value.to_ascii_lowercase().contains("max-age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), content.to_owned());
            }
        }
    }

    /// Forgets one site's cookies (another browser, as far as that site can tell).
    pub fn forget(&mut self, host: &str) {
        self.cookies.remove(host);
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let url = url::Url::parse(url).unwrap();
        let mut request = no_redirects().get(url.clone());
        if let Some(cookies) = self.cookie_header(&url) {
            request = request.header(reqwest::header::COOKIE, cookies);
        }
        let res = request.send().await.unwrap();
        self.keep(&url, &res);
        res
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let url = url::Url::parse(url).unwrap();
        let mut request = no_redirects().post(url.clone()).form(form);
        if let Some(cookies) = self.cookie_header(&url) {
            request = request.header(reqwest::header::COOKIE, cookies);
        }
        let res = request.send().await.unwrap();
        self.keep(&url, &res);
        res
    }

    /// Starts at Stoa's `start` (an authorize URL), signs in at the provider as `user`
    /// and consents; returns the callback URL the provider sent the browser to, not yet
    /// visited.
    pub async fn through_provider(&mut self, start: &str, user: &str) -> String {
        // Signed out at the provider, so it asks who signs in (its session would
        // otherwise answer for the last user).
        let stoa = host_of(&url::Url::parse(start).unwrap());
        self.cookies.retain(|host, _| *host == stoa);
        let mut next = start.to_owned();
        for _ in 0..20 {
            if next.contains("/api/auth/oauth/") && next.contains("/callback") {
                return next;
            }
            let res = self.get(&next).await;
            let here = url::Url::parse(&next).unwrap();
            if res.status().is_redirection() {
                let location = res.headers()[reqwest::header::LOCATION].to_str().unwrap();
                next = here.join(location).unwrap().to_string();
                continue;
            }
            let status = res.status();
            let page = res.text().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{next}: {page}");
            // The provider's development interactions: a login form, then a consent form.
            let answer = if page.contains("name=\"login\"") {
                self.post_form(
                    &next,
                    &[("prompt", "login"), ("login", user), ("password", "x")],
                )
                .await
            } else {
                self.post_form(&next, &[("prompt", "consent")]).await
            };
            assert!(
                answer.status().is_redirection(),
                "{next}: {}",
                answer.status()
            );
            let location = answer.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap();
            next = here.join(location).unwrap().to_string();
        }
        panic!("the sign-in did not come back to Stoa");
    }

    /// Visits Stoa's callback; where Stoa sent the browser back to.
    pub async fn callback(&mut self, callback: &str) -> Landing {
        let res = self.get(callback).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{callback}");
        let location = res.headers()[reqwest::header::LOCATION].to_str().unwrap();
        Landing {
            url: url::Url::parse(location).unwrap(),
        }
    }

    /// A whole sign-in from `start` as provider user `user`.
    pub async fn sign_in(&mut self, start: &str, user: &str) -> Landing {
        let callback = self.through_provider(start, user).await;
        self.callback(&callback).await
    }
}

fn host_of(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Exchanges a landing's `stoa_code` (with `extra` fields) at Stoa.
pub async fn exchange(app: &TestApp, code: &str, extra: Value) -> super::Response {
    let mut body = json!({ "code": code });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    app.post("/api/auth/oauth/exchange", None, body).await
}
