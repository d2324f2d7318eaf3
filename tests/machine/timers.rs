//! Timers: start/setup timeouts, maximum length, silence wrap-up, idle streams and shutdown.

use crate::support::*;

#[test]
fn model_refusal_before_setup_ends_the_stream() {
    let t0 = Instant::now();
    let mut call = Call::new(settings(), t0).unwrap();
    call.handle_input(Input::Caller(start_event()), t0);
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(
        Input::ModelClosed {
            code: 1008,
            reason: "models/x is not found".into(),
        },
        t0,
    );
    let outs = drain(&mut call);
    match outs.last() {
        Some(Output::End(e @ CallEnd::ModelUnavailable(why))) => {
            assert!(why.contains("1008"));
            assert!(e.caller_still_connected());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn setup_and_start_timeouts() {
    let t0 = Instant::now();
    let mut call = Call::new(settings(), t0).unwrap();
    let deadline = call.poll_timeout().unwrap();
    call.handle_input(Input::Tick, deadline);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::StartTimeout))
    ));

    let mut call = Call::new(settings(), t0).unwrap();
    call.handle_input(Input::Caller(start_event()), t0);
    call.handle_input(Input::ModelConnected, t0);
    let deadline = call.poll_timeout().unwrap();
    call.handle_input(Input::Tick, deadline);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::ModelUnavailable(_)))
    ));
}

#[test]
fn max_duration_asks_for_a_goodbye_then_ends_after_the_grace() {
    let t0 = Instant::now();
    let s = settings_with(|c| {
        c.limits.max_call_secs = 60;
        c.limits.wrap_up_grace_ms = 10_000;
        c.limits.silence_timeout_secs = 0;
    });
    let mut call = live_with(s, t0);
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(60));
    call.handle_input(Input::Tick, due);
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::WrapUp {
            reason: "max_duration"
        })
    )));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::Text(t)) if t.contains("maximum length"))));
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(70));
    call.handle_input(Input::Tick, due);
    let outs = drain(&mut call);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. }))));
    assert!(matches!(
        outs.last(),
        Some(Output::End(CallEnd::MaxDuration))
    ));
}

#[test]
fn silence_timeout_wraps_up_unless_the_caller_speaks_again() {
    let t0 = Instant::now();
    let s = settings_with(|c| {
        c.limits.silence_timeout_secs = 10;
        c.limits.wrap_up_grace_ms = 5_000;
    });
    let mut call = live_with(s, t0);
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(10));
    call.handle_input(Input::Tick, due);
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::Event(CallEvent::WrapUp { reason: "silence" }))));
    // The caller speaks: the wrap-up is withdrawn.
    let loud: Vec<u8> = (0..160)
        .map(|i| if i % 2 == 0 { 0x10 } else { 0x90 })
        .collect();
    call.handle_input(
        Input::Caller(CallerEvent::Media(MediaFrame {
            chunk: 9,
            timestamp_ms: 0,
            track: "inbound".into(),
            payload: loud,
        })),
        due + Duration::from_secs(1),
    );
    call.handle_input(Input::Tick, due + Duration::from_secs(6));
    assert!(!drain(&mut call).iter().any(|o| matches!(o, Output::End(_))));
    // Silence again: wrap-up, then the end after the grace.
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(21));
    call.handle_input(Input::Tick, due);
    drain(&mut call);
    call.handle_input(Input::Tick, due + Duration::from_secs(5));
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::SilenceTimeout))
    ));
}

#[test]
fn a_stream_without_media_is_closed() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|c| c.limits.idle_stream_secs = 5), t0);
    call.handle_input(Input::Caller(media(1)), t0 + Duration::from_secs(3));
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(8));
    call.handle_input(Input::Tick, due);
    let outs = drain(&mut call);
    assert!(
        matches!(outs.last(), Some(Output::End(e @ CallEnd::IdleStream)) if e.caller_still_connected())
    );
}

#[test]
fn shutdown_lets_the_call_continue_then_ends_after_the_sentence() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|c| c.limits.shutdown_grace_secs = 10), t0);
    call.handle_input(Input::Shutdown, t0);
    assert!(
        drain(&mut call).is_empty(),
        "the call goes on during the grace"
    );
    let t1 = t0 + Duration::from_secs(9);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1_500))), t1);
    call.handle_input(Input::Model(ModelEvent::GenerationComplete), t1);
    let mut t = t1;
    let mut ended_at = None;
    for _ in 0..200 {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let outs = drain(&mut call);
        for m in marks(&outs) {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
        }
        let mut outs = outs;
        outs.extend(drain(&mut call));
        if outs
            .iter()
            .any(|o| matches!(o, Output::End(CallEnd::Shutdown)))
        {
            assert!(
                !outs
                    .iter()
                    .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. }))),
                "the stream closes; Twilio runs the fallback"
            );
            ended_at = Some(t);
            break;
        }
    }
    let ended_at = ended_at.expect("ended");
    // (This test echoes each mark as soon as it is sent, up to the 200 ms lead early.)
    assert!(
        ended_at >= t1 + Duration::from_millis(1_500 - 220),
        "the sentence was sent and its marks came back first: ended {:?} after it began",
        ended_at - t1
    );
}
