//! `callbridge demo`: one command, no account. Starts the Gemini simulator, a fake Twilio REST
//! API and the real bridge on loopback, then places a simulated phone call with bundled
//! recordings: the agent greets, the caller asks about an order, the agent answers, the caller
//! says goodbye, the agent says goodbye and calls `end_call`, and the bridge hangs up through
//! the fake REST API once the goodbye has been heard. Prints the merged timeline and writes
//! what the caller heard to a WAV file. The call's record goes to an SQLite store
//! (`--records`, `target/demo-records.db` by default) and is read back from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::call::driver::CallNote;
use crate::call::event::CallEvent;
use crate::config::{Config, Secret, TransferDestination};
use crate::sim::caller::{CallReport, Script, SimCaller, TimelineEvent};
use crate::sim::gemini::{Clip, GeminiSim, Reply, Scenario, ToolCall, Turn};
use crate::sim::twilio_rest::FakeTwilioRest;

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "demo-auth-token";
const API_KEY: &str = "demo-api-key";
const PUBLIC_URL: &str = "https://bridge.demo.invalid";
const GOODBYE_TEXT: &str = "You're welcome. Thanks for calling, and have a great day. Goodbye!";

/// `callbridge demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write what the caller heard (8 kHz μ-law WAV).
    #[arg(long, default_value = "out/demo-call.wav")]
    pub out: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// SQLite file the call record is stored in (created on first run).
    #[arg(long, default_value = "target/demo-records.db")]
    pub records: PathBuf,
    /// Live model id the bridge asks for; the simulator follows that model's documented
    /// behaviour (e.g. gemini-2.5-flash-native-audio-preview-12-2025 for BLOCKING tools).
    #[arg(long, default_value = crate::gemini::profile::DEFAULT_MODEL)]
    pub model: String,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A component could not start.
    #[error("demo setup failed: {0}")]
    Setup(String),
    /// The simulated call failed.
    #[error("simulated call failed: {0}")]
    Call(String),
    /// The call did not go as the demo expects.
    #[error("demo call did not complete as expected: {0}")]
    Unexpected(String),
}

/// The demo's model script.
pub fn demo_scenario() -> Result<Scenario, DemoError> {
    let goodbye = Clip::from_wav_bytes(include_bytes!("../assets/model_goodbye.pcm24k.wav"))
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let mut answer = Turn::reply(Reply::long());
    answer.caller =
        Some("Hello, I am calling about my order. It has not arrived yet, can you help me?".into());
    let mut bye = Turn::reply(Reply {
        clip: Some(goodbye),
        text: GOODBYE_TEXT.into(),
    });
    bye.caller = Some("Thanks, that is all. Goodbye.".into());
    bye.tool_calls = vec![ToolCall {
        name: "end_call".into(),
        args: json!({"reason": "the caller said goodbye"}),
    }];
    // A NON_BLOCKING model (3.8) calls end_call as it starts its goodbye and keeps talking;
    // a BLOCKING one (2.5) calls it after the goodbye and waits (the simulator picks by the
    // declared behaviour).
    bye.tool_call_at_ms = Some(300);
    Ok(Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![answer, bye],
        ..Scenario::default()
    })
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let t0 = Instant::now();
    let sim = GeminiSim::builder()
        .scenario(demo_scenario()?)
        .keys(vec![API_KEY.into()])
        .spawn()
        .await
        .map_err(|e| DemoError::Setup(format!("gemini simulator: {e}")))?;
    let rest = FakeTwilioRest::new(ACCOUNT_SID, AUTH_TOKEN)
        .spawn()
        .await
        .map_err(|e| DemoError::Setup(format!("fake twilio rest: {e}")))?;

    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.public_url = PUBLIC_URL.into();
    config.gemini.url = sim.url();
    config.gemini.model = args.model.clone();
    config.gemini.api_key = Secret::new(API_KEY);
    config.twilio.account_sid = ACCOUNT_SID.into();
    config.twilio.auth_token = Secret::new(AUTH_TOKEN);
    config.twilio.api_base = rest.base_url();
    config.transfer.destinations.insert(
        "billing".into(),
        TransferDestination {
            target: "+14155550100".into(),
            description: "The billing department, for invoices and refunds.".into(),
            whisper: "A caller from the AI assistant, about billing.".into(),
        },
    );
    config.records.enabled = true;
    config.records.sqlite_path = args.records.display().to_string();
    config
        .validate()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let (store, handles, writer) = crate::run::open_records(&config)
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?
        .ok_or_else(|| DemoError::Setup("records are off".into()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(format!("bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let state = crate::run::spawn_with_store(config, listener, Some(handles));
    let mut notes_rx = state.notes.subscribe();
    let notes_task = tokio::spawn(async move {
        let mut notes: Vec<CallNote> = Vec::new();
        while let Ok(n) = notes_rx.recv().await {
            let done = matches!(n.event, CallEvent::Ended(_));
            notes.push(n);
            if done {
                break;
            }
        }
        notes
    });

    println!("callbridge demo — everything runs on this machine, no account needed");
    println!(
        "  Gemini Live simulator  {} (model {})",
        sim.url(),
        args.model
    );
    println!("  fake Twilio REST API   {}", rest.base_url());
    println!(
        "  bridge                 http://{addr}  (webhook /twilio/voice, stream /twilio/media)"
    );
    println!("  call records           {}", store.location());
    println!();

    let hello = crate::audio::wav::read_wav(include_bytes!("../assets/caller_hello.mulaw8k.wav"))
        .ok()
        .and_then(|w| w.to_ulaw())
        .ok_or_else(|| DemoError::Setup("bundled caller clip unreadable".into()))?;
    let bye = crate::audio::wav::read_wav(include_bytes!("../assets/caller_bye.mulaw8k.wav"))
        .ok()
        .and_then(|w| w.to_ulaw())
        .ok_or_else(|| DemoError::Setup("bundled caller clip unreadable".into()))?;
    let script = Script::new()
        .wait_for_agent(700, 15_000)
        .say_ulaw("caller_hello.wav", hello)
        .wait_for_agent(700, 20_000)
        .say_ulaw("caller_bye.wav", bye)
        // Stay on the line: the agent is expected to hang up.
        .silence(args.max_seconds * 1000);
    let call_sid = format!("CA{:032x}", rand::random::<u128>());
    let caller = SimCaller::builder()
        .webhook(format!("http://{addr}/twilio/voice"))
        .public_webhook_url(format!("{PUBLIC_URL}/twilio/voice"))
        .connect_override(format!("ws://{addr}"))
        .account_sid(ACCOUNT_SID)
        .call_sid(&call_sid)
        .auth_token(AUTH_TOKEN)
        .script(script)
        .max_duration(Duration::from_secs(args.max_seconds))
        .spawn();
    let trigger = caller.hang_up_trigger();
    rest.register_call(&call_sid, Arc::new(move |_| trigger()));

    let report = caller
        .join()
        .await
        .map_err(|e| DemoError::Call(e.to_string()))?;
    let notes = tokio::time::timeout(Duration::from_secs(5), notes_task)
        .await
        .map_err(|_| DemoError::Unexpected("the bridge never reported the call's end".into()))?
        .map_err(|e| DemoError::Unexpected(e.to_string()))?;

    print_timeline(t0, &notes, &report);
    if let Some(dir) = args.out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
        }
    }
    report
        .write_heard_wav(&args.out)
        .map_err(|e| DemoError::Call(e.to_string()))?;
    println!();
    println!(
        "what the caller heard: {} ({:.1} s)",
        args.out.display(),
        report.heard.len() as f64 / 8000.0
    );

    let hangups: Vec<_> = rest
        .requests()
        .into_iter()
        .filter(|r| {
            r.fields
                .iter()
                .any(|(k, v)| k == "Status" && v == "completed")
        })
        .collect();
    let ended = notes.iter().find_map(|n| match &n.event {
        CallEvent::Ended(why) => Some(why.clone()),
        _ => None,
    });
    println!(
        "call ended: {}; Twilio REST hang-up requests: {}",
        ended.as_ref().map_or("unknown", |e| e.as_str()),
        hangups.len()
    );
    state.shutdown.cancel();
    let _ = sim.shutdown().await;
    let stored = writer.finish(Duration::from_secs(5)).await;
    let id = state.journal.recent().first().map(|r| r.id.clone());
    let record = match &id {
        Some(id) => store
            .get(id)
            .await
            .map_err(|e| DemoError::Unexpected(format!("reading the call record back: {e}")))?,
        None => None,
    };
    let total = store.count().await.unwrap_or_default();
    store.close().await;
    let Some(record) = record else {
        return Err(DemoError::Unexpected(format!(
            "the call record did not reach {} ({stored:?})",
            args.records.display()
        )));
    };
    println!(
        "call record {} stored in {} ({} records there): {}, {} transcript lines, {} tool calls, {} tokens, ${:.4}",
        record.id,
        args.records.display(),
        total,
        record.end_reason.as_deref().unwrap_or("?"),
        record.transcript.len(),
        record.tool_calls.len(),
        record.usage.total,
        record.cost_usd,
    );
    if hangups.len() != 1 || hangups[0].status != 200 {
        return Err(DemoError::Unexpected(format!(
            "expected one successful REST hang-up, saw {hangups:?}"
        )));
    }
    Ok(())
}

/// Prints bridge events and what the caller experienced on one clock.
fn print_timeline(t0: Instant, notes: &[CallNote], report: &CallReport) {
    // The caller's clock starts when its stream opened, just before the bridge's `Started`.
    let anchor_ms = notes
        .iter()
        .find(|n| matches!(n.event, CallEvent::Started { .. }))
        .map_or(0, |n| n.at.saturating_duration_since(t0).as_millis() as u64);
    let mut lines: Vec<(u64, u8, String)> = Vec::new();
    let mut agent_text = String::new();
    let mut caller_text = String::new();
    for n in notes {
        let at = n.at.saturating_duration_since(t0).as_millis() as u64;
        let line = match &n.event {
            CallEvent::Started { .. } => {
                "bridge  stream started; opening the model session".to_string()
            }
            CallEvent::ModelReady { setup_ms } => {
                format!("bridge  model session ready ({setup_ms} ms); asking the agent to greet")
            }
            CallEvent::AgentSpeaking { turn, .. } => {
                format!("bridge  agent turn {turn}: first audio sent to the caller")
            }
            CallEvent::AgentTurnHeard { turn, heard_ms } => {
                format!(
                    "bridge  agent turn {turn}: caller heard all {heard_ms} ms (final mark played)"
                )
            }
            CallEvent::Interrupted {
                turn,
                heard_ms,
                sent_ms,
            } => {
                format!("bridge  barge-in during turn {turn}: heard {heard_ms} of {sent_ms} ms sent; clear sent")
            }
            CallEvent::ToolCall { name, args, .. } => format!("bridge  tool call {name}({args})"),
            CallEvent::ToolResult { name, ok, .. } => {
                format!(
                    "bridge  tool {name} answered ({})",
                    if *ok { "ok" } else { "error" }
                )
            }
            CallEvent::Dtmf(d) => format!("bridge  caller keys {d} sent to the model"),
            CallEvent::Reconnected {
                reason,
                resumed,
                gap_ms,
            } => format!(
                "bridge  model connection replaced ({reason}, {}) in {gap_ms} ms",
                if *resumed {
                    "resumed"
                } else {
                    "fresh session with the transcript"
                }
            ),
            CallEvent::Continued { .. } => {
                "bridge  stream reconnected; same model session".to_string()
            }
            CallEvent::WrapUp { reason } => format!("bridge  agent asked to wrap up ({reason})"),
            CallEvent::OddTurnEnd { reason } => {
                format!("bridge  model turn ended oddly ({reason}); filler played, retry asked")
            }
            CallEvent::GoAway { time_left_ms } => {
                format!("bridge  model goAway, {time_left_ms:?} ms left")
            }
            CallEvent::Usage(u) => format!(
                "bridge  tokens: prompt {} response {}",
                u.prompt_token_count, u.response_token_count
            ),
            CallEvent::Operator { action, result, .. } => format!(
                "bridge  operator {action}: {}",
                match result {
                    Ok(()) => "done".to_string(),
                    Err(e) => e.clone(),
                }
            ),
            CallEvent::Ended(why) => format!("bridge  call ended: {}", why.as_str()),
            CallEvent::CallerTranscript(t) => {
                caller_text.push_str(t);
                continue;
            }
            CallEvent::AgentTranscript(t) => {
                agent_text.push_str(t);
                continue;
            }
        };
        // Transcripts are printed whole, when the turn's audio starts being heard.
        if matches!(n.event, CallEvent::AgentTurnHeard { .. }) && !agent_text.is_empty() {
            lines.push((at, 1, format!("agent   \"{}\"", agent_text.trim())));
            agent_text.clear();
        }
        if matches!(n.event, CallEvent::AgentSpeaking { .. }) && !caller_text.is_empty() {
            lines.push((
                at,
                0,
                format!("caller  \"{}\" (model's transcript)", caller_text.trim()),
            ));
            caller_text.clear();
        }
        lines.push((at, 2, line));
    }
    let mut last_utterance_end: Option<u64> = None;
    for e in &report.timeline {
        let at = anchor_ms + e.at_ms;
        let line = match &e.event {
            TimelineEvent::UtteranceStart { label } => format!("caller  starts speaking ({label})"),
            TimelineEvent::UtteranceEnd { label } => {
                last_utterance_end = Some(at);
                format!("caller  stops speaking ({label})")
            }
            TimelineEvent::AgentAudioStart { turn } => match last_utterance_end.take() {
                Some(end) => format!(
                    "caller  hears agent turn {turn} — {} ms after the caller stopped speaking",
                    at.saturating_sub(end)
                ),
                None => format!("caller  hears agent turn {turn}"),
            },
            TimelineEvent::AgentAudioEnd {
                turn,
                played_ms,
                interrupted,
            } => format!(
                "caller  agent turn {turn} ends after {played_ms} ms{}",
                if *interrupted { " (cut by clear)" } else { "" }
            ),
            TimelineEvent::ClearReceived { dropped_ms, .. } => {
                format!("caller  clear: {dropped_ms} ms of queued audio dropped")
            }
            TimelineEvent::HungUp { reason } => {
                format!("twilio  call completed ({reason:?}): stop sent")
            }
            TimelineEvent::BridgeClosed { code } => {
                format!("twilio  bridge closed the stream ({code:?})")
            }
            TimelineEvent::Warning { code, detail } => format!("twilio  warning {code}: {detail}"),
            TimelineEvent::WaitTimedOut { step } => format!("caller  gave up waiting ({step})"),
            _ => continue,
        };
        lines.push((at, 3, line));
    }
    lines.sort_by_key(|(at, order, _)| (*at, *order));
    for (at, _, line) in lines {
        println!("{:>7.3}s  {line}", at as f64 / 1000.0);
    }
}
