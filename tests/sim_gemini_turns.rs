//! Gemini simulator: user turns, replies, pacing, transcription and barge-in (spec §13 items 12-15).

mod sim_gemini_support;

use std::time::{Duration, Instant};

use callbridge::sim::gemini::{Clip, GeminiSim, Reply, Scenario, Turn, TurnTrigger};
use serde_json::{json, Value};
use sim_gemini_support::*;

const GREETING: &str = "Hi! Thanks for calling. How can I help you today?";
const HELLO: &str = "Hello, I am calling about my order. It has not arrived yet, can you help me?";

fn is_sc(v: &Value, key: &str) -> bool {
    v["serverContent"].get(key).is_some()
}

/// Stream 16 kHz samples in 20 ms chunks, as fast as the socket takes them.
async fn stream(c: &mut Client, samples: &[i16]) {
    for chunk in samples.chunks(320) {
        c.send_audio(chunk).await;
    }
}

#[tokio::test]
async fn greeting_on_client_content_streams_audio_transcript_then_completes() {
    let sim = fast().spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Greet the caller."}]}], "turnComplete": true}}))
        .await;
    let turn = c.turn().await;
    // Audio: 40 ms chunks of the bundled greeting clip, standard base64, 24 kHz.
    let chunks = audio_bytes(&turn);
    let clip = Clip::greeting();
    assert_eq!(
        chunks.iter().map(Vec::len).sum::<usize>(),
        clip.samples().len() * 2
    );
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == 1920));
    assert!(turn.iter().filter(|m| is_sc(m, "modelTurn")).all(|m| {
        m["serverContent"]["modelTurn"]["parts"][0]["inlineData"]["mimeType"]
            == "audio/pcm;rate=24000"
    }));
    assert_eq!(output_text(&turn), GREETING);
    // 2.5 profile: one member per serverContent event (usageMetadata rides next to turnComplete).
    for m in &turn {
        assert_eq!(
            m["serverContent"].as_object().map(|o| o.len()),
            Some(1),
            "{m}"
        );
    }
    // Order: audio/transcripts, then generationComplete, then turnComplete+usage last.
    let gen = position(&turn, |m| is_sc(m, "generationComplete")).expect("generationComplete");
    let last_media = turn
        .iter()
        .rposition(|m| is_sc(m, "modelTurn") || is_sc(m, "outputTranscription"))
        .expect("media");
    assert!(last_media < gen);
    assert_eq!(gen, turn.len() - 2);
    let done = &turn[turn.len() - 1];
    let usage = &done["usageMetadata"];
    let (p, r, t) = (
        usage["promptTokenCount"].as_u64().expect("prompt"),
        usage["responseTokenCount"].as_u64().expect("response"),
        usage["totalTokenCount"].as_u64().expect("total"),
    );
    assert!(p > 0 && r > 50 && t == p + r, "{usage}");
    assert!(!has(&turn, |m| is_sc(m, "interrupted")
        || is_sc(m, "inputTranscription")));
    let rec = sim.record();
    assert_eq!(
        rec.connections[0].user_turns[0].trigger,
        TurnTrigger::ClientContent
    );
}

#[tokio::test]
async fn gemini_3x_profile_combines_audio_and_transcription() {
    let sim = fast().spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut setup = setup_25();
    setup["model"] = json!("models/gemini-3.1-flash-live-preview");
    c.setup(setup).await;
    c.send(&json!({"realtimeInput": {"text": "Greet the caller."}}))
        .await;
    let turn = c.turn().await;
    assert_eq!(output_text(&turn), GREETING);
    // Every transcription fragment arrives inside an audio event.
    assert!(turn
        .iter()
        .filter(|m| is_sc(m, "outputTranscription"))
        .all(|m| is_sc(m, "modelTurn")));
    assert!(has(&turn, |m| is_sc(m, "generationComplete")));
}

#[tokio::test]
async fn replies_are_paced_faster_than_real_time_and_turn_complete_waits_for_playback() {
    let scenario = Scenario {
        greeting: Some(Reply {
            clip: Some(tone(1000)),
            text: "one two three".into(),
        }),
        ..Scenario::default()
    };
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .pace(4.0)
        .response_latency(Duration::from_millis(100))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    let sent = Instant::now();
    c.send(&json!({"realtimeInput": {"text": "hi"}})).await;
    let mut first_audio = None;
    let mut last_audio = None;
    let mut gen_done = None;
    loop {
        let m = c.json().await;
        let now = Instant::now();
        if is_sc(&m, "modelTurn") {
            first_audio.get_or_insert(now);
            last_audio = Some(now);
        }
        if is_sc(&m, "generationComplete") {
            gen_done = Some(now);
        }
        if is_sc(&m, "turnComplete") {
            let first = first_audio.expect("audio");
            let last = last_audio.expect("audio");
            let latency = first - sent;
            let streaming = last - first;
            let until_done = now - first;
            println!(
                "latency {latency:?} streaming {streaming:?} turnComplete after {until_done:?}"
            );
            assert!(latency >= Duration::from_millis(90), "{latency:?}");
            // 25 chunks of 40 ms at 4x: ~240 ms, neither all at once nor real time.
            assert!(
                streaming >= Duration::from_millis(180) && streaming < Duration::from_millis(700),
                "{streaming:?}"
            );
            assert!(gen_done.is_some_and(|g| g - first < Duration::from_millis(700)));
            // The model believes playback runs in real time: turnComplete ~1 s after the first chunk.
            assert!(until_done >= Duration::from_millis(950), "{until_done:?}");
            break;
        }
    }
}

#[tokio::test]
async fn caller_speech_is_detected_and_answered() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![Turn {
            caller: Some(HELLO.into()),
            ..Turn::reply(Reply {
                clip: Some(tone(400)),
                text: "Sure thing.".into(),
            })
        }],
        ..Scenario::default()
    };
    let sim = fast().scenario(scenario).spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    let hello = read_wav16("caller_hello.ref16k.wav");
    stream(&mut c, &hello).await;
    // Nothing yet: the caller may still be talking.
    assert_eq!(
        c.next_within(Duration::from_millis(200)).await,
        Event::Timeout
    );
    stream(&mut c, &vec![0i16; 16_000]).await;
    let turn = c.turn().await;
    assert_eq!(input_text(&turn), HELLO);
    let first_input = position(&turn, |m| is_sc(m, "inputTranscription")).expect("input");
    let first_audio = position(&turn, |m| is_sc(m, "modelTurn")).expect("audio");
    assert!(first_input < first_audio);
    assert_eq!(output_text(&turn), "Sure thing.");
    let rec = sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.audio.len(), hello.len() + 16_000);
    assert_eq!(&conn.audio[..hello.len()], &hello[..]);
    assert_eq!(conn.audio_chunks.len(), hello.len().div_ceil(320) + 50);
    let t = &conn.user_turns[0];
    assert_eq!(t.trigger, TurnTrigger::Vad);
    println!(
        "speech detected {}..{} ms",
        t.audio_start_ms, t.audio_end_ms
    );
    assert!((40..=150).contains(&t.audio_start_ms), "{t:?}");
    assert!((4800..=5100).contains(&t.audio_end_ms), "{t:?}");
    assert_eq!(conn.user_turns.len(), 1);
}

#[tokio::test]
async fn audio_stream_end_ends_the_user_turn() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![Turn::reply(Reply {
            clip: Some(tone(200)),
            text: "Yes.".into(),
        })],
        ..Scenario::default()
    };
    let sim = fast().scenario(scenario).spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    stream(&mut c, &read_wav16("caller_bye.ref16k.wav")).await;
    c.send(&json!({"realtime_input": {"audioStreamEnd": true}}))
        .await;
    let turn = c.turn().await;
    assert_eq!(output_text(&turn), "Yes.");
    assert_eq!(
        sim.record().connections[0].user_turns[0].trigger,
        TurnTrigger::AudioStreamEnd
    );
}

#[tokio::test]
async fn activity_signals_drive_turns_when_vad_is_disabled() {
    let scenario = Scenario {
        greeting: None,
        turns: vec![Turn::reply(Reply {
            clip: Some(tone(200)),
            text: "Yes.".into(),
        })],
        ..Scenario::default()
    };
    let sim = fast().scenario(scenario).spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut setup = setup_25();
    setup["realtimeInputConfig"] = json!({"automatic_activity_detection": {"disabled": true}});
    c.setup(setup).await;
    c.send(&json!({"realtimeInput": {"activityStart": {}}}))
        .await;
    // Speech-like audio without silence: only activityEnd ends the turn.
    stream(&mut c, &read_wav16("caller_bye.ref16k.wav")).await;
    assert_eq!(
        c.next_within(Duration::from_millis(300)).await,
        Event::Timeout
    );
    c.send(&json!({"realtimeInput": {"activityEnd": {}}})).await;
    let turn = c.turn().await;
    assert_eq!(output_text(&turn), "Yes.");
    assert_eq!(
        sim.record().connections[0].user_turns[0].trigger,
        TurnTrigger::ActivityEnd
    );
    // With VAD on, activity signals are an invalid argument.
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"activityStart": {}}}))
        .await;
    assert_eq!(
        c.expect_close().await,
        (
            Some(1007),
            "Request contains an invalid argument.".to_string()
        )
    );
}

#[tokio::test]
async fn barge_in_interrupts_without_generation_complete_then_answers_the_new_utterance() {
    let scenario = Scenario {
        greeting: Some(Reply::long()),
        turns: vec![Turn::reply(Reply {
            clip: Some(tone(200)),
            text: "Okay.".into(),
        })],
        ..Scenario::default()
    };
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .pace(3.0)
        .response_latency(Duration::from_millis(10))
        .realtime_playback(false)
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Greet."}]}], "turnComplete": true}}))
        .await;
    let mut first = Vec::new();
    while first.len() < 3 {
        let m = c.json().await;
        if is_sc(&m, "modelTurn") {
            first.push(m);
        }
    }
    stream(&mut c, &read_wav16("caller_bye.ref16k.wav")).await;
    // The interrupted turn: maybe a few more chunks, then interrupted, then turnComplete.
    let interrupted_turn = c.turn().await;
    let i = position(&interrupted_turn, |m| is_sc(m, "interrupted")).expect("interrupted");
    assert_eq!(
        i,
        interrupted_turn.len() - 2,
        "interrupted right before turnComplete"
    );
    assert!(!has(&interrupted_turn, |m| is_sc(m, "generationComplete")));
    let sent = 3 + audio_bytes(&interrupted_turn).len();
    assert!(
        sent * 1920 < Clip::long().samples().len() * 2,
        "audio stopped early"
    );
    // The caller's utterance becomes the next user turn once they stop.
    stream(&mut c, &vec![0i16; 16_000]).await;
    let next = c.turn().await;
    assert_eq!(output_text(&next), "Okay.");
    assert!(has(&next, |m| is_sc(m, "generationComplete")));
    let rec = sim.record();
    let turns = &rec.connections[0].user_turns;
    assert_eq!(turns.len(), 2);
    assert!(turns[1].interrupted_model);
}

#[tokio::test]
async fn no_interruption_lets_the_reply_finish_then_answers() {
    let scenario = Scenario {
        greeting: Some(Reply {
            clip: Some(tone(1500)),
            text: "A long greeting.".into(),
        }),
        turns: vec![Turn::reply(Reply {
            clip: Some(tone(200)),
            text: "Okay.".into(),
        })],
        ..Scenario::default()
    };
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .pace(2.0)
        .response_latency(Duration::from_millis(10))
        .realtime_playback(false)
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut setup = setup_25();
    setup["realtimeInputConfig"] = json!({"activityHandling": "NO_INTERRUPTION"});
    c.setup(setup).await;
    c.send(&json!({"realtimeInput": {"text": "Greet."}})).await;
    let m = c.json().await;
    assert!(is_sc(&m, "modelTurn"));
    stream(&mut c, &read_wav16("caller_bye.ref16k.wav")).await;
    stream(&mut c, &vec![0i16; 16_000]).await;
    let first = c.turn().await;
    assert!(!has(&first, |m| is_sc(m, "interrupted")));
    assert!(has(&first, |m| is_sc(m, "generationComplete")));
    let second = c.turn().await;
    assert_eq!(output_text(&second), "Okay.");
}
