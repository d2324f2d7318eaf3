//! End-to-end call control through the real server: the model's tool calls (`end_call`,
//! `transfer_call`, `send_dtmf`, operator webhook tools), caller key presses, and the call
//! limits (maximum duration, silence), with the Gemini simulator, the fake Twilio REST API,
//! the fake operator and a simulated Twilio caller on loopback sockets.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use callbridge::call::driver::CallNote;
use callbridge::call::event::CallEvent;
use callbridge::config::{Secret, TransferDestination, WebhookToolConfig};
use callbridge::sim::caller::{CallEnding, CallReport, Script, TimelineEvent};
use callbridge::sim::gemini::{Clip, ConnectionRecord, Reply, Scenario, ToolCall, Turn};
use callbridge::sim::operator::FakeOperator;
use common::*;
use serde_json::{json, Value};

const BILLING: &str = "+14155550100";
const CALLER_ID: &str = "+14155550199";
const WHISPER: &str = "Transferred call from the voice agent, billing question";
const FROM: &str = "+14155550123";

// ---- helpers ------------------------------------------------------------------------------

fn clip(name: &str) -> Clip {
    Clip::from_wav_bytes(&std::fs::read(asset(name)).unwrap()).unwrap()
}

fn transfer_clip() -> Clip {
    clip("model_transfer.pcm24k.wav")
}

fn goodbye_clip() -> Clip {
    clip("model_goodbye.pcm24k.wav")
}

fn say(c: Clip, text: &str) -> Reply {
    Reply {
        clip: Some(c),
        text: text.into(),
    }
}

fn silent_reply() -> Reply {
    Reply {
        clip: None,
        text: String::new(),
    }
}

fn call(name: &str, args: Value) -> ToolCall {
    ToolCall {
        name: name.into(),
        args,
    }
}

/// A turn that says `reply`, then calls `calls`, then says `after_tool` once answered.
fn tool_turn(reply: Reply, calls: Vec<ToolCall>, after_tool: Option<Reply>) -> Turn {
    Turn {
        tool_calls: calls,
        after_tool,
        ..Turn::reply(reply)
    }
}

/// A 24 kHz clip as an 8 kHz reference (windowed-sinc low-pass at 3.5 kHz, then every third
/// sample), for the clips that have no bundled `ref8k` WAV.
fn to_8k(c: &Clip) -> Vec<i16> {
    const TAPS: usize = 97;
    let fc = 3_500.0 / 24_000.0;
    let mid = (TAPS / 2) as f64;
    let h: Vec<f64> = (0..TAPS)
        .map(|i| {
            let x = i as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos();
            sinc * w
        })
        .collect();
    let s = c.samples();
    (0..s.len() / 3)
        .map(|k| {
            let n = k * 3;
            let mut acc = 0.0;
            for (j, hj) in h.iter().enumerate() {
                let idx = n as isize + j as isize - mid as isize;
                if idx >= 0 && (idx as usize) < s.len() {
                    acc += hj * s[idx as usize] as f64;
                }
            }
            acc.clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Time of the first timeline event matching `pred`.
fn at(report: &CallReport, pred: impl Fn(&TimelineEvent) -> bool) -> Option<u64> {
    report
        .timeline
        .iter()
        .find(|e| pred(&e.event))
        .map(|e| e.at_ms)
}

/// Index in `report.heard` of the frame playing at `at_ms`.
fn heard_index(report: &CallReport, at_ms: u64) -> usize {
    (at_ms.saturating_sub(report.heard_offset_ms) / 20) as usize * 160
}

/// How well `reference` (8 kHz) is found in what the caller heard from byte `from` on.
fn heard_score(report: &CallReport, from: usize, reference: &[i16]) -> f64 {
    find_in(
        &ulaw_to_pcm(&report.heard[from.min(report.heard.len())..]),
        reference,
    )
    .0
}

/// The script's waits all ended as planned (none gave up).
fn assert_waits_met(report: &CallReport) {
    assert!(
        !report
            .timeline
            .iter()
            .any(|e| matches!(e.event, TimelineEvent::WaitTimedOut { .. })),
        "a scripted wait timed out:\n{}",
        report.timeline_text()
    );
}

/// When the first note matching `pred` was emitted.
fn note_at(notes: &[CallNote], pred: impl Fn(&CallEvent) -> bool) -> Option<Instant> {
    notes.iter().find(|n| pred(&n.event)).map(|n| n.at)
}

fn ms_between(a: Instant, b: Instant) -> u64 {
    b.saturating_duration_since(a).as_millis() as u64
}

/// `realtimeInput.text` messages the model received, with their arrival (ms since open).
fn model_texts(conn: &ConnectionRecord) -> Vec<(u64, String)> {
    conn.frames
        .iter()
        .filter_map(|f| {
            let v: Value = serde_json::from_str(&f.raw).ok()?;
            let t = v.get("realtimeInput")?.get("text")?.as_str()?;
            Some((f.at_ms, t.to_string()))
        })
        .collect()
}

/// The one tool response the model received for function `name`.
fn response_for<'a>(conn: &'a ConnectionRecord, name: &str) -> &'a Value {
    let all: Vec<&Value> = conn
        .tool_responses
        .iter()
        .filter(|r| r["name"] == name)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "exactly one response for {name}: {:?}",
        conn.tool_responses
    );
    &all[0]["response"]
}

fn error_text(response: &Value) -> &str {
    assert!(
        response.get("output").is_none(),
        "an error response has no output: {response}"
    );
    response["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error response: {response}"))
}

fn billing_config(c: &mut callbridge::config::Config) {
    c.transfer.caller_id = CALLER_ID.into();
    c.transfer.timeout_secs = 20;
    let mut d = BTreeMap::new();
    d.insert(
        "billing".to_string(),
        TransferDestination {
            target: BILLING.into(),
            description: "The billing team: invoices, refunds and payments.".into(),
            whisper: WHISPER.into(),
        },
    );
    c.transfer.destinations = d;
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

// ---- end_call ------------------------------------------------------------------------------

/// `end_call` while the model keeps talking: the goodbye is the 8.7 s clip, but the hang-up
/// waits only `end_call_grace_ms` (2 s) after the tool response, cutting the clip short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_grace_bounds_the_wait_when_the_model_keeps_talking() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            Reply::long(),
            vec![call("end_call", json!({"reason": "done"}))],
            None,
        )],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| c.limits.end_call_grace_ms = 2_000,
    )
    .await;
    let call_sid = sid(0x101);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(Script::new().silence(30_000))
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let kinds = event_kinds(&notes);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended agent_hung_up"),
        "{kinds:?}"
    );
    let answered = note_at(
        &notes,
        |e| matches!(e, CallEvent::ToolResult { name, ok: true, .. } if name == "end_call"),
    )
    .expect("end_call answered");
    let ended = note_at(&notes, |e| matches!(e, CallEvent::Ended(_))).unwrap();
    let waited = ms_between(answered, ended);
    assert!(
        (1_900..3_000).contains(&waited),
        "hang-up {waited} ms after the tool response (grace 2000 ms)"
    );

    // Through REST, once; the caller's call was completed by it.
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 200);
    assert_eq!(
        reqs[0].fields,
        vec![("Status".to_string(), "completed".to_string())]
    );
    assert!(reqs[0].path.ends_with(&format!("/Calls/{call_sid}.json")));
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));

    // The caller heard the start of the long answer, but not all of it.
    let long_ms = Clip::long().duration_ms();
    let played = report
        .timeline
        .iter()
        .find_map(|e| match e.event {
            TimelineEvent::AgentAudioEnd {
                turn: 1, played_ms, ..
            } => Some(played_ms),
            _ => None,
        })
        .expect("the long turn was heard");
    assert!(
        played >= 2_500 && played + 2_000 < long_ms,
        "heard {played} ms of the {long_ms} ms goodbye"
    );
    let long_ref = pcm("model_long.ref8k.wav");
    let head = &long_ref[..8 * 2_000];
    let score = heard_score(&report, 0, head);
    assert!(
        score > 0.9,
        "the goodbye's first 2 s were heard: {score:.3}"
    );

    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1);
    let r = response_for(&rec.connections[0], "end_call");
    assert!(r.get("output").is_some(), "{r}");
}

// ---- transfer_call --------------------------------------------------------------------------

/// Transfer to a named destination: the hand-off sentence is heard to its end, then one REST
/// update dials the configured number with caller ID, timeout and whisper URL; the whisper
/// route serves the configured text; the call ends as transferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_named_destination_after_the_hand_off_is_heard() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![tool_turn(
            say(
                transfer_clip(),
                "Of course. I am transferring you to our billing team now. Please hold.",
            ),
            vec![call("transfer_call", json!({"destination": "billing"}))],
            None,
        )],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), billing_config).await;
    let call_sid = sid(0x201);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("transfer", caller_clip("caller_transfer"))
                .silence(30_000),
        )
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    // The bridge's view.
    let kinds = event_kinds(&notes);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended transferred"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"tool_call transfer_call".to_string()));
    assert!(kinds.contains(&"tool_result transfer_call ok".to_string()));
    assert!(
        !kinds.iter().any(|k| k.starts_with("interrupted")),
        "{kinds:?}"
    );

    // The caller heard the whole hand-off, then the stream stopped and the dial ran.
    assert_eq!(report.ended_by, Some(CallEnding::Transferred));
    let hand_off_ms = transfer_clip().duration_ms();
    let (played_ms, interrupted, hand_off_end) = report
        .timeline
        .iter()
        .find_map(|e| match e.event {
            TimelineEvent::AgentAudioEnd {
                turn: 2,
                played_ms,
                interrupted,
            } => Some((played_ms, interrupted, e.at_ms)),
            _ => None,
        })
        .expect("the hand-off turn was heard");
    assert!(!interrupted);
    assert!(
        played_ms + 40 >= hand_off_ms,
        "hand-off clipped: heard {played_ms} of {hand_off_ms} ms"
    );
    let hand_off_start = at(&report, |e| {
        matches!(e, TimelineEvent::AgentAudioStart { turn: 2 })
    })
    .unwrap();
    let score = heard_score(
        &report,
        heard_index(&report, hand_off_start),
        &to_8k(&transfer_clip()),
    );
    assert!(score > 0.85, "the hand-off clip was heard: {score:.3}");
    let stopped = at(&report, |e| {
        matches!(e, TimelineEvent::StreamStopped { .. })
    })
    .expect("the stream was stopped by the update");
    let dialed_at = at(&report, |e| matches!(e, TimelineEvent::Dialed { .. })).unwrap();
    assert!(
        hand_off_end <= stopped && stopped <= dialed_at,
        "hand-off ended at {hand_off_end} ms, stream stopped at {stopped} ms, dialed at {dialed_at} ms"
    );
    let dialed = report
        .timeline
        .iter()
        .find_map(|e| match &e.event {
            d @ TimelineEvent::Dialed { .. } => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        dialed,
        TimelineEvent::Dialed {
            target: BILLING.into(),
            caller_id: Some(CALLER_ID.into()),
            timeout: Some(20),
            whisper_url: Some(format!("{PUBLIC_URL}/twilio/whisper/billing")),
        }
    );

    // One REST update, with the Dial TwiML.
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 200);
    let twiml = &reqs[0].fields[0];
    assert_eq!(twiml.0, "Twiml");
    assert!(twiml.1.contains("<Dial"), "{}", twiml.1);

    // The whisper URL serves the configured text to the callee (Twilio may GET or POST).
    // Signed like any Twilio webhook: over the public URL (GET) plus the form fields (POST).
    use callbridge::twilio::signature::compute_signature;
    let whisper_url = format!("http://{}/twilio/whisper/billing", h.addr);
    let signed_over = format!("{PUBLIC_URL}/twilio/whisper/billing");
    let client = reqwest::Client::new();
    let form = vec![
        ("AccountSid".to_string(), ACCOUNT_SID.to_string()),
        (
            "CallSid".to_string(),
            "CA11111111111111111111111111111111".to_string(),
        ),
    ];
    let form_body = form
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    for resp in [
        client.get(&whisper_url).send().await.unwrap(),
        client.post(&whisper_url).send().await.unwrap(),
        client
            .get(&whisper_url)
            .header("X-Twilio-Signature", "forged")
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(
            resp.status(),
            403,
            "unsigned or forged whisper fetch refused"
        );
    }
    for resp in [
        client
            .get(&whisper_url)
            .header(
                "X-Twilio-Signature",
                compute_signature(AUTH_TOKEN, &signed_over, &[]),
            )
            .send()
            .await
            .unwrap(),
        client
            .post(&whisper_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(
                "X-Twilio-Signature",
                compute_signature(AUTH_TOKEN, &signed_over, &form),
            )
            .body(form_body.clone())
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains(&format!("<Say>{WHISPER}</Say>")), "{body}");
        assert!(body.contains("<Response>"), "{body}");
    }
    let missing = client
        .get(format!("http://{}/twilio/whisper/sales", h.addr))
        .header(
            "X-Twilio-Signature",
            compute_signature(
                AUTH_TOKEN,
                &format!("{PUBLIC_URL}/twilio/whisper/sales"),
                &[],
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The model got exactly one answer, a success.
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1);
    let conn = &rec.connections[0];
    assert_eq!(conn.tool_calls_sent.len(), 1);
    assert_eq!(conn.tool_responses.len(), 1, "{:?}", conn.tool_responses);
    assert_eq!(conn.tool_responses[0]["id"], conn.tool_calls_sent[0]);
    let r = response_for(conn, "transfer_call");
    assert!(r.get("output").is_some(), "{r}");
}

/// A number that is not a configured destination (and no `allow_pattern`) is refused: the
/// model is told which destinations exist, nothing goes to Twilio, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_unconfigured_number_is_refused_and_the_call_continues() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            say(transfer_clip(), "Transferring you now."),
            vec![call(
                "transfer_call",
                json!({"destination": "+19995550000"}),
            )],
            Some(Reply::greeting()),
        )],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), billing_config).await;
    let call_sid = sid(0x301);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(Script::new().wait_for_agent(1_000, 20_000).hang_up())
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let rec = h.sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.tool_responses.len(), 1, "{:?}", conn.tool_responses);
    let e = error_text(response_for(conn, "transfer_call"));
    assert!(e.contains("+19995550000"), "{e}");
    assert!(e.contains("destinations: billing"), "{e}");
    assert!(h.rest.requests().is_empty(), "nothing went to Twilio");

    // The call went on: the after-tool answer was heard, and the caller hung up.
    let score = heard_score(&report, 0, &pcm("model_greeting.ref8k.wav"));
    assert!(score > 0.9, "after-tool clip heard: {score:.3}");
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"tool_result transfer_call error".to_string()));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up"),
        "{kinds:?}"
    );
}

/// Twilio keeps failing the transfer: the bridge retries a bounded number of times (1 + 3
/// requests), then tells the model why, and the model's answer is heard; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_rest_failure_is_spoken_back_after_bounded_retries() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            say(transfer_clip(), "Transferring you now."),
            vec![call("transfer_call", json!({"destination": "billing"}))],
            Some(Reply::greeting()),
        )],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), billing_config).await;
    let call_sid = sid(0x401);
    h.rest.fail_next(10, 500);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(
            Script::new()
                .wait_for_agent(600, 20_000)
                .wait_for_agent(600, 20_000)
                .hang_up(),
        )
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 4, "one request and three retries: {reqs:?}");
    assert!(reqs.iter().all(|r| r.status == 500));
    assert!(reqs
        .iter()
        .all(|r| r.fields.first().is_some_and(|f| f.0 == "Twiml")));

    let rec = h.sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.tool_responses.len(), 1, "{:?}", conn.tool_responses);
    let e = error_text(response_for(conn, "transfer_call"));
    assert!(e.contains("500"), "{e}");
    assert!(e.contains("did not work"), "{e}");

    // Hand-off first, then (after the failed attempts) the spoken-back answer.
    let turn2 = at(&report, |e| {
        matches!(e, TimelineEvent::AgentAudioStart { turn: 2 })
    })
    .expect("a second agent turn after the failure");
    let score = heard_score(
        &report,
        heard_index(&report, turn2),
        &pcm("model_greeting.ref8k.wav"),
    );
    assert!(score > 0.9, "after-tool clip heard: {score:.3}");
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    assert_eq!(report.stream_sids.len(), 1, "the stream was never replaced");
    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"tool_result transfer_call error".to_string()));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up"),
        "{kinds:?}"
    );
}

/// A call Twilio does not know (404, a permanent error) is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_of_a_call_unknown_to_twilio_is_not_retried() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            say(transfer_clip(), "Transferring you now."),
            vec![call("transfer_call", json!({"destination": "billing"}))],
            Some(Reply::greeting()),
        )],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), billing_config).await;
    // Not registered with the fake REST API.
    let report = h
        .caller()
        .call_sid(sid(0x402))
        .script(Script::new().wait_for_agent(1_500, 20_000).hang_up())
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert_waits_met(&report);
    let _ = h.notes_until_end(Duration::from_secs(5)).await;
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 404);
    let rec = h.sim.record();
    let e = error_text(response_for(&rec.connections[0], "transfer_call"));
    assert!(e.contains("404"), "{e}");
    let score = heard_score(&report, 0, &pcm("model_greeting.ref8k.wav"));
    assert!(score > 0.9, "after-tool clip heard: {score:.3}");
}

// ---- DTMF -----------------------------------------------------------------------------------

/// Keys pressed by the caller reach the model as text: `#` sends at once, other keys after
/// `dtmf_idle_ms` without a press.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_key_presses_reach_the_model_as_text() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(silent_reply())],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), |c| c.limits.dtmf_idle_ms = 800).await;
    let report = h
        .caller()
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .dtmf("12#")
                .silence(300)
                .dtmf("34")
                .silence(2_500)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));

    let kinds = event_kinds(&notes);
    let dtmf: Vec<&String> = kinds.iter().filter(|k| k.starts_with("dtmf")).collect();
    assert_eq!(dtmf, vec!["dtmf 12#", "dtmf 34"], "{kinds:?}");

    let rec = h.sim.record();
    let texts: Vec<(u64, String)> = model_texts(&rec.connections[0])
        .into_iter()
        .filter(|(_, t)| t.contains("keypad"))
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[0].1.contains("12#"), "{texts:?}");
    assert!(
        texts[1].1.contains("34") && !texts[1].1.contains('#'),
        "{texts:?}"
    );
    // "34" waited for the idle time after its last key (300 ms pause + 100 ms key gap +
    // 800 ms idle after "#" was sent at once).
    let gap = texts[1].0 - texts[0].0;
    assert!(
        (1_050..2_500).contains(&gap),
        "\"34\" sent {gap} ms after \"12#\""
    );
}

/// `send_dtmf`: after the sentence before it is heard, one REST update plays the digits and
/// reconnects a new stream carrying a continuation token; the same model session continues
/// on it (no second connection or setup), and the answer after the tool is heard there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_plays_digits_and_continues_the_same_session_on_a_new_stream() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            say(transfer_clip(), "One moment, I will press the keys."),
            vec![call("send_dtmf", json!({"digits": "1w2"}))],
            Some(Reply::greeting()),
        )],
        ..Scenario::default()
    };
    // BLOCKING semantics (2.5): the model speaks about the result after the keys were sent.
    // On 3.8 a successful send_dtmf is answered SILENT (tests/model_profiles.rs).
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            c.tools.send_dtmf = true;
            c.gemini.model = "gemini-2.5-flash-native-audio-preview-12-2025".into();
        },
    )
    .await;
    let call_sid = sid(0x601);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        // The script pauses between streams; a quiet time longer than the switch-over means
        // the wait ends only after the answer on the new stream.
        .script(Script::new().wait_for_agent(2_000, 20_000).hang_up())
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(8)).await;

    // The caller side: stop, digits, a second stream with the continuation parameter.
    assert_eq!(report.stream_sids.len(), 2, "{}", report.timeline_text());
    let stopped = at(&report, |e| {
        matches!(e, TimelineEvent::StreamStopped { stream_sid } if *stream_sid == report.stream_sids[0])
    })
    .expect("first stream stopped");
    let digits = at(
        &report,
        |e| matches!(e, TimelineEvent::DigitsPlayed { digits } if digits == "1w2"),
    )
    .expect("digits played");
    let second = at(&report, |e| {
        matches!(e, TimelineEvent::StreamStarted { stream_sid } if *stream_sid == report.stream_sids[1])
    })
    .expect("second stream started");
    assert!(
        stopped <= digits && digits < second,
        "stop {stopped} ms, digits {digits} ms, new stream {second} ms"
    );
    assert!(
        report
            .custom_parameters
            .get("continuation")
            .is_some_and(|t| !t.is_empty()),
        "second stream's parameters: {:?}",
        report.custom_parameters
    );
    // The hand-off was heard on the first stream; the answer after the tool on the second.
    let hand_off = heard_score(&report, 0, &to_8k(&transfer_clip()));
    assert!(hand_off > 0.85, "hand-off heard: {hand_off:.3}");
    let after = heard_score(
        &report,
        heard_index(&report, second),
        &pcm("model_greeting.ref8k.wav"),
    );
    assert!(
        after > 0.9,
        "after-tool clip heard on the new stream: {after:.3}"
    );
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));

    // One REST update with the digits and the continued stream.
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let twiml = reqs[0].fields[0].1.clone();
    assert!(twiml.contains("digits=\"1w2\""), "{twiml}");
    assert!(twiml.contains("continuation"), "{twiml}");

    // The model leg: one connection, one setup, one answer with an output.
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1, "no reconnect");
    let conn = &rec.connections[0];
    let setups = conn
        .frames
        .iter()
        .filter(|f| f.raw.starts_with("{\"setup\""))
        .count();
    assert_eq!(setups, 1);
    assert_eq!(conn.tool_responses.len(), 1, "{:?}", conn.tool_responses);
    let r = response_for(conn, "send_dtmf");
    assert!(r.get("output").is_some(), "{r}");

    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"continued".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "started").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up"),
        "{kinds:?}"
    );
}

// ---- operator webhook tools -----------------------------------------------------------------

const TOOLS_SECRET: &str = "operator-shared-secret";

fn webhook(name: &str, url: String, timeout_ms: u64) -> WebhookToolConfig {
    WebhookToolConfig {
        scheduling: Default::default(),
        name: name.into(),
        description: format!("The operator's {name} tool."),
        parameters: None,
        url,
        // The fake operator serves plain http on 127.0.0.1.
        allow_insecure: true,
        timeout_ms,
    }
}

/// Webhook tools called in one model turn: a success (its JSON is the output), a timeout and
/// a reply that is not JSON (errors in words), and an unknown function (an error); all are
/// answered, signed requests carry the call's context, and the call continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tools_success_timeout_bad_json_and_unknown_name() {
    let order = json!({"order_id": "A123", "status": "shipped", "eta": "Monday"});
    let op = FakeOperator::builder()
        .secret(TOOLS_SECRET)
        .reply("lookup_order", order.clone())
        .delay("slow", Duration::from_millis(3_000))
        .invalid_json("bad")
        .spawn()
        .await
        .unwrap();
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            silent_reply(),
            vec![
                call("lookup_order", json!({"order_id": "A123"})),
                call("slow", json!({})),
                call("bad", json!({"q": 1})),
                call("no_such_tool", json!({})),
            ],
            Some(Reply::greeting()),
        )],
        ..Scenario::default()
    };
    let urls = (op.url("lookup_order"), op.url("slow"), op.url("bad"));
    let mut h = harness(
        |s| s.scenario(scenario),
        move |c| {
            c.tools.secret = Secret::new(TOOLS_SECRET);
            c.tools.webhooks = vec![
                webhook("lookup_order", urls.0, 3_000),
                webhook("slow", urls.1, 500),
                webhook("bad", urls.2, 3_000),
            ];
        },
    )
    .await;
    let call_sid = sid(0x701);
    let report = h
        .caller()
        .call_sid(&call_sid)
        .from(FROM)
        .script(Script::new().wait_for_agent(600, 20_000).hang_up())
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let rec = h.sim.record();
    let conn = &rec.connections[0];
    let setup = conn.setup.as_ref().unwrap();
    let declared: Vec<&str> = setup["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    for name in ["lookup_order", "slow", "bad"] {
        assert!(declared.contains(&name), "{name} declared: {declared:?}");
    }
    assert_eq!(conn.tool_calls_sent.len(), 4);
    assert_eq!(conn.tool_responses.len(), 4, "{:?}", conn.tool_responses);
    assert_eq!(
        response_for(conn, "lookup_order"),
        &json!({"output": order})
    );
    let e = error_text(response_for(conn, "slow"));
    assert!(e.contains("did not answer within 0.5 seconds"), "{e}");
    let e = error_text(response_for(conn, "bad"));
    assert!(e.contains("could not be read"), "{e}");
    let e = error_text(response_for(conn, "no_such_tool"));
    assert!(
        e.contains("unknown tool") && e.contains("no_such_tool"),
        "{e}"
    );
    // Every response answers one of the calls, each once.
    let mut ids: Vec<&str> = conn
        .tool_responses
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut sent: Vec<&str> = conn.tool_calls_sent.iter().map(String::as_str).collect();
    sent.sort_unstable();
    assert_eq!(ids, sent);

    // The operator: three signed requests with the call's context.
    let reqs = op.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    for r in &reqs {
        assert!(r.signature_valid, "valid signature on {}", r.tool);
        assert_eq!(r.tool_header.as_deref(), Some(r.tool.as_str()));
        assert!(conn.tool_calls_sent.contains(&r.id), "id {}", r.id);
        assert_eq!(r.call["call_sid"], call_sid.as_str());
        assert_eq!(r.call["stream_sid"], report.stream_sid.as_str());
        assert_eq!(r.call["account_sid"], ACCOUNT_SID);
        assert_eq!(r.call["from"], FROM);
    }
    let lookup = reqs.iter().find(|r| r.tool == "lookup_order").unwrap();
    assert_eq!(lookup.arguments, json!({"order_id": "A123"}));

    // The call continued: the answer after the tools was heard.
    let score = heard_score(&report, 0, &pcm("model_greeting.ref8k.wav"));
    assert!(score > 0.9, "after-tool clip heard: {score:.3}");
    let kinds = event_kinds(&notes);
    for k in [
        "tool_result lookup_order ok",
        "tool_result slow error",
        "tool_result bad error",
        "tool_result no_such_tool error",
    ] {
        assert!(kinds.contains(&k.to_string()), "{k}: {kinds:?}");
    }
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up")
    );
}

/// The caller speaks while a webhook tool is in flight: the model cancels the call, the
/// bridge aborts the HTTP request (the operator sees it go away) and never answers that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tool_cancelled_by_barge_in_is_aborted_and_not_answered() {
    let op = FakeOperator::builder()
        .secret(TOOLS_SECRET)
        .hang("hang")
        .spawn()
        .await
        .unwrap();
    let scenario = Scenario {
        greeting: None,
        turns: vec![
            tool_turn(
                Reply::greeting(),
                vec![call("hang", json!({"what": "forever"}))],
                None,
            ),
            Turn::reply(say(goodbye_clip(), "Goodbye!")),
        ],
        ..Scenario::default()
    };
    let url = op.url("hang");
    let mut h = harness(
        |s| s.scenario(scenario),
        move |c| {
            c.tools.secret = Secret::new(TOOLS_SECRET);
            // Declared BLOCKING: on 3.8 new input cancels a running blocking call (Vertex's
            // 3.8 migration guide); NON_BLOCKING calls survive a barge-in.
            let mut w = webhook("hang", url, 20_000);
            w.scheduling = callbridge::config::ToolScheduling::Blocking;
            c.tools.webhooks = vec![w];
        },
    )
    .await;
    let report = h
        .caller()
        .call_sid(sid(0x702))
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent(600, 15_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let rec = h.sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.tool_calls_sent.len(), 1);
    let id = conn.tool_calls_sent[0].clone();
    assert!(
        op.wait_until(Duration::from_secs(5), |o| o.cancelled().contains(&id))
            .await,
        "operator saw the request go away: cancelled {:?}, requests {:?}",
        op.cancelled(),
        op.requests()
    );
    let reqs = op.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].id, id);
    assert!(reqs[0].signature_valid);
    assert!(op.answered().is_empty());
    assert!(
        conn.tool_responses.is_empty(),
        "no response for a cancelled call: {:?}",
        conn.tool_responses
    );
    assert!(conn.user_turns.iter().any(|t| t.interrupted_model));

    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"tool_call hang".to_string()), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k.starts_with("tool_result")),
        "{kinds:?}"
    );
    // The conversation went on with the next answer.
    let score = heard_score(&report, 0, &to_8k(&goodbye_clip()));
    assert!(score > 0.85, "next answer heard: {score:.3}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up")
    );
}

// ---- limits ---------------------------------------------------------------------------------

/// At `max_call_secs` the agent is asked to wrap up; `wrap_up_grace_ms` later the call is hung
/// up through REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_asks_to_wrap_up_then_hangs_up_after_the_grace() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(say(goodbye_clip(), "Goodbye!"))],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            c.limits.max_call_secs = 8;
            c.limits.wrap_up_grace_ms = 3_000;
        },
    )
    .await;
    let call_sid = sid(0x801);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(Script::new().silence(30_000))
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let kinds = event_kinds(&notes);
    assert!(
        kinds.contains(&"wrap_up max_duration".to_string()),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended max_duration"),
        "{kinds:?}"
    );
    let started = note_at(&notes, |e| matches!(e, CallEvent::Started { .. })).unwrap();
    let wrap = note_at(&notes, |e| matches!(e, CallEvent::WrapUp { .. })).unwrap();
    let ended = note_at(&notes, |e| matches!(e, CallEvent::Ended(_))).unwrap();
    let to_wrap = ms_between(started, wrap);
    assert!(
        (7_800..9_000).contains(&to_wrap),
        "wrap-up {to_wrap} ms into the call"
    );
    let grace = ms_between(wrap, ended);
    assert!(
        (2_900..4_000).contains(&grace),
        "ended {grace} ms after the wrap-up"
    );

    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].fields,
        vec![("Status".to_string(), "completed".to_string())]
    );
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));

    let rec = h.sim.record();
    let texts = model_texts(&rec.connections[0]);
    assert!(
        texts.iter().any(|(_, t)| t.contains("maximum length")),
        "{texts:?}"
    );
}

/// The caller stays silent after the greeting: the agent is asked to check in, and the call
/// is hung up when the grace runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_timeout_wraps_up_then_ends_the_call() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(say(goodbye_clip(), "Goodbye!"))],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            c.limits.silence_timeout_secs = 3;
            c.limits.wrap_up_grace_ms = 3_000;
        },
    )
    .await;
    let call_sid = sid(0x802);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(Script::new().silence(30_000))
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"wrap_up silence".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended silence_timeout"),
        "{kinds:?}"
    );
    let heard = note_at(&notes, |e| {
        matches!(e, CallEvent::AgentTurnHeard { turn: 1, .. })
    })
    .expect("greeting heard");
    let wrap = note_at(&notes, |e| matches!(e, CallEvent::WrapUp { .. })).unwrap();
    let ended = note_at(&notes, |e| matches!(e, CallEvent::Ended(_))).unwrap();
    let quiet = ms_between(heard, wrap);
    assert!(
        (2_500..4_000).contains(&quiet),
        "wrap-up {quiet} ms after the greeting was heard"
    );
    let grace = ms_between(wrap, ended);
    assert!(
        (2_900..4_000).contains(&grace),
        "ended {grace} ms after the wrap-up"
    );
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].fields,
        vec![("Status".to_string(), "completed".to_string())]
    );
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));
    let rec = h.sim.record();
    let texts = model_texts(&rec.connections[0]);
    assert!(
        texts
            .iter()
            .any(|(_, t)| t.contains("said nothing for 3 seconds")),
        "{texts:?}"
    );
}

/// The caller speaks during the silence wrap-up's grace: the wrap-up is withdrawn and the
/// call is not ended by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaking_during_the_silence_wrap_up_keeps_the_call() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![
            Turn::reply(say(goodbye_clip(), "Are you still there?")),
            Turn::reply(Reply::greeting()),
        ],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            c.limits.silence_timeout_secs = 3;
            c.limits.wrap_up_grace_ms = 3_000;
        },
    )
    .await;
    let call_sid = sid(0x803);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .silence(3_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent(600, 15_000)
                .hang_up(),
        )
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    assert_waits_met(&report);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    let kinds = event_kinds(&notes);
    assert!(kinds.contains(&"wrap_up silence".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up"),
        "{kinds:?}"
    );
    let wrap = note_at(&notes, |e| matches!(e, CallEvent::WrapUp { .. })).unwrap();
    let ended = note_at(&notes, |e| matches!(e, CallEvent::Ended(_))).unwrap();
    let lasted = ms_between(wrap, ended);
    assert!(
        lasted > 3_500,
        "the call outlived the wrap-up grace: ended {lasted} ms after the wrap-up"
    );
    assert!(h.rest.requests().is_empty(), "no hang-up through REST");
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    // The caller's words reached the model and were answered.
    let rec = h.sim.record();
    let (score, _) = find_in(&rec.connections[0].audio, &pcm("caller_hello.ref16k.wav"));
    assert!(score > 0.9, "caller speech reached the model: {score:.3}");
}
