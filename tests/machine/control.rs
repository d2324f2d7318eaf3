//! Call control: transfers, `send_dtmf` parking, operator commands and caller DTMF.

use crate::support::*;

#[test]
fn dtmf_is_aggregated_until_hash_or_idle() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    for d in ['1', '2', '#'] {
        call.handle_input(Input::Caller(CallerEvent::Dtmf { digit: d }), t0);
    }
    let texts: Vec<String> = drain(&mut call)
        .into_iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::Text(t)) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 1);
    assert!(texts[0].contains("12#"));
    call.handle_input(Input::Caller(CallerEvent::Dtmf { digit: '4' }), t0);
    call.handle_input(
        Input::Caller(CallerEvent::Dtmf { digit: '2' }),
        t0 + Duration::from_millis(500),
    );
    assert!(drain(&mut call).is_empty());
    let due = call.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_millis(2500));
    call.handle_input(Input::Tick, due);
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::Text(t)) if t.contains("42"))));
}

#[test]
fn transfer_waits_for_the_hand_off_to_be_heard_then_reports_the_outcome() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(400))), t0);
    call.handle_input(
        tool_call_with("fc-1", "transfer_call", json!({"destination": "billing"})),
        t0,
    );
    let outs = drain(&mut call);
    assert!(
        tool_responses(&outs).is_empty(),
        "answered only after the provider acted"
    );
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Control(_))),
        "not before the hand-off is heard"
    );
    let (t, outs) = play_out(&mut call, t0);
    let action = outs.iter().find_map(|o| match o {
        Output::Control(CallAction::Transfer {
            id,
            target,
            whisper,
            destination,
            ..
        }) => Some((id.clone(), target.clone(), *whisper, destination.clone())),
        _ => None,
    });
    assert_eq!(
        action,
        Some(("fc-1".into(), "+14155550100".into(), true, "billing".into()))
    );
    call.handle_input(
        Input::ActionDone {
            id: "fc-1".into(),
            result: Ok(()),
        },
        t,
    );
    let r = tool_responses(&drain(&mut call));
    assert_eq!(r.len(), 1);
    assert!(r[0].response.get("output").is_some());
    call.handle_input(Input::Caller(CallerEvent::Stop), t);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::Transferred))
    ));
}

#[test]
fn operator_hang_up_ends_the_call_at_once_through_the_provider() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2_000))), t0);
    drain(&mut call);
    call.handle_input(Input::Operator(OperatorCommand::HangUp), t0);
    let outs = drain(&mut call);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::HangUp { call_sid }) if call_sid.starts_with("CA"))));
    assert!(matches!(
        outs.last(),
        Some(Output::End(CallEnd::OperatorHungUp))
    ));
    // A second request after the end does nothing.
    call.handle_input(Input::Operator(OperatorCommand::HangUp), t0);
    assert!(drain(&mut call).is_empty());
}

#[test]
fn operator_transfer_goes_at_once_and_reports_its_outcome() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    // The agent is mid-sentence: the operator's transfer does not wait for it.
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2_000))), t0);
    drain(&mut call);
    call.handle_input(
        Input::Operator(OperatorCommand::Transfer {
            id: "operator-1".into(),
            destination: "billing".into(),
        }),
        t0,
    );
    let outs = drain(&mut call);
    let action = outs.iter().find_map(|o| match o {
        Output::Control(CallAction::Transfer { id, target, .. }) => {
            Some((id.clone(), target.clone()))
        }
        _ => None,
    });
    assert_eq!(action, Some(("operator-1".into(), "+14155550100".into())));
    // A second one while the first is with the provider is refused.
    call.handle_input(
        Input::Operator(OperatorCommand::Transfer {
            id: "operator-2".into(),
            destination: "+14155550199".into(),
        }),
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { id, result: Err(_), .. }) if id == "operator-2")));
    call.handle_input(
        Input::ActionDone {
            id: "operator-1".into(),
            result: Ok(()),
        },
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { id, result: Ok(()), .. }) if id == "operator-1")));
    assert!(
        tool_responses(&outs).is_empty(),
        "the model is not told about an operator's transfer"
    );
    call.handle_input(Input::Caller(CallerEvent::Stop), t0);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::Transferred))
    ));
}

#[test]
fn operator_transfer_refuses_unknown_destinations_and_reports_provider_errors() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    for bad in ["nowhere", "12345", "+1 415 555", ""] {
        call.handle_input(
            Input::Operator(OperatorCommand::Transfer {
                id: "op".into(),
                destination: bad.into(),
            }),
            t0,
        );
        let outs = drain(&mut call);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Event(CallEvent::Operator { result: Err(_), .. }))),
            "{bad:?} refused"
        );
        assert!(!outs.iter().any(|o| matches!(o, Output::Control(_))));
    }
    // A free-form E.164 number is the operator's call (no allow_pattern needed).
    call.handle_input(
        Input::Operator(OperatorCommand::Transfer {
            id: "op-2".into(),
            destination: "+14155550199".into(),
        }),
        t0,
    );
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::Transfer { target, .. }) if target == "+14155550199")));
    call.handle_input(
        Input::ActionDone {
            id: "op-2".into(),
            result: Err("HTTP 400".into()),
        },
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { result: Err(e), .. }) if e.contains("400"))));
    // The call goes on: a caller stop now is a hang-up, not a transfer.
    call.handle_input(Input::Caller(CallerEvent::Stop), t0);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::CallerHungUp))
    ));
}

#[test]
fn transfer_failure_is_spoken_back_and_unknown_numbers_are_refused() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(
        tool_call_with(
            "fc-1",
            "transfer_call",
            json!({"destination": "+15551234567"}),
        ),
        t0,
    );
    let r = tool_responses(&drain(&mut call));
    assert!(
        r[0].response["error"].as_str().unwrap().contains("billing"),
        "{r:?}"
    );
    call.handle_input(
        tool_call_with("fc-2", "transfer_call", json!({"destination": "billing"})),
        t0,
    );
    let (t, outs) = play_out(&mut call, t0);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::Transfer { .. }))));
    call.handle_input(
        Input::ActionDone {
            id: "fc-2".into(),
            result: Err("twilio answered http 400 (code 21220)".into()),
        },
        t,
    );
    let r = tool_responses(&drain(&mut call));
    assert_eq!(r.len(), 1);
    assert!(r[0].response["error"].as_str().unwrap().contains("21220"));
    // The call goes on: a stop now is a normal hang-up.
    call.handle_input(Input::Caller(CallerEvent::Stop), t);
    assert!(matches!(
        drain(&mut call).last(),
        Some(Output::End(CallEnd::CallerHungUp))
    ));
}

#[test]
fn free_form_numbers_need_the_allow_pattern() {
    let t0 = Instant::now();
    let mut call = live_with(
        settings_with(|c| c.transfer.allow_pattern = r"^\+1415\d{7}$".into()),
        t0,
    );
    call.handle_input(
        tool_call_with(
            "fc-1",
            "transfer_call",
            json!({"destination": "+14155559999"}),
        ),
        t0,
    );
    call.handle_input(
        tool_call_with(
            "fc-2",
            "transfer_call",
            json!({"destination": "+12125559999"}),
        ),
        t0,
    );
    let outs = drain(&mut call);
    let r = tool_responses(&outs);
    assert_eq!(
        r.len(),
        1,
        "the second is refused at once (another action is pending)"
    );
    // Nothing was playing, so the transfer runs at once.
    assert!(outs.iter().any(|o| matches!(o, Output::Control(CallAction::Transfer { target, .. }) if target == "+14155559999")));
}

#[test]
fn barge_in_during_the_hand_off_cancels_the_transfer() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
    call.handle_input(
        tool_call_with("fc-1", "transfer_call", json!({"destination": "billing"})),
        t0,
    );
    drain(&mut call);
    let t1 = t0 + Duration::from_millis(300);
    call.handle_input(Input::Tick, t1);
    call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
    let outs = drain(&mut call);
    let r = tool_responses(&outs);
    assert_eq!(r.len(), 1);
    assert!(r[0].response["error"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    let (_, outs) = play_out(&mut call, t1);
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::Transfer { .. }))));
    // A cancellation from the model instead withdraws it without a response.
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
    call.handle_input(
        tool_call_with("fc-2", "transfer_call", json!({"destination": "billing"})),
        t0,
    );
    call.handle_input(
        Input::Model(ModelEvent::ToolCallCancellation(vec!["fc-2".into()])),
        t1,
    );
    call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
    let (_, outs) = play_out(&mut call, t1);
    let mut all = drain(&mut call);
    all.extend(outs);
    assert!(tool_responses(&all).is_empty());
}

#[test]
fn send_dtmf_parks_the_call_and_the_continued_stream_resumes_it() {
    let t0 = Instant::now();
    let mut call = live_with(settings_with(|_| {}), t0);
    call.handle_input(
        tool_call_with("fc-1", "send_dtmf", json!({"digits": "bad!"})),
        t0,
    );
    assert!(tool_responses(&drain(&mut call))[0]
        .response
        .get("error")
        .is_some());
    call.handle_input(
        tool_call_with("fc-2", "send_dtmf", json!({"digits": "1W2#"})),
        t0,
    );
    let (t, outs) = play_out(&mut call, t0);
    let token = outs
        .iter()
        .find_map(|o| match o {
            Output::Control(CallAction::SendDtmf { digits, token, .. }) => {
                assert_eq!(digits, "1w2#");
                Some(token.clone())
            }
            _ => None,
        })
        .expect("dtmf action");
    call.handle_input(
        Input::ActionDone {
            id: "fc-2".into(),
            result: Ok(()),
        },
        t,
    );
    let r = tool_responses(&drain(&mut call));
    assert!(r[0].response.get("output").is_some());
    call.handle_input(Input::Caller(CallerEvent::Stop), t);
    let outs = drain(&mut call);
    assert!(matches!(outs.last(), Some(Output::Park { token: k }) if *k == token));
    assert!(!call.is_ended());
    // The continued stream.
    let mut start = match start_event() {
        CallerEvent::Start(s) => s,
        _ => unreachable!(),
    };
    start.stream_sid = "MZ99999999999999999999999999999999".into();
    call.handle_input(Input::Resumed(start), t);
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Continued { stream_sid }) if stream_sid.starts_with("MZ9"))));
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t);
    assert!(
        media_count(&drain(&mut call)) > 0,
        "audio flows on the new stream"
    );
    call.handle_input(Input::Caller(media(1)), t);
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))));
}
