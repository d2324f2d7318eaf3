//! The model profile table drives the setup, the config checks and the call machine: what
//! each supported Gemini Live model gets in its `setup` (tool `behavior`, thinking, affective
//! dialog, proactivity), which configurations fail before binding (naming the key), and how
//! the sans-IO machine treats NON_BLOCKING tools (SILENT call control, acting only after all
//! that the model said around the call was heard), background reasoning (`interactionStatus`),
//! odd turn ends (filler + retry), context notes per profile and a reply cut by a fault.
//! BLOCKING (2.5) machine behaviour is pinned by the tests in `tests/machine/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::call::event::{CallAction, CallEnd, CallEvent, CallerOut, Input, ModelOut, Output};
use callbridge::call::machine::{Call, FRAME_BYTES};
use callbridge::call::settings::CallSettings;
use callbridge::config::{Config, ToolScheduling, WebhookToolConfig};
use callbridge::gemini::setup::setup_message;
use callbridge::gemini::wire::{
    FunctionCall, FunctionResponse, InteractionStatus, ModelEvent, Scheduling,
};
use callbridge::twilio::wire::{CallerEvent, MediaFrame, StreamStart};
use serde_json::{json, Value};

const M38: &str = "gemini-3.8-live";
const M38X: &str = "gemini-3.8-live-extended-thinking";
const M31: &str = "gemini-3.1-flash-live-preview";
const M25: &str = "gemini-2.5-flash-native-audio-preview-12-2025";

fn config(model: &str) -> Config {
    let mut cfg = Config::default();
    cfg.gemini.model = model.into();
    // Webhook tools need a signing key to validate.
    cfg.tools.secret = callbridge::config::Secret::new("model-profiles-tools-secret");
    cfg.limits.idle_stream_secs = 3_600;
    cfg.limits.end_call_grace_ms = 8_000;
    cfg
}

fn webhook(name: &str, scheduling: ToolScheduling) -> WebhookToolConfig {
    WebhookToolConfig {
        name: name.into(),
        description: "Looks up an order".into(),
        parameters: None,
        url: "http://127.0.0.1:9/tool".into(),
        allow_insecure: true,
        timeout_ms: 1_000,
        scheduling,
    }
}

fn setup_json(cfg: &Config) -> Value {
    let s = CallSettings::from_config(cfg);
    serde_json::from_str(&setup_message(&s.setup)).expect("setup is JSON")
}

fn behaviors(setup: &Value) -> BTreeMap<String, String> {
    setup["setup"]["tools"][0]["functionDeclarations"]
        .as_array()
        .expect("declarations")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["behavior"].as_str().unwrap_or("<none>").to_string(),
            )
        })
        .collect()
}

fn start() -> CallerEvent {
    CallerEvent::Start(StreamStart {
        stream_sid: "MZ00112233445566778899aabbccddeeff".into(),
        call_sid: "CAfedcba9876543210fedcba9876543210".into(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        tracks: vec!["inbound".into()],
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
        custom_parameters: BTreeMap::new(),
    })
}

fn loud(chunk: u64) -> Input {
    Input::Caller(CallerEvent::Media(MediaFrame {
        chunk,
        timestamp_ms: 155 + 20 * chunk,
        track: "inbound".into(),
        payload: (0..FRAME_BYTES)
            .map(|i| if i % 2 == 0 { 0x10 } else { 0x90 })
            .collect(),
    }))
}

fn live(cfg: &Config, t0: Instant) -> Call {
    let mut call = Call::new(Arc::new(CallSettings::from_config(cfg)), t0).expect("pipeline");
    call.handle_input(Input::Caller(start()), t0);
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    drain(&mut call);
    call
}

fn drain(call: &mut Call) -> Vec<Output> {
    std::iter::from_fn(|| call.poll_output()).collect()
}

fn audio(ms: usize) -> Vec<u8> {
    (0..24 * ms)
        .flat_map(|i| {
            let s = (8000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 24000.0).sin()) as i16;
            s.to_le_bytes()
        })
        .collect()
}

fn model(call: &mut Call, ev: ModelEvent, t: Instant) -> Vec<Output> {
    call.handle_input(Input::Model(ev), t);
    drain(call)
}

fn tool(id: &str, name: &str, args: Value) -> ModelEvent {
    ModelEvent::ToolCall(vec![FunctionCall {
        id: id.into(),
        name: name.into(),
        args,
    }])
}

fn responses(outs: &[Output]) -> Vec<FunctionResponse> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::ToolResponse(r)) => Some(r.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn marks(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToCaller(CallerOut::Mark(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn frames(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, Output::ToCaller(CallerOut::Media(_))))
        .count()
}

fn hung_up(outs: &[Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. })))
}

/// Plays the queue out in real time, echoing every mark at once (the caller heard it).
/// Returns the time the last frame was played and the time of the hang-up, if any.
fn play(call: &mut Call, mut t: Instant, ms: u64) -> (Instant, Option<Instant>, Vec<Output>) {
    let end = t + Duration::from_millis(ms);
    let mut last_frame = t;
    let mut hang = None;
    let mut all = Vec::new();
    while t < end && hang.is_none() {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let mut outs = drain(call);
        for m in marks(&outs) {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
            outs.extend(drain(call));
        }
        if frames(&outs) > 0 {
            last_frame = t;
        }
        if hung_up(&outs) {
            hang = Some(t);
        }
        all.extend(outs);
    }
    (last_frame, hang, all)
}

// ---- setup per profile -------------------------------------------------------------------

#[test]
fn the_default_model_is_gemini_3_8_live_with_every_tool_non_blocking() {
    let mut cfg = Config::default();
    assert_eq!(cfg.gemini.model, M38);
    cfg.tools.send_dtmf = true;
    cfg.tools
        .webhooks
        .push(webhook("order_status", ToolScheduling::WhenIdle));
    let v = setup_json(&cfg);
    let b = behaviors(&v);
    assert_eq!(b.len(), 3, "{b:?}");
    assert!(b.values().all(|x| x == "NON_BLOCKING"), "{b:?}");
    let gc = &v["setup"]["generationConfig"];
    assert!(
        gc.get("thinkingConfig").is_none(),
        "3.8 refuses thinkingConfig"
    );
    assert!(gc.get("enableAffectiveDialog").is_none());
    assert!(
        v["setup"].get("proactivity").is_none(),
        "false is an error on 3.8"
    );
}

#[test]
fn gemini_2_5_keeps_blocking_tools_and_turns_dynamic_thinking_off() {
    let mut cfg = config(M25);
    cfg.tools
        .webhooks
        .push(webhook("order_status", ToolScheduling::WhenIdle));
    let v = setup_json(&cfg);
    assert!(behaviors(&v).values().all(|x| x == "BLOCKING"));
    assert_eq!(
        v["setup"]["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 0})
    );
    cfg.gemini.thinking = callbridge::config::ThinkingMode::Budget;
    cfg.gemini.thinking_budget = 512;
    cfg.gemini.affective_dialog = true;
    cfg.gemini.proactive_audio = true;
    cfg.validate()
        .expect("2.5 takes a budget, affective dialog, proactivity");
    let v = setup_json(&cfg);
    assert_eq!(
        v["setup"]["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 512})
    );
    assert_eq!(
        v["setup"]["generationConfig"]["enableAffectiveDialog"],
        true
    );
    assert_eq!(v["setup"]["proactivity"], json!({"proactiveAudio": true}));
}

#[test]
fn extended_thinking_always_sends_a_thinking_level_and_3_1_only_when_asked() {
    let v = setup_json(&config(M38X));
    assert_eq!(
        v["setup"]["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "MINIMAL"})
    );
    let mut cfg = config(M38X);
    cfg.gemini.thinking = callbridge::config::ThinkingMode::Level;
    cfg.gemini.thinking_level = callbridge::config::ThinkingLevel::High;
    assert_eq!(
        setup_json(&cfg)["setup"]["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "HIGH"})
    );
    let v = setup_json(&config(M31));
    assert!(v["setup"]["generationConfig"]
        .get("thinkingConfig")
        .is_none());
    assert!(
        behaviors(&v).values().all(|x| x == "BLOCKING"),
        "3.1: sync tools only"
    );
}

#[test]
fn vertex_sends_the_full_model_path() {
    let mut cfg = config("gemini-live-2.5-flash-native-audio");
    cfg.gemini.backend = callbridge::config::Backend::Vertex;
    cfg.gemini.project = "acme-voice".into();
    cfg.gemini.location = "us-central1".into();
    cfg.validate().expect("valid vertex config");
    assert_eq!(
        setup_json(&cfg)["setup"]["model"],
        "projects/acme-voice/locations/us-central1/publishers/google/models/gemini-live-2.5-flash-native-audio"
    );
}

// ---- config checks -----------------------------------------------------------------------

fn refused_key(cfg: &Config) -> String {
    match cfg.validate() {
        Err(callbridge::config::ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn configurations_a_profile_refuses_fail_naming_the_key() {
    use callbridge::config::{Backend, ThinkingMode};
    let with = |model: &str, f: &dyn Fn(&mut Config)| {
        let mut c = config(model);
        f(&mut c);
        refused_key(&c)
    };
    assert_eq!(
        with(M38, &|c| c.gemini.thinking = ThinkingMode::Budget),
        "gemini.thinking"
    );
    assert_eq!(
        with(M38, &|c| c.gemini.thinking = ThinkingMode::Level),
        "gemini.thinking"
    );
    assert_eq!(
        with(M38, &|c| c.gemini.affective_dialog = true),
        "gemini.affective_dialog"
    );
    assert_eq!(
        with(M31, &|c| c.gemini.proactive_audio = true),
        "gemini.proactive_audio"
    );
    assert_eq!(
        with(M31, &|c| c.gemini.thinking = ThinkingMode::Budget),
        "gemini.thinking"
    );
    assert_eq!(
        with(M25, &|c| c.gemini.thinking = ThinkingMode::Level),
        "gemini.thinking"
    );
    assert_eq!(
        with(M38X, &|c| c.gemini.thinking = ThinkingMode::Off),
        "gemini.thinking"
    );
    assert_eq!(
        with(M38X, &|c| c
            .tools
            .webhooks
            .push(webhook("slow", ToolScheduling::Blocking))),
        "tools.webhooks[0].scheduling"
    );
    assert_eq!(
        with(M38, &|c| c.gemini.profile = "gemini-9".into()),
        "gemini.profile"
    );
    assert_eq!(
        with(M38, &|c| c.gemini.backend = Backend::Vertex),
        "gemini.project"
    );
    assert_eq!(
        with("gemini-live-2.5-flash-native-audio", &|_| {}),
        "gemini.model"
    );
    assert_eq!(
        with(M38, &|c| c.gemini.auth = "ephemeral_token".into()),
        "gemini.auth"
    );
    // Allowed: 3.8 with proactive audio on (always on: nothing is sent), an unknown id.
    config(M38).validate().expect("default");
    let mut c = config("gemini-4-live");
    c.gemini.proactive_audio = true;
    c.validate()
        .expect("unknown ids fall back to the 3.8 profile");
    c.gemini.profile = "gemini-2.5-flash-native-audio".into();
    c.gemini.thinking = ThinkingMode::Budget;
    c.validate().expect("a pinned 2.5 profile takes a budget");
}

#[test]
fn cost_defaults_follow_the_configured_model() {
    let dir = std::env::temp_dir().join(format!("cb-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, format!("[gemini]\nmodel = \"{M25}\"\n")).unwrap();
    let cfg = Config::load(Some(&path), &|_| None).unwrap();
    assert_eq!(
        (cfg.pricing.input_text, cfg.pricing.output_text),
        (0.50, 2.00)
    );
    std::fs::write(
        &path,
        format!("[gemini]\nmodel = \"{M25}\"\n[pricing]\noutput_text = 9.0\n"),
    )
    .unwrap();
    let cfg = Config::load(Some(&path), &|_| None).unwrap();
    assert_eq!(cfg.pricing.output_text, 9.0, "an explicit [pricing] wins");
    assert_eq!(
        Config::load(None, &|_| None).unwrap().pricing.output_text,
        4.50
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- NON_BLOCKING tools in the machine ------------------------------------------------------

#[test]
fn end_call_on_3_8_is_silent_and_hangs_up_after_the_goodbye_it_kept_speaking() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    // The model calls end_call at the start of its goodbye and keeps talking.
    model(&mut call, ModelEvent::Audio(audio(200)), t0);
    let outs = model(&mut call, tool("fc-1", "end_call", json!({})), t0);
    let r = responses(&outs);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].scheduling, Some(Scheduling::Silent));
    assert_eq!(
        serde_json::to_value(&r[0]).unwrap()["scheduling"],
        "SILENT",
        "on the wire"
    );
    for _ in 0..19 {
        model(&mut call, ModelEvent::Audio(audio(200)), t0);
    }
    model(&mut call, ModelEvent::GenerationComplete, t0);
    model(&mut call, ModelEvent::TurnComplete, t0);
    let (last_frame, hang, _) = play(&mut call, t0, 12_000);
    let hang = hang.expect("hung up");
    assert!(
        last_frame >= t0 + Duration::from_millis(3_800),
        "4 s goodbye played"
    );
    assert!(
        hang.duration_since(last_frame) <= Duration::from_millis(1_000),
        "hang-up {:?} after the last frame",
        hang.duration_since(last_frame)
    );
}

#[test]
fn end_call_after_the_turn_ended_hangs_up_once_heard_without_waiting_for_another_turn() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    model(&mut call, ModelEvent::Audio(audio(1_000)), t0);
    model(&mut call, ModelEvent::TurnComplete, t0);
    model(&mut call, tool("fc-1", "end_call", json!({})), t0);
    let (last_frame, hang, _) = play(&mut call, t0, 12_000);
    let hang = hang.expect("hung up well before the 8 s grace");
    assert!(hang < t0 + Duration::from_millis(2_500), "{:?}", hang - t0);
    assert!(hang >= last_frame);
}

#[test]
fn transfer_on_3_8_waits_for_what_the_model_says_after_the_call() {
    let t0 = Instant::now();
    let mut cfg = config(M38);
    cfg.transfer.destinations.insert(
        "billing".into(),
        callbridge::config::TransferDestination {
            target: "+14155550100".into(),
            description: "Billing".into(),
            whisper: String::new(),
        },
    );
    let mut call = live(&cfg, t0);
    model(
        &mut call,
        tool("fc-7", "transfer_call", json!({"destination": "billing"})),
        t0,
    );
    // The hand-off sentence comes after the call on a NON_BLOCKING model.
    for _ in 0..10 {
        model(&mut call, ModelEvent::Audio(audio(200)), t0);
    }
    model(&mut call, ModelEvent::TurnComplete, t0);
    let mut t = t0;
    let mut transfer_at = None;
    let mut last_frame = t0;
    while t < t0 + Duration::from_secs(6) && transfer_at.is_none() {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let mut outs = drain(&mut call);
        for m in marks(&outs) {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
            outs.extend(drain(&mut call));
        }
        if frames(&outs) > 0 {
            last_frame = t;
        }
        if outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::Transfer { .. })))
        {
            transfer_at = Some(t);
        }
    }
    let at = transfer_at.expect("transferred");
    assert!(
        last_frame >= t0 + Duration::from_millis(1_800),
        "sentence played"
    );
    assert!(at >= last_frame && at - last_frame <= Duration::from_secs(1));
    call.handle_input(
        Input::ActionDone {
            id: "fc-7".into(),
            result: Err("busy".into()),
        },
        at,
    );
    let r = responses(&drain(&mut call));
    assert_eq!(
        r[0].scheduling,
        Some(Scheduling::WhenIdle),
        "a failure is spoken about"
    );
}

#[test]
fn webhook_results_carry_the_configured_scheduling() {
    let t0 = Instant::now();
    let mut cfg = config(M38);
    cfg.tools
        .webhooks
        .push(webhook("lookup", ToolScheduling::WhenIdle));
    cfg.tools
        .webhooks
        .push(webhook("note", ToolScheduling::Silent));
    cfg.tools
        .webhooks
        .push(webhook("urgent", ToolScheduling::Interrupt));
    cfg.tools
        .webhooks
        .push(webhook("wait", ToolScheduling::Blocking));
    let mut call = live(&cfg, t0);
    let mut got = BTreeMap::new();
    for (i, name) in ["lookup", "note", "urgent", "wait", "never_declared"]
        .iter()
        .enumerate()
    {
        let id = format!("fc-{i}");
        let outs = model(&mut call, tool(&id, name, json!({})), t0);
        let mut r = responses(&outs);
        if r.is_empty() {
            call.handle_input(
                Input::ToolDone {
                    id: id.clone(),
                    result: Ok(json!({"ok": true})),
                },
                t0,
            );
            r = responses(&drain(&mut call));
        }
        got.insert(name.to_string(), r[0].scheduling);
    }
    assert_eq!(got["lookup"], Some(Scheduling::WhenIdle));
    assert_eq!(got["note"], Some(Scheduling::Silent));
    assert_eq!(got["urgent"], Some(Scheduling::Interrupt));
    assert_eq!(got["wait"], None, "BLOCKING: no scheduling");
    assert_eq!(got["never_declared"], Some(Scheduling::WhenIdle));
    // On 2.5 every tool is BLOCKING: no scheduling at all.
    let mut cfg = config(M25);
    cfg.tools
        .webhooks
        .push(webhook("lookup", ToolScheduling::WhenIdle));
    let mut call = live(&cfg, t0);
    let r = responses(&model(&mut call, tool("x", "end_call", json!({})), t0));
    assert_eq!(r[0].scheduling, None);
}

// ---- extended thinking -------------------------------------------------------------------

#[test]
fn no_hang_up_while_the_model_is_still_in_progress() {
    let t0 = Instant::now();
    let mut call = live(&config(M38X), t0);
    model(&mut call, tool("fc-1", "end_call", json!({})), t0);
    model(&mut call, ModelEvent::Audio(audio(500)), t0);
    model(
        &mut call,
        ModelEvent::InteractionStatus(InteractionStatus::InProgress),
        t0,
    );
    model(&mut call, ModelEvent::TurnComplete, t0);
    let (_, hang, _) = play(&mut call, t0, 3_000);
    assert!(hang.is_none(), "IN_PROGRESS: the model is not done");
    let t1 = t0 + Duration::from_millis(3_000);
    model(&mut call, ModelEvent::Audio(audio(300)), t1);
    model(
        &mut call,
        ModelEvent::InteractionStatus(InteractionStatus::Idle),
        t1,
    );
    model(&mut call, ModelEvent::TurnComplete, t1);
    let (_, hang, _) = play(&mut call, t1, 3_000);
    assert!(hang.is_some(), "hung up once IDLE and heard");
}

#[test]
fn an_unknown_interaction_status_is_logged_and_the_call_goes_on() {
    let t0 = Instant::now();
    let mut call = live(&config(M38X), t0);
    model(
        &mut call,
        ModelEvent::InteractionStatus(InteractionStatus::Other("PONDERING".into())),
        t0,
    );
    let mut outs = model(&mut call, ModelEvent::Audio(audio(200)), t0);
    outs.extend(model(&mut call, ModelEvent::TurnComplete, t0));
    outs.extend(play(&mut call, t0, 500).2);
    assert!(frames(&outs) >= 10, "{}", frames(&outs));
    assert!(!call.is_ended());
}

// ---- odd turn ends -----------------------------------------------------------------------

fn caller_speaks(call: &mut Call, t0: Instant) -> Instant {
    let mut t = t0;
    for i in 0..25 {
        t += Duration::from_millis(20);
        call.handle_input(loud(i), t);
    }
    drain(call);
    t
}

fn odd(outs: &[Output]) -> Vec<&'static str> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(CallEvent::OddTurnEnd { reason }) => Some(*reason),
            _ => None,
        })
        .collect()
}

fn retry_asked(outs: &[Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, Output::ToModel(ModelOut::Text(t)) if t.contains("did not reach")))
}

#[test]
fn an_empty_reply_after_the_caller_spoke_plays_the_filler_within_a_second_and_retries() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    let t = caller_speaks(&mut call, t0);
    let outs = model(&mut call, ModelEvent::TurnComplete, t);
    assert_eq!(odd(&outs), ["empty_reply"]);
    assert!(retry_asked(&outs));
    let (_, _, played) = play(&mut call, t, 1_000);
    assert!(
        frames(&played) >= 25,
        "filler heard within 1 s: {}",
        frames(&played)
    );
    // A second empty turn for the same utterance is counted but not retried again.
    let outs = model(
        &mut call,
        ModelEvent::TurnComplete,
        t + Duration::from_secs(1),
    );
    assert!(!retry_asked(&outs));
}

#[test]
fn a_refused_turn_is_recovered_but_deliberate_silence_is_not() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    let t = caller_speaks(&mut call, t0);
    model(
        &mut call,
        ModelEvent::TurnCompleteReason("RESPONSE_REJECTED".into()),
        t,
    );
    let outs = model(&mut call, ModelEvent::TurnComplete, t);
    assert_eq!(odd(&outs), ["response_rejected"]);
    let mut call = live(&config(M38), t0);
    let t = caller_speaks(&mut call, t0);
    model(&mut call, ModelEvent::WaitingForInput, t);
    let outs = model(&mut call, ModelEvent::TurnComplete, t);
    assert!(odd(&outs).is_empty(), "waitingForInput is deliberate");
    model(
        &mut call,
        ModelEvent::TurnCompleteReason("NEED_MORE_INPUT".into()),
        t,
    );
    let outs = model(&mut call, ModelEvent::TurnComplete, t);
    assert!(odd(&outs).is_empty());
}

// ---- context notes and cut replies ----------------------------------------------------------

fn barge_in_note(model_id: &str) -> Option<ModelOut> {
    let t0 = Instant::now();
    let mut cfg = config(model_id);
    cfg.gemini.tell_model_what_was_heard = true;
    let mut call = live(&cfg, t0);
    model(
        &mut call,
        ModelEvent::OutputTranscription("Your order shipped on Monday from Denver".into()),
        t0,
    );
    for _ in 0..20 {
        model(&mut call, ModelEvent::Audio(audio(100)), t0);
    }
    let (_, _, _) = play(&mut call, t0, 400);
    let outs = model(
        &mut call,
        ModelEvent::Interrupted,
        t0 + Duration::from_millis(400),
    );
    outs.into_iter().find_map(|o| match o {
        Output::ToModel(m @ (ModelOut::Context(_) | ModelOut::Text(_))) => Some(m),
        _ => None,
    })
}

#[test]
fn what_the_caller_heard_is_told_in_the_form_each_profile_accepts() {
    match barge_in_note(M38) {
        Some(ModelOut::Context(turns)) => assert!(turns[0].text.contains("interrupted")),
        other => panic!("3.8: clientContent without turnComplete, got {other:?}"),
    }
    match barge_in_note(M25) {
        Some(ModelOut::Text(t)) => assert!(t.contains("interrupted")),
        other => panic!("2.5: realtimeInput.text, got {other:?}"),
    }
}

#[test]
fn a_reply_cut_by_a_fault_is_finished_on_the_resumed_session() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    model(
        &mut call,
        ModelEvent::SessionResumptionUpdate {
            new_handle: Some("h-1".into()),
            resumable: true,
        },
        t0,
    );
    model(
        &mut call,
        ModelEvent::OutputTranscription("Sure. Your order shipped on".into()),
        t0,
    );
    model(&mut call, ModelEvent::Audio(audio(2_000)), t0);
    call.handle_input(
        Input::ModelClosed {
            code: 1011,
            reason: "Internal error encountered.".into(),
        },
        t0,
    );
    let outs = drain(&mut call);
    assert!(outs.iter().any(|o| matches!(o, Output::ConnectModel)));
    call.handle_input(Input::ModelConnected, t0);
    let outs = drain(&mut call);
    assert!(outs.iter().any(
        |o| matches!(o, Output::ToModel(ModelOut::Setup(s)) if s.resume_handle.as_deref() == Some("h-1"))
    ));
    let outs = model(
        &mut call,
        ModelEvent::SetupComplete,
        t0 + Duration::from_millis(6),
    );
    let prompt = outs
        .iter()
        .find_map(|o| match o {
            Output::ToModel(ModelOut::ClientContent(t)) => Some(t[0].text.clone()),
            _ => None,
        })
        .expect("asked to finish the reply");
    assert!(prompt.contains("Your order shipped on"), "{prompt}");
    // What was generated before the fault is still played (no silence while reconnecting).
    let (last, _, _) = play(&mut call, t0, 1_500);
    assert!(last >= t0 + Duration::from_millis(1_400));
    assert!(!matches!(
        call.poll_output(),
        Some(Output::End(CallEnd::ModelLost(_)))
    ));
}

#[test]
fn a_late_continuation_is_bridged_by_the_filler_so_the_caller_never_waits_a_second() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    model(
        &mut call,
        ModelEvent::SessionResumptionUpdate {
            new_handle: Some("h-1".into()),
            resumable: true,
        },
        t0,
    );
    let mut outs = model(&mut call, ModelEvent::Audio(audio(300)), t0);
    call.handle_input(
        Input::ModelClosed {
            code: 1011,
            reason: String::new(),
        },
        t0,
    );
    call.handle_input(Input::ModelConnected, t0);
    outs.extend(drain(&mut call));
    outs.extend(model(&mut call, ModelEvent::SetupComplete, t0));
    // The model is slow to continue: nothing arrives for 2 s.
    let mut t = t0;
    let mut last_frame = t0;
    let mut longest_gap = Duration::ZERO;
    while t < t0 + Duration::from_secs(2) {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let outs = drain(&mut call);
        for m in marks(&outs) {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
        }
        if frames(&outs) > 0 {
            longest_gap = longest_gap.max(t - last_frame);
            last_frame = t;
        }
    }
    assert!(
        last_frame > t0 + Duration::from_millis(600),
        "filler played"
    );
    assert!(longest_gap <= Duration::from_secs(1), "gap {longest_gap:?}");
}

// ---- bad input ------------------------------------------------------------------------------

#[test]
fn an_unknown_scheduling_value_in_the_config_is_refused_naming_it() {
    let text = r#"
[[tools.webhooks]]
name = "lookup"
description = "Look up an order"
url = "https://ops.example.com/lookup"
scheduling = "later"
"#;
    let err = Config::from_toml(text, "t.toml").expect_err("unknown variant");
    let msg = err.to_string();
    assert!(msg.contains("later") && msg.contains("when_idle"), "{msg}");
}

#[test]
fn a_multi_part_event_with_audio_transcript_and_a_tool_call_is_handled_in_order() {
    use base64::Engine as _;
    let pcm = audio(100);
    let frame = json!({
        "serverContent": {
            "modelTurn": {"parts": [{"inlineData": {
                "mimeType": "audio/pcm;rate=24000",
                "data": base64::engine::general_purpose::STANDARD.encode(&pcm)
            }}]},
            "outputTranscription": {"text": "Goodbye"},
            "interactionStatus": "IDLE"
        },
        "toolCall": {"functionCalls": [{"id": "fc-9", "name": "end_call", "args": {}}]}
    })
    .to_string();
    let events = callbridge::gemini::wire::decompose(frame.as_bytes()).expect("decodes");
    assert!(matches!(events[0], ModelEvent::Audio(_)));
    assert!(matches!(&events[1], ModelEvent::OutputTranscription(t) if t == "Goodbye"));
    assert!(matches!(
        events[2],
        ModelEvent::InteractionStatus(InteractionStatus::Idle)
    ));
    assert!(matches!(&events[3], ModelEvent::ToolCall(c) if c[0].name == "end_call"));
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    let mut outs = Vec::new();
    for ev in events {
        outs.extend(model(&mut call, ev, t0));
    }
    assert_eq!(responses(&outs).len(), 1, "the tool call is answered");
    assert!(frames(&outs) > 0, "the audio is played");
    outs.extend(model(&mut call, ModelEvent::TurnComplete, t0));
    // The caller's phone echoes the marks of what it played.
    for m in marks(&outs) {
        call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t0);
    }
    let (_, hang, _) = play(&mut call, t0, 3_000);
    assert!(hang.is_some(), "and the call ends after the goodbye");
}

#[test]
fn a_tool_call_for_an_undeclared_tool_gets_an_error_and_the_call_goes_on() {
    let t0 = Instant::now();
    let mut call = live(&config(M38), t0);
    let outs = model(&mut call, tool("fc-1", "launch_rockets", json!({})), t0);
    let r = responses(&outs);
    assert!(r[0].response["error"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
    model(&mut call, ModelEvent::Audio(audio(200)), t0);
    assert!(!call.is_ended());
}

#[test]
fn thinking_tokens_are_counted_and_priced_as_output_text() {
    use callbridge::gemini::wire::UsageMetadata;
    use callbridge::ops::journal::TokenUsage;
    let mut usage = TokenUsage::default();
    let added = usage.add(&UsageMetadata {
        prompt_token_count: 100,
        response_token_count: 50,
        total_token_count: 286,
        prompt_details: vec![("AUDIO".into(), 100)],
        response_details: vec![("AUDIO".into(), 50)],
        thoughts_token_count: 136,
    });
    assert!(added.contains(&("response", "THOUGHTS".to_string(), 136)));
    let cfg = config(M38X);
    let p = &cfg.pricing;
    let want = (100.0 * p.input_audio + 50.0 * p.output_audio + 136.0 * p.output_text) / 1e6;
    assert!(
        (usage.cost_usd(p) - want).abs() < 1e-12,
        "{}",
        usage.cost_usd(p)
    );
}
