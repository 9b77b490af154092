//! `courier call`: the softphone. Signs in with a phone number, places and
//! answers calls with real WebRTC and Opus audio, shows the SAS, the path
//! and the figures, and keeps its login in a profile directory so two
//! softphones can run side by side.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::audio::Source;
use crate::call::{CallReport, CallSetup};
use crate::peer::{IceServer, PeerSettings};
use crate::signaling_client::{AccessToken, TokenSource};
use clap::{Args, Subcommand, ValueEnum};
use courier_common::time::now_s;
use courier_protocol::HangupReason;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Args)]
pub struct CallArgs {
    /// The Courier server.
    #[arg(long, env = "COURIER_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Split deployments without a gateway: where the accounts service
    /// answers (sign-in, token refresh, settings); default: --server.
    #[arg(long, env = "COURIER_ACCOUNTS_URL")]
    accounts_server: Option<String>,
    /// Where the login lives (default: $HOME/.courier).
    #[arg(long, env = "COURIER_PROFILE")]
    profile: Option<PathBuf>,
    /// Print results as JSON (dial and answer end with one JSON object).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CallCommand,
}

#[derive(Subcommand)]
enum CallCommand {
    /// Sign in with a phone number and a code sent to it.
    Login {
        #[arg(long)]
        phone: String,
        /// The code (asked for on the terminal when not given).
        #[arg(long)]
        code: Option<String>,
        #[arg(long, default_value = "courier call")]
        device_name: String,
    },
    /// Call someone (an E.164 phone number or an account id).
    Dial {
        to: String,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Answer the next incoming call.
    Answer {
        /// Take the next call without asking (for scripts).
        #[arg(long)]
        auto: bool,
        /// Give up when no call comes within this many seconds.
        #[arg(long)]
        wait_s: Option<u64>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// My calls, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show my call settings, or change them.
    Settings {
        #[arg(long, value_enum)]
        calls_from: Option<CallsFrom>,
        #[arg(long, value_enum)]
        p2p: Option<P2p>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CallsFrom {
    Everybody,
    Nobody,
}

#[derive(Clone, Copy, ValueEnum)]
enum P2p {
    Always,
    Never,
}

#[derive(Args)]
struct MediaArgs {
    /// What to send: a WAV file, tone:HZ or clicks:MS (default: silence).
    #[arg(long)]
    play: Option<String>,
    /// Record what the other side sends to this WAV file (48 kHz mono).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Hang up this many seconds after the answer (default: Ctrl-C ends the call).
    #[arg(long)]
    duration: Option<f64>,
    /// The interface for direct (host) candidates; 0.0.0.0 means every one but loopback.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
}

/// The login kept in the profile directory.
#[derive(Serialize, Deserialize)]
struct Login {
    server: String,
    phone: String,
    account_id: String,
    device_id: String,
    access_token: String,
    refresh_token: String,
    /// Unix seconds.
    expires_at: u64,
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    server: String,
    /// The accounts service's base URL (usually `server`).
    accounts: String,
    profile: PathBuf,
}

impl Client {
    fn login_path(&self) -> PathBuf {
        self.profile.join("login.json")
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let accounts = path.starts_with("/v1/auth/") || path == "/v1/me" || path.starts_with("/v1/me/");
        let base = if accounts { &self.accounts } else { &self.server };
        courier_common::client::request(&self.http, base, method, path, token, body).await
    }

    fn save(&self, login: &Login) -> Result<(), String> {
        std::fs::create_dir_all(&self.profile)
            .map_err(|error| format!("cannot create the profile {}: {error}", self.profile.display()))?;
        let text = serde_json::to_string_pretty(login).map_err(|error| error.to_string())?;
        let temporary = self.profile.join("login.json.new");
        write_private(&temporary, text.as_bytes())
            .and_then(|()| std::fs::rename(&temporary, self.login_path()))
            .map_err(|error| format!("cannot save the login in {}: {error}", self.profile.display()))
    }

    /// The saved login, its access token refreshed when it is about to expire.
    async fn login(&self) -> Result<Login, String> {
        let text = std::fs::read_to_string(self.login_path()).map_err(|_| {
            format!("not signed in (profile {}): run `courier call login --phone +…` first", self.profile.display())
        })?;
        let mut login: Login =
            serde_json::from_str(&text).map_err(|error| format!("{}: {error}", self.login_path().display()))?;
        if login.expires_at <= now_s() + 60 {
            let pair = self
                .send(
                    reqwest::Method::POST,
                    "/v1/auth/refresh",
                    None,
                    Some(json!({"refresh_token": login.refresh_token})),
                )
                .await?;
            login.access_token = pair["access_token"].as_str().unwrap_or_default().to_owned();
            login.refresh_token = pair["refresh_token"].as_str().unwrap_or_default().to_owned();
            login.expires_at = now_s() + pair["expires_in"].as_u64().unwrap_or(0);
            self.save(&login)?;
        }
        Ok(login)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

pub async fn run(args: CallArgs) -> Result<(), String> {
    let profile = match args.profile {
        Some(profile) => profile,
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".courier"))
            .ok_or("set --profile (or COURIER_PROFILE): there is no HOME")?,
    };
    let http = courier_common::client::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| error.to_string())?;
    let server = args.server.trim_end_matches('/').to_owned();
    let accounts =
        args.accounts_server.as_deref().map_or_else(|| server.clone(), |url| url.trim_end_matches('/').to_owned());
    let client = Client { http, server, accounts, profile };
    let json_out = args.json;
    match args.command {
        CallCommand::Login { phone, code, device_name } => login(&client, &phone, code, &device_name, json_out).await,
        CallCommand::Dial { to, media } => {
            let report = place(&client, Some(&to), false, None, media).await?;
            finish(&client, report, json_out).await
        }
        CallCommand::Answer { auto, wait_s, media } => {
            let report = place(&client, None, auto, wait_s.map(Duration::from_secs), media).await?;
            finish(&client, report, json_out).await
        }
        CallCommand::History { limit } => history(&client, limit, json_out).await,
        CallCommand::Settings { calls_from, p2p } => settings(&client, calls_from, p2p, json_out).await,
    }
}

async fn login(
    client: &Client,
    phone: &str,
    code: Option<String>,
    device_name: &str,
    json_out: bool,
) -> Result<(), String> {
    let code = match code {
        Some(code) => code,
        None => {
            client.send(reqwest::Method::POST, "/v1/auth/codes", None, Some(json!({"phone": phone}))).await?;
            eprint!("a code was sent to {phone}; enter it: ");
            let _ = std::io::stderr().flush();
            let line = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("cannot read the code: {error}"))?;
            line.trim().to_owned()
        }
    };
    let session = client
        .send(
            reqwest::Method::POST,
            "/v1/auth/sessions",
            None,
            Some(json!({"phone": phone, "code": code, "device_name": device_name})),
        )
        .await?;
    let login = Login {
        server: client.server.clone(),
        phone: phone.to_owned(),
        account_id: session["account_id"].as_str().unwrap_or_default().to_owned(),
        device_id: session["device_id"].as_str().unwrap_or_default().to_owned(),
        access_token: session["access_token"].as_str().unwrap_or_default().to_owned(),
        refresh_token: session["refresh_token"].as_str().unwrap_or_default().to_owned(),
        expires_at: now_s() + session["expires_in"].as_u64().unwrap_or(0),
    };
    client.save(&login)?;
    if json_out {
        println!("{}", json!({"account_id": login.account_id, "device_id": login.device_id, "phone": phone}));
    } else {
        println!("signed in as {phone} (account {}, device {})", login.account_id, login.device_id);
    }
    Ok(())
}

/// Dials `to`, or answers the next call when `to` is `None`.
async fn place(
    client: &Client,
    to: Option<&str>,
    auto: bool,
    wait: Option<Duration>,
    media: MediaArgs,
) -> Result<CallReport, String> {
    let login = client.login().await?;
    let token = login.access_token.clone();
    let tokens: TokenSource = {
        let client = client.clone();
        Arc::new(move || {
            let client = client.clone();
            Box::pin(async move {
                let login = client.login().await?;
                Ok(AccessToken { token: login.access_token, expires_at_s: login.expires_at })
            })
        })
    };
    let settings = client.send(reqwest::Method::GET, "/v1/me/settings", Some(&token), None).await?;
    let ice = client.send(reqwest::Method::GET, "/v1/calls/ice-servers", Some(&token), None).await?;
    let play = match &media.play {
        Some(spec) => Source::parse(spec).map_err(|error| error.to_string())?,
        None => Source::Silence,
    };
    let duration = match media.duration {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 => {
            Some(Duration::from_secs_f64(seconds))
        }
        Some(_) => return Err("--duration is seconds, more than 0 and at most 86400".into()),
        None => None,
    };
    let setup = CallSetup {
        server: client.server.clone(),
        tokens,
        ice_servers: IceServer::list_from_json(&ice),
        relay_only: settings["p2p"] == "never",
        peer: PeerSettings { host_ip: media.bind, ..PeerSettings::default() },
        play,
        record: media.record,
        duration,
        progress: Arc::new(|line: &str| eprintln!("{line}")),
        mouth: None,
        ear: None,
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = match to {
        Some(to) => crate::call::dial(&setup, to, stop).await,
        None => {
            let decide: Option<crate::call::Decide> = if auto {
                None
            } else {
                Some(Arc::new(|caller: &str| {
                    eprint!("answer the call from {caller}? [Y/n] ");
                    let _ = std::io::stderr().flush();
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    !line.trim().eq_ignore_ascii_case("n")
                }))
            };
            crate::call::answer_next(&setup, wait, decide, stop).await
        }
    };
    result.map_err(|error| error.to_string())
}

async fn finish(client: &Client, report: CallReport, json_out: bool) -> Result<(), String> {
    if report.setup_ms.is_some() {
        let stats = json!({
            "rtt_ms": report.rtt_ms,
            "jitter_ms": report.jitter_ms,
            "packet_loss_pct": report.packet_loss_pct,
            "bitrate_kbps": report.bitrate_kbps,
            "candidate_type": report.candidate_type,
            "setup_ms": report.setup_ms,
            "playout_delay_ms": report.playout_delay_ms,
            "late_frames": report.late_frames,
            "concealed_frames": report.concealed_frames,
        });
        let stats = Value::Object(
            stats
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if let Ok(login) = client.login().await {
            let path = format!("/v1/calls/{}/stats", report.call_id);
            if let Err(error) = client.send(reqwest::Method::POST, &path, Some(&login.access_token), Some(stats)).await
            {
                eprintln!("the call's figures were not recorded: {error}");
            }
        }
    }
    if json_out {
        println!("{}", serde_json::to_string(&report).map_err(|error| error.to_string())?);
    } else {
        let figure = |value: Option<f64>, unit: &str| value.map_or("-".to_owned(), |value| format!("{value} {unit}"));
        println!("call {} ended: {}", report.call_id, report.end_reason);
        if let Some(sas) = &report.sas {
            println!("SAS: {sas} ({})", report.sas_names.join(", "));
        }
        if let Some(warning) = &report.sas_warning {
            println!("WARNING: {warning}");
        }
        println!(
            "path {}, setup {}, RTT {}, jitter {}, loss {}, bitrate {}",
            report.candidate_type.as_deref().unwrap_or("-"),
            figure(report.setup_ms.map(|ms| ms as f64), "ms"),
            figure(report.rtt_ms, "ms"),
            figure(report.jitter_ms, "ms"),
            figure(report.packet_loss_pct, "%"),
            figure(report.bitrate_kbps, "kbit/s"),
        );
    }
    if report.sas_warning.is_some() {
        return Err("the call showed a security warning (see above)".into());
    }
    match no_audio(&report) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Why a call carried no audio, when it did not: its media path never came up.
fn no_audio(report: &CallReport) -> Option<String> {
    if report.setup_ms.is_some() {
        return None;
    }
    let reason = report.end_reason.as_str();
    Some(match HangupReason::parse(reason) {
        Some(HangupReason::IceFailed) => {
            let path = if report.ice_policy == "relay" {
                "through the TURN relay (the call was relay-only: p2p is never on one side); check that the relay \
                 in GET /v1/calls/ice-servers is reachable from both sides"
            } else {
                "directly or through the TURN relay; check both sides' network and the relay in GET /v1/calls/ice-servers"
            };
            format!("the call carried no audio: no media path came up {path}")
        }
        Some(HangupReason::Rejected) => "the call was declined".into(),
        Some(HangupReason::Busy) => "the other side is busy".into(),
        Some(HangupReason::InviteTimeout) => "nobody answered".into(),
        Some(HangupReason::Unavailable) => "nobody was online to answer".into(),
        _ => format!("the call ended ({reason}) before any audio was carried"),
    })
}

async fn history(client: &Client, limit: u32, json_out: bool) -> Result<(), String> {
    let login = client.login().await?;
    let page = client
        .send(reqwest::Method::GET, &format!("/v1/calls/history?limit={limit}"), Some(&login.access_token), None)
        .await?;
    if json_out {
        println!("{page}");
        return Ok(());
    }
    let rows = page["items"].as_array().cloned().unwrap_or_default();
    courier_common::client::print_table(
        &["started_at", "direction", "peer", "duration_s", "end_reason", "call_id"],
        &rows,
    );
    Ok(())
}

async fn settings(
    client: &Client,
    calls_from: Option<CallsFrom>,
    p2p: Option<P2p>,
    json_out: bool,
) -> Result<(), String> {
    let login = client.login().await?;
    let token = Some(login.access_token.as_str());
    let mut change = serde_json::Map::new();
    if let Some(calls_from) = calls_from {
        change.insert(
            "calls_from".into(),
            json!(match calls_from {
                CallsFrom::Everybody => "everybody",
                CallsFrom::Nobody => "nobody",
            }),
        );
    }
    if let Some(p2p) = p2p {
        change.insert(
            "p2p".into(),
            json!(match p2p {
                P2p::Always => "always",
                P2p::Never => "never",
            }),
        );
    }
    let current = if change.is_empty() {
        client.send(reqwest::Method::GET, "/v1/me/settings", token, None).await?
    } else {
        client.send(reqwest::Method::PATCH, "/v1/me/settings", token, Some(Value::Object(change))).await?
    };
    if json_out {
        println!("{current}");
    } else {
        println!("calls_from: {}", current["calls_from"].as_str().unwrap_or("?"));
        println!("p2p: {}", current["p2p"].as_str().unwrap_or("?"));
    }
    Ok(())
}
