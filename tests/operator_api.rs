//! The operator API (`/api/…`), the dashboard's static files and the browser phone's media
//! WebSocket, over real sockets: a bridge on the Gemini simulator, simulated phone calls, and
//! a raw Media Streams client standing in for the browser.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbridge::config::Secret;
use callbridge::sim::caller::Script;
use callbridge::sim::gemini::{Reply, Scenario, Turn};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{caller_clip, harness, Harness, LogBuf};

const TOKEN: &str = "operator-test-token-0123456789abcdef";
const HELLO: &str = "Hello, I am calling about my order.";

fn scenario() -> Scenario {
    let mut answer = Turn::reply(Reply::long());
    answer.caller = Some(HELLO.into());
    Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![answer],
        ..Scenario::default()
    }
}

async fn bridge(tweak: impl FnOnce(&mut callbridge::config::Config)) -> Harness {
    harness(
        |s| s.scenario(scenario()),
        |c| {
            c.operator.token = Secret::new(TOKEN);
            tweak(c);
        },
    )
    .await
}

fn url(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.addr)
}

/// A request with the operator token; returns (status, JSON body or `null`).
async fn call(h: &Harness, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), url(h, path))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `/api/events` in the background; events as JSON, in order. The task ends with the
/// stream.
fn subscribe(h: &Harness) -> (Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = events.clone();
    let u = url(h, "/api/events");
    let task = tokio::spawn(async move {
        let mut resp = reqwest::Client::new()
            .get(u)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("event stream");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(cut) = buf.find("\n\n") {
                let block: String = buf.drain(..cut + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    out.lock().unwrap().push(v);
                }
            }
        }
    });
    (events, task)
}

#[tokio::test]
async fn the_api_needs_the_operator_token_and_answers_json() {
    // No token configured: 503 naming the variable; the dashboard page still loads.
    let h = harness(|s| s, |_| {}).await;
    let (status, body) = call(&h, "GET", "/api/calls", None).await;
    assert_eq!(status, 503);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("CALLBRIDGE_OPERATOR_TOKEN"));
    let page = reqwest::get(url(&h, "/dashboard")).await.unwrap();
    assert_eq!(page.status(), 200);

    // With a token: every refusal is a JSON 401 with a Bearer challenge, logged without it.
    let logs = LogBuf(Arc::new(std::sync::Mutex::new(Vec::new())));
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = bridge(|_| {}).await;
    let client = reqwest::Client::new();
    let wrong = "operator-test-token-0123456789abcdeX";
    for auth in [
        None,
        Some(format!("Bearer {wrong}")),
        Some("Basic b3A6cGFzcw==".to_string()),
        Some("Bearer".to_string()),
    ] {
        let mut req = client.get(url(&h, "/api/calls"));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"));
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("operator API request refused").count(), 4);
    assert!(!text.contains(wrong) && !text.contains(TOKEN));

    // The right token.
    let (status, body) = call(&h, "GET", "/api/calls", None).await;
    assert_eq!((status, body), (200, json!({ "calls": [] })));
    let (status, body) = call(&h, "GET", "/api/records", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["records"], json!([]));
    // Unknown endpoints, ids and methods: JSON errors.
    for (method, path, code) in [
        ("GET", "/api/nope", 404),
        ("GET", "/api", 404),
        ("GET", "/api/calls/0123456789abcdef", 404),
        ("POST", "/api/calls/0123456789abcdef/hangup", 404),
        ("GET", "/api/calls/0123456789abcdef/recording", 404),
        ("GET", "/api/calls/not%20an%20id", 400),
        ("GET", "/api/calls/0123456789abcdef/hangup", 405),
        ("DELETE", "/api/calls", 405),
        ("GET", "/api/records?limit=0", 400),
        ("GET", "/api/records?limit=many", 400),
        ("GET", "/api/records?before=yesterday", 400),
    ] {
        let (status, body) = call(&h, method, path, None).await;
        assert_eq!(status, code, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }

    // The dashboard and its scripts, with a strict policy.
    for (path, ty) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/phone.js", "text/javascript"),
        ("/dashboard/phone-worklet.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let resp = reqwest::get(url(&h, path)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(ty));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
        assert!(!csp.contains("unsafe-inline"));
    }
    let html = reqwest::get(url(&h, "/dashboard"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(r#"content="on""#),
        "browser phone flag in the page"
    );
    assert!(!html.contains("<script>") && !html.contains("onclick"));
}

#[tokio::test]
async fn dashboard_and_browser_phone_can_be_turned_off() {
    let h = bridge(|c| {
        c.operator.dashboard = false;
        c.operator.browser_phone = false;
    })
    .await;
    for path in [
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/phone-worklet.js",
        "/phone/media?ticket=x",
    ] {
        let resp = reqwest::get(url(&h, path)).await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let (status, body) = call(&h, "POST", "/api/phone", None).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("browser_phone"));
    // The API itself stays on.
    assert_eq!(call(&h, "GET", "/api/calls", None).await.0, 200);
}

#[tokio::test]
async fn the_event_stream_ends_when_the_bridge_shuts_down() {
    let h = bridge(|_| {}).await;
    let (events, task) = subscribe(&h);
    until("hello", 5, || {
        (!events.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    h.state.shutdown.cancel();
    // Graceful shutdown is not held open by a dashboard that is watching.
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the event stream ended at shutdown")
        .expect("reader task");
}

#[tokio::test]
async fn a_phone_call_is_listed_streamed_steered_and_recorded() {
    let dir = std::env::temp_dir().join(format!("callbridge-api-{:x}", rand::random::<u64>()));
    let rec_dir = dir.display().to_string();
    let h = bridge(move |c| {
        c.recording.enabled = true;
        c.recording.dir = rec_dir;
    })
    .await;
    let (events, _) = subscribe(&h);
    until("the event stream's hello", 5, || {
        events
            .lock()
            .unwrap()
            .first()
            .filter(|e| e["type"] == "hello")
            .cloned()
    })
    .await;

    let script = Script::new()
        .wait_for_agent(700, 15_000)
        .say_ulaw("hello", caller_clip("caller_hello"))
        .silence(60_000);
    let caller = h.caller().script(script).spawn();

    // Listed live, with the latest transcript line.
    let mut summary = Value::Null;
    for _ in 0..400 {
        let (_, body) = call(&h, "GET", "/api/calls", None).await;
        if body["calls"][0]["last_line"]["speaker"] == "caller" {
            summary = body["calls"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(summary["source"], "phone", "{summary}");
    assert_eq!(summary["live"], true);
    assert_eq!(summary["from"], "+*********23", "numbers are redacted");
    let id = summary["id"].as_str().unwrap().to_string();
    let (status, detail) = call(&h, "GET", &format!("/api/calls/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(detail["live"], true);
    assert_eq!(detail["transcript"][0]["speaker"], "agent");
    assert!(detail["call_sid"].as_str().unwrap().starts_with("CA"));

    // The recording of a live call is not served yet.
    let (status, _) = call(&h, "GET", &format!("/api/calls/{id}/recording"), None).await;
    assert_eq!(status, 409);

    // Bad transfer requests: clear 4xx, the call carries on.
    let transfer = format!("/api/calls/{id}/transfer");
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, ct: &'static str| {
        client
            .post(url(&h, &transfer))
            .bearer_auth(TOKEN)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    for (body, ct, code) in [
        (b"{not json".to_vec(), "application/json", 400),
        (br#"{"destination": 5}"#.to_vec(), "application/json", 400),
        (br#"{"destination": ""}"#.to_vec(), "application/json", 400),
        (br#"{"where": "billing"}"#.to_vec(), "application/json", 400),
        (
            br#"{"destination": "billing", "x": 1}"#.to_vec(),
            "application/json",
            400,
        ),
        (br#"["billing"]"#.to_vec(), "application/json", 400),
        (
            b"destination=billing".to_vec(),
            "application/x-www-form-urlencoded",
            415,
        ),
        (vec![b' '; 64 * 1024], "application/json", 413),
    ] {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        let resp = post(body, ct).await.unwrap();
        assert_eq!(resp.status().as_u16(), code, "{shown}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].is_string(), "{v}");
    }
    // A destination the call refuses: 409 with the call's reason.
    let (status, body) = call(
        &h,
        "POST",
        &transfer,
        Some(json!({ "destination": "nowhere" })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not a configured destination"));

    // Hang up.
    let (status, body) = call(&h, "POST", &format!("/api/calls/{id}/hangup"), None).await;
    assert_eq!((status, body), (200, json!({ "ok": true })));
    let report = tokio::time::timeout(Duration::from_secs(10), caller.join())
        .await
        .expect("caller ended")
        .expect("caller report");
    assert!(report.media_bytes_received > 0);
    let ended = until("the ended record", 5, || h.state.journal.recent_call(&id)).await;
    assert_eq!(ended.end_reason.as_deref(), Some("operator_hung_up"));
    let (status, body) = call(&h, "POST", &format!("/api/calls/{id}/hangup"), None).await;
    assert_eq!(status, 409, "{body}");
    let (_, detail) = call(&h, "GET", &format!("/api/calls/{id}"), None).await;
    assert_eq!(detail["live"], false);
    assert_eq!(detail["end_reason"], "operator_hung_up");
    assert!(detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["kind"] == "operator"));
    let (_, list) = call(&h, "GET", "/api/records?limit=10", None).await;
    assert_eq!(list["records"][0]["id"], id.as_str());
    assert_eq!(list["records"][0]["end_reason"], "operator_hung_up");
    let before = ended.started_at_ms;
    let (_, older) = call(&h, "GET", &format!("/api/records?before={before}"), None).await;
    assert_eq!(older["records"], json!([]));

    // The event stream told the story in order.
    let seen: Vec<String> = until("the ended event", 5, || {
        let ev = events.lock().unwrap();
        ev.iter()
            .any(|e| e["type"] == "ended" && e["id"] == id.as_str())
            .then(|| {
                ev.iter()
                    .filter(|e| e["id"] == id.as_str())
                    .map(|e| e["type"].as_str().unwrap().to_string())
                    .collect()
            })
    })
    .await;
    assert_eq!(seen.first().map(String::as_str), Some("opened"));
    assert_eq!(seen.last().map(String::as_str), Some("ended"));
    assert!(seen.iter().any(|k| k == "transcript") && seen.iter().any(|k| k == "timeline"));

    // The recording: the file the record names (written by the recorder), served as it is.
    let path = std::path::PathBuf::from(ended.recording.clone().expect("recording on"));
    assert!(path.starts_with(&dir));
    let recording = format!("/api/calls/{id}/recording");
    let resp = client
        .get(url(&h, &recording))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    let served = resp.bytes().await.unwrap().to_vec();
    assert_eq!(served, std::fs::read(&path).unwrap());
    let (caller_side, agent_side) =
        callbridge::ops::recorder::read_stereo(&path).expect("a finished stereo WAV");
    assert!(caller_side.len() > 8_000 && agent_side.len() == caller_side.len());
    // A file that is gone: 404, never another path.
    std::fs::remove_file(&path).unwrap();
    let (status, body) = call(&h, "GET", &recording, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("missing"));
    let _ = std::fs::remove_dir_all(&dir);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The browser's side of a browser-phone call, as the dashboard's phone.js speaks it.
struct BrowserLeg {
    ws: Ws,
    stream_sid: String,
    seq: u64,
    chunk: u64,
    media_bytes: usize,
    marks: usize,
    closed: Option<u16>,
}

impl BrowserLeg {
    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// `connected` + `start` with the ticket's CallSid and stream token.
    async fn start(ws: Ws, ticket: &Value, call_sid: &str) -> BrowserLeg {
        let stream_sid = format!("MZ{:032x}", rand::random::<u128>());
        let mut leg = BrowserLeg {
            ws,
            stream_sid: stream_sid.clone(),
            seq: 1,
            chunk: 0,
            media_bytes: 0,
            marks: 0,
            closed: None,
        };
        leg.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            .await;
        leg.send(json!({
            "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {
                "accountSid": ticket["account_sid"], "streamSid": stream_sid, "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"token": ticket["stream_token"], "client": "dashboard"},
            },
        }))
        .await;
        leg
    }

    /// Sends `audio` (then silence) in real-time 20 ms frames for `ms`, echoing marks and
    /// counting agent audio; stops early when the bridge closes the stream.
    async fn talk(&mut self, audio: &[u8], ms: u64) {
        use base64::Engine;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let frames = ms / 20;
        let mut sent = 0u64;
        while self.closed.is_none() {
            tokio::select! {
                _ = tick.tick() => {
                    if sent >= frames { break; }
                    let at = (sent as usize) * 160;
                    let mut frame = [0xFFu8; 160];
                    if at < audio.len() {
                        let n = (audio.len() - at).min(160);
                        frame[..n].copy_from_slice(&audio[at..at + n]);
                    }
                    self.seq += 1;
                    self.chunk += 1;
                    let v = json!({
                        "event": "media", "sequenceNumber": self.seq.to_string(),
                        "streamSid": self.stream_sid,
                        "media": {"track": "inbound", "chunk": self.chunk.to_string(),
                            "timestamp": ((self.chunk - 1) * 20).to_string(),
                            "payload": base64::engine::general_purpose::STANDARD.encode(frame)},
                    });
                    self.send(v).await;
                    sent += 1;
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("bridge JSON");
                        assert_eq!(v["streamSid"], self.stream_sid.as_str());
                        match v["event"].as_str() {
                            Some("media") => self.media_bytes += v["media"]["payload"].as_str().unwrap().len() * 3 / 4,
                            Some("mark") => {
                                self.marks += 1;
                                self.seq += 1;
                                let echo = json!({"event": "mark", "sequenceNumber": self.seq.to_string(),
                                    "streamSid": self.stream_sid, "mark": v["mark"]});
                                self.send(echo).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(f))) => self.closed = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005)),
                    None | Some(Err(_)) => self.closed = Some(1006),
                    _ => {}
                }
            }
        }
    }

    async fn stop(&mut self, call_sid: &str) {
        self.seq += 1;
        let v = json!({"event": "stop", "sequenceNumber": self.seq.to_string(),
            "streamSid": self.stream_sid, "stop": {"accountSid": "AC0", "callSid": call_sid}});
        self.send(v).await;
        let _ = self.ws.close(None).await;
    }
}

/// Twilio's voice webhook for a new call (signed): the TwiML the bridge answers.
async fn voice_webhook(h: &Harness) -> String {
    use callbridge::twilio::signature::compute_signature;
    let form: Vec<(String, String)> = [
        ("AccountSid", common::ACCOUNT_SID),
        ("CallSid", "CA11111111111111111111111111111111"),
        ("From", "+14155550123"),
        ("To", "+15005550006"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let signature = compute_signature(
        common::AUTH_TOKEN,
        &format!("{}/twilio/voice", common::PUBLIC_URL),
        &form,
    );
    reqwest::Client::new()
        .post(url(h, "/twilio/voice"))
        .header("X-Twilio-Signature", signature)
        .form(&form)
        .send()
        .await
        .expect("voice webhook")
        .text()
        .await
        .expect("TwiML")
}

async fn ticket(h: &Harness) -> Value {
    let (status, t) = call(h, "POST", "/api/phone", None).await;
    assert_eq!(status, 200, "{t}");
    t
}

async fn connect(h: &Harness, t: &Value) -> Result<Ws, u16> {
    let u = format!("ws://{}{}", h.addr, t["ws_path"].as_str().unwrap());
    match tokio_tungstenite::connect_async(u).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn a_browser_phone_call_runs_through_the_call_driver() {
    let logs = LogBuf(Arc::new(std::sync::Mutex::new(Vec::new())));
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = bridge(|_| {}).await;
    let t = ticket(&h).await;
    let call_sid = t["call_sid"].as_str().unwrap().to_string();
    assert!(call_sid.starts_with("CA") && call_sid.len() == 34);
    assert!(t["ws_url"]
        .as_str()
        .unwrap()
        .starts_with("wss://bridge.test.invalid/phone/media?ticket="));
    let ws = connect(&h, &t).await.expect("ticket accepted");
    // The ticket was used up at the upgrade; no ticket, a made-up one: 403 too.
    assert_eq!(connect(&h, &t).await.err(), Some(403));
    let bare = json!({ "ws_path": "/phone/media" });
    assert_eq!(connect(&h, &bare).await.err(), Some(403));
    let fake = json!({ "ws_path": format!("/phone/media?ticket={:064x}", 7) });
    assert_eq!(connect(&h, &fake).await.err(), Some(403));

    let mut leg = BrowserLeg::start(ws, &t, &call_sid).await;
    // The greeting plays, then the caller speaks and the agent answers.
    leg.talk(&[], 4_500).await;
    let greeting_bytes = leg.media_bytes;
    assert!(
        greeting_bytes > 8_000 * 2,
        "greeting audio: {greeting_bytes} bytes"
    );
    assert!(leg.marks > 0);
    let id = h.state.journal.live_calls()[0].id.clone();
    let (_, detail) = call(&h, "GET", &format!("/api/calls/{id}"), None).await;
    assert_eq!(detail["source"], "browser");
    assert_eq!(detail["call_sid"], call_sid.as_str());
    // No provider behind a browser call: a transfer is refused with the reason.
    let (status, body) = call(
        &h,
        "POST",
        &format!("/api/calls/{id}/transfer"),
        Some(json!({ "destination": "+14155550100" })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("call control is not configured"));
    leg.talk(&caller_clip("caller_hello"), 7_000).await;
    assert!(leg.media_bytes > greeting_bytes, "the agent answered");
    leg.stop(&call_sid).await;

    let record = until("the browser call's record", 5, || {
        h.state.journal.recent_call(&id)
    })
    .await;
    assert_eq!(record.source, "browser");
    assert_eq!(record.end_reason.as_deref(), Some("caller_hung_up"));
    assert!(record
        .transcript
        .iter()
        .any(|l| l.speaker == "caller" && l.text == HELLO));
    assert!(record.turns >= 2);
    until("the call to leave the registry", 5, || {
        (h.state.admission.live() == 0).then_some(())
    })
    .await;
    // Nothing secret or personal at INFO: no ticket, stream token, operator token or words.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("browser phone stream accepted"), "{text}");
    let ticket_value = t["ws_path"].as_str().unwrap().rsplit('=').next().unwrap();
    for secret in [
        ticket_value,
        t["stream_token"].as_str().unwrap(),
        TOKEN,
        HELLO,
    ] {
        assert!(!text.contains(secret), "{secret} logged");
    }
}

#[tokio::test]
async fn browser_calls_count_against_the_call_limit_and_can_be_hung_up() {
    let h = bridge(|c| c.limits.max_calls = 1).await;
    // A stream whose start does not match its ticket is closed before any model session.
    let t = ticket(&h).await;
    let ws = connect(&h, &t).await.unwrap();
    let mut bad = BrowserLeg::start(ws, &t, "CA00000000000000000000000000000000").await;
    bad.talk(&[], 2_000).await;
    assert_eq!(bad.closed, Some(1008));
    assert_eq!(h.sim.record().connections.len(), 0, "no model session");
    until("the refused call to leave the registry", 5, || {
        (h.state.admission.live() == 0).then_some(())
    })
    .await;

    let t = ticket(&h).await;
    let call_sid = t["call_sid"].as_str().unwrap().to_string();
    let mut leg = BrowserLeg::start(connect(&h, &t).await.unwrap(), &t, &call_sid).await;
    leg.talk(&[], 1_000).await;
    assert_eq!(h.state.admission.live(), 1);
    // At the limit: no new ticket, and the phone webhook answers with the fallback.
    let (status, body) = call(&h, "POST", "/api/phone", None).await;
    assert_eq!(status, 503, "{body}");
    let twiml = voice_webhook(&h).await;
    assert!(
        twiml.contains("<Response>") && !twiml.contains("<Stream"),
        "{twiml}"
    );

    // The operator hangs up: the bridge closes the browser's stream.
    let id = h.state.journal.live_calls()[0].id.clone();
    let (status, _) = call(&h, "POST", &format!("/api/calls/{id}/hangup"), None).await;
    assert_eq!(status, 200);
    leg.talk(&[], 5_000).await;
    assert_eq!(leg.closed, Some(1000));
    let record = until("the record", 5, || h.state.journal.recent_call(&id)).await;
    assert_eq!(record.end_reason.as_deref(), Some("operator_hung_up"));
    until("the call to leave the registry", 5, || {
        (h.state.admission.live() == 0).then_some(())
    })
    .await;
    assert_eq!(call(&h, "POST", "/api/phone", None).await.0, 200);
}

#[tokio::test]
async fn ended_calls_are_read_from_the_record_store() {
    use callbridge::ops::{store, RecordStore};
    let dir = std::env::temp_dir().join(format!("callbridge-api-db-{:x}", rand::random::<u64>()));
    let records = callbridge::config::RecordsConfig {
        sqlite_path: dir.join("records.db").display().to_string(),
        ..Default::default()
    };
    let db = store::open(&records).await.expect("SQLite store");
    let (tx, rx) = store::channel();
    let _writer = store::spawn_writer(db.clone(), rx);
    let read: Arc<dyn RecordStore> = Arc::new(db.clone());
    // Nothing kept in memory: every ended call is read back from the store.
    let h = common::harness_with_store(
        |s| s.scenario(scenario()),
        |c| {
            c.operator.token = Secret::new(TOKEN);
            c.records.recent_in_memory = 0;
        },
        Some((read, tx)),
    )
    .await;
    let caller = h
        .caller()
        .script(
            Script::new()
                .wait_for_agent(700, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .silence(30_000),
        )
        .spawn();
    // Hang up once the caller's whole line is in (its fragments arrive one by one; under a
    // loaded machine the first fragment can be seen well before the last).
    let id = loop {
        let (_, body) = call(&h, "GET", "/api/calls", None).await;
        let line = &body["calls"][0]["last_line"];
        if line["speaker"] == "caller" && line["text"] == HELLO {
            break body["calls"][0]["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        call(&h, "POST", &format!("/api/calls/{id}/hangup"), None)
            .await
            .0,
        200
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), caller.join()).await;

    let mut listed = Value::Null;
    for _ in 0..200 {
        let (_, body) = call(&h, "GET", "/api/records", None).await;
        if body["records"][0]["id"] == id.as_str() {
            listed = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed["source"], "store", "{listed}");
    assert_eq!(listed["records"][0]["end_reason"], "operator_hung_up");
    let (status, detail) = call(&h, "GET", &format!("/api/calls/{id}"), None).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["live"], false);
    assert_eq!(detail["source"], "phone");
    assert!(detail["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["speaker"] == "caller" && l["text"] == HELLO));
    let started = detail["started_at_ms"].as_i64().unwrap();
    let (_, older) = call(&h, "GET", &format!("/api/records?before={started}"), None).await;
    assert_eq!(older["records"], json!([]));
    // An ended call known only to the store: "already ended", not "unknown".
    let (status, body) = call(&h, "POST", &format!("/api/calls/{id}/hangup"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already ended"));
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A record store that is down.
struct BrokenStore;

impl callbridge::ops::RecordStore for BrokenStore {
    fn recent(
        &self,
        _limit: usize,
        _before_ms: Option<i64>,
    ) -> callbridge::ops::BoxFuture<'_, Result<Vec<callbridge::ops::journal::CallRecord>, String>>
    {
        Box::pin(async { Err("connection refused".to_string()) })
    }
    fn get<'a>(
        &'a self,
        _id: &'a str,
    ) -> callbridge::ops::BoxFuture<'a, Result<Option<callbridge::ops::journal::CallRecord>, String>>
    {
        Box::pin(async { Err("connection refused".to_string()) })
    }
}

#[tokio::test]
async fn a_failing_store_falls_back_to_the_calls_in_memory() {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let read: Arc<dyn callbridge::ops::RecordStore> = Arc::new(BrokenStore);
    let h = common::harness_with_store(
        |s| s.scenario(scenario()),
        |c| c.operator.token = Secret::new(TOKEN),
        Some((read, tx)),
    )
    .await;
    let (status, body) = call(&h, "GET", "/api/records", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["source"], "memory");
    assert_eq!(body["records"], json!([]));
    let (status, body) = call(&h, "GET", "/api/calls/0123456789abcdef", None).await;
    assert_eq!(status, 404, "{body}");
}

/// Hardening issue 13, point 6: the recording download is `<recording.dir>/<id>.wav`, rebuilt
/// from the configuration and a well-formed call id; the path a stored record names is never
/// opened (a tampered or foreign record cannot point it at another file).
#[tokio::test]
async fn a_recording_is_served_from_the_recording_dir_never_from_the_stored_path() {
    use callbridge::ops::journal::CallRecord;
    use callbridge::ops::{store, CallSource, RecordStore};
    let dir = std::env::temp_dir().join(format!("callbridge-api-rec-{:x}", rand::random::<u64>()));
    let rec_dir = dir.join("recordings");
    std::fs::create_dir_all(&rec_dir).unwrap();
    // A file outside recording.dir that a record points at.
    let outside = dir.join("outside.wav");
    std::fs::write(&outside, b"OUTSIDE-THE-RECORDING-DIR").unwrap();

    let records = callbridge::config::RecordsConfig {
        sqlite_path: dir.join("records.db").display().to_string(),
        ..Default::default()
    };
    let db = store::open(&records).await.expect("SQLite store");
    let ended = |id: &str, recording: Option<&str>| {
        let mut r = CallRecord::new(id, CallSource::Phone, std::time::SystemTime::now());
        r.ended_at_ms = Some(r.started_at_ms + 1_000);
        r.end_reason = Some("caller_hung_up".into());
        r.recording = recording.map(str::to_string);
        r
    };
    let passwd = "00000000000000a1"; // names /etc/passwd; no file of its own
    let elsewhere = "00000000000000a2"; // names a file outside the dir; has its real one
    let traversal = "00000000000000a3"; // names a relative path climbing out of the dir
    let linked = "00000000000000a4"; // its file in the dir is a symlink to the outside file
    let unrecorded = "00000000000000a5"; // has a file in the dir but was not recorded
    let outside_path = outside.display().to_string();
    db.write(&[
        ended(passwd, Some("/etc/passwd")),
        ended(elsewhere, Some(&outside_path)),
        ended(traversal, Some("../../../../../../etc/passwd")),
        ended(linked, Some(&outside_path)),
        ended(unrecorded, None),
    ])
    .await
    .expect("records written");
    let real = b"RIFF-the-real-recording-of-a2".to_vec();
    std::fs::write(rec_dir.join(format!("{elsewhere}.wav")), &real).unwrap();
    std::fs::write(rec_dir.join(format!("{unrecorded}.wav")), b"never served").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, rec_dir.join(format!("{linked}.wav"))).unwrap();

    let (tx, rx) = store::channel();
    let _writer = store::spawn_writer(db.clone(), rx);
    let read: Arc<dyn RecordStore> = Arc::new(db.clone());
    let rec = rec_dir.display().to_string();
    let h = common::harness_with_store(
        |s| s.scenario(scenario()),
        move |c| {
            c.operator.token = Secret::new(TOKEN);
            c.recording.enabled = true;
            c.recording.dir = rec;
        },
        Some((read, tx)),
    )
    .await;
    let client = reqwest::Client::new();
    let download = |id: &str| {
        client
            .get(url(&h, &format!("/api/calls/{id}/recording")))
            .bearer_auth(TOKEN)
            .send()
    };

    // The real recording, from recording.dir, although the record names another file.
    let resp = download(elsewhere).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), real);

    // Records naming /etc/passwd or a climbing path: their own (absent) file, 404.
    for id in [passwd, traversal] {
        let resp = download(id).await.unwrap();
        assert_eq!(resp.status(), 404, "{id}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("missing"), "{id}: {body}");
        assert!(!body.contains("root:"), "{id}: {body}");
    }
    // A symlink in the dir is not followed.
    #[cfg(unix)]
    {
        let resp = download(linked).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert!(!resp.text().await.unwrap().contains("OUTSIDE"));
    }
    // A call that was not recorded: 404 even with a file of its name in the dir.
    let (status, body) = call(
        &h,
        "GET",
        &format!("/api/calls/{unrecorded}/recording"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not recorded"));

    // Ids that are not call ids never reach the file system: 400.
    for id in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "..",
        "00000000000000A2",
        "00000000000000a2.wav",
        "00000000000000a",
        "00000000000000a2%00",
        "%2Fetc%2Fpasswd",
    ] {
        let resp = download(id).await.unwrap();
        assert!(
            resp.status() == 400 || resp.status() == 404,
            "{id}: {}",
            resp.status()
        );
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains("root:") && !body.contains("RIFF"),
            "{id}: {body}"
        );
    }
    for id in ["00000000000000A2", "00000000000000a", "0000000000000_a2"] {
        let (status, _) = call(&h, "GET", &format!("/api/calls/{id}/recording"), None).await;
        assert_eq!(status, 400, "{id}");
    }
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
