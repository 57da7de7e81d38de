//! Continuous client load across the ready pods, counting every request that fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The ready pods' base URLs: what a Service's endpoints hold.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<RwLock<Vec<String>>>);

impl Endpoints {
    pub fn add(&self, url: &str) {
        self.0.write().unwrap().push(url.to_owned());
    }

    pub fn remove(&self, url: &str) {
        self.0.write().unwrap().retain(|u| u != url);
    }

    /// The `n`th ready pod's URL, round robin.
    pub fn pick(&self, n: u64) -> Option<String> {
        let all = self.0.read().unwrap();
        (!all.is_empty()).then(|| all[usize::try_from(n).unwrap() % all.len()].clone())
    }
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub failures: u64,
    /// The first failures, for the test's message.
    pub examples: Vec<String>,
}

pub struct Load {
    /// Names this load's users apart from any other load's on the same database.
    prefix: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    failed: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` clients, each signed in as its own user. Each signs in again every
    /// `relogin` on whichever pod is next, so tokens signed by every pod's current key
    /// reach every other pod, and reads both authenticated and from the database.
    pub async fn start(endpoints: Endpoints, workers: usize, relogin: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        let prefix = format!("load{:08x}", rand::random::<u32>());
        for worker in 0..workers {
            let http = reqwest::Client::new();
            let base = endpoints.pick(worker as u64).expect("a ready pod");
            let email = format!("{prefix}-{worker}@example.com");
            let user = json!({"user": {
                "username": format!("{prefix}-{worker}"),
                "email": email,
                "password": "load-password-1"
            }});
            let res = http
                .post(format!("{base}/api/users"))
                .json(&user)
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "register: {}", res.status());
            let (endpoints, stop, requests, failed, failures) = (
                endpoints.clone(),
                stop.clone(),
                requests.clone(),
                failed.clone(),
                failures.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut token = String::new();
                let mut signed_in = Instant::now() - relogin;
                let mut n = worker as u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let Some(base) = endpoints.pick(n) else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let outcome = if signed_in.elapsed() >= relogin {
                        let login = json!({"user": {
                            "email": email,
                            "password": "load-password-1"
                        }});
                        let res = http
                            .post(format!("{base}/api/users/login"))
                            .json(&login)
                            .send()
                            .await;
                        match res {
                            Ok(r) if r.status().is_success() => {
                                let body: Value = r.json().await.unwrap_or_default();
                                token = body["user"]["token"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned();
                                signed_in = Instant::now();
                                Ok(())
                            }
                            Ok(r) => Err(format!("login on {base}: {}", r.status())),
                            Err(e) => Err(format!("login on {base}: {e}")),
                        }
                    } else {
                        let path = if n.is_multiple_of(2) {
                            "/api/user"
                        } else {
                            "/api/articles?limit=5"
                        };
                        let res = http
                            .get(format!("{base}{path}"))
                            .header("Authorization", format!("Token {token}"))
                            .send()
                            .await;
                        match res {
                            Ok(r) if r.status().is_success() => Ok(()),
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                Err(format!("GET {path} on {base}: {status} {body}"))
                            }
                            Err(e) => Err(format!("GET {path} on {base}: {e}")),
                        }
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    if let Err(failure) = outcome {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut examples = failures.lock().unwrap();
                        if examples.len() < 10 {
                            examples.push(failure);
                        }
                    }
                }
            }));
        }
        Load {
            prefix,
            stop,
            requests,
            failures,
            failed,
            workers: handles,
        }
    }

    /// The email `worker` signed up with (password `load-password-1`).
    pub fn email(&self, worker: usize) -> String {
        format!("{}-{worker}@example.com", self.prefix)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Tally {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failed.load(Ordering::Relaxed),
            examples: self.failures.lock().unwrap().clone(),
        }
    }
}
