//! `courier bench calls`: K softphone pairs in real calls at once (the
//! `calls` library: WebRTC, DTLS-SRTP, Opus) through a child `courier serve`
//! on loopback: peer to peer, relay-only through the embedded TURN relay,
//! and relay-only through coturn (`--turn external`) for comparison.
//! Measured: dial → ringing, answer → first audio, mouth-to-ear latency
//! (clicks sent by one side, found in what the other side decoded) and CPU
//! per call.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use courier_calls::audio::{ClickDetector, FRAME_SAMPLES, SAMPLE_RATE, Source};
use courier_calls::call::{AudioTap, CallReport, CallSetup, round2};
use courier_calls::peer::{IceServer, PeerSettings};
use courier_common::sync::lock;
use serde_json::{Value, json};

/// How often each side clicks: far apart enough that a click is never
/// matched with the one before it.
const CLICK_EVERY_MS: u32 = 500;
/// A click heard later than this after the last one sent is not matched.
const CLICK_MATCH_MS: f64 = 400.0;
/// Bounds of a call's ringing and setup, so a broken run still ends.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The latency targets, printed with the figures.
const TARGET_RINGING_MS: f64 = 300.0;
const TARGET_FIRST_AUDIO_MS: f64 = 1_000.0;
const TARGET_MOUTH_TO_EAR_MS: f64 = 80.0;

#[derive(Args)]
pub struct CallsBench {
    /// Softphone pairs in calls at the same time.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Seconds each call lasts after the answer.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[command(flatten)]
    coturn: crate::turn::CoturnArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A signed-in softphone account.
#[derive(Clone)]
struct Account {
    phone: String,
    token: String,
    ice_servers: Vec<IceServer>,
}

pub async fn run(bench: CallsBench) -> Result<(), String> {
    if !(1..=100).contains(&bench.pairs) {
        return Err("--pairs is 1 to 100".into());
    }
    if !(2..=300).contains(&bench.duration_s) {
        return Err("--duration-s is 2 to 300".into());
    }
    let duration = Duration::from_secs(bench.duration_s);
    // The embedded relay on loopback relays between loopback peers by default.
    let mut embedded = Deployment::start(&["--turn-listen", "127.0.0.1:0"], &bench).await?;
    let p2p = embedded.phase(duration, false, bench.json).await;
    let relay = match &p2p {
        Ok(_) => embedded.phase(duration, true, bench.json).await,
        Err(_) => Err(String::new()),
    };
    embedded.stop().await;
    let (p2p, relay) = (p2p?, relay?);
    let coturn = if bench.coturn.no_coturn {
        None
    } else {
        let coturn = crate::turn::Relay::coturn(&bench.coturn.turnserver).await?;
        let urls = format!("turn:{}?transport=udp", coturn.addr);
        let secret = crate::turn::SECRET;
        let mut external =
            Deployment::start(&["--turn", "external", "--turn-secret", secret, "--turn-urls", &urls], &bench).await?;
        let figures = external.phase(duration, true, bench.json).await;
        external.stop().await;
        Some(figures?)
    };

    let figures = json!({
        "bench": "calls",
        "pairs": bench.pairs,
        "duration_s": bench.duration_s,
        "threads": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "targets": {
            "dial_to_ringing_ms": TARGET_RINGING_MS,
            "answer_to_first_audio_ms": TARGET_FIRST_AUDIO_MS,
            "mouth_to_ear_ms": TARGET_MOUTH_TO_EAR_MS,
        },
        "p2p": p2p,
        "relay": relay,
        "relay_coturn": coturn,
    });
    if bench.json {
        println!("{figures}");
    } else {
        print_table(&figures);
    }
    Ok(())
}

/// A child `courier serve` and the signed-in accounts that call through it.
struct Deployment {
    server: tokio::process::Child,
    server_pid: u32,
    base: String,
    http: reqwest::Client,
    callers: Vec<Account>,
    callees: Vec<Account>,
    _scratch: tempfile::TempDir,
}

impl Deployment {
    async fn start(turn_args: &[&str], bench: &CallsBench) -> Result<Deployment, String> {
        let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
        let (hook_url, codes) = crate::support::code_hook().await?;
        let mut args = crate::support::webhook_args(&hook_url).to_vec();
        args.extend_from_slice(turn_args);
        let (server, mut lines) = crate::support::spawn_serve(scratch.path(), &args, None)?;
        let line = crate::support::next_serve_line(&mut lines).await?;
        let base = line.strip_prefix("courier listening on ").ok_or("unexpected first line")?.to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server_pid = server.id().ok_or("courier serve exited")?;
        let http = courier_common::client::http_client_builder().build().map_err(|error| error.to_string())?;
        let mut callers = Vec::with_capacity(bench.pairs);
        let mut callees = Vec::with_capacity(bench.pairs);
        for index in 0..bench.pairs {
            callers.push(account(&http, &base, &format!("+79161{index:06}"), &codes).await?);
            callees.push(account(&http, &base, &format!("+79162{index:06}"), &codes).await?);
        }
        Ok(Deployment { server, server_pid, base, http, callers, callees, _scratch: scratch })
    }

    /// K calls at once, relay-only (every callee with `p2p: never`) or not.
    async fn phase(&mut self, duration: Duration, relay_only: bool, quiet: bool) -> Result<Value, String> {
        let p2p = if relay_only { "never" } else { "always" };
        for callee in &self.callees {
            let change = json!({ "p2p": p2p });
            courier_common::client::request(
                &self.http,
                &self.base,
                reqwest::Method::PATCH,
                "/v1/me/settings",
                Some(&callee.token),
                Some(change),
            )
            .await?;
        }
        phase(&self.base, &self.callers, &self.callees, duration, self.server_pid, relay_only, quiet).await
    }

    async fn stop(mut self) {
        let _ = self.server.kill().await;
        let _ = self.server.wait().await;
    }
}

fn print_table(figures: &Value) {
    println!("{} pairs, {} s calls", figures["pairs"], figures["duration_s"]);
    println!("{:<34} {:>14} {:>14} {:>14}", "", "p2p", "relay", "relay (coturn)");
    let (p2p, relay, coturn) = (&figures["p2p"], &figures["relay"], &figures["relay_coturn"]);
    if let Some(keys) = p2p.as_object() {
        for key in keys.keys() {
            let cell = |phase: &Value| if phase.is_null() { "-".to_owned() } else { phase[key].to_string() };
            println!("{key:<34} {:>14} {:>14} {:>14}", cell(p2p), cell(relay), cell(coturn));
        }
    }
}

/// Signs `phone` in and fetches its ICE servers.
async fn account(
    http: &reqwest::Client,
    base: &str,
    phone: &str,
    codes: &crate::support::Codes,
) -> Result<Account, String> {
    let session = crate::support::sign_in(http, base, phone, codes).await?;
    let token = session["access_token"].as_str().ok_or("no access token")?.to_owned();
    let ice =
        courier_common::client::request(http, base, reqwest::Method::GET, "/v1/calls/ice-servers", Some(&token), None)
            .await?;
    Ok(Account { phone: phone.to_owned(), token, ice_servers: IceServer::list_from_json(&ice) })
}

/// Clicks of one direction of one call: when each left the sender's
/// microphone and when each reached the receiver's speaker.
#[derive(Default)]
struct Clicks {
    sent: Onsets,
    heard: Onsets,
}

/// The clicks found in one stream of audio, as instants.
#[derive(Default)]
struct Onsets(Mutex<(ClickDetector, Vec<Instant>)>);

impl Onsets {
    /// Finds the clicks that begin in `samples`; `when` gives the instant of
    /// the sample at an offset.
    fn find(&self, samples: &[i16], when: impl Fn(usize) -> Instant) {
        let mut found = lock(&self.0);
        let (detector, times) = &mut *found;
        times.extend(detector.onsets(samples).into_iter().map(when));
    }

    fn times(&self) -> Vec<Instant> {
        lock(&self.0).1.clone()
    }
}

impl Clicks {
    /// The sender's tap. A frame handed to the encoder at `at` is taken as
    /// a microphone's: its last sample captured at `at`, its first 20 ms
    /// earlier, so packetisation counts as it would on a device.
    fn mouth(self: &Arc<Self>) -> AudioTap {
        let clicks = self.clone();
        Arc::new(move |frame: &[i16], at: Instant| {
            clicks.sent.find(frame, |offset| at - samples_to_duration(FRAME_SAMPLES - offset));
        })
    }

    /// The receiver's tap. A decoded block handed on at `at` plays from
    /// `at`, one sample after another.
    fn ear(self: &Arc<Self>) -> AudioTap {
        let clicks = self.clone();
        Arc::new(move |block: &[i16], at: Instant| clicks.heard.find(block, |offset| at + samples_to_duration(offset)))
    }

    /// Mouth-to-ear latencies (ms) of the clicks heard, and how many were sent.
    fn latencies(&self) -> (Vec<f64>, usize) {
        let (sent, heard) = (self.sent.times(), self.heard.times());
        let mut latencies = Vec::new();
        for at in heard {
            // The latest click sent before it was heard.
            if let Some(sent_at) = sent.iter().rev().find(|sent_at| **sent_at <= at) {
                let ms = at.duration_since(*sent_at).as_secs_f64() * 1_000.0;
                if ms < CLICK_MATCH_MS {
                    latencies.push(ms);
                }
            }
        }
        (latencies, sent.len())
    }
}

fn samples_to_duration(samples: usize) -> Duration {
    Duration::from_secs_f64(samples as f64 / f64::from(SAMPLE_RATE))
}

/// What one call produced.
struct CallResult {
    caller: CallReport,
    callee: CallReport,
    latencies: Vec<f64>,
    clicks_sent: usize,
}

fn setup(base: &str, account: &Account, duration: Duration, mouth: AudioTap, ear: AudioTap) -> CallSetup {
    CallSetup {
        server: base.to_owned(),
        tokens: courier_calls::signaling_client::fixed_token(&account.token),
        ice_servers: account.ice_servers.clone(),
        relay_only: false,
        peer: PeerSettings { host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), ..PeerSettings::default() },
        play: Source::Clicks { every: (CLICK_EVERY_MS * SAMPLE_RATE / 1_000) as usize, position: 0 },
        record: None,
        duration: Some(duration),
        progress: Arc::new(|_: &str| {}),
        mouth: Some(mouth),
        ear: Some(ear),
    }
}

/// One call: the callee waits, the caller dials it; both click at each other.
async fn one_call(
    base: String,
    caller: Account,
    callee: Account,
    duration: Duration,
    relay_only: bool,
) -> Result<CallResult, String> {
    let (there, back) = (Arc::new(Clicks::default()), Arc::new(Clicks::default()));
    let caller_setup = setup(&base, &caller, duration, there.mouth(), back.ear());
    let mut callee_setup = setup(&base, &callee, duration, back.mouth(), there.ear());
    callee_setup.relay_only = relay_only;
    let waiting = Arc::new(tokio::sync::Notify::new());
    let notify = waiting.clone();
    callee_setup.progress = Arc::new(move |line: &str| {
        if line == "waiting for a call" {
            notify.notify_one();
        }
    });
    let answering = tokio::spawn(async move {
        courier_calls::call::answer_next(&callee_setup, Some(CALL_TIMEOUT), None, std::future::pending()).await
    });
    tokio::time::timeout(CALL_TIMEOUT, waiting.notified()).await.map_err(|_| "the callee never listened")?;
    let dialing = courier_calls::call::dial(&caller_setup, &callee.phone, std::future::pending());
    let caller_report = tokio::time::timeout(CALL_TIMEOUT + duration, dialing)
        .await
        .map_err(|_| "the call never ended")?
        .map_err(|error| format!("caller: {error}"))?;
    let callee_report = tokio::time::timeout(CALL_TIMEOUT, answering)
        .await
        .map_err(|_| "the callee never hung up")?
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("callee: {error}"))?;
    let (mut latencies, mut clicks_sent) = there.latencies();
    let (more, sent) = back.latencies();
    latencies.extend(more);
    clicks_sent += sent;
    Ok(CallResult { caller: caller_report, callee: callee_report, latencies, clicks_sent })
}

/// K calls at once; their figures.
async fn phase(
    base: &str,
    callers: &[Account],
    callees: &[Account],
    duration: Duration,
    server_pid: u32,
    relay_only: bool,
    quiet: bool,
) -> Result<Value, String> {
    let name = if relay_only { "relay-only" } else { "p2p" };
    if !quiet {
        eprintln!("{name}: {} calls of {} s at once", callers.len(), duration.as_secs());
    }
    let own_pid = std::process::id();
    let cpu_before = (crate::support::cpu_s(own_pid), crate::support::cpu_s(server_pid));
    let started = Instant::now();
    let tasks: Vec<_> = callers
        .iter()
        .zip(callees)
        .map(|(caller, callee)| {
            tokio::spawn(one_call(base.to_owned(), caller.clone(), callee.clone(), duration, relay_only))
        })
        .collect();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.map_err(|error| error.to_string()).and_then(|result| result) {
            Ok(result) => results.push(result),
            Err(error) => failures.push(error),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let clients_cpu = crate::support::cpu_s(own_pid) - cpu_before.0;
    let server_cpu = crate::support::cpu_s(server_pid) - cpu_before.1;
    if results.is_empty() {
        return Err(format!("{name}: every call failed: {}", failures.join("; ")));
    }
    for failure in &failures {
        tracing::warn!(phase = name, %failure, "a call failed");
    }

    let reports = || results.iter().flat_map(|result| [&result.caller, &result.callee]);
    let ringing: Vec<f64> = results.iter().filter_map(|r| r.caller.ringing_ms).map(|ms| ms as f64).collect();
    let setup: Vec<f64> = results.iter().filter_map(|r| r.caller.setup_ms).map(|ms| ms as f64).collect();
    let first_audio: Vec<f64> = reports().filter_map(|r| r.first_audio_ms).map(|ms| ms as f64).collect();
    let latencies: Vec<f64> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    let clicks_sent: usize = results.iter().map(|r| r.clicks_sent).sum();
    let jitter: Vec<f64> = reports().filter_map(|r| r.jitter_ms).collect();
    let rtt: Vec<f64> = reports().filter_map(|r| r.rtt_ms).collect();
    let loss: Vec<f64> = reports().filter_map(|r| r.packet_loss_pct).collect();
    let relayed = reports().filter(|r| r.candidate_type.as_deref() == Some("relay")).count();
    let calls = results.len() as f64;
    let per_call_pct = |cpu_s: f64| round2(cpu_s / calls / elapsed * 100.0);
    let sas_matched = results.iter().filter(|r| r.caller.sas.is_some() && r.caller.sas == r.callee.sas).count();
    Ok(json!({
        "calls": results.len(),
        "failed": failures.len(),
        "sas_matched": sas_matched,
        "ends_on_relay": relayed,
        "dial_to_ringing_ms_p50": quantile(&ringing, 0.50),
        "dial_to_ringing_ms_p99": quantile(&ringing, 0.99),
        "answer_to_first_audio_ms_p50": quantile(&first_audio, 0.50),
        "answer_to_first_audio_ms_p99": quantile(&first_audio, 0.99),
        "dial_to_connected_ms_p50": quantile(&setup, 0.50),
        "dial_to_connected_ms_p99": quantile(&setup, 0.99),
        "mouth_to_ear_ms_p50": quantile(&latencies, 0.50),
        "mouth_to_ear_ms_p99": quantile(&latencies, 0.99),
        "mouth_to_ear_ms_max": quantile(&latencies, 1.0),
        "clicks_sent": clicks_sent,
        "clicks_heard": latencies.len(),
        "jitter_ms_p50": quantile(&jitter, 0.50),
        "rtt_ms_p50": quantile(&rtt, 0.50),
        "packet_loss_pct_max": quantile(&loss, 1.0),
        "cpu_per_call_pct": per_call_pct(clients_cpu + server_cpu),
        "softphones_cpu_per_call_pct": per_call_pct(clients_cpu),
        "server_cpu_per_call_pct": per_call_pct(server_cpu),
    }))
}

/// The `q` quantile (nearest rank) of `values`, or null when there are none.
fn quantile(values: &[f64], q: f64) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    json!(round2(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.50), json!(50.0));
        assert_eq!(quantile(&values, 0.99), json!(99.0));
        assert_eq!(quantile(&values, 1.0), json!(100.0));
        assert_eq!(quantile(&[7.0], 0.99), json!(7.0));
        assert_eq!(quantile(&[], 0.5), Value::Null);
    }

    /// A click is matched with the last one sent before it, and one heard too
    /// long after any is left out.
    #[test]
    fn clicks_are_matched_with_the_last_sent() {
        let clicks = Arc::new(Clicks::default());
        let start = Instant::now();
        let ms = |value: u64| start + Duration::from_millis(value);
        clicks.sent.0.lock().unwrap().1.extend([ms(0), ms(500), ms(1_000)]);
        clicks.heard.0.lock().unwrap().1.extend([ms(40), ms(560), ms(1_450)]);
        let (latencies, sent) = clicks.latencies();
        assert_eq!(sent, 3);
        assert_eq!(latencies.len(), 2);
        assert!((latencies[0] - 40.0).abs() < 0.01 && (latencies[1] - 60.0).abs() < 0.01, "{latencies:?}");
    }
}
