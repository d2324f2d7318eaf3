//! Model sessions: resumption handles, goAway handovers (close-first and overlap) and fresh sessions.

use crate::support::*;

#[test]
fn resumption_handle_tracks_only_resumable_updates() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: Some("h1".into()),
            resumable: true,
        }),
        t0,
    );
    call.handle_input(
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: None,
            resumable: false,
        }),
        t0,
    );
    call.handle_input(
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: Some("h2".into()),
            resumable: false,
        }),
        t0,
    );
    assert_eq!(call.resume_handle(), Some("h1"));
}

#[test]
fn close_first_handover_drains_the_old_connection_and_resumes_with_the_newest_handle() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(handle("h1"), t0);
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(50)),
        }),
        t0,
    );
    let outs = drain(&mut call);
    // Quiet: the handover starts at once, with a close frame on the old connection; the
    // new one is not opened before the old one's close is complete (close-first).
    assert!(
        outs.iter().any(|o| matches!(o, Output::DrainModel)),
        "{outs:?}"
    );
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::ConnectModel | Output::CloseModel)));
    // The drain deadline: min(50 s / 2, 1 s).
    assert_eq!(call.poll_timeout(), Some(t0 + HANDOVER_DRAIN_MAX));
    // Caller audio meanwhile is held, not written after the close frame.
    call.handle_input(Input::Caller(media(5)), t0 + ms(1));
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ToModel(_))));
    // A handle that crossed our close frame, then a second goAway copy: the handle is
    // taken, the goAway ignored.
    call.handle_input(handle("h2"), t0 + ms(2));
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(49)),
        }),
        t0 + ms(2),
    );
    call.handle_input(
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: None,
            resumable: false,
        }),
        t0 + ms(2),
    );
    assert_eq!(call.resume_handle(), Some("h2"));
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::DrainModel | Output::ConnectModel)));
    // The close reply completes the handshake: now the new connection is opened.
    call.handle_input(closed(1000), t0 + ms(3));
    let outs = drain(&mut call);
    assert!(
        outs.iter().any(|o| matches!(o, Output::ConnectModel)),
        "{outs:?}"
    );
    call.handle_input(Input::ModelConnected, t0 + ms(10));
    let outs = drain(&mut call);
    assert_eq!(setup_handle(&outs[0]), Some(Some("h2")), "{outs:?}");
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0 + ms(40));
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::Reconnected {
            reason: "go_away",
            resumed: true,
            gap_ms: 40,
        })
    )));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))),
        "held caller audio delivered to the new session"
    );
}

#[test]
fn handover_drain_deadline_is_bounded_by_half_the_time_left() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(handle("h1"), t0);
    // 1 s left: the handover keeps 0.5 s in hand, so it starts at once (quiet) and the
    // drain may take at most half of the second left.
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(1)),
        }),
        t0,
    );
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::DrainModel)));
    let until = t0 + Duration::from_millis(500);
    assert_eq!(call.poll_timeout(), Some(until));
    call.handle_input(Input::Tick, until - Duration::from_millis(1));
    assert!(drain(&mut call).is_empty());
    // The server never answers our close frame: at the deadline the old socket is given
    // up and the newest handle seen is used.
    call.handle_input(handle("h2"), until - Duration::from_millis(1));
    call.handle_input(Input::Tick, until);
    let outs = drain(&mut call);
    let close = outs.iter().position(|o| matches!(o, Output::CloseModel));
    let connect = outs.iter().position(|o| matches!(o, Output::ConnectModel));
    assert!(
        matches!((close, connect), (Some(a), Some(b)) if a < b),
        "{outs:?}"
    );
    call.handle_input(Input::ModelConnected, until);
    assert_eq!(setup_handle(&drain(&mut call)[0]), Some(Some("h2")));
    // A late close of the old connection (already given up) does not count as a failure
    // of the new one: the driver no longer reads it, so nothing more arrives.
    assert!(call.poll_timeout().is_some());
}

#[test]
fn a_handover_at_the_announced_end_closes_at_once_and_leaves_no_due_timer() {
    // Found by fuzz_call_machine: a handover that starts at (or after) the end the goAway
    // announced had a drain of zero, so a timer was already due after the tick.
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(handle("h1"), t0);
    // The caller is speaking: no quiet moment, the handover waits for its deadline.
    call.handle_input(Input::Caller(loud_media(1)), t0);
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(1)),
        }),
        t0,
    );
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::DrainModel | Output::CloseModel)));
    // The driver wakes late, at the announced end itself.
    let end = t0 + Duration::from_secs(1);
    call.handle_input(Input::Tick, end);
    let outs = drain(&mut call);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::DrainModel)),
        "{outs:?}"
    );
    let close = outs.iter().position(|o| matches!(o, Output::CloseModel));
    let connect = outs.iter().position(|o| matches!(o, Output::ConnectModel));
    assert!(
        matches!((close, connect), (Some(a), Some(b)) if a < b),
        "{outs:?}"
    );
    assert!(call.poll_timeout().is_some_and(|t| t > end));
    call.handle_input(Input::ModelConnected, end);
    assert_eq!(setup_handle(&drain(&mut call)[0]), Some(Some("h1")));
}

#[test]
fn handover_drain_plays_the_old_connections_last_audio_and_defers_tool_results() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut call = live_with(
        settings_with(|c| {
            c.tools
                .webhooks
                .push(callbridge::config::WebhookToolConfig {
                    scheduling: Default::default(),
                    name: "lookup".into(),
                    description: "Look something up".into(),
                    parameters: None,
                    url: "http://127.0.0.1:1/x".into(),
                    allow_insecure: true,
                    timeout_ms: 1000,
                })
        }),
        t0,
    );
    call.handle_input(handle("h1"), t0);
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(50)),
        }),
        t0,
    );
    drain(&mut call);
    // The old connection still delivers a turn (it had not seen our close yet): its audio
    // is played, nothing is sent back on it.
    call.handle_input(Input::Model(ModelEvent::Audio(vec![0; 4_800])), t0 + ms(1));
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t0 + ms(1));
    call.handle_input(Input::Tick, t0 + ms(2));
    let outs = drain(&mut call);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::ToCaller(CallerOut::Media(_)))),
        "{outs:?}"
    );
    assert!(!outs.iter().any(|o| matches!(o, Output::ToModel(_))));
    // A tool result for a call of the old session goes to the new session as context.
    call.handle_input(tool_call_with("t-old", "lookup", json!({})), t0 + ms(2));
    call.handle_input(
        Input::ToolDone {
            id: "t-old".into(),
            result: Ok(json!({"balance": 42})),
        },
        t0 + ms(3),
    );
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ToModel(_))));
    call.handle_input(closed(1000), t0 + ms(4));
    call.handle_input(Input::ModelConnected, t0 + ms(5));
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0 + ms(6));
    let outs = drain(&mut call);
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::ToolResponse(_)))));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::ToModel(m) if format!("{m:?}").contains("42"))),
        "{outs:?}"
    );
}

#[test]
fn overlap_handover_connects_in_parallel_and_sends_setup_after_the_old_close() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut call = live_with(settings_with(|c| c.session.handover = "overlap".into()), t0);
    call.handle_input(handle("h1"), t0);
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(50)),
        }),
        t0,
    );
    let outs = drain(&mut call);
    assert!(
        outs.iter().any(|o| matches!(o, Output::ConnectStandby))
            && outs.iter().any(|o| matches!(o, Output::DrainModel)),
        "quiet: handover at once, connect and close in parallel: {outs:?}"
    );
    // Caller audio during the handover is held, not sent to the old session.
    call.handle_input(Input::Caller(media(5)), t0);
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))));
    // The new socket is open first: its setup waits for the newest handle.
    call.handle_input(Input::StandbyConnected, t0 + ms(1));
    assert!(drain(&mut call).iter().all(|o| setup_handle(o).is_none()));
    call.handle_input(handle("h2"), t0 + ms(2));
    call.handle_input(closed(1000), t0 + ms(3));
    let outs = drain(&mut call);
    assert_eq!(
        outs.iter().find_map(setup_handle),
        Some(Some("h2")),
        "{outs:?}"
    );
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::ToStandby(ModelOut::Setup(_)))));
    call.handle_input(Input::Standby(ModelEvent::SetupComplete), t0 + ms(40));
    let outs = drain(&mut call);
    assert!(matches!(outs[0], Output::PromoteStandby), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::Reconnected {
            reason: "go_away",
            resumed: true,
            ..
        })
    )));
    let audio: usize = outs
        .iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::Audio(a)) => Some(a.len()),
            _ => None,
        })
        .sum();
    assert!(
        audio >= 600,
        "held caller audio delivered to the new session: {audio}"
    );
}

#[test]
fn overlap_handover_falls_back_to_a_new_connection_when_the_standby_fails() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|c| c.session.handover = "overlap".into()), t0);
    call.handle_input(handle("h1"), t0);
    call.handle_input(
        Input::Model(ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(50)),
        }),
        t0,
    );
    drain(&mut call);
    // The standby fails while the old connection is still closing: nothing yet.
    call.handle_input(Input::StandbyFailed("closed: code 1007".into()), t0);
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ConnectModel)));
    // Once the old one is closed, resume close-first.
    call.handle_input(closed(1000), t0);
    let outs = drain(&mut call);
    assert!(
        outs.iter().any(|o| matches!(o, Output::ConnectModel)),
        "{outs:?}"
    );
    call.handle_input(Input::ModelConnected, t0);
    let outs = drain(&mut call);
    assert_eq!(setup_handle(&outs[0]), Some(Some("h1")));
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    assert!(drain(&mut call).iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::Reconnected {
            reason: "go_away",
            resumed: true,
            ..
        })
    )));
}

#[test]
fn refused_resume_starts_a_fresh_session_with_history() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(
        Input::Model(ModelEvent::InputTranscription("where is my order".into())),
        t0,
    );
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
    call.handle_input(
        Input::Model(ModelEvent::OutputTranscription("It ships Monday.".into())),
        t0,
    );
    call.handle_input(Input::Model(ModelEvent::GenerationComplete), t0);
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
    call.handle_input(
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: Some("h1".into()),
            resumable: true,
        }),
        t0,
    );
    drain(&mut call);
    // The connection drops; the resume with the handle is refused (1007).
    call.handle_input(
        Input::ModelClosed {
            code: 1006,
            reason: String::new(),
        },
        t0,
    );
    call.handle_input(Input::ModelConnected, t0);
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::ToModel(ModelOut::Setup(p)) if p.resume_handle.as_deref() == Some("h1"))));
    call.handle_input(
        Input::ModelClosed {
            code: 1007,
            reason: "Request contains an invalid argument.".into(),
        },
        t0,
    );
    let retry = call.poll_timeout().unwrap();
    call.handle_input(Input::Tick, retry);
    call.handle_input(Input::ModelConnected, retry);
    let outs = drain(&mut call);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::Setup(p)) if p.resume_handle.is_none())),
        "{outs:?}"
    );
    call.handle_input(Input::Model(ModelEvent::SetupComplete), retry);
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(CallEvent::Reconnected {
            reason: "fault",
            resumed: false,
            ..
        })
    )));
    // 2.5 (these tests' model): clientContent without turnComplete was reported to stop
    // it answering later audio, so the history ends with a turn it answers briefly.
    let seeds: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::ClientContent(turns)) => Some(turns.clone()),
            Output::ToModel(ModelOut::Context(_)) => {
                panic!("no incomplete clientContent on 2.5")
            }
            _ => None,
        })
        .collect();
    assert_eq!(seeds.len(), 1, "one seed, no second greeting prompt");
    let history = &seeds[0];
    assert_eq!(history[0].text, "where is my order");
    assert_eq!(history[1].text, "It ships Monday.");
    assert!(history.last().unwrap().text.contains("Do not greet again"));
}
