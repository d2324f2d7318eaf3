//! `callbridge loadtest`: many simulated phone calls against a bridge process, with the
//! bridge's CPU and memory read from `/proc` and its edge-to-edge latency from `/debug/stats`.
//!
//! By default it starts everything on loopback: the Gemini simulator (in this process, with
//! content recording off), and the bridge as a child process (`callbridge serve`, this same
//! binary) so its CPU and RSS are its own. `--bridge` points it at a bridge that is already
//! running instead (its pid via `--bridge-pid` for CPU and memory).
//!
//! Two shapes of run:
//! - **steady** (default): ramp up `--calls` calls, hold them all for `--hold-secs`, measure
//!   over that window, then hang up.
//! - **soak** (`--soak-secs`): keep `--calls` calls going for that long, each lasting
//!   `--call-secs` and replaced when it ends; samples the bridge's memory every second and
//!   reports whether it settles (growth per call after warm-up).

pub mod caller;
pub mod procfs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use crate::sim::gemini::{GeminiSim, Reply, Scenario, Turn};
use crate::stats::{Histogram, HistogramSnapshot};

/// `callbridge loadtest` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Calls started per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,
    /// Steady run: how long all calls are held together (the measurement window), seconds.
    #[arg(long, default_value_t = 60)]
    pub hold_secs: u64,
    /// Soak run: keep `--calls` calls going for this long, seconds (replaces a steady run).
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// Soak run: how long each call lasts, seconds.
    #[arg(long, default_value_t = 30)]
    pub call_secs: u64,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use a bridge that is already running (`http://host:port`) instead of starting one.
    #[arg(long)]
    pub bridge: Option<String>,
    /// Pid of that bridge, for CPU and memory figures.
    #[arg(long)]
    pub bridge_pid: Option<u32>,
    /// Public URL that bridge is configured with (what the signatures are computed over).
    #[arg(long, default_value = "https://loadtest.invalid")]
    pub public_url: String,
    /// Twilio auth token that bridge checks signatures with (a started bridge gets this one).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", default_value = "loadtest-auth-token")]
    pub auth_token: String,
    /// The model endpoint for a started bridge: any Live WebSocket URL (with
    /// `GEMINI_API_KEY`); default: the built-in simulator.
    #[arg(long)]
    pub gemini_url: Option<String>,
    /// Where a started bridge's log goes (info level, like production).
    #[arg(long, default_value = "target/loadtest-bridge.log")]
    pub bridge_log: PathBuf,
    /// Worker threads of a started bridge's runtime (default: one per core).
    #[arg(long)]
    pub bridge_threads: Option<usize>,
    /// Keep call records (SQLite, beside the generated config) in the bridge it starts, as the
    /// default configuration does (`tests/soak.rs` uses it). Off by default so the published
    /// per-call figures are for the call path alone. With records on, RSS settles after
    /// ~2 000 calls (the worker threads' malloc arenas reaching their working size; see
    /// docs/PERFORMANCE.md, "Soak").
    #[arg(long)]
    pub records: bool,
}

/// Counters every call of a run adds to.
#[derive(Default)]
pub struct LoadMetrics {
    /// Calls whose tasks started.
    pub calls_started: AtomicU64,
    /// Media streams opened (webhook and upgrade succeeded).
    pub streams_started: AtomicU64,
    /// Calls that ran to their planned hang-up.
    pub calls_completed: AtomicU64,
    /// Calls that failed, by reason.
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// Inbound `media` frames sent.
    pub frames_sent: AtomicU64,
    /// Outbound audio received, bytes (= samples at 8 kHz).
    pub media_bytes_received: AtomicU64,
    /// Outbound `media` payloads that were not whole 160-byte frames.
    pub partial_frames: AtomicU64,
    /// Outbound frames that arrived after the playout queue ran dry mid-turn.
    pub late_frames: AtomicU64,
    /// How long the queue had been dry when such a frame arrived.
    pub underrun: Histogram,
    /// `mark`s received.
    pub marks_received: AtomicU64,
    /// `mark`s echoed (played, or returned by `clear`).
    pub marks_echoed: AtomicU64,
    /// Mark received → echoed (= the audio queued ahead of it when it arrived).
    pub mark_echo_delay: Histogram,
    /// `clear`s received.
    pub clears_received: AtomicU64,
    /// End of a caller utterance → first agent audio at the caller (includes the model's
    /// end-of-speech wait and response latency: not a bridge figure).
    pub response_time: Histogram,
    /// Agent turns heard.
    pub agent_turns: AtomicU64,
    /// How late the load generator sent its frames (its own scheduling, for context).
    pub send_lag: Histogram,
}

impl LoadMetrics {
    fn fail(&self, why: &str) {
        // Group failures by their kind, not their details.
        let kind: String = why
            .split(':')
            .next()
            .unwrap_or(why)
            .chars()
            .take(60)
            .collect();
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(kind).or_default() += 1;
    }
    fn failed(&self) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Setting up (simulator, bridge process, files).
    #[error("load test setup: {0}")]
    Setup(String),
    /// Calls failed or frames were lost.
    #[error("load test failed: {0}")]
    Failed(String),
}

struct Bridge {
    http: String,
    pid: Option<u32>,
    child: Option<tokio::process::Child>,
    /// The child bridge's config and call record store, removed when it is done.
    workdir: Option<std::path::PathBuf>,
}

impl Bridge {
    fn sample(&self) -> Option<procfs::ProcSample> {
        self.pid.and_then(procfs::sample)
    }
}

const ACCOUNT_SID: &str = "AC10ad7e57000000000000000000000000";
const GEMINI_KEY: &str = "loadtest-gemini-key";

fn caller_clips() -> Result<Vec<Arc<[String]>>, LoadError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    [
        &include_bytes!("../../assets/caller_hello.mulaw8k.wav")[..],
        &include_bytes!("../../assets/caller_bye.mulaw8k.wav")[..],
    ]
    .iter()
    .map(|bytes| {
        let ulaw = crate::audio::wav::read_wav(bytes)
            .ok()
            .and_then(|w| w.to_ulaw())
            .ok_or_else(|| LoadError::Setup("bundled caller clip unreadable".into()))?;
        Ok(ulaw
            .chunks(160)
            .map(|c| {
                let mut f = c.to_vec();
                f.resize(160, 0xFF);
                b64.encode(f)
            })
            .collect())
    })
    .collect()
}

async fn start_bridge(args: &LoadArgs, gemini_url: &str) -> Result<Bridge, LoadError> {
    if let Some(http) = &args.bridge {
        return Ok(Bridge {
            http: http.trim_end_matches('/').to_string(),
            pid: args.bridge_pid,
            child: None,
            workdir: None,
        });
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| LoadError::Setup(format!("no free port: {e}")))?;
        l.local_addr()
            .map_err(|e| LoadError::Setup(e.to_string()))?
            .port()
    };
    let dir = std::env::temp_dir().join(format!("callbridge-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| LoadError::Setup(e.to_string()))?;
    let config = format!(
        r#"# written by callbridge loadtest
[server]
listen = "127.0.0.1:{port}"
public_url = "{public}"
debug_stats = true
[gemini]
url = "{gemini_url}"
# no start-up model session: the measured sessions are the calls'
preflight = false
[twilio]
account_sid = "{ACCOUNT_SID}"
api_base = "http://127.0.0.1:9"
[limits]
max_calls = {max_calls}
max_call_secs = {max_secs}
[records]
enabled = {records_on}
sqlite_path = "{records}"
"#,
        records_on = args.records,
        records = dir.join("records.db").display(),
        public = args.public_url,
        max_calls = args.calls * 2 + 16,
        max_secs = (args.hold_secs.max(args.call_secs) + 600).min(86_400),
    );
    let config_path = dir.join("bridge.toml");
    std::fs::write(&config_path, config).map_err(|e| LoadError::Setup(e.to_string()))?;
    if let Some(parent) = args.bridge_log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let log = std::fs::File::create(&args.bridge_log)
        .map_err(|e| LoadError::Setup(format!("bridge log {}: {e}", args.bridge_log.display())))?;
    let exe = std::env::current_exe().map_err(|e| LoadError::Setup(e.to_string()))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("TWILIO_AUTH_TOKEN", &args.auth_token)
        .env(
            "GEMINI_API_KEY",
            std::env::var("GEMINI_API_KEY").unwrap_or_else(|_| GEMINI_KEY.into()),
        )
        .env_remove("CALLBRIDGE_CONFIG")
        .env_remove("CALLBRIDGE_LISTEN")
        .env_remove("CALLBRIDGE_PUBLIC_URL")
        .env_remove("CALLBRIDGE_GEMINI_URL")
        .env_remove("CALLBRIDGE_DATABASE_URL")
        .env(
            "RUST_LOG",
            std::env::var("CALLBRIDGE_LOADTEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(
            log.try_clone()
                .map_err(|e| LoadError::Setup(format!("bridge log: {e}")))?,
        )
        .stderr(log)
        .kill_on_drop(true);
    if let Some(n) = args.bridge_threads {
        cmd.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    let child = cmd
        .spawn()
        .map_err(|e| LoadError::Setup(format!("cannot start the bridge: {e}")))?;
    let bridge = Bridge {
        http: format!("http://127.0.0.1:{port}"),
        pid: child.id(),
        child: Some(child),
        workdir: Some(dir),
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{}/healthz", bridge.http)).send().await {
            if r.status().is_success() {
                return Ok(bridge);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LoadError::Setup(format!(
        "the bridge did not come up; see {}",
        args.bridge_log.display()
    )))
}

async fn bridge_stats(client: &reqwest::Client, http: &str) -> Option<serde_json::Value> {
    client
        .get(format!("{http}/debug/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn hist(v: &Option<serde_json::Value>, key: &str) -> HistogramSnapshot {
    v.as_ref()
        .and_then(|v| v.get(key))
        .and_then(HistogramSnapshot::from_json)
        .unwrap_or_default()
}

fn latency_json(h: &HistogramSnapshot) -> serde_json::Value {
    json!({
        "count": h.count,
        "p50_us": h.quantile_us(0.5),
        "p99_us": h.quantile_us(0.99),
        "p999_us": h.quantile_us(0.999),
        "max_us": h.max_us,
        "mean_us": (h.mean_us() * 10.0).round() / 10.0,
    })
}

/// One memory/CPU sample during a run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    cpu_s: f64,
    live: u64,
    completed: u64,
}

/// Longest run accepted, seconds: a load test is bounded in time.
pub const MAX_RUN_SECS: u64 = 3600;

/// Refuses runs that are unbounded or aimed away from this machine: the load generator only
/// targets a bridge on loopback (it is not a tool for loading someone else's server).
pub fn check_args(args: &LoadArgs) -> Result<(), LoadError> {
    if args.calls == 0 || !(args.ramp.is_finite() && args.ramp > 0.0) {
        return Err(LoadError::Setup("--calls and --ramp must be > 0".into()));
    }
    let longest = args.soak_secs.unwrap_or(args.hold_secs).max(args.call_secs);
    if longest > MAX_RUN_SECS {
        return Err(LoadError::Setup(format!(
            "runs are bounded: at most {MAX_RUN_SECS} s (asked for {longest} s)"
        )));
    }
    if let Some(url) = &args.bridge {
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(LoadError::Setup(format!(
                "--bridge must be on loopback (127.0.0.0/8, ::1 or localhost), not {host:?}"
            )));
        }
    }
    Ok(())
}

/// Runs the load test and prints (and optionally writes) the report.
pub async fn run(args: LoadArgs) -> Result<(), LoadError> {
    check_args(&args)?;
    let sim = match (&args.gemini_url, &args.bridge) {
        (None, None) => Some(
            GeminiSim::builder()
                .keys(vec![GEMINI_KEY.into()])
                .record_content(false)
                .scenario(Scenario {
                    greeting: Some(Reply::greeting()),
                    turns: vec![Turn::reply(Reply::greeting())],
                    faults: Default::default(),
                })
                .spawn()
                .await
                .map_err(|e| LoadError::Setup(format!("simulator: {e}")))?,
        ),
        _ => None,
    };
    let gemini_url = args
        .gemini_url
        .clone()
        .or_else(|| sim.as_ref().map(|s| s.url()))
        .unwrap_or_default();
    let mut bridge = start_bridge(&args, &gemini_url).await?;
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = bridge.sample();

    let metrics = Arc::new(LoadMetrics::default());
    let env = Arc::new(caller::CallEnv {
        bridge: bridge.http.clone(),
        public_url: args.public_url.trim_end_matches('/').to_string(),
        auth_token: args.auth_token.clone(),
        account_sid: ACCOUNT_SID.into(),
        clips: caller_clips()?,
        silence: base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]),
        metrics: metrics.clone(),
    });

    let t0 = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        let pid = bridge.pid;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = pid.and_then(procfs::sample) else {
                    continue;
                };
                let started = metrics.streams_started.load(Relaxed);
                let completed = metrics.calls_completed.load(Relaxed);
                let failed = metrics.failed();
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Sample {
                        at_s: t0.elapsed().as_secs_f64(),
                        rss_kib: s.rss_kib,
                        cpu_s: s.cpu.as_secs_f64(),
                        live: started.saturating_sub(completed + failed),
                        completed,
                    });
            }
        })
    };

    let ramp_gap = Duration::from_secs_f64(1.0 / args.ramp);
    let ramp_time = ramp_gap * args.calls as u32;
    let tasks = tokio_util::task::TaskTracker::new();
    let spawn_call = |index: u64, end_at: Instant| {
        let env = env.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            metrics.calls_started.fetch_add(1, Relaxed);
            match caller::run(env, index, end_at).await {
                Ok(()) => {
                    metrics.calls_completed.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(call = index, error = %e, "load call failed");
                    metrics.fail(&e);
                }
            }
        })
    };

    let mut report = json!({
        "calls": args.calls,
        "ramp_per_s": args.ramp,
        "machine": machine(),
    });
    let window;
    let (before_stats, after_stats, before_proc, after_proc);
    let (own_before, own_after);
    if let Some(soak) = args.soak_secs {
        // Keep `calls` going: start one per ramp gap while below the target.
        let end = t0 + Duration::from_secs(soak);
        let call_len = Duration::from_secs(args.call_secs);
        let mut index = 0u64;
        let warm = Duration::from_secs((3 * args.call_secs).max(soak / 2)) + ramp_time;
        let mut marked: Option<(
            Instant,
            Option<serde_json::Value>,
            Option<procfs::ProcSample>,
        )> = None;
        let mut m_own = None;
        while Instant::now() < end {
            let live = metrics.calls_started.load(Relaxed)
                - metrics.calls_completed.load(Relaxed)
                - metrics.failed();
            if (live as usize) < args.calls {
                let stagger = if index < args.calls as u64 {
                    // First generation: spread end times so replacements stay staggered.
                    call_len.mul_f64(1.0 + (index as f64 / args.calls as f64))
                } else {
                    call_len
                };
                spawn_call(index, Instant::now() + stagger);
                index += 1;
            }
            if marked.is_none() && t0.elapsed() >= warm {
                marked = Some((
                    Instant::now(),
                    bridge_stats(&client, &bridge.http).await,
                    bridge.sample(),
                ));
                m_own = procfs::sample(std::process::id());
            }
            tokio::time::sleep(ramp_gap).await;
        }
        let (m_at, m_stats, m_proc) = marked.unwrap_or((t0, None, idle));
        own_before = m_own;
        window = m_at.elapsed();
        before_stats = m_stats;
        after_stats = bridge_stats(&client, &bridge.http).await;
        before_proc = m_proc;
        after_proc = bridge.sample();
        own_after = procfs::sample(std::process::id());
        report["mode"] = "soak".into();
        report["soak_secs"] = soak.into();
        report["call_secs"] = args.call_secs.into();
    } else {
        let hold = Duration::from_secs(args.hold_secs);
        let settle = Duration::from_secs(2);
        let end_at = t0 + ramp_time + settle + hold;
        for index in 0..args.calls as u64 {
            spawn_call(index, end_at);
            tokio::time::sleep(ramp_gap).await;
        }
        tokio::time::sleep_until((t0 + ramp_time + settle).into()).await;
        let w0 = Instant::now();
        before_stats = bridge_stats(&client, &bridge.http).await;
        before_proc = bridge.sample();
        own_before = procfs::sample(std::process::id());
        tokio::time::sleep_until(end_at.into()).await;
        window = w0.elapsed();
        after_stats = bridge_stats(&client, &bridge.http).await;
        after_proc = bridge.sample();
        own_after = procfs::sample(std::process::id());
        report["mode"] = "steady".into();
        report["hold_secs"] = args.hold_secs.into();
    }
    tasks.close();
    tasks.wait().await;
    let live_at_end = after_stats
        .as_ref()
        .and_then(|s| s.get("live_calls"))
        .and_then(serde_json::Value::as_u64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let final_stats = bridge_stats(&client, &bridge.http).await;
    let done_proc = bridge.sample();
    sampler.abort();
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // Bridge-side latency over the window.
    let up = hist(&after_stats, "uplink").since(&hist(&before_stats, "uplink"));
    let down = hist(&after_stats, "downlink").since(&hist(&before_stats, "downlink"));
    let lag = hist(&after_stats, "runtime_lag").since(&hist(&before_stats, "runtime_lag"));
    // Audio accounting over the whole run (every call finished at a quiet moment).
    let frames_sent = metrics.frames_sent.load(Relaxed);
    let calls_done = metrics.calls_completed.load(Relaxed);
    let failed = metrics.failed();
    let (sim_in, sim_out, sim_gap) = match &sim {
        Some(s) => {
            let c = s.counters();
            (
                Some(c.audio_in_samples.load(Relaxed)),
                Some(c.audio_out_samples.load(Relaxed)),
                Some(c.audio_in_gap.snapshot()),
            )
        }
        None => (None, None, None),
    };
    let received = metrics.media_bytes_received.load(Relaxed);
    let window_s = window.as_secs_f64();
    let call_seconds = match args.soak_secs {
        None => args.calls as f64 * window_s,
        Some(_) => samples
            .windows(2)
            .filter(|w| w[1].at_s >= samples.last().map_or(0.0, |l| l.at_s) - window_s)
            .map(|w| (w[1].at_s - w[0].at_s) * w[1].live as f64)
            .sum(),
    };
    let cpu_s = match (before_proc, after_proc) {
        (Some(a), Some(b)) => Some(b.cpu.saturating_sub(a.cpu).as_secs_f64()),
        _ => None,
    };
    let cpu_ms_per_call_s = cpu_s.map(|c| 1000.0 * c / call_seconds.max(1e-9));
    // The load generator and simulator share the machine: their cost, for context.
    let own_cpu_ms_per_call_s = match (own_before, own_after) {
        (Some(a), Some(b)) => {
            Some(1000.0 * b.cpu.saturating_sub(a.cpu).as_secs_f64() / call_seconds.max(1e-9))
        }
        _ => None,
    };
    let rss_per_call_kib = match (idle, after_proc) {
        (Some(i), Some(a)) if args.soak_secs.is_none() => {
            Some((a.rss_kib.saturating_sub(i.rss_kib)) as f64 / args.calls as f64)
        }
        (Some(i), Some(a)) => {
            Some((a.rss_kib.saturating_sub(i.rss_kib)) as f64 / args.calls as f64)
        }
        _ => None,
    };
    // Every 8 kHz sample sent arrives as two 16 kHz samples, except what is still inside the
    // uplink resampler when the caller hangs up (its delay, 13 input samples): a shortfall
    // of a whole frame or more per call would be a lost frame.
    let streams = metrics.streams_started.load(Relaxed).max(1);
    let uplink_shortfall = sim_in.map(|s| (frames_sent * 320) as i64 - s as i64);
    let uplink_lost_frames = uplink_shortfall.map(|d| {
        let per_call = d as f64 / streams as f64;
        if per_call < 320.0 {
            0
        } else {
            d / 320
        }
    });
    // Downlink: each turn's tail is padded to a whole frame (and carries the resampler's
    // tail), so the caller may get up to 20 ms more per turn than the model sent; less would
    // be lost audio.
    let turns = metrics.agent_turns.load(Relaxed).max(1);
    let downlink_missing_ms = sim_out.map(|s| (s / 3) as i64 / 8 - received as i64 / 8);
    let downlink_extra_ms_per_turn = downlink_missing_ms.map(|m| -(m as f64) / turns as f64);

    report["window_s"] = ((window_s * 10.0).round() / 10.0).into();
    report["calls_completed"] = calls_done.into();
    report["calls_failed"] = failed.into();
    report["failures"] = json!(*metrics.failures.lock().unwrap_or_else(|e| e.into_inner()));
    report["latency"] = json!({
        "uplink": latency_json(&up),
        "downlink": latency_json(&down),
        "runtime_lag": latency_json(&lag),
        "resampler_delay_ms": {"uplink": 1.63, "downlink": 1.83},
        "note": "bridge-added, edge to edge: socket read (or pacer release) to socket write; \
                 the resamplers' algorithmic delay is separate",
    });
    report["caller"] = json!({
        "frames_sent": frames_sent,
        "audio_received_ms": received / 8,
        "partial_frames": metrics.partial_frames.load(Relaxed),
        "late_frames": metrics.late_frames.load(Relaxed),
        "underrun": latency_json(&metrics.underrun.snapshot()),
        "marks_received": metrics.marks_received.load(Relaxed),
        "marks_echoed": metrics.marks_echoed.load(Relaxed),
        "mark_echo_delay": latency_json(&metrics.mark_echo_delay.snapshot()),
        "clears": metrics.clears_received.load(Relaxed),
        "agent_turns": metrics.agent_turns.load(Relaxed),
        "response_time": latency_json(&metrics.response_time.snapshot()),
        "load_generator_send_lag": latency_json(&metrics.send_lag.snapshot()),
    });
    report["model"] = json!({
        "audio_received_ms": sim_in.map(|s| s / 16),
        "audio_sent_ms": sim_out.map(|s| s / 24),
        "uplink_shortfall_samples_16k": uplink_shortfall,
        "uplink_shortfall_samples_per_call": uplink_shortfall.map(|d| (d as f64 / streams as f64 * 10.0).round() / 10.0),
        "uplink_lost_frames": uplink_lost_frames,
        "downlink_missing_ms": downlink_missing_ms,
        "downlink_extra_ms_per_turn": downlink_extra_ms_per_turn.map(|v| (v * 10.0).round() / 10.0),
        "uplink_arrival_gap": sim_gap.as_ref().map(latency_json),
    });
    report["bridge"] = json!({
        "pid": bridge.pid,
        "idle_rss_kib": idle.map(|s| s.rss_kib),
        "rss_kib_at_load": after_proc.map(|s| s.rss_kib),
        "peak_rss_kib": after_proc.or(done_proc).map(|s| s.hwm_kib),
        "rss_kib_after_calls": done_proc.map(|s| s.rss_kib),
        "threads": after_proc.map(|s| s.threads),
        "cpu_s_in_window": cpu_s,
        "call_seconds_in_window": call_seconds.round(),
        "cpu_ms_per_call_second": cpu_ms_per_call_s.map(|v| (v * 1000.0).round() / 1000.0),
        "calls_per_core": cpu_ms_per_call_s.map(|v| (1000.0 / v.max(1e-9)).round()),
        "rss_kib_per_call": rss_per_call_kib.map(|v| v.round()),
        "live_calls_at_window_end": live_at_end,
        "load_generator_cpu_ms_per_call_second": own_cpu_ms_per_call_s.map(|v| (v * 1000.0).round() / 1000.0),
        "live_calls_after": final_stats.as_ref().and_then(|s| s.get("live_calls")).cloned(),
        "frames_to_model": final_stats.as_ref().and_then(|s| s.get("frames_to_model")).cloned(),
        "frames_to_caller": final_stats.as_ref().and_then(|s| s.get("frames_to_caller")).cloned(),
    });
    if args.soak_secs.is_some() {
        report["memory"] = soak_memory(
            &samples,
            args.call_secs,
            ramp_time,
            args.soak_secs.unwrap_or_default(),
        );
    }
    report["rss_samples"] = samples
        .iter()
        .map(|s| {
            json!([
                (s.at_s * 10.0).round() / 10.0,
                s.rss_kib,
                (s.cpu_s * 100.0).round() / 100.0,
                s.live,
                s.completed
            ])
        })
        .collect::<Vec<_>>()
        .into();

    if let Some(mut child) = bridge.child.take() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if let Some(dir) = bridge.workdir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(sim) = sim {
        let _ = tokio::time::timeout(Duration::from_secs(5), sim.shutdown()).await;
    }
    print_summary(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| LoadError::Setup(format!("{}: {e}", path.display())))?;
        println!("report written to {}", path.display());
    }
    if failed > 0 {
        return Err(LoadError::Failed(format!("{failed} calls failed")));
    }
    Ok(())
}

/// Memory after warm-up in a soak: does RSS settle? Warm-up is the first half of the run,
/// and at least three call lifetimes after the ramp (the allocator's arenas and the call
/// tables reach their working size over a few generations of calls); after it, the
/// least-squares slope of RSS against calls completed is the growth per call, and the spread
/// shows whether it plateaued.
fn soak_memory(
    samples: &[Sample],
    call_secs: u64,
    ramp: Duration,
    soak_secs: u64,
) -> serde_json::Value {
    let warm_s = (ramp.as_secs_f64() + 3.0 * call_secs as f64).max(soak_secs as f64 / 2.0);
    // Only while the calls were being kept up: the wind-down at the end frees memory.
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= warm_s && s.at_s <= soak_secs as f64)
        .collect();
    if after.len() < 3 {
        return json!({"note": "run too short for a warm-up plus a settled period"});
    }
    let n = after.len() as f64;
    let mx = after.iter().map(|s| s.completed as f64).sum::<f64>() / n;
    let my = after.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let sxy: f64 = after
        .iter()
        .map(|s| (s.completed as f64 - mx) * (s.rss_kib as f64 - my))
        .sum();
    let sxx: f64 = after
        .iter()
        .map(|s| (s.completed as f64 - mx).powi(2))
        .sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let first = after[0];
    let last = after[after.len() - 1];
    json!({
        "warm_up_s": warm_s.round(),
        "rss_kib_after_warm_up": first.rss_kib,
        "rss_kib_at_end": last.rss_kib,
        "rss_kib_min_after_warm_up": after.iter().map(|s| s.rss_kib).min(),
        "rss_kib_max_after_warm_up": after.iter().map(|s| s.rss_kib).max(),
        "calls_completed_after_warm_up": last.completed - first.completed,
        "growth_kib_per_call": (slope * 100.0).round() / 100.0,
    })
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
    })
}

fn print_summary(r: &serde_json::Value) {
    let g = |path: &[&str]| -> String {
        let mut v = r;
        for p in path {
            v = &v[*p];
        }
        match v {
            serde_json::Value::Null => "-".into(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    println!(
        "callbridge loadtest — {} mode, {} concurrent calls",
        g(&["mode"]),
        g(&["calls"])
    );
    println!(
        "  calls: {} completed, {} failed {}",
        g(&["calls_completed"]),
        g(&["calls_failed"]),
        g(&["failures"])
    );
    for leg in ["uplink", "downlink"] {
        println!(
            "  {leg:<8} bridge-added latency: p50 {} µs, p99 {} µs, max {} µs ({} frames)",
            g(&["latency", leg, "p50_us"]),
            g(&["latency", leg, "p99_us"]),
            g(&["latency", leg, "max_us"]),
            g(&["latency", leg, "count"]),
        );
    }
    println!(
        "  runtime lag: p99 {} µs, max {} µs",
        g(&["latency", "runtime_lag", "p99_us"]),
        g(&["latency", "runtime_lag", "max_us"])
    );
    println!(
        "  caller: {} late frames, {} partial frames, marks {} received / {} echoed; model: uplink lost frames {}, downlink extra {} ms per turn (frame padding)",
        g(&["caller", "late_frames"]),
        g(&["caller", "partial_frames"]),
        g(&["caller", "marks_received"]),
        g(&["caller", "marks_echoed"]),
        g(&["model", "uplink_lost_frames"]),
        g(&["model", "downlink_extra_ms_per_turn"]),
    );
    println!(
        "  bridge: CPU {} ms per call-second ({} calls per core), RSS {} KiB per call (idle {} KiB, at load {} KiB, peak {} KiB)",
        g(&["bridge", "cpu_ms_per_call_second"]),
        g(&["bridge", "calls_per_core"]),
        g(&["bridge", "rss_kib_per_call"]),
        g(&["bridge", "idle_rss_kib"]),
        g(&["bridge", "rss_kib_at_load"]),
        g(&["bridge", "peak_rss_kib"]),
    );
    println!(
        "  load generator + simulator (same machine): CPU {} ms per call-second",
        g(&["bridge", "load_generator_cpu_ms_per_call_second"]),
    );
    if r.get("memory").is_some() {
        println!(
            "  soak memory: after warm-up {} KiB, end {} KiB (min {} / max {}), {} calls after warm-up, growth {} KiB per call",
            g(&["memory", "rss_kib_after_warm_up"]),
            g(&["memory", "rss_kib_at_end"]),
            g(&["memory", "rss_kib_min_after_warm_up"]),
            g(&["memory", "rss_kib_max_after_warm_up"]),
            g(&["memory", "calls_completed_after_warm_up"]),
            g(&["memory", "growth_kib_per_call"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn args(extra: &[&str]) -> LoadArgs {
        Cli::parse_from(std::iter::once("loadtest").chain(extra.iter().copied())).args
    }

    #[test]
    fn only_loopback_bridges_and_bounded_runs() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:9000/",
            "http://[::1]:8080",
            "http://127.1.2.3",
        ] {
            assert!(check_args(&args(&["--bridge", ok])).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:8080",
            "https://bridge.example.com",
            "http://127.0.0.1.example.com:80",
        ] {
            assert!(check_args(&args(&["--bridge", bad])).is_err(), "{bad}");
        }
        assert!(check_args(&args(&["--hold-secs", "3601"])).is_err());
        assert!(check_args(&args(&["--soak-secs", "7200"])).is_err());
        assert!(check_args(&args(&["--calls", "0"])).is_err());
        assert!(check_args(&args(&[])).is_ok());
    }
}
