//! What the benchmarks share: clients run in parallel with latency
//! histograms, progress bars, a webhook for sign-in codes, child servers,
//! CPU accounting and CPU affinity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use courier_common::sync::lock;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// `courier serve` flags that deliver sign-in codes to `hook_url` (a
/// [`code_hook`]), with no per-address limit on code requests.
pub fn webhook_args(hook_url: &str) -> [&str; 6] {
    ["--code-sender", "webhook", "--code-webhook-url", hook_url, "--sign-in-codes-per-addr-per-hour-max", "0"]
}

/// The header read timeout of the servers the benchmarks run in-process (`courier serve`'s default).
/// The server's connection handling as `courier serve` has it, without the
/// per-address cap: every benchmark client comes from one address.
pub fn connection_limits() -> courier_server::ConnectionLimits {
    courier_server::ConnectionLimits::unlimited(Duration::from_secs(
        courier_server::config::HEADER_READ_TIMEOUT_S_DEFAULT,
    ))
}

/// `courier serve` options for a server a benchmark runs in-process.
pub fn serve_options(args: &[&str]) -> Result<courier_server::ServeOptions, String> {
    let args = args.iter().map(std::ffi::OsString::from);
    Ok(courier_server::ServeCommand::parse_args(args)?.options)
}

/// A progress bar on stderr, hidden when the figures go out as JSON.
pub fn progress(message: &str, length: u64, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:32}] {pos}/{len} {per_sec}").expect("a valid template"),
    );
    bar.set_message(message.to_owned());
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

pub struct Phase {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Phase {
    /// Completed operations a second.
    pub fn per_s(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `work(index, client)` for indexes 0.. on `clients` tasks until
/// `total` are done or `limit` has passed.
pub async fn run_clients<F, Fut>(
    clients: usize,
    total: u64,
    limit: Duration,
    bar: &ProgressBar,
    work: F,
) -> Result<Phase, String>
where
    F: Fn(u64, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for client in 0..clients.max(1) {
        let (work, next, stop, bar) = (work.clone(), next.clone(), stop.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("3 significant figures is a valid precision");
            let (mut completed, mut failed, mut first_error) = (0u64, 0u64, None);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let begun = Instant::now();
                match work(index, client).await {
                    Ok(()) => {
                        completed += 1;
                        let _ = latency.record(begun.elapsed().as_micros() as u64);
                    }
                    Err(error) => {
                        failed += 1;
                        first_error.get_or_insert(error);
                    }
                }
                bar.inc(1);
            }
            (completed, failed, latency, first_error)
        }));
    }
    let mut phase = Phase {
        completed: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3).expect("3 significant figures is a valid precision"),
    };
    for task in tasks {
        let (completed, failed, latency, error) = task.await.map_err(|e| e.to_string())?;
        phase.completed += completed;
        phase.failed += failed;
        phase.latency.add(latency).map_err(|e| e.to_string())?;
        if let Some(error) = error {
            tracing::warn!(%error, "a request failed");
        }
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

/// Sign-in codes by phone number, as a server's webhook delivered them.
pub type Codes = Arc<Mutex<HashMap<String, String>>>;

/// A local receiver for a server's `--code-sender webhook`: its URL, and the
/// codes it has been sent.
pub async fn code_hook() -> Result<(String, Codes), String> {
    let codes: Codes = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
    let url = format!("http://{}/hook", listener.local_addr().map_err(|error| error.to_string())?);
    let sink = codes.clone();
    let hook = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                if let (Some(phone), Some(code)) = (body["phone"].as_str(), body["code"].as_str()) {
                    lock(&sink).insert(phone.to_owned(), code.to_owned());
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, hook).await });
    Ok((url, codes))
}

/// One whole sign-in: request a code (delivered to our webhook), then use
/// it; returns the session (tokens and account).
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    phone: &str,
    codes: &Mutex<HashMap<String, String>>,
) -> Result<serde_json::Value, String> {
    let response = http
        .post(format!("{base}/v1/auth/codes"))
        .json(&json!({"phone": phone}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Err(format!("code request: {}", response.status()));
    }
    let code = lock(codes).remove(phone).ok_or("the webhook got no code")?;
    let response = http
        .post(format!("{base}/v1/auth/sessions"))
        .json(&json!({"phone": phone, "code": code, "device_name": "bench"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::CREATED {
        return Err(format!("sign-in: {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// How long a server started by a benchmark may take to say where it listens.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines a child `courier serve` prints on stdout.
pub type ServeLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts `courier serve <args>` as a child process on a free port, its data
/// in `scratch`, logging warnings only; returns it and its stdout lines.
/// With `cpus`, the server is confined to them.
pub fn spawn_serve(
    scratch: &std::path::Path,
    args: &[&str],
    cpus: Option<&[usize]>,
) -> Result<(tokio::process::Child, ServeLines), String> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut command = tokio::process::Command::new(exe);
    affinity::confine(&mut command, cpus);
    let mut child = command
        .arg("serve")
        .arg("--data-dir")
        .arg(scratch)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("COURIER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start courier serve: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    Ok((child, tokio::io::BufReader::new(stdout).lines()))
}

/// The next line a child server prints, within the start-up timeout.
pub async fn next_serve_line(lines: &mut ServeLines) -> Result<String, String> {
    tokio::time::timeout(SERVE_START_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| "courier serve did not start in time")?
        .map_err(|error| error.to_string())?
        .ok_or_else(|| "courier serve exited".to_owned())
}

/// A loopback port free for both UDP and TCP (a server may take either).
pub fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
        let port = udp.local_addr().map_err(|error| error.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

/// CPU seconds (user and system) process `pid` has used so far; 0 when it
/// cannot be read.
pub fn cpu_s(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0.0, |stat| stat_cpu_s(&stat).1)
}

/// The command name and CPU seconds (user and system) of a `/proc/…/stat` line.
fn stat_cpu_s(stat: &str) -> (&str, f64) {
    let (head, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
    let name = head.split_once('(').map_or("", |(_, name)| name);
    // utime and stime are fields 14 and 15, after the command name in parentheses.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |both| both.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    (name, ticks as f64 / 100.0)
}

/// Where the machine's CPU time went, as a snapshot to subtract from a
/// later one: the whole machine's busy and idle time (`/proc/stat`), this
/// process's, its threads' by name, and another process's (the database's
/// backend serving a connection, when it runs on this machine).
pub struct CpuTimes {
    machine_busy_s: f64,
    machine_idle_s: f64,
    process_s: f64,
    threads_s: HashMap<String, f64>,
    other_s: f64,
}

impl CpuTimes {
    /// The times now, with process `other`'s when given.
    pub fn now(other: Option<u32>) -> Self {
        let (machine_busy_s, machine_idle_s) = Self::machine();
        let mut threads_s: HashMap<String, f64> = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
                    let (name, cpu_s) = stat_cpu_s(&stat);
                    *threads_s.entry(name.to_owned()).or_default() += cpu_s;
                }
            }
        }
        CpuTimes {
            machine_busy_s,
            machine_idle_s,
            process_s: cpu_s(std::process::id()),
            threads_s,
            other_s: other.map_or(0.0, cpu_s),
        }
    }

    /// All CPUs' busy and idle (with I/O wait) seconds since boot.
    fn machine() -> (f64, f64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("cpu "))
            .map(|rest| rest.split_whitespace().filter_map(|t| t.parse().ok()).collect())
            .unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest time is within user).
        let all: u64 = ticks.iter().take(8).sum();
        let idle: u64 = ticks.get(3..5).map_or(0, |both| both.iter().sum());
        (all.saturating_sub(idle) as f64 / 100.0, idle as f64 / 100.0)
    }

    /// What was spent from `earlier` to `self`, per one of `operations`,
    /// as figures named `{prefix}…`: microseconds of CPU of the whole
    /// machine, of this process, of its thread `thread`, and of the other
    /// process when it was measured, and the machine's idle share.
    pub fn figures_since(
        &self,
        earlier: &CpuTimes,
        operations: u64,
        (prefix, unit): (&str, &str),
        thread: Option<&str>,
        other: Option<&str>,
        figures: &mut serde_json::Value,
    ) {
        let per_op = |seconds: f64| (seconds * 1e6 / operations.max(1) as f64 * 10.0).round() / 10.0;
        let busy = self.machine_busy_s - earlier.machine_busy_s;
        let idle = self.machine_idle_s - earlier.machine_idle_s;
        figures[format!("{prefix}machine_cpu_us_per_{unit}")] = json!(per_op(busy));
        figures[format!("{prefix}machine_idle_share")] =
            json!((idle / (busy + idle).max(1e-9) * 100.0).round() / 100.0);
        figures[format!("{prefix}process_cpu_us_per_{unit}")] = json!(per_op(self.process_s - earlier.process_s));
        if let Some(thread) = thread {
            let spent = |times: &CpuTimes| times.threads_s.get(thread).copied().unwrap_or(0.0);
            figures[format!("{prefix}{}_cpu_us_per_{unit}", thread.replace('-', "_"))] =
                json!(per_op(spent(self) - spent(earlier)));
        }
        if let Some(other) = other {
            figures[format!("{prefix}{other}_cpu_us_per_{unit}")] = json!(per_op(self.other_s - earlier.other_s));
        }
    }
}

/// CPU affinity for benchmarks whose server and load generator would
/// otherwise preempt each other on a small machine: the generator keeps the
/// first half of the CPUs this process may use and each server under test
/// gets the rest. Worker pools sized by `available_parallelism` (tokio's,
/// Node's) then match the cores each side has.
pub mod affinity {
    /// The CPUs this process may run on, in order.
    pub fn allowed() -> Vec<usize> {
        // SAFETY: `set` is a properly sized, zeroed cpu_set_t that the call fills.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
        }
    }

    /// `(load generator, server)` halves of the CPUs allowed now, or `None`
    /// with fewer than two CPUs.
    pub fn split() -> Option<(Vec<usize>, Vec<usize>)> {
        let cpus = allowed();
        let (generator, server) = cpus.split_at(cpus.len() / 2);
        (cpus.len() >= 2).then(|| (generator.to_vec(), server.to_vec()))
    }

    fn set_of(cpus: &[usize]) -> libc::cpu_set_t {
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(cpu, &mut set);
            }
            set
        }
    }

    /// Confines the calling thread (after fork: the process) to `set`. Makes
    /// one system call and allocates nothing, so it may run between fork and
    /// exec.
    fn apply(set: &libc::cpu_set_t) -> std::io::Result<()> {
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let done = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Confines the calling thread (and the threads it starts afterwards) to `cpus`.
    pub fn pin_this_thread(cpus: &[usize]) -> Result<(), String> {
        apply(&set_of(cpus)).map_err(|error| error.to_string())
    }

    /// Starts `command`'s process confined to `cpus`, when given.
    pub fn confine(command: &mut tokio::process::Command, cpus: Option<&[usize]>) {
        let Some(cpus) = cpus else { return };
        let set = set_of(cpus);
        // SAFETY: between fork and exec the closure only makes one
        // async-signal-safe system call on memory it owns.
        unsafe {
            command.pre_exec(move || apply(&set));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_whatever_the_name_holds() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194304 10 0 0 0 150 25 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_cpu_s(stat), ("tokio (rt) 1", 1.75));
        assert_eq!(stat_cpu_s("garbage"), ("", 0.0));
    }

    #[test]
    fn cpu_figures_are_per_operation_and_split_by_thread_and_process() {
        let times = |[machine_busy_s, machine_idle_s, process_s, writer_s, other_s]: [f64; 5]| CpuTimes {
            machine_busy_s,
            machine_idle_s,
            process_s,
            threads_s: HashMap::from([("ledger-writer".to_owned(), writer_s)]),
            other_s,
        };
        let (earlier, later) = (times([10.0, 5.0, 4.0, 1.0, 2.0]), times([13.0, 6.0, 6.0, 1.5, 3.0]));
        let mut figures = json!({});
        later.figures_since(&earlier, 10_000, ("x_", "transfer"), Some("ledger-writer"), Some("backend"), &mut figures);
        assert_eq!(
            figures,
            json!({
                "x_machine_cpu_us_per_transfer": 300.0,
                "x_machine_idle_share": 0.25,
                "x_process_cpu_us_per_transfer": 200.0,
                "x_ledger_writer_cpu_us_per_transfer": 50.0,
                "x_backend_cpu_us_per_transfer": 100.0,
            })
        );
    }

    #[test]
    fn the_machine_and_this_process_have_used_some_cpu() {
        let now = CpuTimes::now(Some(std::process::id()));
        assert!(now.machine_busy_s > 0.0 && now.machine_idle_s >= 0.0);
        // Read in this order, and CPU time only grows (each thread's figure
        // rounded to a tick on its own).
        assert!(now.threads_s.values().sum::<f64>() <= now.process_s + 0.01 * now.threads_s.len() as f64);
        assert!(now.other_s >= now.process_s);
        assert!(!now.threads_s.is_empty());
    }
}
