//! End-to-end replay of recorded calls over loopback sockets: the real bridge, the Gemini
//! simulator, the fake Twilio REST API and a simulated Twilio caller.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callbridge::sim::caller::{CallEnding, Script, TimelineEvent};
use callbridge::sim::gemini::{Clip, Faults, Reply, Scenario, ToolCall, Turn};
use common::*;
use serde_json::json;

const GOODBYE: &str = "You're welcome. Thanks for calling, and have a great day. Goodbye!";

fn goodbye_clip() -> Clip {
    Clip::from_wav_bytes(&std::fs::read(asset("model_goodbye.pcm24k.wav")).unwrap()).unwrap()
}

fn golden(name: &str) -> Vec<String> {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
    )
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

fn at(
    report: &callbridge::sim::caller::CallReport,
    pred: impl Fn(&TimelineEvent) -> bool,
) -> Option<u64> {
    report
        .timeline
        .iter()
        .find(|e| pred(&e.event))
        .map(|e| e.at_ms)
}

const M38: &str = "gemini-3.8-live";
const M25: &str = "gemini-2.5-flash-native-audio-preview-12-2025";

/// The main scenario on Gemini 3.8 (NON_BLOCKING): the model calls end_call 300 ms into its
/// goodbye and keeps talking; the bridge answers SILENT (no second turn about the result) and
/// hangs up only after the whole goodbye was heard, within a second of its last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_call_replay_with_hang_up_after_goodbye_on_3_8() {
    recorded_call_replay(M38).await;
}

/// The same on Gemini 2.5 (BLOCKING): end_call after the goodbye; the model waits for the
/// answer, then ends its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_call_replay_with_hang_up_after_goodbye_on_2_5() {
    recorded_call_replay(M25).await;
}

/// Greeting, a question answered, goodbye + end_call → REST hang-up only after the goodbye
/// was heard.
async fn recorded_call_replay(model: &str) {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![
            Turn::reply(Reply::long()),
            Turn {
                tool_calls: vec![ToolCall {
                    name: "end_call".into(),
                    args: json!({"reason": "done"}),
                }],
                // Ignored for BLOCKING calls (2.5): they go out after the reply.
                tool_call_at_ms: Some(300),
                ..Turn::reply(Reply {
                    clip: Some(goodbye_clip()),
                    text: GOODBYE.into(),
                })
            },
        ],
        ..Scenario::default()
    };
    let model_id = model.to_string();
    let mut h = harness(|s| s.scenario(scenario), move |c| c.gemini.model = model_id).await;
    let call_sid = "CA00000000000000000000000000000001";
    let caller = h
        .caller()
        .call_sid(call_sid)
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent(600, 20_000)
                .say_ulaw("bye", caller_clip("caller_bye"))
                .silence(30_000),
        )
        .spawn();
    let trigger = caller.hang_up_trigger();
    h.rest.register_call(call_sid, Arc::new(move |_| trigger()));
    let report = caller.join().await.expect("call runs");
    let notes = h.notes_until_end(Duration::from_secs(5)).await;

    // Golden timeline of the bridge's decisions.
    assert_eq!(event_kinds(&notes), golden("conversation.timeline"));

    // The model leg: a proper setup, and the caller's speech (checked by content).
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1);
    let conn = &rec.connections[0];
    let setup = conn.setup.as_ref().expect("setup recorded");
    assert_eq!(setup["model"], format!("models/{model}"));
    let behavior = if model == M38 {
        "NON_BLOCKING"
    } else {
        "BLOCKING"
    };
    assert!(setup["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["behavior"] == behavior));
    assert_eq!(
        setup["generationConfig"]["responseModalities"],
        json!(["AUDIO"])
    );
    assert_eq!(
        setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]
            ["voiceName"],
        "Kore"
    );
    assert_eq!(
        setup["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
    assert!(setup["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "end_call"));
    assert_eq!(setup["sessionResumption"], json!({}));
    assert_eq!(setup["inputAudioTranscription"], json!({}));
    assert_eq!(setup["outputAudioTranscription"], json!({}));
    assert!(
        conn.frames[0].raw.starts_with("{\"setup\""),
        "first message is setup"
    );
    for name in ["caller_hello", "caller_bye"] {
        let (score, _) = find_in(&conn.audio, &pcm(&format!("{name}.ref16k.wav")));
        assert!(score > 0.9, "model received {name}: correlation {score:.3}");
    }
    assert_eq!(conn.tool_responses.len(), 1, "exactly one tool response");
    assert_eq!(conn.tool_calls_sent.len(), 1);
    if model == M38 {
        assert_eq!(conn.tool_responses[0]["scheduling"], "SILENT");
    } else {
        assert!(conn.tool_responses[0].get("scheduling").is_none());
    }

    // The caller heard the agent's clips, in whole frames.
    assert_eq!(report.media_bytes_received % 160, 0);
    assert_eq!(
        report.media_bytes_received,
        report.media_messages_received * 160
    );
    assert!(
        report.warnings.is_empty(),
        "twilio warnings: {:?}",
        report.warnings
    );
    let heard = ulaw_to_pcm(&report.heard);
    for name in ["model_greeting", "model_long"] {
        let (score, _) = find_in(&heard, &pcm(&format!("{name}.ref8k.wav")));
        assert!(score > 0.9, "caller heard {name}: correlation {score:.3}");
    }
    assert!(transcript(&notes, true).contains("Your order shipped on Monday"));

    // Hang-up through REST, only after the whole goodbye was played (clipped-goodbye regression).
    let hangups: Vec<_> = h
        .rest
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(hangups.len(), 1);
    assert_eq!(
        hangups[0].fields,
        vec![("Status".to_string(), "completed".to_string())]
    );
    assert_eq!(report.ended_by, Some(CallEnding::HangUpRequested));
    let goodbye_ms = goodbye_clip().duration_ms();
    let played = report.timeline.iter().find_map(|e| match e.event {
        TimelineEvent::AgentAudioEnd {
            turn: 3,
            played_ms,
            interrupted,
        } => Some((played_ms, interrupted, e.at_ms)),
        _ => None,
    });
    let (played_ms, interrupted, ended_at) = played.expect("goodbye turn heard");
    assert!(!interrupted);
    assert!(
        played_ms + 20 >= goodbye_ms,
        "goodbye clipped: heard {played_ms} of {goodbye_ms} ms"
    );
    let hung_up_at = at(&report, |e| matches!(e, TimelineEvent::HungUp { .. })).unwrap();
    assert!(
        hung_up_at >= ended_at,
        "hang-up at {hung_up_at} ms before the goodbye ended at {ended_at} ms"
    );
    assert!(
        hung_up_at <= ended_at + 1_000,
        "hang-up {} ms after the goodbye's last frame",
        hung_up_at - ended_at
    );
    // No fourth agent turn ("the call has been ended") after the goodbye.
    assert!(!report
        .timeline
        .iter()
        .any(|e| matches!(e.event, TimelineEvent::AgentAudioEnd { turn: 4, .. })));
}

/// Barge-in: the caller talks over a long answer; `clear` comes at once and no audio of the
/// interrupted turn is played after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_and_plays_nothing_stale_on_3_8() {
    barge_in(M38).await;
}

/// The same on 2.5, whose note of what was heard goes as `realtimeInput.text`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_and_plays_nothing_stale_on_2_5() {
    barge_in(M25).await;
}

async fn barge_in(model: &str) {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(Reply::long()), Turn::reply(Reply::greeting())],
        ..Scenario::default()
    };
    let model_id = model.to_string();
    let mut h = harness(|s| s.scenario(scenario), move |c| c.gemini.model = model_id).await;
    let report = h
        .caller()
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent_audio(10_000)
                .silence(1_500)
                .say_ulaw("bye", caller_clip("caller_bye"))
                .wait_for_agent(600, 20_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    assert_eq!(event_kinds(&notes), golden("barge_in.timeline"));

    assert!(report.clears_received >= 1);
    let cleared_at = at(&report, |e| {
        matches!(e, TimelineEvent::ClearReceived { .. })
    })
    .unwrap();
    let interrupted = report.timeline.iter().find_map(|e| match e.event {
        TimelineEvent::AgentAudioEnd {
            turn: 2,
            played_ms,
            interrupted,
        } => Some((played_ms, interrupted)),
        _ => None,
    });
    let (played_ms, was_interrupted) = interrupted.expect("turn 2 ended");
    assert!(was_interrupted, "turn 2 was cut by clear");
    assert!(
        played_ms < 8_000,
        "the long answer did not play out: {played_ms} ms"
    );
    // Between the clear and the next turn the caller hears only silence.
    let next = at(&report, |e| {
        matches!(e, TimelineEvent::AgentAudioStart { turn: 3 })
    })
    .expect("turn 3");
    let from = ((cleared_at.saturating_sub(report.heard_offset_ms)) / 20 + 1) as usize * 160;
    let to = ((next.saturating_sub(report.heard_offset_ms)) / 20) as usize * 160;
    assert!(to > from);
    assert!(
        report.heard[from..to]
            .iter()
            .all(|&b| b == 0xFF || b == 0x7F),
        "stale audio after clear"
    );
    // The next turn is the new answer (the greeting clip), not the rest of the long one.
    let (score, lag) = find_in(
        &ulaw_to_pcm(&report.heard[to..]),
        &pcm("model_greeting.ref8k.wav"),
    );
    assert!(score > 0.9, "turn 3 is the greeting clip: {score:.3}");
    assert!(lag < 800, "and it starts right away (lag {lag} samples)");
    let rec = h.sim.record();
    assert!(rec.connections[0]
        .user_turns
        .iter()
        .any(|t| t.interrupted_model));
    // Marks returned by the clear are reported as not played.
    assert!(report.marks.iter().any(|m| !m.played) || report.marks.is_empty());
}

/// The caller's first words, spoken while the model session is still being set up, reach the
/// model after setupComplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_before_setup_complete_is_not_lost() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        faults: Faults {
            setup_delay_ms: 1_500,
            ..Faults::default()
        },
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), |c| c.gemini.greeting = false).await;
    let report = h
        .caller()
        .script(
            Script::new()
                .say_ulaw("hello", caller_clip("caller_hello"))
                .silence(1_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let _ = h.notes_until_end(Duration::from_secs(5)).await;
    let conn = &h.sim.record().connections[0];
    let reference = pcm("caller_hello.ref16k.wav");
    let (score, lag) = find_in(&conn.audio, &reference);
    assert!(score > 0.9, "whole utterance received: {score:.3}");
    // The first chunk arrived after the setup delay, yet the utterance starts at the start.
    assert!(conn.audio_chunks[0].at_ms >= 1_400);
    assert!(
        lag < 16_000,
        "utterance starts within the first second of audio (lag {lag})"
    );
}
