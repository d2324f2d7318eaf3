//! Shared harness for end-to-end tests: the real bridge on loopback with the Gemini simulator,
//! the fake Twilio REST API and simulated callers. Also audio helpers for content checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callbridge::call::driver::CallNote;
use callbridge::call::machine::CallEvent;
use callbridge::config::{Config, Secret};
use callbridge::server::AppState;
use callbridge::sim::caller::SimCallerBuilder;
use callbridge::sim::gemini::{GeminiSim, GeminiSimBuilder, GeminiSimHandle};
use callbridge::sim::twilio_rest::{FakeRestHandle, FakeTwilioRest};
use tokio::sync::broadcast;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "test-auth-token";
pub const API_KEY: &str = "test-api-key";
pub const PUBLIC_URL: &str = "https://bridge.test.invalid";

/// A bridge wired to a Gemini simulator and a fake Twilio REST API.
pub struct Harness {
    pub sim: GeminiSimHandle,
    pub rest: FakeRestHandle,
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    pub notes: broadcast::Receiver<CallNote>,
}

/// Starts everything; `sim` customises the simulator, `tweak` the bridge's config.
pub async fn harness(
    sim: impl FnOnce(GeminiSimBuilder) -> GeminiSimBuilder,
    tweak: impl FnOnce(&mut Config),
) -> Harness {
    let sim = sim(GeminiSim::builder().keys(vec![API_KEY.into()]))
        .spawn()
        .await
        .expect("simulator");
    let rest = FakeTwilioRest::new(ACCOUNT_SID, AUTH_TOKEN)
        .spawn()
        .await
        .expect("fake rest");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.public_url = PUBLIC_URL.into();
    config.gemini.url = sim.url();
    config.gemini.api_key = Secret::new(API_KEY);
    config.twilio.account_sid = ACCOUNT_SID.into();
    config.twilio.auth_token = Secret::new(AUTH_TOKEN);
    config.twilio.api_base = rest.base_url();
    tweak(&mut config);
    config.validate().expect("valid test config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = callbridge::run::spawn(config, listener);
    let notes = state.notes.subscribe();
    Harness {
        sim,
        rest,
        state,
        addr,
        notes,
    }
}

impl Harness {
    /// A simulated caller that starts with the voice webhook, like Twilio.
    pub fn caller(&self) -> SimCallerBuilder {
        callbridge::sim::caller::SimCaller::builder()
            .webhook(format!("http://{}/twilio/voice", self.addr))
            .public_webhook_url(format!("{PUBLIC_URL}/twilio/voice"))
            .connect_override(format!("ws://{}", self.addr))
            .account_sid(ACCOUNT_SID)
            .auth_token(AUTH_TOKEN)
            .max_duration(Duration::from_secs(60))
    }

    /// The media stream URL for callers that skip the webhook.
    pub fn media_url(&self) -> String {
        format!("ws://{}/twilio/media", self.addr)
    }

    /// Collects the bridge's notes of one call until it ends (or `timeout`).
    pub async fn notes_until_end(&mut self, timeout: Duration) -> Vec<CallNote> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.notes.recv()).await {
            let done = matches!(n.event, CallEvent::Ended(_));
            out.push(n);
            if done {
                break;
            }
        }
        out
    }
}

pub fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(name)
}

/// μ-law bytes of a bundled caller clip.
pub fn caller_clip(name: &str) -> Vec<u8> {
    let wav = callbridge::audio::wav::read_wav_file(&asset(&format!("{name}.mulaw8k.wav"))).unwrap();
    wav.to_ulaw().unwrap()
}

/// Samples of a bundled WAV.
pub fn pcm(name: &str) -> Vec<i16> {
    callbridge::audio::wav::read_wav_file(&asset(name))
        .unwrap()
        .to_pcm16()
}

pub fn ulaw_to_pcm(ulaw: &[u8]) -> Vec<i16> {
    ulaw.iter()
        .map(|&c| callbridge::audio::g711::ulaw_decode(c))
        .collect()
}

/// Best normalised cross-correlation of `reference` inside `signal` over all lags
/// (`signal` may hold more than the reference: silence, other turns). Returns (score, lag).
pub fn find_in(signal: &[i16], reference: &[i16]) -> (f64, usize) {
    let r: Vec<f64> = reference.iter().map(|&v| v as f64).collect();
    let s: Vec<f64> = signal.iter().map(|&v| v as f64).collect();
    let rn = r.iter().map(|v| v * v).sum::<f64>().sqrt();
    if s.len() < r.len() || rn == 0.0 {
        return (0.0, 0);
    }
    // Coarse search on 4x decimated energy-normalised signals, then refine.
    let dot = |lag: usize| -> f64 {
        let w = &s[lag..lag + r.len()];
        let d: f64 = w.iter().zip(&r).map(|(a, b)| a * b).sum();
        let wn = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        if wn == 0.0 { 0.0 } else { d / (wn * rn) }
    };
    let mut best = (f64::MIN, 0);
    let mut lag = 0;
    while lag + r.len() <= s.len() {
        let c = dot(lag);
        if c > best.0 {
            best = (c, lag);
        }
        lag += 4;
    }
    let lo = best.1.saturating_sub(4);
    let hi = (best.1 + 4).min(s.len() - r.len());
    for l in lo..=hi {
        let c = dot(l);
        if c > best.0 {
            best = (c, l);
        }
    }
    best
}

/// Kinds of bridge events in order, for golden timelines (transcript fragments and token
/// usage folded away).
pub fn event_kinds(notes: &[CallNote]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in notes {
        let k = match &n.event {
            CallEvent::Started { .. } => "started".to_string(),
            CallEvent::ModelReady { .. } => "model_ready".to_string(),
            CallEvent::AgentSpeaking { turn } => format!("agent_speaking {turn}"),
            CallEvent::AgentTurnHeard { turn, .. } => format!("agent_turn_heard {turn}"),
            CallEvent::Interrupted { turn, .. } => format!("interrupted {turn}"),
            CallEvent::ToolCall { name, .. } => format!("tool_call {name}"),
            CallEvent::ToolResult { name, ok, .. } => format!("tool_result {name} {}", if *ok { "ok" } else { "error" }),
            CallEvent::Dtmf(d) => format!("dtmf {d}"),
            CallEvent::GoAway { .. } => "go_away".to_string(),
            CallEvent::Ended(why) => format!("ended {}", why.as_str()),
            CallEvent::CallerTranscript(_) | CallEvent::AgentTranscript(_) | CallEvent::Usage(_) => continue,
        };
        out.push(k);
    }
    out
}

/// Concatenated transcript text of one side.
pub fn transcript(notes: &[CallNote], agent: bool) -> String {
    notes
        .iter()
        .filter_map(|n| match (&n.event, agent) {
            (CallEvent::AgentTranscript(t), true) | (CallEvent::CallerTranscript(t), false) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}
