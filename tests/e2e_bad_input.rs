//! End-to-end robustness: bad input on either leg is logged with the call's id and skipped,
//! the bridge keeps serving, and a concurrent call is unaffected.
//!
//! Caller leg: a raw WebSocket client sends garbage (malformed JSON, unknown events, binary
//! frames, invalid base64, wrong types, media before `start`, a 1 MiB frame) around real
//! audio. Model leg: a small fake Live server written here sends garbage (non-JSON, unknown
//! message kinds, invalid base64 audio) around real audio, or drops the connection; the
//! Gemini simulator refuses a key or a model.
//!
//! Logs are captured with a process-wide subscriber (this test binary only) so the tests can
//! check that each warning carries the call's span fields (`conn`, `call_sid`).

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use callbridge::call::driver::CallNote;
use callbridge::call::event::CallEvent;
use callbridge::sim::caller::{CallEnding, CallReport, Script, TimelineEvent};
use callbridge::sim::gemini::{Clip, CloseRecord, Reply, Scenario};
use common::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ---------------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------------

use common::LogBuf;

/// Installs (once) a subscriber that writes every `callbridge` event at debug and above,
/// without colours, into a shared buffer. Call at the start of every test.
fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("callbridge=debug"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buf
    })
}

/// Captured log lines containing every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<String> {
    let bytes = logs().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// The first 1.5 s of the bundled greeting: long enough to check by content, short enough
/// to keep the tests quick.
fn short_greeting() -> Scenario {
    let samples = Clip::greeting().samples()[..36_000].to_vec();
    Scenario {
        greeting: Some(Reply {
            clip: Some(Clip::from_samples(samples)),
            text: "Hi! Thanks for calling.".into(),
        }),
        turns: Vec::new(),
        ..Scenario::default()
    }
}

/// 0.2–1.3 s of the greeting at 8 kHz: what a caller must have heard of [`short_greeting`]
/// (or of the first second of the greeting clip sent by the fake model).
fn greeting_ref8k(end_s: f64) -> Vec<i16> {
    let r = pcm("model_greeting.ref8k.wav");
    r[1_600..(end_s * 8000.0) as usize].to_vec()
}

/// Best normalised cross-correlation of `reference` anywhere in `signal`.
fn correlate(signal: &[i16], reference: &[i16]) -> f64 {
    find_in(signal, reference).0
}

/// Bridge notes until `calls` calls have ended (or the timeout).
async fn notes_until_ended(h: &mut Harness, calls: usize, timeout: Duration) -> Vec<CallNote> {
    let mut out = Vec::new();
    let mut ended = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while ended < calls {
        match tokio::time::timeout_at(deadline, h.notes.recv()).await {
            Ok(Ok(n)) => {
                if matches!(n.event, CallEvent::Ended(_)) {
                    ended += 1;
                }
                out.push(n);
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            _ => break,
        }
    }
    out
}

/// The bridge's connection id of the call with this CallSid.
fn conn_of(notes: &[CallNote], call_sid: &str) -> u64 {
    notes
        .iter()
        .find_map(|n| match &n.event {
            CallEvent::Started { call_sid: c, .. } if c == call_sid => Some(n.conn),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no `started` note for {call_sid}"))
}

/// How the bridge says a connection ended (`"ended <reason>"`).
fn ending_of(notes: &[CallNote], conn: u64) -> Option<String> {
    let mine: Vec<CallNote> = notes.iter().filter(|n| n.conn == conn).cloned().collect();
    event_kinds(&mine)
        .into_iter()
        .find(|k| k.starts_with("ended "))
}

/// The caller heard the greeting (by content), had no Twilio warnings, no scripted wait
/// timed out, and the script ran to its end.
fn assert_clean_call(report: &CallReport, reference: &[i16], what: &str) {
    let text = report.timeline_text();
    assert_eq!(
        report.ended_by,
        Some(CallEnding::ScriptDone),
        "{what}: ended by the script\n{text}"
    );
    assert!(
        report.warnings.is_empty(),
        "{what}: twilio warnings {:?}\n{text}",
        report.warnings
    );
    assert!(
        !report
            .timeline
            .iter()
            .any(|e| matches!(e.event, TimelineEvent::WaitTimedOut { .. })),
        "{what}: a scripted wait timed out\n{text}"
    );
    let score = correlate(&ulaw_to_pcm(&report.heard), reference);
    assert!(
        score > 0.8,
        "{what}: heard the agent (correlation {score:.3})\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// A raw Twilio-like client that can send anything
// ---------------------------------------------------------------------------------------

type ClientWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct RawCaller {
    tx: SplitSink<ClientWs, WsMsg>,
    /// Text frames received (parsed), with arrival time.
    received: Arc<Mutex<Vec<(Instant, Value)>>>,
    /// How the socket ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
    stream_sid: String,
    call_sid: String,
    /// The stream token the webhook issued for `call_sid`.
    token: String,
    seq: u64,
    chunk: u64,
}

impl RawCaller {
    /// A signed upgrade with a stream token from a signed webhook, as Twilio would connect.
    async fn connect(h: &Harness) -> RawCaller {
        let call_sid = sid("CA");
        let (request, token) = h.raw_stream(&call_sid).await;
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("media websocket upgrade");
        let (tx, mut rx) = ws.split();
        let received = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (rec, end) = (received.clone(), ended.clone());
        let reader = tokio::spawn(async move {
            let why = loop {
                match rx.next().await {
                    Some(Ok(WsMsg::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("bridge sends JSON");
                        rec.lock().unwrap().push((Instant::now(), v));
                    }
                    Some(Ok(WsMsg::Close(f))) => {
                        break format!("close {:?}", f.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error {e}"),
                    None => break "eof".to_string(),
                }
            };
            *end.lock().unwrap() = Some(why);
        });
        RawCaller {
            tx,
            received,
            ended,
            reader,
            stream_sid: sid("MZ"),
            call_sid,
            token,
            seq: 0,
            chunk: 0,
        }
    }

    async fn send(&mut self, msg: WsMsg) {
        self.tx.send(msg).await.expect("send to the bridge");
    }

    async fn text(&mut self, text: impl Into<String>) {
        let t: String = text.into();
        self.send(WsMsg::Text(t.into())).await;
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    async fn connected(&mut self) {
        self.text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#)
            .await;
    }

    async fn start(&mut self) {
        let seq = self.next_seq();
        let start = json!({
            "event": "start",
            "sequenceNumber": seq,
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"token": self.token}
            },
            "streamSid": self.stream_sid,
        });
        self.text(start.to_string()).await;
    }

    fn media_json(&mut self, payload: &[u8]) -> String {
        self.chunk += 1;
        let seq = self.next_seq();
        json!({
            "event": "media",
            "sequenceNumber": seq,
            "media": {
                "track": "inbound",
                "chunk": self.chunk.to_string(),
                "timestamp": (135 + 20 * self.chunk).to_string(),
                "payload": B64.encode(payload),
            },
            "streamSid": self.stream_sid,
        })
        .to_string()
    }

    async fn media(&mut self, payload: &[u8]) {
        let m = self.media_json(payload);
        self.text(m).await;
    }

    async fn stop(&mut self) {
        let seq = self.next_seq();
        let stop = json!({
            "event": "stop",
            "sequenceNumber": seq,
            "streamSid": self.stream_sid,
            "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
        });
        self.text(stop.to_string()).await;
    }

    /// Agent audio (μ-law) received at or after `since`, and how many media messages.
    fn agent_media(&self, since: Instant) -> (Vec<u8>, usize) {
        let mut audio = Vec::new();
        let mut n = 0;
        for (at, v) in self.received.lock().unwrap().iter() {
            if *at >= since && v["event"] == "media" {
                assert_eq!(
                    v["streamSid"],
                    self.stream_sid.as_str(),
                    "media for our stream"
                );
                let p = v["media"]["payload"].as_str().expect("payload");
                audio.extend(B64.decode(p).expect("bridge sends valid base64"));
                n += 1;
            }
        }
        (audio, n)
    }

    /// When the last agent media arrived.
    fn last_media_at(&self) -> Option<Instant> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, v)| v["event"] == "media")
            .map(|(at, _)| *at)
    }

    /// Waits for the bridge to end the socket; returns how it ended.
    async fn wait_end(self, timeout: Duration) -> Option<String> {
        let RawCaller {
            tx, reader, ended, ..
        } = self;
        let _ = tokio::time::timeout(timeout, reader).await;
        drop(tx);
        let e = ended.lock().unwrap().clone();
        e
    }
}

// ---------------------------------------------------------------------------------------
// 1 + 6. Caller-leg garbage, logged with the call's id; the call and a concurrent call work
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_leg_garbage_is_logged_and_skipped_and_the_call_goes_on() {
    logs();
    let mut h = harness(|s| s.scenario(short_greeting()), |_| {}).await;

    // A well-behaved call alongside.
    let other_sid = sid("CA");
    let other = h
        .caller()
        .call_sid(other_sid.clone())
        .script(
            Script::new()
                .wait_for_agent(500, 10_000)
                .say_ulaw("bye", caller_clip("caller_bye"))
                .silence(300),
        )
        .spawn();

    let mut raw = RawCaller::connect(&h).await;
    let silence = [0xFFu8; 160];
    raw.connected().await;
    // Media before `start`: valid, but there is no stream yet.
    let early = raw.media_json(&silence);
    raw.text(early).await;
    raw.chunk = 0;
    raw.seq = 0;
    raw.start().await;

    // The garbage, each a frame the bridge must log and skip.
    let bad_base64 = json!({
        "event": "media", "sequenceNumber": "90", "streamSid": raw.stream_sid,
        "media": {"track": "inbound", "chunk": "90", "timestamp": "2000", "payload": "@@not*base64@@"},
    });
    let wrong_type = json!({
        "event": "media", "sequenceNumber": "91", "streamSid": raw.stream_sid, "media": "x",
    });
    let wrong_payload_type = json!({
        "event": "media", "sequenceNumber": "92", "streamSid": raw.stream_sid,
        "media": {"track": "inbound", "chunk": "92", "timestamp": "2040", "payload": 12345},
    });
    let bad_text: Vec<String> = vec![
        r#"{"event":"media","media":{"payload":"#.into(),
        r#"{"event":"bogus"}"#.into(),
        "[1,2,3]".into(),
        String::new(),
        bad_base64.to_string(),
        wrong_type.to_string(),
        wrong_payload_type.to_string(),
    ];
    raw.text(bad_text[0].clone()).await;
    raw.text(bad_text[1].clone()).await;
    raw.send(WsMsg::Binary(vec![0x7f, 0x00, 0xff, 0x10].into()))
        .await;
    raw.send(WsMsg::Binary(vec![1, 2, 3].into())).await;
    for t in &bad_text[2..] {
        raw.text(t.clone()).await;
    }
    // Counters as JSON numbers are accepted on purpose (other providers send them).
    raw.chunk += 1;
    let numeric = json!({
        "event": "media", "sequenceNumber": 93, "streamSid": raw.stream_sid,
        "media": {"track": "inbound", "chunk": raw.chunk, "timestamp": 2060, "payload": B64.encode(silence)},
    });
    raw.text(numeric.to_string()).await;
    let garbage_done = Instant::now();

    // Then a normal caller: silence until the greeting has played, then speech, then stop.
    let hello = caller_clip("caller_hello");
    let said = &hello[2_400..2_400 + 125 * 160]; // 0.3 s .. 2.8 s of the clip
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let wait_greeting_until = Instant::now() + Duration::from_secs(6);
    loop {
        tick.tick().await;
        let quiet = raw
            .last_media_at()
            .is_some_and(|t| t.elapsed() > Duration::from_millis(500));
        if quiet || Instant::now() > wait_greeting_until {
            break;
        }
        raw.media(&silence).await;
    }
    for frame in said.chunks(160) {
        tick.tick().await;
        raw.media(frame).await;
    }
    for _ in 0..30 {
        tick.tick().await;
        raw.media(&silence).await;
    }
    raw.stop().await;

    let (agent, messages) = raw.agent_media(garbage_done);
    let (stream_sid, call_sid) = (raw.stream_sid.clone(), raw.call_sid.clone());
    let end = raw.wait_end(Duration::from_secs(5)).await;
    assert!(end.is_some(), "the bridge closed the stream after stop");

    let report = other.join().await.expect("other call runs");
    let notes = notes_until_ended(&mut h, 2, Duration::from_secs(5)).await;

    // The garbage call: the agent's greeting arrived after the garbage, by content.
    assert!(
        messages >= 50,
        "agent media after the garbage: {messages} messages"
    );
    let score = correlate(&ulaw_to_pcm(&agent), &greeting_ref8k(1.3));
    assert!(
        score > 0.8,
        "raw caller heard the greeting: correlation {score:.3}"
    );
    let conn = conn_of(&notes, &call_sid);
    assert_eq!(
        ending_of(&notes, conn).as_deref(),
        Some("ended caller_hung_up")
    );

    // The other call: untouched.
    assert_clean_call(&report, &greeting_ref8k(1.3), "concurrent call");
    let other_conn = conn_of(&notes, &other_sid);
    assert_ne!(other_conn, conn);
    assert_eq!(
        ending_of(&notes, other_conn).as_deref(),
        Some("ended caller_hung_up")
    );

    // The model received each caller's speech on that caller's session, by content.
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 2, "one model session per call");
    let hello_ref = &pcm("caller_hello.ref16k.wav")[8_000..8_000 + 32_000]; // 0.5 s .. 2.5 s
    let bye_ref = &pcm("caller_bye.ref16k.wav")[4_000..4_000 + 32_000];
    let hello_scores: Vec<f64> = rec
        .connections
        .iter()
        .map(|c| correlate(&c.audio, hello_ref))
        .collect();
    let bye_scores: Vec<f64> = rec
        .connections
        .iter()
        .map(|c| correlate(&c.audio, bye_ref))
        .collect();
    let hello_at = (0..2)
        .find(|&i| hello_scores[i] > 0.8)
        .unwrap_or_else(|| panic!("model received caller_hello: {hello_scores:?}"));
    let bye_at = (0..2)
        .find(|&i| bye_scores[i] > 0.8)
        .unwrap_or_else(|| panic!("model received caller_bye: {bye_scores:?}"));
    assert_ne!(hello_at, bye_at, "each caller's audio on its own session");
    assert!(
        hello_scores[bye_at] < 0.5 && bye_scores[hello_at] < 0.5,
        "no cross-talk: hello {hello_scores:?} bye {bye_scores:?}"
    );

    // 6. Each piece of garbage was logged with the call's id (span fields).
    let conn_field = format!("conn={conn}");
    let early = log_lines(&["media before start ignored", &conn_field]);
    assert_eq!(early.len(), 1, "media before start logged once: {early:#?}");
    let bad = log_lines(&["bad message from the caller leg ignored", &call_sid]);
    assert_eq!(
        bad.len(),
        bad_text.len(),
        "every bad text frame logged with the call sid: {bad:#?}"
    );
    for needle in [
        "not valid json",
        "unknown caller event",
        "not an object",
        "not valid base64",
        "`media` should be an object",
        "`media.payload` should be a string",
    ] {
        assert!(
            bad.iter().any(|l| l.contains(needle)),
            "a log line says {needle:?}: {bad:#?}"
        );
    }
    for line in &bad {
        assert!(line.contains(&conn_field), "conn id in {line}");
        assert!(line.contains(&stream_sid), "stream sid in {line}");
        assert!(line.contains("WARN"), "logged as a warning: {line}");
    }
    let binary = log_lines(&["binary frame on the caller leg ignored", &call_sid]);
    assert_eq!(
        binary.len(),
        1,
        "binary frames warned once per call: {binary:#?}"
    );
    // Nothing of the other call was logged as bad.
    assert!(log_lines(&["caller leg ignored", &other_sid]).is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. A 1 MiB frame closes only that connection
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_caller_frame_ends_only_that_connection() {
    logs();
    let mut h = harness(|s| s.scenario(short_greeting()), |_| {}).await;
    let script = || Script::new().wait_for_agent(500, 10_000).silence(200);

    // A call already in progress.
    let before_sid = sid("CA");
    let before = h
        .caller()
        .call_sid(before_sid.clone())
        .script(script())
        .spawn();

    let mut raw = RawCaller::connect(&h).await;
    raw.connected().await;
    raw.start().await;
    raw.media(&[0xFF; 160]).await;
    let big = format!(
        r#"{{"event":"media","streamSid":"{}","media":{{"track":"inbound","chunk":"2","timestamp":"175","payload":"{}"}}}}"#,
        raw.stream_sid,
        "A".repeat(1 << 20)
    );
    assert!(big.len() > 1 << 20);
    // The bridge may reset the connection while the frame is still being written.
    let _ = raw.tx.send(WsMsg::Text(big.into())).await;
    let raw_sid = raw.call_sid.clone();
    let end = raw.wait_end(Duration::from_secs(5)).await;
    assert!(
        end.is_some(),
        "the bridge ended the connection that sent 1 MiB"
    );

    // The bridge still takes new calls.
    let after_sid = sid("CA");
    let after = h
        .caller()
        .call_sid(after_sid.clone())
        .script(script())
        .spawn();

    let before = before.join().await.expect("earlier call runs");
    let after = after.join().await.expect("later call runs");
    let notes = notes_until_ended(&mut h, 3, Duration::from_secs(5)).await;

    let raw_conn = conn_of(&notes, &raw_sid);
    assert_eq!(
        ending_of(&notes, raw_conn).as_deref(),
        Some("ended caller_disconnected"),
        "the oversized frame ended its own call"
    );
    let logged = log_lines(&["caller socket error", &raw_sid]);
    assert_eq!(
        logged.len(),
        1,
        "the socket error is logged with the call sid"
    );
    assert_clean_call(&before, &greeting_ref8k(1.3), "call started before");
    assert_clean_call(&after, &greeting_ref8k(1.3), "call started after");
    for sid in [&before_sid, &after_sid] {
        let c = conn_of(&notes, sid);
        assert_eq!(
            ending_of(&notes, c).as_deref(),
            Some("ended caller_hung_up")
        );
    }
    // All three calls are gone from the registry.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.state.admission.live(), 0, "no call left behind");
}

// ---------------------------------------------------------------------------------------
// A fake Live server for the model-leg tests
// ---------------------------------------------------------------------------------------

type ServerWs = WebSocketStream<TcpStream>;

/// Serves each accepted connection with `behave(index, socket)`; returns the ws URL.
async fn fake_live<F, Fut>(behave: F) -> String
where
    F: Fn(usize, ServerWs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            tokio::spawn(behave(index, ws));
            index += 1;
        }
    });
    format!("ws://{addr}/ws/fake.BidiGenerateContent")
}

/// Reads the client's first message, which must be `setup`.
async fn read_setup(ws: &mut ServerWs) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(WsMsg::Binary(b))) => return serde_json::from_slice(&b).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no setup from the bridge: {other:?}"),
        }
    }
}

async fn send_bin(ws: &mut ServerWs, v: Value) {
    ws.send(WsMsg::Binary(v.to_string().into_bytes().into()))
        .await
        .unwrap();
}

fn audio_msg(samples: &[i16]) -> Value {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    json!({"serverContent": {"modelTurn": {"parts": [
        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": B64.encode(bytes)}}
    ]}}})
}

/// Reads until the client goes away (answering its close).
async fn drain(ws: &mut ServerWs) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// The greeting clip's first `ms` milliseconds at 24 kHz.
fn greeting_24k(ms: usize) -> Vec<i16> {
    Clip::greeting().samples()[..ms * 24].to_vec()
}

// ---------------------------------------------------------------------------------------
// 3. Model-leg garbage is logged and skipped
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_leg_garbage_is_logged_and_skipped() {
    logs();
    let setups = Arc::new(Mutex::new(Vec::new()));
    let seen = setups.clone();
    let url = fake_live(move |_, mut ws| {
        let seen = seen.clone();
        async move {
            let setup = read_setup(&mut ws).await;
            seen.lock().unwrap().push(setup);
            send_bin(&mut ws, json!({"setupComplete": {}})).await;
            // Garbage first.
            ws.send(WsMsg::Binary(b"\x00\x01 not json \xff".to_vec().into()))
                .await
                .unwrap();
            ws.send(WsMsg::Text(r#"{"somethingNew":{}}"#.into()))
                .await
                .unwrap();
            send_bin(
                &mut ws,
                json!({"serverContent": {"modelTurn": {"parts": [
                    {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "***not base64***"}}
                ]}}}),
            )
            .await;
            // Then one second of real audio in 40 ms chunks, and the end of the turn.
            for chunk in greeting_24k(1000).chunks(960) {
                send_bin(&mut ws, audio_msg(chunk)).await;
            }
            send_bin(
                &mut ws,
                json!({"serverContent": {"generationComplete": true}}),
            )
            .await;
            send_bin(&mut ws, json!({"serverContent": {"turnComplete": true}})).await;
            drain(&mut ws).await;
        }
    })
    .await;
    let mut h = harness(|s| s, |c| c.gemini.url = url).await;
    let call_sid = sid("CA");
    let report = h
        .caller()
        .call_sid(call_sid.clone())
        .script(Script::new().wait_for_agent(500, 8_000))
        .spawn()
        .join()
        .await
        .expect("call runs");
    let notes = notes_until_ended(&mut h, 1, Duration::from_secs(5)).await;

    let text = report.timeline_text();
    assert_eq!(setups.lock().unwrap().len(), 1);
    assert!(setups.lock().unwrap()[0]["setup"]["model"].is_string());
    assert!(
        report.agent_audio_ms() >= 900,
        "caller heard the second of audio after the garbage: {} ms\n{text}",
        report.agent_audio_ms()
    );
    assert_clean_call(&report, &greeting_ref8k(0.95), "call with a garbled model");
    let conn = conn_of(&notes, &call_sid);
    assert_eq!(
        ending_of(&notes, conn).as_deref(),
        Some("ended caller_hung_up")
    );

    // Each piece of garbage was logged with the call's id.
    let bad = log_lines(&["bad message from the model ignored", &call_sid]);
    assert_eq!(bad.len(), 2, "non-JSON and bad base64 logged: {bad:#?}");
    for line in &bad {
        assert!(line.contains(&format!("conn={conn}")), "conn id in {line}");
        assert!(line.contains("WARN"), "logged as a warning: {line}");
    }
    let unknown = log_lines(&["unknown model message ignored", "somethingNew", &call_sid]);
    assert_eq!(
        unknown.len(),
        1,
        "unknown message kind logged: {unknown:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. The model drops the connection mid-call: that call falls back, the other goes on
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_model_close_ends_only_that_call_with_fallback() {
    logs();
    let first_ready = Arc::new(Notify::new());
    let second_playing = Arc::new(Notify::new());
    let events: Arc<Mutex<Vec<&'static str>>> = Arc::new(Mutex::new(Vec::new()));
    let (ready, playing, drops) = (first_ready.clone(), second_playing.clone(), events.clone());
    let url = fake_live(move |index, mut ws| {
        let (ready, playing, drops) = (ready.clone(), playing.clone(), drops.clone());
        async move {
            read_setup(&mut ws).await;
            send_bin(&mut ws, json!({"setupComplete": {}})).await;
            if index == 0 {
                // Half a second of speech, then vanish mid-call without a close frame.
                for chunk in greeting_24k(500).chunks(960) {
                    send_bin(&mut ws, audio_msg(chunk)).await;
                }
                send_bin(&mut ws, json!({"serverContent": {"turnComplete": true}})).await;
                ready.notify_one();
                // Let the caller hear it, and the other call get going, then drop.
                tokio::time::sleep(Duration::from_millis(800)).await;
                playing.notified().await;
                drop(ws);
                drops.lock().unwrap().push("first dropped");
            } else {
                // 1.5 s of speech at 2.5x real time (like the real model, ahead of playback);
                // the other connection drops in the middle.
                for (i, chunk) in greeting_24k(1500).chunks(2400).enumerate() {
                    send_bin(&mut ws, audio_msg(chunk)).await;
                    if i == 3 {
                        playing.notify_one();
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                send_bin(&mut ws, json!({"serverContent": {"turnComplete": true}})).await;
                drain(&mut ws).await;
                drops.lock().unwrap().push("second closed");
            }
        }
    })
    .await;
    // Recovery is off here: this test is about an unrecoverable loss ending only its own call
    // with the fallback (recovery has its own tests in e2e_session.rs).
    let mut h = harness(
        |s| s,
        |c| {
            c.gemini.url = url;
            c.session.max_reconnects = 0;
        },
    )
    .await;

    let lost_sid = sid("CA");
    let lost = h
        .caller()
        .call_sid(lost_sid.clone())
        .script(Script::new().wait_for_agent(300, 8_000).silence(15_000))
        .spawn();
    tokio::time::timeout(Duration::from_secs(5), first_ready.notified())
        .await
        .expect("first model session ready");
    let fine_sid = sid("CA");
    let fine = h
        .caller()
        .call_sid(fine_sid.clone())
        .script(Script::new().wait_for_agent(500, 8_000))
        .spawn();

    let lost = lost.join().await.expect("first call runs");
    let fine = fine.join().await.expect("second call runs");
    let notes = notes_until_ended(&mut h, 2, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while events.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *events.lock().unwrap(),
        vec!["first dropped", "second closed"],
        "one model connection dropped while the other was still in use"
    );

    // The call whose model vanished: the bridge closed the stream, so Twilio runs the fallback.
    let text = lost.timeline_text();
    assert_eq!(lost.ended_by, Some(CallEnding::BridgeClosed), "{text}");
    assert!(
        lost.fallback_twiml
            .as_deref()
            .is_some_and(|f| f.contains("unavailable")),
        "fallback TwiML present: {:?}",
        lost.fallback_twiml
    );
    assert!(
        lost.agent_audio_ms() >= 400,
        "heard the first half second\n{text}"
    );
    let lost_conn = conn_of(&notes, &lost_sid);
    assert_eq!(
        ending_of(&notes, lost_conn).as_deref(),
        Some("ended model_lost")
    );
    let logged = log_lines(&["call ended", "model_lost", &lost_sid]);
    assert_eq!(
        logged.len(),
        1,
        "the loss is logged with the call sid: {logged:#?}"
    );

    // The concurrent call heard all of its audio.
    assert!(
        fine.agent_audio_ms() >= 1400,
        "second call heard its 1.5 s: {} ms\n{}",
        fine.agent_audio_ms(),
        fine.timeline_text()
    );
    assert_clean_call(&fine, &greeting_ref8k(1.3), "concurrent call");
    let fine_conn = conn_of(&notes, &fine_sid);
    assert_eq!(
        ending_of(&notes, fine_conn).as_deref(),
        Some("ended caller_hung_up")
    );
}

// ---------------------------------------------------------------------------------------
// 5. The model refuses the session: the stream closes so the fallback runs
// ---------------------------------------------------------------------------------------

async fn refused_call(
    sim_keys: Vec<String>,
    model: Option<&str>,
) -> (CallReport, Vec<CallNote>, Option<CloseRecord>) {
    let model = model.map(str::to_string);
    let mut h = harness(
        |s| s.scenario(short_greeting()).keys(sim_keys),
        |c| {
            if let Some(m) = model {
                c.gemini.model = m;
            }
        },
    )
    .await;
    let call_sid = sid("CA");
    let report = h
        .caller()
        .call_sid(call_sid.clone())
        .script(Script::new().wait_for_agent(500, 8_000))
        .spawn()
        .join()
        .await
        .expect("call runs");
    let notes = notes_until_ended(&mut h, 1, Duration::from_secs(5)).await;
    assert_eq!(conn_of(&notes, &call_sid), notes[0].conn);
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1, "one attempt to reach the model");
    (report, notes, rec.connections[0].close.clone())
}

fn assert_fell_back(report: &CallReport, notes: &[CallNote]) {
    let text = report.timeline_text();
    assert_eq!(report.ended_by, Some(CallEnding::BridgeClosed), "{text}");
    assert!(
        report
            .fallback_twiml
            .as_deref()
            .is_some_and(|f| f.contains("unavailable")),
        "fallback TwiML present: {:?}",
        report.fallback_twiml
    );
    assert_eq!(report.agent_audio_ms(), 0, "{text}");
    assert_eq!(
        ending_of(notes, notes[0].conn).as_deref(),
        Some("ended model_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_refusing_the_key_ends_the_call_with_fallback() {
    logs();
    let (report, notes, close) = refused_call(vec!["other".into()], None).await;
    assert_fell_back(&report, &notes);
    assert!(
        matches!(close, Some(CloseRecord::ByServer { code: 1007, .. })),
        "simulator refused the key: {close:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_ends_the_call_with_fallback() {
    logs();
    let (report, notes, close) =
        refused_call(vec![API_KEY.into()], Some("gemini-9-nonexistent")).await;
    assert_fell_back(&report, &notes);
    assert!(
        matches!(close, Some(CloseRecord::ByServer { code: 1008, .. })),
        "simulator refused the model: {close:?}"
    );
}
