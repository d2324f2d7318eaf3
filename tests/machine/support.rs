//! Shared set-up for the call-machine tests: a BLOCKING (2.5) configuration, canned caller
//! and model events, and helpers that drain and play out a call faster than real time.

pub use std::collections::BTreeMap;
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use serde_json::json;

pub use callbridge::call::event::{
    CallAction, CallEnd, CallEvent, CallerOut, Input, ModelOut, OperatorCommand, Output,
};
pub use callbridge::call::machine::{Call, FRAME_BYTES, HANDOVER_DRAIN_MAX};
pub use callbridge::call::settings::CallSettings;
pub use callbridge::config::{Config, TransferDestination};
pub use callbridge::gemini::wire::{FunctionCall, FunctionResponse, ModelEvent};
pub use callbridge::twilio::wire::{CallerEvent, MediaFrame, StreamStart};

/// These unit tests pin the BLOCKING tool semantics (Gemini 2.5); the NON_BLOCKING ones
/// (3.8, the default) are in tests/model_profiles.rs.
pub fn blocking_config() -> Config {
    let mut cfg = Config::default();
    cfg.gemini.model = "gemini-2.5-flash-native-audio-preview-12-2025".into();
    cfg
}

pub fn settings() -> Arc<CallSettings> {
    let mut s = CallSettings::from_config(&blocking_config());
    s.end_call_grace = Duration::from_secs(8);
    // These tests feed no media frames; the idle-stream limit has its own test.
    s.idle_stream = Duration::from_secs(3_600);
    Arc::new(s)
}

pub fn start_event() -> CallerEvent {
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

pub fn media(chunk: u64) -> CallerEvent {
    CallerEvent::Media(MediaFrame {
        chunk,
        timestamp_ms: 155 + 20 * chunk,
        track: "inbound".into(),
        payload: vec![0xFF; FRAME_BYTES],
    })
}

/// A caller frame loud enough to count as voice.
pub fn loud_media(chunk: u64) -> CallerEvent {
    CallerEvent::Media(MediaFrame {
        chunk,
        timestamp_ms: 155 + 20 * chunk,
        track: "inbound".into(),
        payload: (0..FRAME_BYTES)
            .map(|i| if i % 2 == 0 { 0x10 } else { 0x90 })
            .collect(),
    })
}

pub fn drain(call: &mut Call) -> Vec<Output> {
    std::iter::from_fn(|| call.poll_output()).collect()
}

/// A call that is live (setupComplete seen), with outputs drained.
pub fn live_call(t0: Instant) -> Call {
    let mut call = Call::new(settings(), t0).expect("pipeline");
    call.handle_input(Input::Caller(start_event()), t0);
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    drain(&mut call);
    call
}

/// 24 kHz PCM of a 440 Hz tone, `ms` long.
pub fn model_audio(ms: usize) -> Vec<u8> {
    let n = 24 * ms;
    (0..n)
        .flat_map(|i| {
            let s = (8000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 24000.0).sin()) as i16;
            s.to_le_bytes()
        })
        .collect()
}

pub fn media_count(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, Output::ToCaller(CallerOut::Media(_))))
        .count()
}

pub fn marks(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToCaller(CallerOut::Mark(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn tool_call(id: &str, name: &str) -> Input {
    Input::Model(ModelEvent::ToolCall(vec![FunctionCall {
        id: id.into(),
        name: name.into(),
        args: json!({}),
    }]))
}

pub fn tool_responses(outs: &[Output]) -> Vec<FunctionResponse> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToModel(ModelOut::ToolResponse(r)) => Some(r.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub fn settings_with(tweak: impl FnOnce(&mut Config)) -> Arc<CallSettings> {
    let mut cfg = blocking_config();
    cfg.transfer.destinations.insert(
        "billing".into(),
        TransferDestination {
            target: "+14155550100".into(),
            description: "Billing".into(),
            whisper: "A caller for billing".into(),
        },
    );
    cfg.limits.idle_stream_secs = 3_600;
    tweak(&mut cfg);
    Arc::new(CallSettings::from_config(&cfg))
}

pub fn live_with(settings: Arc<CallSettings>, t0: Instant) -> Call {
    let mut call = Call::new(settings, t0).expect("pipeline");
    call.handle_input(Input::Caller(start_event()), t0);
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    drain(&mut call);
    call
}

pub fn tool_call_with(id: &str, name: &str, args: serde_json::Value) -> Input {
    Input::Model(ModelEvent::ToolCall(vec![FunctionCall {
        id: id.into(),
        name: name.into(),
        args,
    }]))
}

/// Plays everything queued and echoes every mark as played.
pub fn play_out(call: &mut Call, mut t: Instant) -> (Instant, Vec<Output>) {
    let mut all = Vec::new();
    for _ in 0..600 {
        t += Duration::from_millis(20);
        call.handle_input(Input::Tick, t);
        let outs = drain(call);
        let ms = marks(&outs);
        all.extend(outs);
        for m in ms {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
            all.extend(drain(call));
        }
    }
    (t, all)
}

pub fn handle(h: &str) -> Input {
    Input::Model(ModelEvent::SessionResumptionUpdate {
        new_handle: Some(h.into()),
        resumable: true,
    })
}

pub fn setup_handle(o: &Output) -> Option<Option<&str>> {
    match o {
        Output::ToModel(ModelOut::Setup(p)) | Output::ToStandby(ModelOut::Setup(p)) => {
            Some(p.resume_handle.as_deref())
        }
        _ => None,
    }
}

pub fn closed(code: u16) -> Input {
    Input::ModelClosed {
        code,
        reason: String::new(),
    }
}
