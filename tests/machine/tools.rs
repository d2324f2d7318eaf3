//! Tool calls: `end_call`, the exactly-one-response rule, declarations and operator webhook tools.

use crate::support::*;

#[test]
fn end_call_hangs_up_only_after_the_goodbye_is_heard() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(tool_call("fc-1", "end_call"), t0);
    let outs = drain(&mut call);
    let r = tool_responses(&outs);
    assert_eq!(r.len(), 1);
    assert!(r[0].response.get("output").is_some());
    call.handle_input(Input::Model(ModelEvent::Audio(model_audio(300))), t0);
    call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
    let mut t = t0;
    let mut sent_marks = Vec::new();
    for _ in 0..30 {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let outs = drain(&mut call);
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Control(_))),
            "no hang-up before the goodbye is heard"
        );
        sent_marks.extend(marks(&outs));
    }
    // Marks returned by clear would not count; echo the played ones in order.
    let last = sent_marks.last().cloned().expect("final mark");
    assert!(last.ends_with("-end"));
    for m in &sent_marks[..sent_marks.len() - 1] {
        call.handle_input(Input::Caller(CallerEvent::Mark { name: m.clone() }), t);
    }
    assert!(!drain(&mut call)
        .iter()
        .any(|o| matches!(o, Output::Control(_))));
    call.handle_input(Input::Caller(CallerEvent::Mark { name: last }), t);
    let outs = drain(&mut call);
    assert!(
        matches!(&outs[outs.len() - 3], Output::Control(CallAction::HangUp { call_sid }) if call_sid.starts_with("CA"))
    );
    assert!(matches!(
        outs.last(),
        Some(Output::End(CallEnd::AgentHungUp))
    ));
    call.handle_input(Input::Caller(CallerEvent::Stop), t);
    assert!(drain(&mut call).is_empty(), "nothing after End");
}

#[test]
fn end_call_wait_is_bounded_when_the_model_keeps_talking() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(tool_call("fc-1", "end_call"), t0);
    let mut t = t0;
    let mut hung_up_at = None;
    while t < t0 + Duration::from_secs(12) {
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(20))), t);
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        if drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. })))
        {
            hung_up_at = Some(t);
            break;
        }
    }
    let at = hung_up_at.expect("hung up");
    assert_eq!(at.duration_since(t0).as_millis() / 20 * 20, 8000);
}

#[test]
fn every_tool_call_gets_exactly_one_response() {
    let t0 = Instant::now();
    let mut call = live_call(t0);
    call.handle_input(tool_call("fc-9", "lookup_order"), t0);
    call.handle_input(tool_call("fc-9", "lookup_order"), t0);
    call.handle_input(tool_call("fc-10", "transfer_call"), t0);
    let r = tool_responses(&drain(&mut call));
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].id, "fc-9");
    assert!(r[0].response["error"]
        .as_str()
        .unwrap()
        .contains("lookup_order"));
    assert_eq!(r[1].id, "fc-10");
    assert!(r[1].response.get("error").is_some());
}

#[test]
fn declares_transfer_and_dtmf_tools_from_config() {
    let s = settings_with(|_| {});
    let names: Vec<&str> = s.setup.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["end_call", "transfer_call", "send_dtmf"]);
    let t = &s.setup.tools[1];
    assert!(t.description.contains("'billing': Billing"));
    assert_eq!(
        t.parameters.as_ref().unwrap()["properties"]["destination"]["enum"],
        json!(["billing"])
    );
    let none = Arc::new(CallSettings::from_config(&blocking_config()));
    assert!(!none.setup.tools.iter().any(|t| t.name == "transfer_call"));
}

#[test]
fn webhook_tools_run_and_cancel() {
    let t0 = Instant::now();
    let mut call = live_with(
        settings_with(|c| {
            c.tools
                .webhooks
                .push(callbridge::config::WebhookToolConfig {
                    scheduling: Default::default(),
                    name: "lookup_order".into(),
                    description: "Look up an order".into(),
                    parameters: None,
                    url: "http://127.0.0.1:1/x".into(),
                    allow_insecure: true,
                    timeout_ms: 1000,
                })
        }),
        t0,
    );
    call.handle_input(tool_call_with("fc-1", "lookup_order", json!({"n": 1})), t0);
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::Control(CallAction::RunTool { id, name, .. }) if id == "fc-1" && name == "lookup_order")));
    assert!(tool_responses(&outs).is_empty());
    call.handle_input(
        Input::ToolDone {
            id: "fc-1".into(),
            result: Ok(json!({"status": "shipped"})),
        },
        t0,
    );
    let r = tool_responses(&drain(&mut call));
    assert_eq!(r[0].response, json!({"output": {"status": "shipped"}}));
    call.handle_input(tool_call_with("fc-2", "lookup_order", json!({})), t0);
    drain(&mut call);
    call.handle_input(
        Input::Model(ModelEvent::ToolCallCancellation(vec!["fc-2".into()])),
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Control(CallAction::CancelTool { id }) if id == "fc-2")));
    call.handle_input(
        Input::ToolDone {
            id: "fc-2".into(),
            result: Ok(json!({})),
        },
        t0,
    );
    assert!(
        tool_responses(&drain(&mut call)).is_empty(),
        "no response after cancellation"
    );
}
