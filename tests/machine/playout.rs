//! Pacing, marks, barge-in and the pre-connect buffer: what the caller hears and when.

use crate::support::*;

#[test]
fn start_connects_then_sends_setup_greeting_and_buffered_audio() {
    let t0 = Instant::now();
    let mut call = Call::new(settings(), t0).unwrap();
    call.handle_input(Input::Caller(media(1)), t0);
    assert!(drain(&mut call).is_empty(), "media before start is ignored");
    call.handle_input(Input::Caller(start_event()), t0);
    let outs = drain(&mut call);
    assert!(matches!(outs[0], Output::Event(CallEvent::Started { .. })));
    assert!(matches!(outs[1], Output::ConnectModel));
    for i in 0..10 {
        call.handle_input(Input::Caller(media(i + 2)), t0);
    }
    assert!(
        drain(&mut call).is_empty(),
        "caller audio is held until setupComplete"
    );
    call.handle_input(Input::ModelConnected, t0);
    let outs = drain(&mut call);
    assert!(
        matches!(&outs[0], Output::ToModel(ModelOut::Setup(p)) if p.tools.iter().any(|t| t.name == "end_call"))
    );
    call.handle_input(
        Input::Model(ModelEvent::SetupComplete),
        t0 + Duration::from_millis(300),
    );
    let outs = drain(&mut call);
    assert!(matches!(
        outs[0],
        Output::Event(CallEvent::ModelReady { setup_ms: 300 })
    ));
    assert!(matches!(&outs[1], Output::ToModel(ModelOut::ClientContent(t)) if t.len() == 1));
    let audio: usize = outs
        .iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::Audio(a)) => Some(a.len()),
            _ => None,
        })
        .sum();
    // 10 frames of 8 kHz μ-law = 200 ms = 6400 bytes of 16 kHz PCM, less what the
    // resampler still holds (its delay, at most 2 ms = 64 bytes).
    assert!((6400 - 64..=6400).contains(&audio), "flushed {audio} bytes");
    // Live: each frame goes straight through.
    call.handle_input(Input::Caller(media(20)), t0);
    let outs = drain(&mut call);
    assert!(matches!(&outs[0], Output::ToModel(ModelOut::Audio(a)) if a.len() == 640));
}

#[test]
fn preconnect_buffer_is_bounded() {
    let t0 = Instant::now();
    let mut s = CallSettings::from_config(&blocking_config());
    s.preconnect_frames = 5;
    let mut call = Call::new(Arc::new(s), t0).unwrap();
    call.handle_input(Input::Caller(start_event()), t0);
    for i in 0..12 {
        call.handle_input(Input::Caller(media(i)), t0);
    }
    assert_eq!(call.preconnect_dropped_bytes(), 7 * 160);
}

#[test]
fn downlink_is_paced_with_a_bounded_lead_and_marks() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1000))), t0);
    let outs = drain(&mut call);
    // 200 ms lead = 10 frames at once, marks every 100 ms.
    assert_eq!(media_count(&outs), 10);
    assert_eq!(marks(&outs), vec!["t1-5", "t1-10"]);
    assert!(matches!(
        outs[0],
        Output::Event(CallEvent::AgentSpeaking { turn: 1, .. })
    ));
    let next = call.poll_timeout().expect("a refill is due");
    assert_eq!(next, t0 + Duration::from_millis(100));
    // Refilled in batches (refill 100 ms): nothing while more than 100 ms is queued, then
    // five frames in one go, back up to the 200 ms lead.
    for k in 1..=20u64 {
        call.handle_input(Input::Tick, t0 + Duration::from_millis(20 * k));
        let want = if k % 5 == 0 { 5 } else { 0 };
        assert_eq!(media_count(&drain(&mut call)), want, "tick {k}");
    }
}

#[test]
fn a_refill_of_one_frame_sends_a_frame_every_20_ms() {
    let t0 = Instant::now();
    let mut s = Arc::unwrap_or_clone(settings());
    s.playout_refill = Duration::from_millis(20);
    let mut call = Call::new(Arc::new(s), t0).expect("pipeline");
    call.handle_input(Input::Caller(start_event()), t0);
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    drain(&mut call);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1000))), t0);
    assert_eq!(media_count(&drain(&mut call)), 10);
    assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_millis(20)));
    for k in 1..=20u64 {
        call.handle_input(Input::Tick, t0 + Duration::from_millis(20 * k));
        assert_eq!(media_count(&drain(&mut call)), 1, "tick {k}");
    }
}

#[test]
fn audio_arriving_while_the_lead_is_low_goes_out_at_once() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    // 100 ms arrives with nothing queued: every whole frame goes out (the resampler holds
    // back its ~2 ms delay, so 4 frames).
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
    let first = media_count(&drain(&mut call));
    assert!(first >= 4, "{first}");
    // 20 ms before that has played out, the lead is under the refill point: the next
    // 100 ms goes out at once too, not at the next timer.
    let t1 = t0 + Duration::from_millis(20 * first as u64 - 20);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t1);
    assert_eq!(media_count(&drain(&mut call)), 5);
}

#[test]
fn end_of_turn_flushes_tail_and_final_mark_reports_heard() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(110))), t0);
    call.handle_input(Input::Model(ModelEvent::GenerationComplete), t0);
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
    let outs = drain(&mut call);
    // 110 ms of audio plus the filter tail, padded to whole frames = 6 frames.
    assert_eq!(media_count(&outs), 6);
    assert_eq!(marks(&outs), vec!["t1-5", "t1-6-end"]);
    call.handle_input(
        Input::Caller(CallerEvent::Mark {
            name: "t1-5".into(),
        }),
        t0,
    );
    call.handle_input(
        Input::Caller(CallerEvent::Mark {
            name: "t1-6-end".into(),
        }),
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::AgentTurnHeard {
            turn: 1,
            heard_ms: 120
        })
    )));
}

#[test]
fn barge_in_clears_and_never_plays_the_interrupted_turn() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
    drain(&mut call);
    let t1 = t0 + Duration::from_millis(100);
    call.handle_input(Input::Tick, t1);
    drain(&mut call);
    call.handle_input(
        Input::Caller(CallerEvent::Mark {
            name: "t1-5".into(),
        }),
        t1,
    );
    call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
    let outs = drain(&mut call);
    assert!(
        matches!(outs[0], Output::ToCaller(CallerOut::Clear)),
        "clear first: {outs:?}"
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::Interrupted {
            turn: 1,
            heard_ms: 100,
            sent_ms: 300
        })
    )));
    assert_eq!(media_count(&outs), 0);
    // Late audio of the interrupted turn and marks returned by clear change nothing.
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(500))), t1);
    call.handle_input(
        Input::Caller(CallerEvent::Mark {
            name: "t1-10".into(),
        }),
        t1,
    );
    call.handle_input(
        Input::Caller(CallerEvent::Mark {
            name: "t1-15".into(),
        }),
        t1,
    );
    for k in 1..20u64 {
        call.handle_input(Input::Tick, t1 + Duration::from_millis(20 * k));
    }
    let outs = drain(&mut call);
    assert_eq!(media_count(&outs), 0, "{outs:?}");
    assert!(call.discarded_model_bytes() >= 24_000);
    // After turnComplete a new turn plays.
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t1);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t1);
    let outs = drain(&mut call);
    assert!(media_count(&outs) > 0);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Event(CallEvent::AgentSpeaking { turn: 2, .. }))));
}

#[test]
fn response_time_runs_from_the_callers_last_voice_to_the_reply() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    // The greeting: nobody spoke before it.
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
    let first = drain(&mut call).into_iter().find_map(|o| match o {
        Output::Event(CallEvent::AgentSpeaking { response_ms, .. }) => Some(response_ms),
        _ => None,
    });
    assert_eq!(first, Some(None));
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
    let (t1, _) = play_out(&mut call, t0);
    // The caller speaks, then 700 ms later the reply's first frame goes out.
    let spoke = t1 + Duration::from_secs(1);
    call.handle_input(Input::Caller(loud_media(900)), spoke);
    drain(&mut call);
    let reply = spoke + Duration::from_millis(700);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), reply);
    let second = drain(&mut call).into_iter().find_map(|o| match o {
        Output::Event(CallEvent::AgentSpeaking { response_ms, .. }) => Some(response_ms),
        _ => None,
    });
    assert_eq!(second, Some(Some(700)));
}

#[test]
fn per_call_state_stays_bounded_over_a_long_call() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|c| c.session.history_chars = 1_000), t0);
    let mut t = t0;
    for i in 0..500u32 {
        call.handle_input(
            Input::Model(ModelEvent::InputTranscription(format!(
                "caller says thing {i}"
            ))),
            t,
        );
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(60))), t);
        call.handle_input(
            Input::Model(ModelEvent::OutputTranscription(format!(
                "agent answers {i}"
            ))),
            t,
        );
        call.handle_input(Input::Model(ModelEvent::GenerationComplete), t);
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t);
        let (next, _) = play_out(&mut call, t);
        t = next;
        if i % 50 == 0 {
            call.handle_input(Input::Model(ModelEvent::Interrupted), t);
            call.handle_input(Input::Model(ModelEvent::TurnComplete), t);
            drain(&mut call);
        }
    }
    let (history, buffered) = call.footprint();
    assert!(history <= 1_000, "history {history}");
    assert!(buffered < 10, "buffered {buffered}");
}
