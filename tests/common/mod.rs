//! Shared harness for end-to-end tests: the real bridge on loopback with the Gemini simulator,
//! the fake Twilio REST API and simulated callers. Also audio helpers for content checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callbridge::call::driver::CallNote;
use callbridge::call::event::CallEvent;
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

/// An in-memory log sink for tests that assert on what was logged (install it with
/// `tracing_subscriber::fmt().with_writer(move || buf.clone())`).
#[derive(Clone)]
pub struct LogBuf(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
    harness_with_store(sim, tweak, None).await
}

/// [`harness`] with a call record store (see `callbridge::run::open_records`).
pub async fn harness_with_store(
    sim: impl FnOnce(GeminiSimBuilder) -> GeminiSimBuilder,
    tweak: impl FnOnce(&mut Config),
    store: Option<callbridge::run::StoreHandles>,
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
    let state = callbridge::run::spawn_with_store(config, listener, store);
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

    /// What a raw media client (one that skips the simulated caller) needs to get past the
    /// bridge's checks, as Twilio would have it: POSTs a signed voice webhook for `call_sid`
    /// and returns a signed upgrade request for the media endpoint plus the stream token from
    /// the TwiML (send it as `customParameters.token` in `start`).
    pub async fn raw_stream(
        &self,
        call_sid: &str,
    ) -> (
        tokio_tungstenite::tungstenite::handshake::client::Request,
        String,
    ) {
        use callbridge::twilio::signature::compute_signature;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let form: Vec<(String, String)> = [
            ("AccountSid", ACCOUNT_SID),
            ("CallSid", call_sid),
            ("Direction", "inbound"),
            ("From", "+14155550123"),
            ("To", "+15005550006"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let twiml = reqwest::Client::new()
            .post(format!("http://{}/twilio/voice", self.addr))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(
                "X-Twilio-Signature",
                compute_signature(AUTH_TOKEN, &format!("{PUBLIC_URL}/twilio/voice"), &form),
            )
            .body(body)
            .send()
            .await
            .expect("voice webhook")
            .error_for_status()
            .expect("signed voice webhook accepted")
            .text()
            .await
            .unwrap();
        let token = twiml
            .split(r#"<Parameter name="token" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no stream token in {twiml}"))
            .to_string();
        let mut request = self.media_url().into_client_request().unwrap();
        let host = PUBLIC_URL.trim_start_matches("https://");
        let signature = compute_signature(AUTH_TOKEN, &format!("wss://{host}/twilio/media"), &[]);
        request
            .headers_mut()
            .insert("X-Twilio-Signature", signature.parse().unwrap());
        (request, token)
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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// μ-law bytes of a bundled caller clip.
pub fn caller_clip(name: &str) -> Vec<u8> {
    let wav =
        callbridge::audio::wav::read_wav_file(&asset(&format!("{name}.mulaw8k.wav"))).unwrap();
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
/// The correlation is computed with FFTs; the score is normalised by the energy of the
/// matching window, so 1.0 means an exact (scaled) copy.
pub fn find_in(signal: &[i16], reference: &[i16]) -> (f64, usize) {
    use rustfft::num_complex::Complex;
    if signal.len() < reference.len() || reference.is_empty() {
        return (0.0, 0);
    }
    let n = (signal.len() + reference.len()).next_power_of_two();
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let mut a: Vec<Complex<f64>> = signal
        .iter()
        .map(|&v| Complex::new(v as f64, 0.0))
        .collect();
    a.resize(n, Complex::new(0.0, 0.0));
    let mut b: Vec<Complex<f64>> = reference
        .iter()
        .map(|&v| Complex::new(v as f64, 0.0))
        .collect();
    b.resize(n, Complex::new(0.0, 0.0));
    fwd.process(&mut a);
    fwd.process(&mut b);
    for (x, y) in a.iter_mut().zip(&b) {
        *x *= y.conj();
    }
    inv.process(&mut a);
    let rn: f64 = reference
        .iter()
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    // Running window energy of the signal.
    let mut prefix = vec![0.0f64; signal.len() + 1];
    for (i, &v) in signal.iter().enumerate() {
        prefix[i + 1] = prefix[i] + (v as f64).powi(2);
    }
    let mut best = (0.0, 0);
    for lag in 0..=signal.len() - reference.len() {
        let wn = (prefix[lag + reference.len()] - prefix[lag]).sqrt();
        if wn < 1e-9 || rn < 1e-9 {
            continue;
        }
        let c = a[lag].re / n as f64 / (wn * rn);
        if c > best.0 {
            best = (c, lag);
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
            CallEvent::AgentSpeaking { turn, .. } => format!("agent_speaking {turn}"),
            CallEvent::AgentTurnHeard { turn, .. } => format!("agent_turn_heard {turn}"),
            CallEvent::Interrupted { turn, .. } => format!("interrupted {turn}"),
            CallEvent::ToolCall { name, .. } => format!("tool_call {name}"),
            CallEvent::ToolResult { name, ok, .. } => {
                format!("tool_result {name} {}", if *ok { "ok" } else { "error" })
            }
            CallEvent::Dtmf(d) => format!("dtmf {d}"),
            CallEvent::GoAway { .. } => "go_away".to_string(),
            CallEvent::Continued { .. } => "continued".to_string(),
            CallEvent::Reconnected {
                reason, resumed, ..
            } => format!(
                "reconnected {reason} {}",
                if *resumed { "resumed" } else { "fresh" }
            ),
            CallEvent::WrapUp { reason } => format!("wrap_up {reason}"),
            CallEvent::OddTurnEnd { reason } => format!("odd_turn_end {reason}"),
            CallEvent::Operator { action, result, .. } => {
                format!(
                    "operator {action} {}",
                    if result.is_ok() { "ok" } else { "error" }
                )
            }
            CallEvent::Ended(why) => format!("ended {}", why.as_str()),
            CallEvent::CallerTranscript(_)
            | CallEvent::AgentTranscript(_)
            | CallEvent::Usage(_) => continue,
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
            (CallEvent::AgentTranscript(t), true) | (CallEvent::CallerTranscript(t), false) => {
                Some(t.as_str())
            }
            _ => None,
        })
        .collect()
}
