//! REST updates of a simulated call (telephony spec §3.4, §6.5 items 13-15) against a tiny
//! axum app standing in for the bridge (not the real bridge): `Twiml` with `<Play digits>` and
//! a new `<Connect><Stream>` (new socket, new StreamSid, fresh counters, the script goes on),
//! `<Dial>` (transfer), `Status=completed`, `Url` (fetched, signed), bad TwiML, and the fake
//! REST API end to end (auth by token and API key, 401/404/21220/32018).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use base64::Engine as _;
use callbridge::sim::caller::{
    codes, CallEnding, CallReport, Script, SimCaller, SimCallerBuilder, SimCallerHandle,
    StreamKnobs, TimelineEvent,
};
use callbridge::sim::twilio_rest::FakeTwilioRest;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "redirect-test-token";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const PUBLIC_MEDIA: &str = "wss://bridge.test/twilio/media";

/// One WebSocket the fake bridge accepted.
struct Conn {
    headers: HeaderMap,
    ws: WebSocket,
}

/// One TwiML fetch the fake bridge answered.
#[derive(Clone, Debug)]
struct Fetch {
    headers: HeaderMap,
    uri: Uri,
    body: String,
}

#[derive(Clone)]
struct App {
    conns: mpsc::UnboundedSender<Conn>,
    fetches: Arc<Mutex<Vec<Fetch>>>,
    twiml: String,
}

struct Bridge {
    port: u16,
    conns: mpsc::UnboundedReceiver<Conn>,
    fetches: Arc<Mutex<Vec<Fetch>>>,
}

impl Bridge {
    /// The next WebSocket (within 5 s).
    async fn accept(&mut self) -> Conn {
        tokio::time::timeout(Duration::from_secs(5), self.conns.recv())
            .await
            .expect("no websocket within 5 s")
            .expect("bridge gone")
    }

    /// A caller connecting here directly; TwiML stream URLs are mapped here too.
    fn caller(&self) -> SimCallerBuilder {
        SimCaller::builder()
            .stream_url(format!("ws://127.0.0.1:{}/twilio/media", self.port))
            .connect_override(format!("ws://127.0.0.1:{}", self.port))
            .callback_override(format!("http://127.0.0.1:{}", self.port))
            .account_sid(ACCOUNT)
            .auth_token(TOKEN)
    }
}

async fn media(State(app): State<App>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let _ = app.conns.send(Conn {
            headers,
            ws: socket,
        });
    })
}

async fn next_twiml(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    body: String,
) -> Response {
    app.fetches
        .lock()
        .unwrap()
        .push(Fetch { headers, uri, body });
    ([("content-type", "text/xml")], app.twiml.clone()).into_response()
}

/// The fake bridge: `/twilio/media` hands each socket to the test, `/twilio/next` serves
/// `twiml` (for `Url` updates).
async fn bridge(twiml: &str) -> Bridge {
    let (tx, conns) = mpsc::unbounded_channel();
    let fetches = Arc::new(Mutex::new(Vec::new()));
    let app = App {
        conns: tx,
        fetches: fetches.clone(),
        twiml: twiml.to_string(),
    };
    let router = Router::new()
        .route("/twilio/media", any(media))
        .route("/twilio/next", post(next_twiml))
        .with_state(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Bridge {
        port,
        conns,
        fetches,
    }
}

#[derive(Debug, PartialEq)]
enum Frame {
    Json(Value),
    Close(Option<u16>),
    End,
}

async fn next_frame(ws: &mut WebSocket) -> Frame {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("nothing from the caller for 5 s");
        match m {
            Some(Ok(Message::Text(t))) => {
                return Frame::Json(serde_json::from_str(t.as_str()).unwrap())
            }
            Some(Ok(Message::Close(f))) => return Frame::Close(f.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Frame::End,
        }
    }
}

async fn next_json(ws: &mut WebSocket) -> Value {
    match next_frame(ws).await {
        Frame::Json(v) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// `connected` then `start`; returns `start`.
async fn read_opening(ws: &mut WebSocket) -> Value {
    assert_eq!(next_json(ws).await["event"], "connected");
    let start = next_json(ws).await;
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    start
}

fn seq(m: &Value) -> u64 {
    m["sequenceNumber"].as_str().unwrap().parse().unwrap()
}

/// Everything up to and including `stop` on a stream, then the close frame.
struct StreamTail {
    media: Vec<Value>,
    stop: Value,
    close: Frame,
}

/// Read to `stop` checking that sequence numbers continue from `last_seq`; then the close.
async fn read_to_stop(ws: &mut WebSocket, mut last_seq: u64) -> StreamTail {
    let mut media = Vec::new();
    loop {
        let m = next_json(ws).await;
        assert_eq!(
            seq(&m),
            last_seq + 1,
            "sequence numbers are contiguous: {m}"
        );
        last_seq += 1;
        match m["event"].as_str().unwrap() {
            "media" => media.push(m),
            "stop" => {
                let close = next_frame(ws).await;
                return StreamTail {
                    media,
                    stop: m,
                    close,
                };
            }
            "dtmf" | "mark" => {}
            other => panic!("unexpected {other}: {m}"),
        }
    }
}

fn payload(m: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(m["media"]["payload"].as_str().unwrap())
        .unwrap()
}

fn sign(url: &str, params: &[(String, String)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn events(r: &CallReport) -> Vec<&TimelineEvent> {
    r.timeline.iter().map(|e| &e.event).collect()
}

fn at(r: &CallReport, f: impl Fn(&TimelineEvent) -> bool) -> Option<u64> {
    r.timeline.iter().find(|e| f(&e.event)).map(|e| e.at_ms)
}

async fn join(caller: SimCallerHandle) -> CallReport {
    tokio::time::timeout(Duration::from_secs(15), caller.join())
        .await
        .expect("call did not end")
        .unwrap()
}

/// (a) `<Play digits>` then a new `<Connect><Stream>`: the old socket gets `stop` and a 1000
/// close, a new socket opens with a new StreamSid, fresh counters and the new parameters,
/// and the script carries on there; nothing sent twice or lost, nothing sent in the gap.
#[tokio::test]
async fn twiml_redirect_opens_a_new_stream_and_the_script_continues() {
    let mut b = bridge("").await;
    let said = vec![0x42u8; 320];
    let caller = b
        .caller()
        .custom_parameter("leg", "first")
        .script(
            Script::new()
                .silence(1500)
                .say_ulaw("after-redirect", said.clone())
                .silence(200)
                .hang_up(),
        )
        .spawn();
    let update = caller.update_trigger();

    let mut c1 = b.accept().await;
    let start1 = read_opening(&mut c1.ws).await;
    let sid1 = start1["streamSid"].as_str().unwrap().to_string();
    assert_eq!(start1["start"]["customParameters"], json!({"leg": "first"}));
    let mut media1 = Vec::new();
    while media1.len() < 5 {
        let m = next_json(&mut c1.ws).await;
        assert_eq!(m["event"], "media");
        media1.push(m);
    }
    let twiml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Play digits="1w2"/><Connect><Stream url="{PUBLIC_MEDIA}"><Parameter name="continuation" value="abc"/></Stream></Connect><Hangup/></Response>"#
    );
    update(&fields(&[("Twiml", &twiml)]));

    let tail = read_to_stop(&mut c1.ws, seq(media1.last().unwrap())).await;
    assert_eq!(tail.stop["streamSid"], sid1.as_str());
    assert_eq!(
        tail.stop["stop"],
        json!({"accountSid": ACCOUNT, "callSid": start1["start"]["callSid"]})
    );
    assert_eq!(
        tail.close,
        Frame::Close(Some(1000)),
        "stop is followed by a 1000 close"
    );
    media1.extend(tail.media);

    // The new stream: same call, new StreamSid, counters from 1, the new parameters.
    let mut c2 = b.accept().await;
    assert_eq!(
        c2.headers["x-twilio-signature"],
        sign(PUBLIC_MEDIA, &[]).as_str()
    );
    assert_eq!(c2.headers["user-agent"], "Twilio.TmeWs/1.0");
    let start2 = read_opening(&mut c2.ws).await;
    let sid2 = start2["streamSid"].as_str().unwrap().to_string();
    assert_ne!(sid2, sid1);
    assert!(sid2.starts_with("MZ") && sid2.len() == 34, "{sid2}");
    assert_eq!(start2["start"]["streamSid"], sid2.as_str());
    assert_eq!(start2["start"]["callSid"], start1["start"]["callSid"]);
    assert_eq!(start2["start"]["accountSid"], ACCOUNT);
    assert_eq!(
        start2["start"]["customParameters"],
        json!({"continuation": "abc"})
    );
    let tail2 = read_to_stop(&mut c2.ws, 1).await;
    assert_eq!(tail2.close, Frame::Close(Some(1000)));
    let first = &tail2.media[0];
    assert_eq!(first["sequenceNumber"], "2");
    assert_eq!(first["media"]["chunk"], "1");
    assert_eq!(first["media"]["timestamp"], "155");
    for (i, m) in tail2.media.iter().enumerate() {
        assert_eq!(m["media"]["chunk"], (i + 1).to_string());
        assert_eq!(m["streamSid"], sid2.as_str());
    }

    // The scripted utterance went out once, whole, on the new stream.
    let count_42 = |ms: &[Value]| -> usize {
        ms.iter()
            .map(|m| payload(m).iter().filter(|&&x| x == 0x42).count())
            .sum()
    };
    assert_eq!(count_42(&media1), 0);
    assert_eq!(count_42(&tail2.media), 320);

    let report = join(caller).await;
    let text = report.timeline_text();
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone), "{text}");
    assert_eq!(report.stream_sids, vec![sid1.clone(), sid2.clone()]);
    assert_eq!(report.stream_sid, sid2);
    assert_eq!(report.custom_parameters["continuation"], "abc");
    assert_eq!(report.signed_stream_url, PUBLIC_MEDIA);
    assert_eq!(report.fallback_twiml.as_deref(), Some("<Hangup/>"));
    // Nothing lost or duplicated on the caller side: every frame sent arrived, once.
    let total = (media1.len() + tail2.media.len()) as u64;
    assert_eq!(report.media_frames_sent, total, "{text}");
    assert_eq!(report.sent.len() as u64, total * 160);
    assert_eq!(report.sent.iter().filter(|&&x| x == 0x42).count(), 320);

    // Timeline: started, stopped, digits, started again; the gap took the digits' time.
    let ev = events(&report);
    let started: Vec<usize> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, TimelineEvent::StreamStarted { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(started.len(), 2, "{text}");
    let digits = ev
        .iter()
        .position(|e| matches!(e, TimelineEvent::DigitsPlayed { digits } if digits == "1w2"))
        .expect(&text);
    let stopped = ev
        .iter()
        .position(
            |e| matches!(e, TimelineEvent::StreamStopped { stream_sid } if *stream_sid == sid1),
        )
        .expect(&text);
    assert!(
        started[0] < stopped && stopped < digits && digits < started[1],
        "{text}"
    );
    let t_digits = at(&report, |e| matches!(e, TimelineEvent::DigitsPlayed { .. })).unwrap();
    let t_start2 = report.timeline[started[1]].at_ms;
    assert!(t_start2 >= t_digits + 700, "1w2 takes 700 ms: {text}");
    let t_say = at(&report, |e| {
        matches!(e, TimelineEvent::UtteranceStart { .. })
    })
    .unwrap();
    assert!(
        t_say >= 155 + 1500,
        "the silence ran on the call's clock: {text}"
    );
    assert!(matches!(
        ev.last(),
        Some(TimelineEvent::HungUp {
            reason: CallEnding::ScriptDone
        })
    ));
    // `heard` covers the whole call on one clock (silence in the gap).
    let end = report.timeline.last().unwrap().at_ms;
    assert!(
        report.heard.len() as u64 / 8 + 40 >= end,
        "{} vs {end}",
        report.heard.len()
    );
}

/// (b) `<Dial>` with a `<Number url>`: stop on the socket, the call ends transferred with
/// every attribute recorded; verbs after `<Dial>` never run, no new stream.
#[tokio::test]
async fn twiml_dial_transfers_and_ends_the_call() {
    let mut b = bridge("").await;
    let caller = b
        .caller()
        .knobs(StreamKnobs {
            say_ms_per_char: 5,
            ..StreamKnobs::default()
        })
        .script(Script::new().silence(30_000))
        .spawn();
    let update = caller.update_trigger();
    let mut c1 = b.accept().await;
    read_opening(&mut c1.ws).await;
    let m = next_json(&mut c1.ws).await;
    update(&fields(&[(
        "Twiml",
        r#"<Response><Say>Transferring you to billing</Say><Dial callerId="+15550001111" timeout="20"><Number url="https://bridge.test/twilio/whisper/billing">+14155550100</Number></Dial><Say>never</Say></Response>"#,
    )]));
    let tail = read_to_stop(&mut c1.ws, seq(&m)).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));

    let report = join(caller).await;
    let text = report.timeline_text();
    assert_eq!(report.ended_by, Some(CallEnding::Transferred), "{text}");
    let ev = events(&report);
    let said = ev
        .iter()
        .position(
            |e| matches!(e, TimelineEvent::Said { text } if text == "Transferring you to billing"),
        )
        .expect(&text);
    let dialed = ev
        .iter()
        .position(|e| {
            *e == &TimelineEvent::Dialed {
                target: "+14155550100".into(),
                caller_id: Some("+15550001111".into()),
                timeout: Some(20),
                whisper_url: Some("https://bridge.test/twilio/whisper/billing".into()),
            }
        })
        .expect(&text);
    assert!(said < dialed, "{text}");
    assert!(!ev
        .iter()
        .any(|e| matches!(e, TimelineEvent::Said { text } if text == "never")));
    assert!(matches!(
        ev.last(),
        Some(TimelineEvent::CallEnded {
            reason: CallEnding::Transferred
        })
    ));
    assert_eq!(report.stream_sids.len(), 1);
    assert!(b.conns.try_recv().is_err(), "no second stream");

    // Plain-number form with no attributes.
    let mut b = bridge("").await;
    let caller = b.caller().script(Script::new().silence(30_000)).spawn();
    let update = caller.update_trigger();
    let mut c1 = b.accept().await;
    read_opening(&mut c1.ws).await;
    update(&fields(&[(
        "Twiml",
        "<Response><Dial><Sip>sip:billing@pbx.test</Sip></Dial></Response>",
    )]));
    let report = join(caller).await;
    assert!(report.timeline.iter().any(|e| e.event
        == TimelineEvent::Dialed {
            target: "sip:billing@pbx.test".into(),
            caller_id: None,
            timeout: None,
            whisper_url: None,
        }));
    assert_eq!(report.ended_by, Some(CallEnding::Transferred));
}

/// (c) `Status=completed`: stop (next sequence number), close 1000, the call ends.
#[tokio::test]
async fn status_completed_stops_and_ends() {
    let mut b = bridge("").await;
    let caller = b.caller().script(Script::new().silence(30_000)).spawn();
    let update = caller.update_trigger();
    let mut c1 = b.accept().await;
    read_opening(&mut c1.ws).await;
    let m = next_json(&mut c1.ws).await;
    update(&fields(&[("Status", "completed")]));
    let tail = read_to_stop(&mut c1.ws, seq(&m)).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));
    let report = join(caller).await;
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));
    assert!(report.timeline.iter().any(|e| e.event
        == TimelineEvent::HungUp {
            reason: CallEnding::CompletedByRest
        }));
    assert_eq!(report.close_code, Some(1000));
    assert!(b.conns.try_recv().is_err());
}

/// (d) `Url`: the TwiML is fetched from the bridge (signed form POST with the call's fields,
/// to the loopback override) and run: a new stream with its parameters; the verbs after
/// `</Connect>` are remembered; the bridge then closes the new stream.
#[tokio::test]
async fn url_update_fetches_twiml_and_connects_again() {
    let next = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{PUBLIC_MEDIA}"><Parameter name="leg" value="2"/><Parameter name="note" value="a &amp; b"/></Stream></Connect><Say>Goodbye</Say><Hangup/></Response>"#
    );
    let mut b = bridge(&next).await;
    let caller = b
        .caller()
        .call_sid("CAfedcba9876543210fedcba9876543210")
        .script(Script::new().silence(30_000))
        .spawn();
    let update = caller.update_trigger();
    let mut c1 = b.accept().await;
    read_opening(&mut c1.ws).await;
    let m = next_json(&mut c1.ws).await;
    update(&fields(&[
        ("Url", "https://bridge.test/twilio/next"),
        ("Method", "POST"),
    ]));
    let tail = read_to_stop(&mut c1.ws, seq(&m)).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));

    let mut c2 = b.accept().await;
    let start2 = read_opening(&mut c2.ws).await;
    assert_eq!(
        start2["start"]["customParameters"],
        json!({"leg": "2", "note": "a & b"})
    );
    assert_eq!(
        start2["start"]["callSid"],
        "CAfedcba9876543210fedcba9876543210"
    );
    // A media frame or two, then the bridge ends the stream.
    let m2 = next_json(&mut c2.ws).await;
    assert_eq!(m2["media"]["chunk"], "1");
    c2.ws.send(Message::Close(None)).await.unwrap();

    let report = join(caller).await;
    let text = report.timeline_text();
    assert_eq!(report.ended_by, Some(CallEnding::BridgeClosed), "{text}");
    assert_eq!(report.stream_sids.len(), 2);
    assert_eq!(
        report.fallback_twiml.as_deref(),
        Some("<Say>Goodbye</Say><Hangup/>")
    );

    let fetches = b.fetches.lock().unwrap().clone();
    assert_eq!(fetches.len(), 1);
    let f = &fetches[0];
    assert_eq!(f.uri.path(), "/twilio/next");
    assert_eq!(
        f.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: Vec<(String, String)> = f
        .body
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            let dec = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .unwrap()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect();
    let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("CallSid"), Some("CAfedcba9876543210fedcba9876543210"));
    assert_eq!(get("AccountSid"), Some(ACCOUNT));
    assert_eq!(get("CallStatus"), Some("in-progress"));
    assert_eq!(
        f.headers["x-twilio-signature"],
        sign("https://bridge.test/twilio/next", &form).as_str()
    );
}

/// Bad TwiML is an application error (12100, the call ends); an unknown verb is skipped with
/// 12200 and `<Pause>` takes its time; a failed fetch is 11200.
#[tokio::test]
async fn bad_twiml_unknown_verbs_pause_and_fetch_errors() {
    async fn run(update_fields: Vec<(String, String)>) -> (CallReport, StreamTail) {
        let mut b = bridge("").await;
        let caller = b.caller().script(Script::new().silence(30_000)).spawn();
        let update = caller.update_trigger();
        let mut c1 = b.accept().await;
        read_opening(&mut c1.ws).await;
        let m = next_json(&mut c1.ws).await;
        update(&update_fields);
        let tail = read_to_stop(&mut c1.ws, seq(&m)).await;
        (join(caller).await, tail)
    }
    let warned = |r: &CallReport, code: u32| {
        r.timeline
            .iter()
            .any(|e| matches!(e.event, TimelineEvent::Warning { code: c, .. } if c == code))
    };

    let (r, tail) = run(fields(&[("Twiml", "<Response><Say>unclosed</Response>")])).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));
    assert_eq!(r.ended_by, Some(CallEnding::ApplicationError));
    assert!(warned(&r, codes::DOCUMENT_PARSE), "{}", r.timeline_text());

    let (r, _) = run(fields(&[(
        "Twiml",
        r#"<Response><Pause length="1"/><Bogus/><Hangup/><Say>never</Say></Response>"#,
    )]))
    .await;
    let text = r.timeline_text();
    assert_eq!(r.ended_by, Some(CallEnding::TwimlEnded), "{text}");
    assert!(warned(&r, codes::SCHEMA_VALIDATION), "{text}");
    let stopped = at(&r, |e| matches!(e, TimelineEvent::StreamStopped { .. })).unwrap();
    let ended = at(&r, |e| matches!(e, TimelineEvent::CallEnded { .. })).unwrap();
    assert!(ended >= stopped + 1000, "<Pause length=1> waits: {text}");
    assert!(!r
        .timeline
        .iter()
        .any(|e| matches!(&e.event, TimelineEvent::Said { .. })));

    // Nothing serves this path: the fetch answers 404.
    let (r, _) = run(fields(&[("Url", "https://bridge.test/twilio/missing")])).await;
    assert_eq!(r.ended_by, Some(CallEnding::ApplicationError));
    assert!(warned(&r, codes::HTTP_RETRIEVAL), "{}", r.timeline_text());
}

/// (e) The fake REST API driving a registered caller: Basic auth with the account token and
/// with an API key, 401 for a bad password, 404 for an unknown CallSid, 32018 for long TwiML,
/// 21220 once the call is over (hung up over REST, or ended by itself).
#[tokio::test]
async fn fake_rest_end_to_end_with_token_and_api_key() {
    const CALL: &str = "CA00000000000000000000000000000001";
    const KEY: &str = "SK0123456789abcdef0123456789abcdef";
    const SECRET: &str = "api-key-secret";
    let mut b = bridge("").await;
    let rest = FakeTwilioRest::new(ACCOUNT, TOKEN)
        .api_key(KEY, SECRET)
        .spawn()
        .await
        .unwrap();
    let caller = b
        .caller()
        .call_sid(CALL)
        .script(Script::new().silence(30_000))
        .spawn();
    rest.register_caller(CALL, &caller);
    let client = reqwest::Client::new();
    let post = |call: &str, user: &str, pass: &str, form: Vec<(String, String)>| {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        client
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{call}.json",
                rest.base_url()
            ))
            .basic_auth(user, Some(pass))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    async fn answer(r: reqwest::Result<reqwest::Response>) -> (u16, Value) {
        let r = r.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    let mut c1 = b.accept().await;
    read_opening(&mut c1.ws).await;
    let m = next_json(&mut c1.ws).await;

    let (status, body) =
        answer(post(CALL, ACCOUNT, "wrong", fields(&[("Status", "completed")])).await).await;
    assert_eq!((status, body["code"].clone()), (401, json!(20003)));
    let (status, body) =
        answer(post(CALL, KEY, "wrong", fields(&[("Status", "completed")])).await).await;
    assert_eq!((status, body["code"].clone()), (401, json!(20003)));
    let (status, body) = answer(
        post(
            "CA99999999999999999999999999999999",
            ACCOUNT,
            TOKEN,
            fields(&[("Status", "completed")]),
        )
        .await,
    )
    .await;
    assert_eq!((status, body["code"].clone()), (404, json!(20404)));
    let long = format!("<Response><Say>{}</Say></Response>", "x".repeat(4000));
    let (status, body) =
        answer(post(CALL, ACCOUNT, TOKEN, fields(&[("Twiml", &long)])).await).await;
    assert_eq!((status, body["code"].clone()), (400, json!(32018)));

    // Account token: a redirect to a new stream.
    let twiml = format!(
        r#"<Response><Play digits="9"/><Connect><Stream url="{PUBLIC_MEDIA}"><Parameter name="via" value="rest"/></Stream></Connect></Response>"#
    );
    let (status, body) =
        answer(post(CALL, ACCOUNT, TOKEN, fields(&[("Twiml", &twiml)])).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "in-progress");
    assert_eq!(body["sid"], CALL);
    let tail = read_to_stop(&mut c1.ws, seq(&m)).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));
    let mut c2 = b.accept().await;
    let start2 = read_opening(&mut c2.ws).await;
    assert_eq!(start2["start"]["customParameters"], json!({"via": "rest"}));
    let m2 = next_json(&mut c2.ws).await;

    // API key: hang up.
    let (status, body) =
        answer(post(CALL, KEY, SECRET, fields(&[("Status", "completed")])).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    let tail = read_to_stop(&mut c2.ws, seq(&m2)).await;
    assert_eq!(tail.close, Frame::Close(Some(1000)));
    let report = join(caller).await;
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));
    assert_eq!(report.stream_sids.len(), 2);
    let (status, body) =
        answer(post(CALL, ACCOUNT, TOKEN, fields(&[("Twiml", &twiml)])).await).await;
    assert_eq!((status, body["code"].clone()), (400, json!(21220)));

    // A registered call that ended by itself is completed for the REST API too.
    const CALL2: &str = "CA00000000000000000000000000000002";
    let caller = b
        .caller()
        .call_sid(CALL2)
        .script(Script::new().silence(100).hang_up())
        .spawn();
    rest.register_caller(CALL2, &caller);
    let mut c = b.accept().await;
    read_opening(&mut c.ws).await;
    let report = join(caller).await;
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    assert_eq!(rest.call_status(CALL2), Some("completed"));
    let (status, body) =
        answer(post(CALL2, KEY, SECRET, fields(&[("Status", "completed")])).await).await;
    assert_eq!((status, body["code"].clone()), (400, json!(21220)));
    let updates: BTreeMap<u16, usize> = rest.requests().iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.status).or_default() += 1;
        m
    });
    assert_eq!(
        updates,
        BTreeMap::from([(200, 2), (400, 3), (401, 2), (404, 1)])
    );
}
