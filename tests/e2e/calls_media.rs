//! Real calls between two `courier call` softphones (real binaries, real
//! WebRTC and Opus on loopback): each side plays its own tone and records
//! the other, and the recordings are checked with the Goertzel filter.
//! P2P, relay-only through the embedded relay and through a real coturn, the
//! SAS against a signaling server that rewrites fingerprints, and an ICE
//! restart after the signaling socket drops mid-call.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_calls::audio::{dominant, read_wav};
use courier_calls::peer::candidate_type;
use serde_json::{Value, json};
use support::coturn::Coturn;
use support::proxy::Proxy;
use support::{Db, Server, courier_bin};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) const ALICE: &str = "+79161140001";
pub(crate) const BOB: &str = "+79161140002";
/// Long enough that setting up the media path (2 s and more on a loaded
/// two-core machine) leaves the 80 % bar meaningful.
pub(crate) const CALL_S: f64 = 12.0;

pub(crate) struct Softphone {
    profile: tempfile::TempDir,
    /// The network namespace its calls run in, and the address they bind.
    home: Option<(String, String)>,
}

/// A running `dial` or `answer`: its stderr lines collected as they come.
pub(crate) struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) async fn wait_for(&self, text: &str) {
        for _ in 0..300 {
            if self.lines.lock().unwrap().iter().any(|line| line.contains(text)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never printed {text:?}; printed:\n{}", self.lines.lock().unwrap().join("\n"));
    }

    /// What it has printed on stderr so far.
    pub(crate) fn printed(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The JSON object printed at the end.
    pub(crate) async fn report(self) -> Value {
        self.ended().await.0
    }

    /// The JSON report, how the softphone exited, and what it printed on stderr.
    pub(crate) async fn ended(mut self) -> (Value, std::process::ExitStatus, String) {
        let mut stdout = String::new();
        let mut out = self.child.stdout.take().unwrap();
        let reading = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout);
        if tokio::time::timeout(Duration::from_secs(90), reading).await.is_err() {
            panic!("the softphone did not end; printed:\n{}", self.lines.lock().unwrap().join("\n"));
        }
        let status = self.child.wait().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let log = self.lines.lock().unwrap().join("\n");
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("no JSON report: {stdout:?} ({status:?}); stderr:\n{log}"));
        (report, status, log)
    }
}

impl Softphone {
    pub(crate) async fn login(server_url: &str, server: &Server, phone: &'static str) -> Softphone {
        let profile = tempfile::tempdir().unwrap();
        let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": phone})).await;
        assert_eq!(status, 202);
        let code = server.hook.last_code(phone);
        let softphone = Softphone { profile, home: None };
        let output =
            softphone.command(server_url).args(["login", "--phone", phone, "--code", &code]).output().await.unwrap();
        assert!(output.status.success(), "login: {}", String::from_utf8_lossy(&output.stderr));
        softphone
    }

    /// From now on its commands run in network namespace `ns`, binding
    /// their media to `ip`.
    pub(crate) fn in_namespace(mut self, ns: String, ip: String) -> Softphone {
        self.home = Some((ns, ip));
        self
    }

    pub(crate) fn command(&self, server_url: &str) -> Command {
        let mut command = match &self.home {
            Some((ns, _)) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(courier_bin());
                command
            }
            None => Command::new(courier_bin()),
        };
        command
            .arg("call")
            .args(["--server", server_url])
            .args(["--profile", self.profile.path().to_str().unwrap()])
            // More, to see why a call failed: COURIER_TEST_SOFTPHONE_LOG=warn,rtc_ice=debug
            .env("COURIER_LOG", std::env::var("COURIER_TEST_SOFTPHONE_LOG").unwrap_or_else(|_| "warn".into()))
            .kill_on_drop(true);
        command
    }

    pub(crate) async fn settings(&self, server_url: &str, args: &[&str]) -> Value {
        let output = self.command(server_url).args(["--json", "settings"]).args(args).output().await.unwrap();
        assert!(output.status.success(), "settings: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub(crate) fn recording(&self) -> PathBuf {
        self.profile.path().join("heard.wav")
    }

    fn spawn(&self, server_url: &str, args: &[&str], tone: u32) -> Running {
        self.spawn_for(server_url, args, tone, CALL_S)
    }

    /// A call of at most `seconds` (the other side may hang up first).
    pub(crate) fn spawn_for(&self, server_url: &str, args: &[&str], tone: u32, seconds: f64) -> Running {
        self.spawn_playing(server_url, args, &format!("tone:{tone}"), seconds)
    }

    /// The same, playing `play` (`tone:HZ`, `clicks:MS` or a WAV file).
    pub(crate) fn spawn_playing(&self, server_url: &str, args: &[&str], play: &str, seconds: f64) -> Running {
        let duration = seconds.to_string();
        let recording = self.recording();
        let mut child = self
            .command(server_url)
            .arg("--json")
            .args(args)
            .args(["--play", play, "--record", recording.to_str().unwrap()])
            .args(["--duration", &duration, "--bind", self.home.as_ref().map_or("127.0.0.1", |(_, ip)| ip.as_str())])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Running { child, lines, reader }
    }

    pub(crate) fn answer(&self, server_url: &str, tone: u32) -> Running {
        self.spawn(server_url, &["answer", "--auto", "--wait-s", "60"], tone)
    }

    pub(crate) fn dial(&self, server_url: &str, to: &str, tone: u32) -> Running {
        self.spawn(server_url, &["dial", to], tone)
    }
}

/// Bob answers (through `bob_url`), Alice dials him by phone number
/// (through `alice_url`); the two JSON reports once both have ended.
pub(crate) async fn call(alice: &Softphone, alice_url: &str, bob: &Softphone, bob_url: &str) -> (Value, Value) {
    let answering = bob.answer(bob_url, 880);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.dial(alice_url, BOB, 440);
    (dialing.report().await, answering.report().await)
}

/// Seconds of `path` (100 ms windows) in which `expected` is the louder of
/// the two tones, with real signal in the window.
pub(crate) fn seconds_of_tone(path: &Path, expected: f32) -> f64 {
    let samples: Vec<i16> = read_wav(path).unwrap().iter().map(|value| (value * 32_767.0) as i16).collect();
    let windows = samples.chunks_exact(4_800);
    let mut heard = 0usize;
    for window in windows {
        let loud = window.iter().map(|s| i64::from(*s).abs()).max().unwrap_or(0) > 1_000;
        if loud && dominant(window, &[440.0, 880.0]) == Some(expected) {
            heard += 1;
        }
    }
    heard as f64 / 10.0
}

/// Both recordings hold the other side's tone over all of the call but its
/// set-up (a relayed set-up, with the relay at both ends and on a loaded
/// machine, takes up to about 3 s).
pub(crate) fn assert_heard_each_other(caller: &Softphone, callee: &Softphone, reports: (&Value, &Value)) {
    let at_caller = seconds_of_tone(&caller.recording(), 880.0);
    let at_callee = seconds_of_tone(&callee.recording(), 440.0);
    let (a, b) = reports;
    let least = CALL_S - 4.0;
    assert!(at_caller >= least, "the caller heard 880 Hz for only {at_caller} s of {CALL_S}:\n{a}\n{b}");
    assert!(at_callee >= least, "the callee heard 440 Hz for only {at_callee} s of {CALL_S}:\n{a}\n{b}");
}

pub(crate) fn assert_same_sas(a: &Value, b: &Value) {
    assert!(a["sas"].is_string(), "{a}");
    assert_eq!(a["sas"], b["sas"]);
    assert_eq!(a["sas_names"], b["sas_names"]);
    assert_eq!(a["sas_names"].as_array().unwrap().len(), 4);
    assert!(a["sas_warning"].is_null() && b["sas_warning"].is_null(), "{a}\n{b}");
}

pub(crate) fn candidate_lines(report: &Value, field: &str) -> Vec<String> {
    report[field].as_array().unwrap().iter().map(|line| line.as_str().unwrap().to_owned()).collect()
}

async fn a_p2p_call_carries_each_sides_tone(db: Db) {
    let server = Server::start(db).await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&server.url, &server, BOB).await;
    let (a, b) = call(&alice, &server.url, &bob, &server.url).await;
    assert_same_sas(&a, &b);
    assert_eq!(a["candidate_type"], "host", "{a}");
    assert_eq!(b["candidate_type"], "host", "{b}");
    assert_eq!(a["ice_policy"], "all");
    for report in [&a, &b] {
        assert_eq!(report["end_reason"], "user_hangup", "{report}");
        assert!(report["setup_ms"].as_u64().unwrap() < 10_000, "{report}");
        assert!(report["packet_loss_pct"].as_f64().unwrap() < 5.0, "{report}");
        assert!(report["rtt_ms"].as_f64().is_some(), "{report}");
        assert!(report["jitter_ms"].as_f64().is_some(), "{report}");
    }
    assert!(a["ringing_ms"].as_u64().is_some());
    assert_heard_each_other(&alice, &bob, (&a, &b));

    // Both posted their figures; the history shows the call to both.
    let output = alice.command(&server.url).args(["--json", "history"]).output().await.unwrap();
    let history: Value = serde_json::from_slice(&output.stdout).unwrap();
    let item = &history["items"][0];
    assert_eq!(item["call_id"], a["call_id"]);
    assert_eq!(item["end_reason"], "user_hangup");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_call_carries_each_sides_tone_sqlite() {
    a_p2p_call_carries_each_sides_tone(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_call_carries_each_sides_tone_postgres() {
    a_p2p_call_carries_each_sides_tone(Db::Postgres).await;
}

/// One side hides its address (`p2p: never`), so the call's ICE policy is
/// `relay`, and both ends honour it, the caller as well as the callee: both
/// gather, check and select relay candidates only, so no host or
/// server-reflexive address of either reaches the server (through a
/// recording proxy on each side) or the other side, and the audio still
/// flows both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_call_never_shares_the_address() {
    for caller_hides in [false, true] {
        relay_only_call_between_softphones(caller_hides).await;
    }
}

async fn relay_only_call_between_softphones(caller_hides: bool) {
    let server = Server::start(Db::Sqlite).await;
    let (alice_proxy, bob_proxy) = (Proxy::start(&server.url, None).await, Proxy::start(&server.url, None).await);
    let alice = Softphone::login(&alice_proxy.url, &server, ALICE).await;
    let bob = Softphone::login(&bob_proxy.url, &server, BOB).await;
    let (hiding, url) = if caller_hides { (&alice, &alice_proxy.url) } else { (&bob, &bob_proxy.url) };
    assert_eq!(hiding.settings(url, &["--p2p", "never"]).await["p2p"], "never");
    let (a, b) = call(&alice, &alice_proxy.url, &bob, &bob_proxy.url).await;
    assert_same_sas(&a, &b);
    for report in [&a, &b] {
        assert_eq!(report["ice_policy"], "relay", "{report}");
        let pair = (&report["candidate_type"], &report["remote_candidate_type"]);
        assert_eq!(pair, (&json!("relay"), &json!("relay")), "caller hides: {caller_hides}; {report}");
        assert!(!candidate_lines(report, "candidates_sent").is_empty(), "{report}");
        for line in
            candidate_lines(report, "candidates_sent").iter().chain(&candidate_lines(report, "candidates_received"))
        {
            assert_eq!(candidate_type(line), Some("relay"), "{line}");
        }
    }
    for proxy in [&alice_proxy, &bob_proxy] {
        let sent = proxy.sent();
        let seen_by_server: Vec<String> = sent
            .iter()
            .filter(|message| message["type"] == "candidates")
            .flat_map(|message| message["candidates"].as_array().unwrap().clone())
            .map(|candidate| candidate["candidate"].as_str().unwrap().to_owned())
            .collect();
        assert!(!seen_by_server.is_empty());
        for line in &seen_by_server {
            assert_eq!(candidate_type(line), Some("relay"), "{line}");
        }
        // Nor did an offer or answer carry an address in its candidates.
        for message in sent.iter().filter(|message| message["type"] == "invite" || message["type"] == "answer") {
            let sdp = message["sdp"].as_str().unwrap();
            assert!(sdp.lines().filter(|l| l.starts_with("a=candidate")).all(|l| l.contains("typ relay")), "{sdp}");
        }
    }
    assert_heard_each_other(&alice, &bob, (&a, &b));
    server.finish().await;
}

/// A relay-only call whose relay cannot reach the peers (the strict filter
/// on loopback: every peer is loopback) carries no audio: both softphones
/// end it as `ice_failed`, exit non-zero saying why, and the history shows
/// no talking time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_carries_audio_fails_and_says_why() {
    let server = Server::start_with(Db::Sqlite, &["--turn-allow-peer", "none"]).await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&server.url, &server, BOB).await;
    assert_eq!(alice.settings(&server.url, &["--p2p", "never"]).await["p2p"], "never");
    let answering = bob.answer(&server.url, 880);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.dial(&server.url, BOB, 440);
    let (a, a_status, a_log) = dialing.ended().await;
    let (b, b_status, b_log) = answering.ended().await;
    assert_eq!(a["end_reason"], "ice_failed", "{a}\n{a_log}");
    assert_eq!(b["end_reason"], "ice_failed", "{b}\n{b_log}");
    assert!(a["setup_ms"].is_null() && a["packets_received"] == 0, "{a}");
    assert!(!a_status.success() && !b_status.success(), "{a_status} {b_status}");
    assert!(a_log.contains("the call carried no audio: no media path came up through the TURN relay"), "{a_log}");
    assert!(b_log.contains("the call carried no audio"), "{b_log}");
    let output = alice.command(&server.url).args(["--json", "history"]).output().await.unwrap();
    let history: Value = serde_json::from_slice(&output.stdout).unwrap();
    let call = &history["items"][0];
    assert_eq!((call["end_reason"].as_str(), call["duration_s"].as_i64()), (Some("ice_failed"), Some(0)), "{call}");
    server.finish().await;
}

/// The same relay-only call through a real coturn (`--turn external`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_call_through_coturn() {
    const SECRET: &str = "a-coturn-secret-for-the-call-test";
    let coturn = Coturn::start(SECRET, &["allow-loopback-peers", "allowed-peer-ip=127.0.0.1"]);
    coturn.ready().await;
    let turn_url = format!("turn:{}?transport=udp", coturn.addr);
    let server =
        Server::start_with(Db::Sqlite, &["--turn", "external", "--turn-secret", SECRET, "--turn-urls", &turn_url])
            .await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&server.url, &server, BOB).await;
    bob.settings(&server.url, &["--p2p", "never"]).await;
    let (a, b) = call(&alice, &server.url, &bob, &server.url).await;
    assert_same_sas(&a, &b);
    assert_eq!(b["candidate_type"], "relay", "{b}");
    for line in candidate_lines(&a, "candidates_received") {
        assert_eq!(candidate_type(&line), Some("relay"), "{line}");
        assert!(line.contains(&coturn.addr.ip().to_string()), "{line}");
    }
    assert_heard_each_other(&alice, &bob, (&a, &b));
    server.finish().await;
}

/// A signaling server that swaps the callee's DTLS fingerprint (to sit in
/// the middle) never gets a silently matching SAS: the two sides' SAS
/// differ, or the caller shows the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_fingerprint_never_yields_a_matching_sas() {
    let server = Server::start(Db::Sqlite).await;
    let forged =
        "sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    let rewrite: support::proxy::Rewrite = Arc::new(move |mut message: Value| {
        if message["type"] == "answer" {
            let sdp = message["sdp"].as_str().unwrap_or_default();
            let forged_sdp: Vec<String> = sdp
                .split("\r\n")
                .map(|line| {
                    if line.starts_with("a=fingerprint:") { format!("a=fingerprint:{forged}") } else { line.to_owned() }
                })
                .collect();
            message["sdp"] = json!(forged_sdp.join("\r\n"));
        }
        message
    });
    let proxy = Proxy::start(&server.url, Some(rewrite)).await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&proxy.url, &server, BOB).await;
    let (a, b) = call(&alice, &server.url, &bob, &proxy.url).await;
    assert!(proxy.sent().iter().any(|m| m["type"] == "answer" && m["sdp"].as_str().unwrap().contains(forged)));
    let silently_matching = a["sas"] == b["sas"] && a["sas_warning"].is_null() && b["sas_warning"].is_null();
    assert!(!silently_matching, "a man in the middle went unnoticed:\n{a}\n{b}");
    assert!(a["sas"].is_string() && b["sas"].is_string());
    assert_ne!(a["sas"], b["sas"], "the forged fingerprint is in the caller's SAS");
    server.finish().await;
}

/// Mid-call both signaling sockets drop (as on a network change); the
/// softphones reconnect, `resume`, restart ICE with `negotiate`, and the
/// audio goes on to the end of the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_after_the_signaling_socket_drops() {
    let server = Server::start(Db::Sqlite).await;
    let proxy = Proxy::start(&server.url, None).await;
    let alice = Softphone::login(&proxy.url, &server, ALICE).await;
    let bob = Softphone::login(&proxy.url, &server, BOB).await;
    let answering = bob.answer(&proxy.url, 880);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.dial(&proxy.url, BOB, 440);
    dialing.wait_for("connected over").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    dialing.wait_for("renegotiated").await;
    let (a, b) = (dialing.report().await, answering.report().await);
    assert!(a["ice_restarts"].as_u64().unwrap() >= 1, "{a}");
    assert!(proxy.sent().iter().any(|m| m["type"] == "resume"));
    assert!(proxy.sent().iter().any(|m| m["type"] == "negotiate" && m["kind"] == "offer"));
    assert!(proxy.sent().iter().any(|m| m["type"] == "negotiate" && m["kind"] == "answer"));
    assert_same_sas(&a, &b);
    assert_eq!(a["end_reason"], "user_hangup", "{a}");
    assert_heard_each_other(&alice, &bob, (&a, &b));
    server.finish().await;
}

/// `courier bench calls` places real calls in each of its three set-ups and
/// reports every figure (the figures themselves go to BENCHMARKS.md; here
/// only that they were measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_benchmark_measures_each_setup() {
    let output = Command::new(courier_bin())
        .args(["bench", "calls", "--pairs", "1", "--duration-s", "6", "--json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    for (setup, on_relay) in [("p2p", 0), ("relay", 2), ("relay_coturn", 2)] {
        let phase = &figures[setup];
        assert_eq!(phase["calls"], 1, "{setup}: {phase}");
        assert_eq!(phase["failed"], 0, "{setup}: {phase}");
        assert_eq!(phase["sas_matched"], 1, "{setup}: {phase}");
        // Relay-only: both ends of the path are relay candidates, the
        // caller's as well as the callee's (the call's policy binds both).
        assert_eq!(phase["ends_on_relay"], on_relay, "{setup}: {phase}");
        assert!(phase["clicks_heard"].as_u64().unwrap() > 0, "{setup}: {phase}");
        for figure in
            ["dial_to_ringing_ms_p99", "answer_to_first_audio_ms_p99", "mouth_to_ear_ms_p50", "cpu_per_call_pct"]
        {
            assert!(phase[figure].as_f64().is_some_and(|value| value > 0.0), "{setup} {figure}: {phase}");
        }
    }
}

/// Redis is killed under the two signaling nodes that carry a call between
/// two softphones (one on each node) and started again from its append-only
/// file: the softphones reconnect and resume, the caller restarts ICE, and
/// the call keeps its audio both ways and ends as the user hung it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_keeps_its_audio_while_the_clusters_redis_restarts() {
    let mut redis = crate::faults::PrivateRedis::start();
    let server = Server::start(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let node_a = crate::faults::signaling_node(&server, &redis, dir.path(), "a").await;
    let node_b = crate::faults::signaling_node(&server, &redis, dir.path(), "b").await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&server.url, &server, BOB).await;
    // Each softphone signals through its node and signs in through the
    // accounts service.
    let accounts = ["--accounts-server", server.url.as_str()];
    let answering = bob.spawn(&node_b.url, &[&accounts[..], &["answer", "--auto", "--wait-s", "60"]].concat(), 880);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.spawn(&node_a.url, &[&accounts[..], &["dial", BOB]].concat(), 440);
    dialing.wait_for("connected over").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.spawn();
    dialing.wait_for("resumed").await;
    let (a, b) = (dialing.report().await, answering.report().await);
    assert_same_sas(&a, &b);
    assert_eq!(a["end_reason"], "user_hangup", "{a}");
    assert_eq!(b["end_reason"], "user_hangup", "{b}");
    assert_heard_each_other(&alice, &bob, (&a, &b));
    server.finish().await;
}

/// Real speech (espeak-ng reading a fixed text) through a call on a clean
/// path keeps its quality: PESQ (ITU-T P.862.2, wideband) of what the callee
/// recorded against what the caller sent is at least 3.0 (3.5–3.7 measured,
/// the less on a loaded machine), so a broken audio path (the wrong rate, a
/// gap, the jitter buffer dropping frames) cannot pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_through_a_call_keeps_its_quality() {
    const TEXT: &str = "Courier calls are encrypted from one end to the other. \
        Compare the four pictures with the person you are talking to. \
        If they differ, someone is listening in, so hang up and call again.";
    let dir = tempfile::tempdir().unwrap();
    let speech = spoken(dir.path(), TEXT);
    // Two seconds of silence first, which the call's set-up may eat, and one after.
    let sent = dir.path().join("sent.wav");
    write_wav(&sent, &[&[0; 96_000], &speech, &[0; 48_000]]);
    let seconds = (speech.len() as f64 / 48_000.0 + 3.5).ceil();

    let server = Server::start(Db::Sqlite).await;
    let alice = Softphone::login(&server.url, &server, ALICE).await;
    let bob = Softphone::login(&server.url, &server, BOB).await;
    let answering = bob.spawn_for(&server.url, &["answer", "--auto", "--wait-s", "60"], 880, seconds + 2.0);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.spawn_playing(&server.url, &["dial", BOB], sent.to_str().unwrap(), seconds);
    let (a, b) = (dialing.report().await, answering.report().await);
    let score = pesq_score(&sent, &bob.recording()).unwrap_or_else(|error| panic!("{error}\n{a}\n{b}"));
    println!("PESQ MOS-LQO, clean loopback path: {score}");
    assert!(score >= 3.0, "MOS-LQO {score} < 3.0:\n{a}\n{b}");
    server.finish().await;
}

/// `text` spoken by espeak-ng, as 16-bit samples at 48 kHz.
pub(crate) fn spoken(dir: &Path, text: &str) -> Vec<i16> {
    let path = dir.join("spoken.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w", path.to_str().unwrap(), text])
        .status()
        .expect("espeak-ng runs (./scripts/test installs it)");
    assert!(status.success());
    read_wav(&path).unwrap().iter().map(|value| (value * 32_767.0) as i16).collect()
}

/// A 48 kHz WAV of `parts`, one after the other.
pub(crate) fn write_wav(path: &Path, parts: &[&[i16]]) {
    let mut sink = courier_calls::audio::WavSink::create(path).unwrap();
    for part in parts {
        sink.write(part).unwrap();
    }
    sink.finish().unwrap();
}

/// PESQ MOS-LQO (P.862.2, wideband) of `heard` against `sent`, by
/// `scripts/pesq-score`; the script's complaint when it cannot score.
pub(crate) fn pesq_score(sent: &Path, heard: &Path) -> Result<f64, String> {
    let python = std::env::var_os("COURIER_PESQ_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/pesq/bin/python"));
    assert!(python.exists(), "{}: ./scripts/test installs PESQ (or set COURIER_PESQ_PYTHON)", python.display());
    let output = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pesq-score"))
        .args([sent, heard])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    printed
        .trim()
        .parse()
        .map_err(|_| format!("pesq-score printed {printed:?}: {}", String::from_utf8_lossy(&output.stderr)))
}
