//! Privacy of the logs (issue 5): phone numbers only redacted (last 2 digits), transcripts
//! only at debug level, secrets never.
//!
//! One test binary, one global subscriber at INFO writing into memory. Real calls run
//! through the real bridge (Gemini simulator, fake Twilio REST API, simulated callers):
//! distinctive From/To numbers, caller key presses, a transfer to a configured destination,
//! a transfer to an allowed free-form number, the model pressing keys (`send_dtmf`, with its
//! continuation token), a stream with a bad stream token, the model hanging up and the caller
//! hanging up. Then the captured output must hold none of the numbers (nor any 6-digit run of
//! them), none of the digits pressed, no secret from the config, no stream or continuation
//! token and no transcript text — while holding the redacted forms, so it cannot pass empty.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use callbridge::config::{Config, Secret, TransferDestination};
use callbridge::sim::caller::{CallReport, Script};
use callbridge::sim::gemini::{Clip, Reply, Scenario, ToolCall, Turn};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMsg;

// ---- what must never reach the INFO log ------------------------------------------------------

const FROM: &str = "+14155550123";
const TO: &str = "+442071838750";
/// A configured destination's number, and the caller ID used for transfers.
const BILLING: &str = "+16505550147";
const CALLER_ID: &str = "+13105550162";
/// A free-form number the model may transfer to (matches the allow pattern).
const FREE_NUMBER: &str = "+13125550188";
/// What the caller presses (a card-like number) and what the model presses.
const CALLER_DIGITS_1: &str = "739461502";
const CALLER_DIGITS_2: &str = "86420973";
const MODEL_DIGITS: &str = "4929381705526413";
const TOOLS_SECRET: &str = "privacy-test-tools-secret";

/// Scripted transcript lines, each with a distinctive word.
const AGENT_TRANSFER_LINE: &str =
    "Certainly, Quinnford, I am transferring you to our billing team now.";
const AGENT_NUMBER_LINE: &str = "Connecting you to the Marblethorpe office directly.";
const AGENT_DTMF_LINE: &str = "One moment, I will key in the Zephyrcode for you.";
const AGENT_BYE_LINE: &str = "Goodbye from the Thistlewick help desk.";
const CALLER_LINE: &str = "Please put me through to Wobblesworth in billing.";
const TRANSCRIPT_WORDS: [&str; 5] = [
    "Quinnford",
    "Marblethorpe",
    "Zephyrcode",
    "Thistlewick",
    "Wobblesworth",
];
/// Every scripted line, including the simulator's greeting (spoken in several calls).
const TRANSCRIPT_LINES: [&str; 6] = [
    AGENT_TRANSFER_LINE,
    AGENT_NUMBER_LINE,
    AGENT_DTMF_LINE,
    AGENT_BYE_LINE,
    CALLER_LINE,
    callbridge::sim::gemini::scenario::GREETING_TEXT,
];

// ---- the in-memory subscriber ------------------------------------------------------------------

use common::LogBuf;

/// Installs (once) a global subscriber capturing every target at INFO and above, without
/// timestamps (their microseconds could match a 6-digit window by chance) or colours.
fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .without_time()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---- scenario helpers --------------------------------------------------------------------------

fn transfer_clip() -> Clip {
    Clip::from_wav_bytes(&std::fs::read(asset("model_transfer.pcm24k.wav")).unwrap()).unwrap()
}

fn say(text: &str) -> Reply {
    Reply {
        clip: Some(transfer_clip()),
        text: text.into(),
    }
}

fn tool_turn(caller: Option<&str>, reply: Reply, name: &str, args: Value) -> Turn {
    Turn {
        caller: caller.map(str::to_string),
        tool_calls: vec![ToolCall {
            name: name.into(),
            args,
        }],
        after_tool: None,
        ..Turn::reply(reply)
    }
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

fn secrets(c: &mut Config) {
    c.tools.secret = Secret::new(TOOLS_SECRET);
    c.transfer.caller_id = CALLER_ID.into();
}

/// The caller speaks once the agent has finished its greeting (which triggers the transfer
/// turn) and then waits for the bridge to move the call.
fn speaking_script() -> Script {
    Script::new()
        .wait_for_agent(600, 15_000)
        .say_ulaw("request", caller_clip("caller_transfer"))
        .silence(30_000)
}

async fn run_call(h: &mut Harness, call_sid: &str, script: Script) -> CallReport {
    let caller = h
        .caller()
        .call_sid(call_sid)
        .from(FROM)
        .to(TO)
        .script(script)
        .spawn();
    h.rest.register_caller(call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    h.notes_until_end(Duration::from_secs(8)).await;
    report
}

/// Transfer to the configured destination `billing` (a number, with caller ID and whisper).
async fn transfer_named() -> CallReport {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![tool_turn(
            Some(CALLER_LINE),
            say(AGENT_TRANSFER_LINE),
            "transfer_call",
            json!({"destination": "billing"}),
        )],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            secrets(c);
            let mut d = BTreeMap::new();
            d.insert(
                "billing".to_string(),
                TransferDestination {
                    target: BILLING.into(),
                    description: "The billing team.".into(),
                    whisper: "A caller for billing.".into(),
                },
            );
            c.transfer.destinations = d;
        },
    )
    .await;
    run_call(&mut h, &sid(0x501), speaking_script()).await
}

/// Transfer to a free-form number the allow pattern admits.
async fn transfer_number() -> CallReport {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![tool_turn(
            Some(CALLER_LINE),
            say(AGENT_NUMBER_LINE),
            "transfer_call",
            json!({ "destination": FREE_NUMBER }),
        )],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            secrets(c);
            c.transfer.allow_pattern = r"\+1312555\d{4}".into();
        },
    )
    .await;
    run_call(&mut h, &sid(0x502), speaking_script()).await
}

/// The model presses keys; the call continues on a new stream with a continuation token;
/// the caller then presses keys and hangs up.
async fn model_and_caller_dtmf() -> CallReport {
    let scenario = Scenario {
        greeting: None,
        turns: vec![
            Turn {
                after_tool: Some(Reply::greeting()),
                ..tool_turn(
                    None,
                    say(AGENT_DTMF_LINE),
                    "send_dtmf",
                    json!({ "digits": MODEL_DIGITS }),
                )
            },
            Turn::reply(Reply {
                clip: None,
                text: String::new(),
            }),
        ],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            secrets(c);
            c.tools.send_dtmf = true;
            c.limits.dtmf_idle_ms = 800;
        },
    )
    .await;
    let script = Script::new()
        .wait_for_agent(2_000, 20_000)
        .dtmf(format!("{CALLER_DIGITS_1}#"))
        .silence(300)
        .dtmf(CALLER_DIGITS_2)
        .silence(2_500)
        .hang_up();
    run_call(&mut h, &sid(0x503), script).await
}

/// The model says goodbye and hangs up through the REST API.
async fn model_hangs_up() -> CallReport {
    let scenario = Scenario {
        greeting: None,
        turns: vec![tool_turn(
            None,
            say(AGENT_BYE_LINE),
            "end_call",
            json!({"reason": "done"}),
        )],
        ..Scenario::default()
    };
    let mut h = harness(
        |s| s.scenario(scenario),
        |c| {
            secrets(c);
            c.limits.end_call_grace_ms = 2_000;
        },
    )
    .await;
    run_call(&mut h, &sid(0x504), Script::new().silence(30_000)).await
}

/// A media stream whose `start` presents a wrong stream token: refused before any model
/// session. Returns the token the webhook really issued and the wrong one presented.
async fn bad_stream_token() -> (String, String) {
    let h = harness(|s| s, secrets).await;
    let call_sid = sid(0x505);
    let (request, issued) = h.raw_stream(&call_sid).await;
    // Same shape as a real token, different value.
    let wrong: String = issued
        .chars()
        .rev()
        .map(|c| if c == 'a' { 'b' } else { c })
        .collect();
    assert_ne!(wrong, issued);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("media websocket upgrade");
    let stream_sid = format!("MZ{:032x}", 0x505);
    let start = json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT_SID,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"token": wrong, "from": FROM, "to": TO}
        },
        "streamSid": stream_sid,
    });
    ws.send(WsMsg::Text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(WsMsg::Text(start.to_string().into()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMsg::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => break None,
            }
        }
    })
    .await
    .expect("the bridge closes a stream with a bad token");
    assert_eq!(closed, Some(1008), "policy-violation close");
    (issued, wrong)
}

// ---- the test ----------------------------------------------------------------------------------

/// Every 6-digit window of the digits of `s`.
fn digit_windows(s: &str) -> Vec<String> {
    let d: Vec<char> = s.chars().filter(char::is_ascii_digit).collect();
    d.windows(6).map(|w| w.iter().collect()).collect()
}

fn leaks<'a>(log: &str, needles: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out = Vec::new();
    for n in needles {
        if let Some(line) = log.lines().find(|l| l.contains(n.as_str())) {
            out.push(format!("{n:?} in: {line}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_log_holds_no_numbers_digits_secrets_tokens_or_transcripts() {
    logs();
    let (named, number, dtmf, bye, (issued, wrong)) = tokio::join!(
        transfer_named(),
        transfer_number(),
        model_and_caller_dtmf(),
        model_hangs_up(),
        bad_stream_token(),
    );
    // Give spawned tasks (parked-call timers, REST retries) a moment to log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = log_text();

    // Sanity: the calls did what this test relies on, so the log below covers them.
    assert_eq!(
        number.custom_parameters.get("from").map(String::as_str),
        Some(FROM),
        "the webhook passed From on"
    );
    let continuation = dtmf
        .custom_parameters
        .get("continuation")
        .cloned()
        .unwrap_or_else(|| panic!("second stream's parameters: {:?}", dtmf.custom_parameters));
    assert_eq!(dtmf.stream_sids.len(), 2, "{}", dtmf.timeline_text());

    // Numbers: whole, and every 6-digit window of their digits.
    let mut needles: Vec<String> = Vec::new();
    for n in [FROM, TO, BILLING, CALLER_ID, FREE_NUMBER] {
        needles.push(n.to_string());
        needles.push(n.trim_start_matches('+').to_string());
        needles.extend(digit_windows(n));
    }
    // Digits pressed by the caller and by the model.
    for d in [CALLER_DIGITS_1, CALLER_DIGITS_2, MODEL_DIGITS] {
        needles.push(d.to_string());
        needles.extend(digit_windows(d));
    }
    // Secrets from the config, and the tokens the calls carried.
    needles.extend(
        [AUTH_TOKEN, API_KEY, TOOLS_SECRET]
            .iter()
            .map(|s| s.to_string()),
    );
    needles.push(issued.clone());
    needles.push(wrong.clone());
    needles.push(continuation.clone());
    for report in [&named, &number, &dtmf, &bye] {
        needles.extend(
            report
                .custom_parameters
                .values()
                .filter(|v| v.len() >= 8)
                .cloned(),
        );
    }
    // Transcripts: every scripted line, its distinctive words, and the 3-word fragments the
    // simulator streams them in (short ones such as "today?" left out).
    needles.extend(TRANSCRIPT_WORDS.iter().map(|w| w.to_string()));
    for line in TRANSCRIPT_LINES {
        needles.push(line.to_string());
        let words: Vec<&str> = line.split_whitespace().collect();
        needles.extend(
            words
                .chunks(3)
                .map(|c| c.join(" "))
                .filter(|f| f.len() >= 8),
        );
    }
    needles.sort();
    needles.dedup();

    let found = leaks(&log, &needles);
    assert!(
        found.is_empty(),
        "the INFO log leaks:\n{}\n\nfull log:\n{log}",
        found.join("\n")
    );
    // Not vacuous: the bridge logged these calls at INFO, numbers in their redacted form.
    for expected in [
        "voice webhook answered with a media stream",
        "stream started",
        "call transferred",
        "destination=billing",
        "target=+*********47",
        "destination=+*********88",
        "target=+*********88",
        "digits sent; stream will reconnect",
        "digits=16",
        "call hung up through the provider's API",
        "media stream refused: stream token",
        "reason=\"agent_hung_up\"",
        "reason=\"caller_hung_up\"",
        &sid(0x501),
    ] {
        assert!(
            log.contains(expected),
            "INFO log lacks {expected:?}:\n{log}"
        );
    }

    // Belt and braces for transcripts: nothing the model or caller said, as text fields.
    assert!(
        !log.contains("caller said") && !log.contains("agent said"),
        "transcripts at INFO:\n{log}"
    );
}
