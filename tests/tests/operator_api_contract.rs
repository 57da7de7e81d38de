#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Both programs together: what stoa-operator renders must be exactly what stoa-api reads.
//! The operator's ConfigMap is fed to stoa-api's configuration parser, and the signing-key
//! Secret it creates is mounted (kubelet-style) into a real stoa-api server that then
//! signs and verifies tokens and publishes the keys.

mod common;
mod harness;

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use serde_json::json;
use sqlx::PgPool;
use stoa_api::config::{Config, Env};
use stoa_operator::crd::Stoa;
use stoa_operator::resources;

fn stoa() -> Stoa {
    serde_norway::from_str(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
spec:
  image: stoa-api:test
  database: {urlSecretRef: {name: api-db}}
  redis: {urlSecretRef: {name: api-redis}}
  auth: {accessTokenTtl: 10m, refreshTokenTtl: 14d}
  ingress: {host: api.example.com}
",
    )
    .unwrap()
}

#[test]
fn the_operators_config_map_is_a_valid_stoa_api_configuration() {
    let s = stoa();
    let data = resources::config_map(&s).unwrap().data.unwrap();
    // The mounted files the ConfigMap points at.
    let mounts = tempfile::tempdir().unwrap();
    let db_url = mounts.path().join("url");
    std::fs::write(&db_url, "postgres://stoa:pw@postgres:5432/stoa\n").unwrap();
    let redis_url = mounts.path().join("redis");
    std::fs::write(&redis_url, "redis://redis:6379\n").unwrap();
    let mut env: HashMap<String, String> = data.into_iter().collect();
    env.insert(
        "STOA_DATABASE_URL_FILE".into(),
        db_url.to_str().unwrap().into(),
    );
    env.insert(
        "STOA_REDIS_URL_FILE".into(),
        redis_url.to_str().unwrap().into(),
    );

    let config = Config::from_env(&Env::new(move |k| env.get(k).cloned()), false).unwrap();
    assert_eq!(config.http.listen_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(
        config.http.admin_addr.port(),
        resources::METRICS_PORT as u16
    );
    assert_eq!(config.auth.access_token_ttl.as_secs(), 600);
    assert_eq!(config.auth.refresh_token_ttl.as_secs(), 14 * 24 * 3600);
    assert_eq!(
        config.auth.keys_dir.as_deref(),
        Some(Path::new(resources::KEYS_MOUNT))
    );
    assert_eq!(
        config
            .http
            .public_origin
            .as_ref()
            .map(|o| o.origin.as_str()),
        Some("http://api.example.com"),
        "the Ingress's host (no TLS Secret: plain http)"
    );
    assert_eq!(
        config.auth.mfa_keys_dir.as_deref(),
        Some(Path::new(resources::MFA_KEYS_MOUNT))
    );
    assert_eq!(
        config.rate_limits.trusted_proxy_hops, 1,
        "behind the Ingress"
    );
    assert!(matches!(
        config.redis,
        Some(stoa_api::config::RedisTarget::Single(_))
    ));
    assert_eq!(config.log_format, stoa_api::config::LogFormat::Json);
}

#[sqlx::test(migrator = "stoa_api::db::MIGRATOR")]
async fn stoa_api_serves_with_the_key_secret_the_operator_creates(pool: PgPool) {
    let secret = resources::key_secret(&stoa(), &stoa_contract::keys::generate_keyset()).unwrap();
    let keys = tempfile::tempdir().unwrap();
    harness::kubelet::project(keys.path(), secret.data.as_ref().unwrap(), None);
    let mfa_secret =
        resources::mfa_key_secret(&stoa(), &stoa_contract::mfa_keys::generate_mfa_keyset())
            .unwrap();
    let mfa_keys = tempfile::tempdir().unwrap();
    harness::kubelet::project(mfa_keys.path(), mfa_secret.data.as_ref().unwrap(), None);

    let common::Served { base, stop, .. } =
        common::serve_with_mfa_keys(pool.clone(), keys.path(), mfa_keys.path()).await;
    let database = pool;

    let client = reqwest::Client::new();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let registered: serde_json::Value = client
        .post(format!("{base}/api/users"))
        .json(&json!({"user": {"username": "kube", "email": "kube@example.com", "password": "kube-password"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["user"]["token"].as_str().unwrap();
    let me = client
        .get(format!("{base}/api/user"))
        .header("Authorization", format!("Token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    // The published JWKS names the key the operator generated.
    let file: stoa_contract::keys::KeySetFile =
        serde_json::from_slice(&secret.data.unwrap()[stoa_contract::keys::KEYSET_FILE].0).unwrap();
    let jwks: serde_json::Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], file.keys[0].kid.as_str());

    // A second factor enrolled through the API is sealed under the operator's MFA key.
    let enrolled = client
        .post(format!("{base}/api/user/mfa/totp"))
        .header("Authorization", format!("Token {token}"))
        .json(&json!({"currentPassword": "kube-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(enrolled.status(), 200);
    let mfa_file = stoa_contract::mfa_keys::MfaKeySetFile::from_slice(
        &mfa_secret.data.unwrap()[stoa_contract::mfa_keys::MFA_KEYS_FILE].0,
    )
    .unwrap();
    let kid: Option<String> = sqlx::query_scalar("SELECT secret_key_id FROM user_totp")
        .fetch_one(&database)
        .await
        .unwrap();
    assert_eq!(kid.as_deref(), Some(mfa_file.keys[0].kid.as_str()));
    let _ = stop.send(());
}

/// Each Redis tier the CRD offers reaches stoa-api as the setting it reads: the operator's
/// ConfigMap names files, the Deployment mounts Secret keys as those files, and stoa-api
/// parses what the Secrets hold. Files are projected as the kubelet would
/// (`harness::kubelet`), under a temporary root.
#[test]
fn each_redis_tier_reaches_stoa_api_as_the_setting_it_reads() {
    use stoa_api::config::RedisTarget;
    let secret = |name: &str, data: &[(&str, &str)]| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(format!("{v}\n").into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let secrets = [
        secret(
            "api-db",
            &[("url", "postgres://stoa:pw@postgres:5432/stoa")],
        ),
        secret(
            "redis-sentinels",
            &[
                (
                    "url",
                    "rediss://stoa:data-pw@sentinel-0:26379,sentinel-1:26379,sentinel-2:26379/mymaster",
                ),
                ("sentinel-password", "sentinel-pw"),
            ],
        ),
        secret(
            "redis-cluster",
            &[(
                "nodes",
                "redis://:pw@redis-cluster-0:6379,redis-cluster-1:6379",
            )],
        ),
    ];
    let tiers = [
        "sentinel: {urlSecretRef: {name: redis-sentinels}, passwordSecretRef: {name: redis-sentinels, key: sentinel-password}}",
        "cluster: {urlSecretRef: {name: redis-cluster, key: nodes}}",
    ];
    for tier in tiers {
        let s: Stoa = serde_norway::from_str(&format!(
            "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {{name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}}
spec:
  image: stoa-api:test
  database: {{urlSecretRef: {{name: api-db}}, credentialRotation: {{enabled: false}}}}
  redis: {{{tier}}}
"
        ))
        .unwrap();
        let config_map = resources::config_map(&s).unwrap();
        let deployment = resources::deployment(&s, &config_map, "stoa-api:test").unwrap();
        let template = deployment.spec.unwrap().template;
        let container = template.spec.as_ref().unwrap().containers[0].clone();
        let root = tempfile::tempdir().unwrap();
        harness::kubelet::project_secrets(&template, &container, root.path(), &secrets);
        let env: HashMap<String, String> = config_map
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = if k.ends_with("_FILE") {
                    harness::kubelet::in_root(root.path(), &v)
                        .display()
                        .to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        let config = Config::from_env(&Env::new(move |k| env.get(k).cloned()), false)
            .unwrap_or_else(|e| panic!("{tier}: {e}"));
        match (tier.split(':').next().unwrap(), config.redis.unwrap()) {
            ("sentinel", RedisTarget::Sentinel(sentinel)) => {
                assert_eq!(sentinel.master, "mymaster");
                assert!(sentinel.nodes.tls);
                assert_eq!(sentinel.nodes.addresses.len(), 3);
                assert_eq!(sentinel.nodes.username.as_deref(), Some("stoa"));
                assert_eq!(
                    sentinel.sentinel_password.as_ref().map(|p| p.expose()),
                    Some("sentinel-pw")
                );
            }
            ("cluster", RedisTarget::Cluster(nodes)) => {
                assert_eq!(
                    nodes.addresses,
                    vec![
                        ("redis-cluster-0".to_owned(), 6379),
                        ("redis-cluster-1".to_owned(), 6379)
                    ]
                );
            }
            (tier, other) => panic!("{tier} became {}", other.kind()),
        }
    }
}

/// `spec.auth.providers` reaches stoa-api as `STOA_AUTH_PROVIDERS` in the API container,
/// each client secret mounted where the setting says and readable there; callbacks are
/// at the Ingress's host.
#[test]
fn identity_providers_reach_stoa_api_with_their_mounted_client_secrets() {
    use stoa_api::config::Protocol;
    let s: Stoa = serde_norway::from_str(
        "apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: api, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
spec:
  image: stoa-api:test
  database: {urlSecretRef: {name: api-db}, credentialRotation: {enabled: false}}
  ingress: {host: api.example.com, tlsSecretName: api-tls}
  auth:
    returnTo: [https://app.example.com/oauth]
    providers:
      - {name: google, type: google, clientId: g.apps.googleusercontent.com, clientSecretRef: {name: oauth, key: google}}
      - {name: microsoft, type: microsoft, tenant: organizations, clientId: ms-app, clientSecretRef: {name: oauth, key: microsoft}}
      - {name: github, type: github, clientId: Iv1.gh, clientSecretRef: {name: oauth, key: github}}
",
    )
    .unwrap();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("oauth".into()),
            ..Default::default()
        },
        data: Some(
            [
                ("google", "g-secret"),
                ("microsoft", "ms-secret"),
                ("github", "gh-secret"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(format!("{v}\n").into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    let db = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("api-db".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "url".to_owned(),
                ByteString(b"postgres://stoa:pw@postgres/stoa".to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let config_map = resources::config_map(&s).unwrap();
    let deployment = resources::deployment(&s, &config_map, "stoa-api:test").unwrap();
    let template = deployment.spec.unwrap().template;
    let container = template.spec.as_ref().unwrap().containers[0].clone();
    let root = tempfile::tempdir().unwrap();
    harness::kubelet::project_secrets(&template, &container, root.path(), &[secret, db]);
    let in_root = |path: &str| {
        harness::kubelet::in_root(root.path(), path)
            .display()
            .to_string()
    };
    let mut env: HashMap<String, String> = config_map.data.unwrap().into_iter().collect();
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
        }
    }
    for value in env
        .iter_mut()
        .filter(|(k, _)| k.ends_with("_FILE"))
        .map(|(_, v)| v)
    {
        *value = in_root(value);
    }
    // The files the provider list names, under the same root.
    let mut providers: serde_json::Value =
        serde_json::from_str(&env["STOA_AUTH_PROVIDERS"]).unwrap();
    for provider in providers.as_array_mut().unwrap() {
        let file = provider["clientSecretFile"].as_str().unwrap().to_owned();
        provider["clientSecretFile"] = in_root(&file).into();
    }
    env.insert("STOA_AUTH_PROVIDERS".into(), providers.to_string());

    let config = Config::from_env(&Env::new(move |k| env.get(k).cloned()), false).unwrap();
    let sign_in = &config.sign_in;
    assert_eq!(sign_in.return_to, ["https://app.example.com/oauth"]);
    assert_eq!(
        sign_in.callback_url("google").as_deref(),
        Some("https://api.example.com/api/auth/oauth/google/callback")
    );
    let secret_of = |name: &str| {
        let provider = sign_in.provider(name).unwrap();
        std::fs::read_to_string(&provider.client_secret_file)
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(secret_of("google"), "g-secret");
    assert_eq!(secret_of("microsoft"), "ms-secret");
    assert_eq!(secret_of("github"), "gh-secret");
    assert!(matches!(
        &sign_in.provider("microsoft").unwrap().protocol,
        Protocol::Oidc { issuer, .. } if issuer == "https://login.microsoftonline.com/organizations/v2.0"
    ));
    assert!(matches!(
        sign_in.provider("github").unwrap().protocol,
        Protocol::GitHub { .. }
    ));
}
