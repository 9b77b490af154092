//! The end-to-end harness: starts the real `courier` binary on port 0 with a
//! fresh database (a SQLite file in a temporary directory, or a new
//! PostgreSQL database on `DATABASE_URL`), and a webhook receiver standing in
//! for the SMS gateway.

#![allow(dead_code)]

pub mod browser;
pub mod coturn;
pub mod netns;
pub mod proxy;
pub mod ws;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs `$body` (an async fn taking a `Db`) once per database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::Db::Sqlite).await } )+
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::support::Db::Postgres).await } )+
        }
    };
}

/// Every `(METHOD, route)` of an `/openapi.json` whose route starts with
/// `prefix`.
pub fn documented_routes(openapi: &Value, prefix: &str) -> std::collections::BTreeSet<(String, String)> {
    openapi["paths"]
        .as_object()
        .expect("an OpenAPI document has paths")
        .iter()
        .filter(|(path, _)| path.starts_with(prefix))
        .flat_map(|(path, item)| {
            item.as_object().into_iter().flatten().map(move |(method, _)| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database: its URL, and for PostgreSQL its name (to drop it).
pub async fn fresh_database(db: Db, dir: &Path) -> (String, Option<String>) {
    match db {
        Db::Sqlite => (format!("sqlite://{}?mode=rwc", dir.join("courier.db").display()), None),
        Db::Postgres => {
            sqlx::any::install_default_drivers();
            let admin = postgres_admin_url();
            let name = format!("courier_test_{}", uuid::Uuid::now_v7().simple());
            let mut connection = sqlx::AnyConnection::connect(&admin)
                .await
                .unwrap_or_else(|error| panic!("PostgreSQL must run at {admin} (DATABASE_URL): {error}"));
            connection.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create a test database");
            connection.close().await.ok();
            (database_url_for(&admin, &name), Some(name))
        }
    }
}

fn database_url_for(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

pub async fn drop_database(name: &str) {
    if let Ok(mut connection) = sqlx::AnyConnection::connect(&postgres_admin_url()).await {
        let _ = connection.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
        connection.close().await.ok();
    }
}

/// A webhook receiver recording each code sent to each number.
#[derive(Clone)]
pub struct Hook {
    pub url: String,
    codes: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    failing: Arc<AtomicBool>,
    hanging: Arc<AtomicBool>,
}

impl Hook {
    pub async fn start() -> Hook {
        let codes: Arc<Mutex<HashMap<String, Vec<Value>>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let hanging = Arc::new(AtomicBool::new(false));
        let (sink, fail, hang) = (codes.clone(), failing.clone(), hanging.clone());
        let app = axum::Router::new().route(
            "/sms",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let (sink, fail, hang) = (sink.clone(), fail.clone(), hang.clone());
                async move {
                    if hang.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    if fail.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let phone = body["phone"].as_str().unwrap_or_default().to_owned();
                    sink.lock().unwrap().entry(phone).or_default().push(body);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sms", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { url, codes, failing, hanging }
    }

    /// Answer 503 to every delivery.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Take 30 s to answer (longer than any configured webhook timeout).
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }

    /// Every webhook body received for `phone` (E.164).
    pub fn messages(&self, phone: &str) -> Vec<Value> {
        self.codes.lock().unwrap().get(phone).cloned().unwrap_or_default()
    }

    /// The newest code sent to `phone`.
    pub fn last_code(&self, phone: &str) -> String {
        let messages = self.messages(phone);
        let last = messages.last().unwrap_or_else(|| panic!("no code was sent to {phone}"));
        last["code"].as_str().unwrap().to_owned()
    }
}

/// The real binary, running.
pub struct Server {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub hook: Hook,
    pg_name: Option<String>,
    extra: Vec<String>,
    child: Option<Child>,
    pub http: reqwest::Client,
}

/// Runs `courier serve <args> --listen 127.0.0.1:0` (unless `args` place it,
/// and its TURN relay on a free port unless `args` place it), logging to
/// `log`, and waits for the URL it prints.
async fn serve(args: &[&str], log: &Path) -> (Child, String) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(courier_bin())
        .arg("serve")
        .args(args)
        .args(if args.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .args(if args.contains(&"--turn-listen") { &[][..] } else { &["--turn-listen", "127.0.0.1:0"][..] })
        .env_remove("COURIER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("start courier");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .expect("courier printed its URL in time")
        .unwrap()
        .unwrap_or_else(|| {
            panic!("courier exited before listening; log:\n{}", std::fs::read_to_string(log).unwrap_or_default())
        });
    let url = line.strip_prefix("courier listening on ").expect("the URL line").to_owned();
    (child, url)
}

pub fn courier_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_courier"))
}

impl Server {
    pub async fn start(db: Db) -> Server {
        Self::start_with(db, &[]).await
    }

    /// Starts with extra `courier serve` flags (short limits for a test).
    pub async fn start_with(db: Db, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, pg_name) = fresh_database(db, dir.path()).await;
        let hook = Hook::start().await;
        let mut server = Server {
            url: String::new(),
            dir,
            database_url,
            hook,
            pg_name,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: courier_common::client::http_client_builder().timeout(Duration::from_secs(20)).build().unwrap(),
        };
        server.spawn().await;
        server
    }

    /// Starts on a database of the test's own (a private PostgreSQL, say).
    pub async fn start_on(database_url: String, extra: &[&str]) -> Server {
        let hook = Hook::start().await;
        let mut server = Server {
            url: String::new(),
            dir: tempfile::tempdir().unwrap(),
            database_url,
            hook,
            pg_name: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: courier_common::client::http_client_builder().timeout(Duration::from_secs(20)).build().unwrap(),
        };
        server.spawn().await;
        server
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    async fn spawn(&mut self) {
        let data_dir = self.dir.path().join("data");
        let data_dir = data_dir.to_str().expect("a UTF-8 temporary path");
        let mut args = vec!["--data-dir", data_dir, "--database-url", &self.database_url];
        args.extend(["--code-sender", "webhook", "--code-webhook-url", &self.hook.url]);
        args.extend(self.extra.iter().map(String::as_str));
        let (child, url) = serve(&args, &self.log_path()).await;
        self.url = url;
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// `kill -9`, then start again on the same data directory and database.
    pub async fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
        child.wait().await.unwrap();
        self.spawn().await;
    }

    /// Stops it (SIGTERM) and starts it again on the same data directory
    /// and database with other extra flags.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.terminate().await;
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn().await;
    }

    /// `kill -9`, leaving it down.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
        child.wait().await.unwrap();
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("running");
        let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stopped within 10 s").unwrap()
    }

    /// Stops the server and drops its PostgreSQL database.
    pub async fn finish(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
        if let Some(name) = self.pg_name.take() {
            drop_database(&name).await;
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    /// Requests a code for `phone` and signs in with it; returns the session.
    pub async fn sign_in(&self, phone: &str, device: &str) -> Session {
        let (status, body) = self.post("/v1/auth/codes", None, json!({"phone": phone})).await;
        assert_eq!(status, 202, "{body}");
        let e164: String = phone.chars().filter(|c| c.is_ascii_digit() || *c == '+').collect();
        let code = self.hook.last_code(&e164);
        let (status, body) =
            self.post("/v1/auth/sessions", None, json!({"phone": phone, "code": code, "device_name": device})).await;
        assert_eq!(status, 201, "{body}");
        serde_json::from_value(body).unwrap()
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Session {
    pub account_id: String,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

impl Server {
    /// `courier admin bootstrap` against this server's database: an admin key.
    pub fn bootstrap_admin(&self) -> String {
        let output = std::process::Command::new(courier_bin())
            .args(["admin", "bootstrap", "--force", "--database-url", &self.database_url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Runs one SQL statement on this server's database (for what the API
    /// does not offer yet, such as changing a region's rules).
    pub async fn sql(&self, statement: &str) {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url).await.unwrap();
        connection.execute(statement).await.unwrap();
        connection.close().await.ok();
    }

    /// A POST with an `Idempotency-Key` (none when `key` is empty).
    pub async fn post_keyed(&self, path: &str, token: &str, key: &str, body: Value) -> (u16, Value, String) {
        let mut request = self.http.post(format!("{}{path}", self.url)).bearer_auth(token).json(&body);
        if !key.is_empty() {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }
}

impl Server {
    /// One integer from a SQL query on this server's database.
    pub async fn sql_i64(&self, query: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url).await.unwrap();
        let (value,): (i64,) = sqlx::query_as(query).fetch_one(&mut connection).await.unwrap();
        connection.close().await.ok();
        value
    }

    /// Signs in `count` numbers in RU: +7916500XXXX.
    pub async fn sign_in_many(&self, count: usize) -> Vec<Session> {
        let mut sessions = Vec::with_capacity(count);
        for index in 0..count {
            sessions.push(self.sign_in(&format!("+7916500{index:04}"), "load").await);
        }
        sessions
    }
}

/// Another `courier serve …` process (a split deployment's node).
pub struct Node {
    pub url: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Node {
    /// Starts `courier serve <args> --listen 127.0.0.1:0`, logging to `log`.
    pub async fn start(args: &[&str], log: PathBuf) -> Node {
        let (child, url) = serve(args, &log).await;
        Node { url, child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("stopped within 10 s").unwrap()
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Redis the cluster tests use: `REDIS_URL`, or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
