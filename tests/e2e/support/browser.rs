//! Headless Chromium driven through chromedriver's WebDriver protocol (W3C,
//! JSON over HTTP), for the browser client's tests. Elements are found by
//! their accessible names, as people with screen readers find them
//! (chromedriver's computed label), never by ids or CSS classes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(30);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The controls and regions whose label, `aria-label` or text contains
/// `arguments[0]`.
const CANDIDATES: &str = "const name = arguments[0];
    return [...document.querySelectorAll('input, select, button, [role=region], [role=status]')].filter((e) => {
      const labels = e.labels ? [...e.labels].map((l) => l.textContent).join(' ') : '';
      return [e.getAttribute('aria-label') || '', labels, e.textContent || ''].some((t) => t.includes(name));
    });";

/// One Chromium, with its chromedriver.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`-pixel-wide viewport.
    pub async fn start(width: u32) -> Browser {
        Browser::start_with(width, &[]).await
    }

    /// A Chromium whose microphone plays `wav` (16-bit PCM, looped), with
    /// permission granted, audio allowed to play without a gesture, and
    /// loopback addresses among its ICE candidates (a softphone bound to
    /// 127.0.0.1 offers only those).
    pub async fn with_microphone(width: u32, wav: &std::path::Path) -> Browser {
        let file = format!("--use-file-for-fake-audio-capture={}", wav.display());
        let args = [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            file.as_str(),
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
        ];
        Browser::start_with(width, &args).await
    }

    /// As [`Browser::with_microphone`], with Chromium in network namespace
    /// `ns` (chromedriver talks to it over a pipe, which needs no network),
    /// and `origin` (plain HTTP, not loopback) trusted as secure so that the
    /// page may use the microphone.
    pub async fn with_microphone_in(ns: &str, origin: &str, width: u32, wav: &std::path::Path) -> Browser {
        let wrapper = wav.with_file_name(format!("chromium-in-{ns}"));
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} \"$@\"\n")).unwrap();
        let mut permissions = std::fs::metadata(&wrapper).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&wrapper, permissions).unwrap();
        let file = format!("--use-file-for-fake-audio-capture={}", wav.display());
        let secure = format!("--unsafely-treat-insecure-origin-as-secure={origin}");
        let args = [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            file.as_str(),
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-pipe",
            secure.as_str(),
        ];
        Browser::launch(width, wrapper.to_str().unwrap(), &args).await
    }

    async fn start_with(width: u32, extra: &[&str]) -> Browser {
        Browser::launch(width, CHROMIUM, extra).await
    }

    async fn launch(width: u32, binary: &str, extra: &[&str]) -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and chromium-driver (./scripts/test installs them)"
            );
        }
        let port = super::free_tcp_port();
        // chromedriver and the Chromium it starts share a process group of
        // their own, ended as one when the test ends, also on a failure.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec!["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"];
        args.extend_from_slice(extra);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": args,
                // A headless window is at least 500 px wide; a phone's
                // viewport is emulated.
                "mobileEmulation": {"deviceMetrics": {"width": width, "height": 800, "pixelRatio": 1.0}},
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"))
            .to_owned();
        Browser { driver, base, session, http }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// The visible element whose accessible name is `name`, waiting for it.
    pub async fn named(&self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Only the elements whose label text could be the name are
            // asked for their computed accessible name (a round trip each).
            let found = self
                .command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": CANDIDATES, "args": [name]})))
                .await;
            for element in found.as_array().unwrap() {
                let id = element[ELEMENT].as_str().unwrap();
                let label = self.command(reqwest::Method::GET, &format!("/element/{id}/computedlabel"), None).await;
                if label == name
                    && self.command(reqwest::Method::GET, &format!("/element/{id}/displayed"), None).await == true
                {
                    return id.to_owned();
                }
            }
            if tokio::time::Instant::now() > deadline {
                let shown = self.eval("return document.body.innerText").await;
                let errors = self.console_errors().await;
                panic!("no visible element named {name:?}; the page shows {shown}; console errors: {errors:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, name: &str, text: &str) {
        let id = self.named(name).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// Picks the option shown as `option` in the list named `name`.
    pub async fn choose(&self, name: &str, option: &str) {
        let id = self.named(name).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": option}))).await;
    }

    pub async fn click(&self, name: &str) {
        let id = self.named(name).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    pub async fn text_of(&self, name: &str) -> String {
        let id = self.named(name).await;
        self.command(reqwest::Method::GET, &format!("/element/{id}/text"), None).await.as_str().unwrap().to_owned()
    }

    /// Waits until the element named `name` shows text containing `part`.
    pub async fn wait_for_text(&self, name: &str, part: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text_of(name).await;
            if text.contains(part) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name:?} never showed {part:?}; it shows {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `script` returns text containing `part`, and returns it.
    pub async fn wait_for_script(&self, script: &str, part: &str) -> String {
        self.try_wait_for_script(script, part).await.unwrap_or_else(|failed| panic!("{failed}"))
    }

    /// As `wait_for_script`, but a timeout is an error that says what the
    /// script returned last, for the caller to add what else it knows.
    pub async fn try_wait_for_script(&self, script: &str, part: &str) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.eval(script).await.as_str().unwrap_or("").to_owned();
            if text.contains(part) {
                return Ok(text);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{script:?} never showed {part:?}; it shows {text:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Runs `script` (which ends by calling its last argument with a value)
    /// in the page and returns that value.
    pub async fn eval_async(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/async", Some(json!({"script": script, "args": []}))).await
    }

    /// What the page logged at level SEVERE (errors, CSP violations, files
    /// that failed to load) so far, but the API's refusals the page was
    /// meant to show in words (Chromium logs every 4xx answer to a fetch).
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self.command(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|entry| entry["level"] == "SEVERE")
                    .filter(|entry| {
                        let message = entry["message"].as_str().unwrap_or("");
                        !(message.contains("/v1/") && message.contains("the server responded with a status of 4"))
                    })
                    .map(|entry| entry["message"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a screenshot under `target/browser-artifacts/` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    pub async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: signals the process group this test started; no memory is touched.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}
