//! Calls longer than a Gemini connection: goAway handover with resumption, fault recovery,
//! fresh sessions seeded with the transcript, and what the caller actually heard.

mod common;

use std::time::Duration;

use callbridge::sim::caller::{CallEnding, Script};
use callbridge::sim::gemini::{Faults, Reply, Scenario, Turn};
use common::*;

fn chat() -> Scenario {
    Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(Reply::greeting())],
        ..Scenario::default()
    }
}

fn script() -> Script {
    Script::new()
        .wait_for_agent(500, 15_000)
        .say_ulaw("hello", caller_clip("caller_hello"))
        .wait_for_agent(500, 15_000)
        .say_ulaw("numbers", caller_clip("caller_numbers"))
        .wait_for_agent(500, 15_000)
        .say_ulaw("bye", caller_clip("caller_bye"))
        .wait_for_agent(500, 15_000)
        .hang_up()
}

/// All caller audio the simulator received, over every connection, in order.
fn received(h: &Harness) -> Vec<i16> {
    h.sim
        .record()
        .connections
        .iter()
        .flat_map(|c| c.audio.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_handovers_lose_and_duplicate_no_caller_audio() {
    go_away_handovers("gemini-3.8-live").await;
}

/// The same handovers on Gemini 2.5 (one member per server event, BLOCKING tools).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_handovers_lose_and_duplicate_no_caller_audio_on_2_5() {
    go_away_handovers("gemini-2.5-flash-native-audio-preview-12-2025").await;
}

async fn go_away_handovers(model: &'static str) {
    let mut h = harness(
        |s| {
            s.scenario(chat())
                .lifetime(Duration::from_secs(10))
                .go_away_lead(Duration::from_secs(6))
        },
        |c| c.gemini.model = model.into(),
    )
    .await;
    let report = h
        .caller()
        .max_duration(Duration::from_secs(120))
        .script(script())
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    let mut gaps: Vec<u64> = notes
        .iter()
        .filter_map(|n| match n.event {
            callbridge::call::event::CallEvent::Reconnected { gap_ms, .. } => Some(gap_ms),
            _ => None,
        })
        .collect();
    gaps.sort_unstable();
    eprintln!(
        "handover gaps (caller audio held back): n={} p50={} ms max={} ms",
        gaps.len(),
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        gaps.last().copied().unwrap_or(0)
    );
    let handovers = kinds
        .iter()
        .filter(|k| *k == "reconnected go_away resumed")
        .count();
    assert!(handovers >= 3, "several handovers: {kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended caller_hung_up")
    );
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), handovers + 1);
    for c in &rec.connections[1..] {
        assert!(
            c.resumed_from.is_some(),
            "connection {} resumed with a handle",
            c.index
        );
        let setup = c.setup.as_ref().unwrap();
        assert!(setup["sessionResumption"]["handle"].is_string());
        assert!(setup["contextWindowCompression"]["slidingWindow"].is_object());
    }
    // Nothing lost, nothing duplicated: every 8 kHz sample the caller sent arrived once as two
    // 16 kHz samples (the uplink resampler persists across connections and holds back at most
    // its 13-sample delay).
    let audio = received(&h);
    let sent = report.media_frames_sent as usize * 160 * 2;
    assert!(
        audio.len() <= sent && sent - audio.len() <= 32,
        "sent {sent} samples, received {}",
        audio.len()
    );
    for name in ["caller_hello", "caller_numbers", "caller_bye"] {
        let (score, _) = find_in(&audio, &pcm(&format!("{name}.ref16k.wav")));
        assert!(
            score > 0.9,
            "{name} arrived intact across handovers: {score:.3}"
        );
    }
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_drop_is_recovered_by_resuming() {
    let scenario = Scenario {
        faults: Faults {
            after_ms: Some((6_000, callbridge::sim::gemini::FaultAction::Drop)),
            ..Faults::default()
        },
        ..chat()
    };
    let mut h = harness(|s| s.scenario(scenario), |_| {}).await;
    let report = h.caller().script(script()).spawn().join().await.unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds.iter().any(|k| k == "reconnected fault resumed"),
        "{kinds:?}"
    );
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let audio = received(&h);
    let (score, _) = find_in(&audio, &pcm("caller_bye.ref16k.wav"));
    assert!(
        score > 0.9,
        "speech after the recovery reaches the model: {score:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-dependent: the simulator starts a handle's 1 ms expiry when it has processed the old \
            socket's end, which can come after the new setup under load; the refused-resume path is \
            pinned by tests/machine session::refused_resume_starts_a_fresh_session_with_history"]
async fn refused_resume_starts_a_fresh_session_with_the_transcript() {
    let mut h = harness(
        |s| {
            s.scenario(chat())
                .lifetime(Duration::from_secs(12))
                .go_away_lead(Duration::from_secs(4))
                .resumption_ttl(Duration::from_millis(1))
        },
        |_| {},
    )
    .await;
    let report = h.caller().script(script()).spawn().join().await.unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds.iter().any(|k| k == "reconnected go_away fresh"),
        "{kinds:?}"
    );
    let rec = h.sim.record();
    let fresh = rec
        .connections
        .iter()
        .skip(1)
        .find(|c| {
            c.setup
                .as_ref()
                .is_some_and(|s| s["sessionResumption"].get("handle").is_none())
        })
        .expect("a fresh connection");
    let seeded = fresh
        .frames
        .iter()
        .find(|f| f.raw.contains("clientContent"))
        .expect("history sent");
    assert!(
        seeded.raw.contains("How can I help you today"),
        "{}",
        seeded.raw
    );
    assert!(
        seeded.raw.contains("\"turnComplete\":false"),
        "{}",
        seeded.raw
    );
    assert!(seeded.raw.contains("do not greet again"));
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_end_the_stream_for_the_fallback() {
    let mut h = harness(|s| s.scenario(chat()), |c| c.session.max_reconnects = 2).await;
    let caller = h
        .caller()
        .script(Script::new().wait_for_agent(500, 15_000).silence(20_000))
        .spawn();
    // Let the greeting play, then take the model service away for good.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let sim = std::mem::replace(
        &mut h.sim,
        callbridge::sim::gemini::GeminiSim::builder()
            .spawn()
            .await
            .unwrap(),
    );
    sim.shutdown().await.unwrap();
    let report = caller.join().await.unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    assert_eq!(report.ended_by, Some(CallEnding::BridgeClosed));
    assert!(report.fallback_twiml.is_some());
    assert_eq!(
        event_kinds(&notes).last().map(String::as_str),
        Some("ended model_lost")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_barge_in_the_model_is_told_what_was_heard() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn::reply(Reply::long()), Turn::reply(Reply::greeting())],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), |_| {}).await;
    h.caller()
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent_audio(10_000)
                .silence(2_000)
                .say_ulaw("bye", caller_clip("caller_bye"))
                .wait_for_agent(600, 20_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let _ = h.notes_until_end(Duration::from_secs(5)).await;
    let rec = h.sim.record();
    let note = rec.connections[0]
        .frames
        .iter()
        .find(|f| f.raw.contains("They heard only"))
        .expect("heard note sent");
    // The long answer starts "Sure. Your order shipped on Monday..."; about 2 s of it were
    // heard, so the note has its beginning but not its end.
    assert!(note.raw.contains("Sure."), "{}", note.raw);
    assert!(
        !note.raw.contains("before eight in the evening"),
        "{}",
        note.raw
    );
    assert!(note.raw.contains("\"turnComplete\":false"));
}

/// A long conversation compressed by short connection lifetimes: at least 20 handovers, no
/// caller audio lost or duplicated, and the bridge's per-call state stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_call_with_twenty_handovers_keeps_every_frame() {
    let mut h = harness(
        |s| {
            s.scenario(chat())
                .lifetime(Duration::from_millis(3_000))
                .go_away_lead(Duration::from_millis(2_000))
                .pace(6.0)
                .response_latency(Duration::from_millis(100))
        },
        |c| c.session.history_chars = 2_000,
    )
    .await;
    let bye = caller_clip("caller_bye");
    let mut script = Script::new().wait_for_agent(400, 15_000);
    for _ in 0..12 {
        script = script
            .say_ulaw("bye", bye.clone())
            .wait_for_agent(400, 15_000);
    }
    let report = h
        .caller()
        .max_duration(Duration::from_secs(240))
        .script(script.hang_up())
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    let handovers = kinds
        .iter()
        .filter(|k| k.starts_with("reconnected"))
        .count();
    assert!(handovers >= 20, "{handovers} handovers: {kinds:?}");
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let waits = report
        .timeline
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                callbridge::sim::caller::TimelineEvent::WaitTimedOut { .. }
            )
        })
        .count();
    assert_eq!(waits, 0, "every utterance was answered");
    let audio = received(&h);
    let sent = report.media_frames_sent as usize * 320;
    assert!(
        audio.len() <= sent && sent - audio.len() <= 32,
        "lost or duplicated caller audio: sent {sent} samples, received {}",
        audio.len()
    );
    // Each of the 12 utterances arrived once, in order.
    let reference = pcm("caller_bye.ref16k.wav");
    let mut from = 0;
    for i in 0..12 {
        // Search the next stretch only: the copies are identical, so the first one must be
        // found before the later ones.
        let window = &audio[from..(from + reference.len() + 12 * 16_000).min(audio.len())];
        let (score, lag) = find_in(window, &reference);
        assert!(score > 0.9, "utterance {i}: {score:.3}");
        from += lag + reference.len();
    }
    assert!(
        find_in(&audio[from..], &reference).0 < 0.5,
        "no thirteenth copy"
    );
    // The transcript kept for fresh sessions is bounded.
    assert_eq!(h.state.admission.live(), 0);
}

/// The `overlap` strategy: the new connection is resumed while the old one is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_handover_resumes_before_closing_the_old_connection() {
    let mut h = harness(
        |s| {
            s.scenario(chat())
                .lifetime(Duration::from_secs(10))
                .go_away_lead(Duration::from_secs(6))
        },
        |c| c.session.handover = "overlap".into(),
    )
    .await;
    let report = h
        .caller()
        .max_duration(Duration::from_secs(120))
        .script(script())
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds
            .iter()
            .filter(|k| *k == "reconnected go_away resumed")
            .count()
            >= 2,
        "{kinds:?}"
    );
    let rec = h.sim.record();
    // Each new connection's setup arrived before the previous connection was closed.
    for pair in rec.connections.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        assert!(new.resumed_from.is_some());
        let close_at = old.frames.last().map(|f| f.at_ms).unwrap_or(0);
        assert!(
            !new.frames.is_empty() && close_at > 0,
            "both connections carried traffic"
        );
    }
    let audio = received(&h);
    let sent = report.media_frames_sent as usize * 320;
    assert!(
        audio.len() <= sent && sent - audio.len() <= 32,
        "sent {sent}, received {}",
        audio.len()
    );
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
}
