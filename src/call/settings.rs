//! Per-call settings, derived once from the configuration, and the built-in tool declarations
//! the model is given. Pure data: nothing here does IO or keeps per-call state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, TransferDestination};
use crate::gemini::profile::{ModelProfile, ProactivityRule, ThinkingRule, ToolBehavior};
use crate::gemini::setup::{
    ActivityDetection, ContextCompression, FunctionDeclaration, SetupParams, Thinking,
};
use crate::gemini::wire::Scheduling;

/// Per-call settings, derived once from [`Config`] and shared by all calls.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// What the configured model does and accepts.
    pub profile: &'static ModelProfile,
    /// The `setup` the model session is opened with (tools included).
    pub setup: SetupParams,
    /// Call-control tools (`end_call`, `transfer_call`, `send_dtmf`) are NON_BLOCKING: the model
    /// keeps talking around the call, successes are answered `SILENT`.
    pub call_control_async: bool,
    /// Operator webhook tools: the scheduling their results carry (None: declared BLOCKING).
    pub webhook_scheduling: HashMap<String, Option<Scheduling>>,
    /// Text sent as a user turn right after `setupComplete` to make the agent speak first.
    pub greeting: Option<String>,
    /// Most audio queued ahead of real time at the caller's side.
    pub playout_lead: Duration,
    /// How far the lead may fall below `playout_lead` before it is topped up.
    pub playout_refill: Duration,
    /// A mark every this many frames of a turn.
    pub mark_interval_frames: u32,
    /// Caller audio kept (in frames) until the model session is ready.
    pub preconnect_frames: usize,
    /// Time allowed for Twilio's `start` after the upgrade.
    pub start_timeout: Duration,
    /// Longest wait for one write to the caller's socket (the driver ends a call whose peer
    /// stopped reading as [`CallEnd::CallerUnresponsive`]).
    pub caller_write_timeout: Duration,
    /// Time allowed from asking for a model connection to `setupComplete`.
    pub setup_timeout: Duration,
    /// Longest call.
    pub max_call: Duration,
    /// Idle time after the last key press before digits go to the model.
    pub dtmf_idle: Duration,
    /// Longest wait for the agent's last words to be heard after `end_call`,
    /// `transfer_call` or `send_dtmf`.
    pub end_call_grace: Duration,
    /// Named transfer destinations.
    pub transfer_destinations: BTreeMap<String, TransferDestination>,
    /// Free-form numbers the model may transfer to.
    pub transfer_allow: Option<regex::Regex>,
    /// Whether `send_dtmf` is declared.
    pub send_dtmf: bool,
    /// Operator webhook tools by name.
    pub webhook_tools: HashSet<String>,
    /// Caller silence after which the agent is asked to check in and wrap up.
    pub silence_timeout: Option<Duration>,
    /// After a wrap-up request, the call ends at the latest this much later.
    pub wrap_up_grace: Duration,
    /// After a barge-in, tell the model what the caller actually heard.
    pub tell_model_what_was_heard: bool,
    /// Reconnection attempts after a lost model connection.
    pub max_reconnects: u32,
    /// First reconnection backoff (doubles per attempt).
    pub reconnect_backoff: Duration,
    /// Play the filler when a recovery takes longer than this.
    pub filler_after: Option<Duration>,
    /// The filler, 8 kHz μ-law.
    pub filler: std::sync::Arc<[u8]>,
    /// Transcript characters kept for seeding a fresh session.
    pub history_chars: usize,
    /// Most model sessions per call.
    pub max_sessions: u32,
    /// goAway handover opens the new connection while the old one closes (its `setup` still
    /// waits for the old connection's close, see [`HANDOVER_DRAIN_MAX`]).
    pub handover_overlap: bool,
    /// No caller media for this long ends the stream.
    pub idle_stream: Duration,
    /// On shutdown, live calls continue this long before ending politely.
    pub shutdown_grace: Duration,
}

/// "One moment, please." — played while a lost model connection is recovered.
fn bundled_filler() -> std::sync::Arc<[u8]> {
    crate::audio::wav::read_wav(include_bytes!("../../assets/filler_one_moment.mulaw8k.wav"))
        .ok()
        .and_then(|w| w.to_ulaw())
        .unwrap_or_default()
        .into()
}

impl CallSettings {
    /// Derives the settings (and the tool declarations) from the configuration.
    pub fn from_config(cfg: &Config) -> CallSettings {
        let g = &cfg.gemini;
        let profile = cfg.model_profile().0;
        let control_behavior = profile.async_tool_behavior();
        let call_control_async = control_behavior == ToolBehavior::NonBlocking;
        let control = Some(control_behavior.as_str().to_string());
        let mut tools = vec![FunctionDeclaration {
            name: "end_call".into(),
            description:
                "Hang up the phone call. Call this after you have said goodbye to the caller; \
                the call ends once the caller has heard your last words."
                    .into(),
            parameters: Some(json!({
                "type": "OBJECT",
                "properties": {"reason": {"type": "STRING", "description": "Why the call is ending."}}
            })),
            behavior: control.clone(),
        }];
        let destinations: Vec<String> = cfg.transfer.destinations.keys().cloned().collect();
        let transfer_allow = (!cfg.transfer.allow_pattern.is_empty())
            .then(|| crate::config::TransferConfig::compile_allow(&cfg.transfer.allow_pattern).ok())
            .flatten();
        if !destinations.is_empty() || transfer_allow.is_some() {
            let listing = cfg
                .transfer
                .destinations
                .iter()
                .map(|(name, d)| format!("'{name}': {}", d.description))
                .collect::<Vec<_>>()
                .join("; ");
            let mut destination = json!({
                "type": "STRING",
                "description": "Name of the destination."
            });
            let mut description = format!(
                "Transfer the caller to a person or department. First tell the caller you are \
                 transferring them; the transfer happens once they have heard you. \
                 Destinations: {listing}."
            );
            if transfer_allow.is_some() {
                description
                    .push_str(" You may also pass a phone number in E.164 form (+15551234567).");
                destination["description"] =
                    json!("Name of the destination, or an E.164 phone number.");
            } else {
                destination["enum"] = json!(destinations);
            }
            tools.push(FunctionDeclaration {
                name: "transfer_call".into(),
                description,
                parameters: Some(json!({
                    "type": "OBJECT",
                    "properties": {"destination": destination},
                    "required": ["destination"]
                })),
                behavior: control.clone(),
            });
        }
        if cfg.tools.send_dtmf {
            tools.push(FunctionDeclaration {
                name: "send_dtmf".into(),
                description: "Press keys on the phone keypad, e.g. to navigate a phone menu. \
                    Digits 0-9, * and #; w inserts a half-second pause. The conversation \
                    continues after the keys are sent."
                    .into(),
                parameters: Some(json!({
                    "type": "OBJECT",
                    "properties": {"digits": {
                        "type": "STRING",
                        "description": "Keys to press, e.g. \"1\" or \"ww123#\"."
                    }},
                    "required": ["digits"]
                })),
                behavior: control.clone(),
            });
        }
        let mut webhook_scheduling = HashMap::new();
        let mut webhook_tools = crate::call::webhook_tools::declarations(&cfg.tools.webhooks);
        for (decl, w) in webhook_tools.iter_mut().zip(&cfg.tools.webhooks) {
            use crate::config::ToolScheduling as S;
            let (behavior, scheduling) = match (w.scheduling, control_behavior) {
                (S::Blocking, _) | (_, ToolBehavior::Blocking) => (ToolBehavior::Blocking, None),
                (S::WhenIdle, _) => (ToolBehavior::NonBlocking, Some(Scheduling::WhenIdle)),
                (S::Interrupt, _) => (ToolBehavior::NonBlocking, Some(Scheduling::Interrupt)),
                (S::Silent, _) => (ToolBehavior::NonBlocking, Some(Scheduling::Silent)),
            };
            decl.behavior = Some(behavior.as_str().to_string());
            webhook_scheduling.insert(w.name.clone(), scheduling);
        }
        tools.extend(webhook_tools);
        let sensitivity = |v: &str, kind: &str| match v {
            "low" => Some(format!("{kind}_SENSITIVITY_LOW")),
            "high" => Some(format!("{kind}_SENSITIVITY_HIGH")),
            _ => None,
        };
        let non_zero = |v: u32| (v > 0).then_some(v);
        let model = match g.backend {
            crate::config::Backend::Vertex if !g.model.starts_with("projects/") => format!(
                "projects/{}/locations/{}/publishers/google/models/{}",
                g.project,
                g.location,
                crate::gemini::profile::bare_id(&g.model)
            ),
            _ => g.model.clone(),
        };
        let setup = SetupParams {
            model,
            thinking: thinking_config(profile, g),
            affective_dialog: (g.affective_dialog && profile.affective_dialog).then_some(true),
            proactive_audio: (g.proactive_audio
                && profile.proactivity == ProactivityRule::Optional)
                .then_some(true),
            voice: Some(g.voice.clone()),
            language: (!g.language.is_empty()).then(|| g.language.clone()),
            system_instruction: (!g.system_instruction.is_empty())
                .then(|| g.system_instruction.clone()),
            tools,
            input_transcription: g.input_transcription,
            output_transcription: g.output_transcription,
            session_resumption: g.session_resumption,
            resume_handle: None,
            vad: ActivityDetection {
                disabled: g.vad.disabled,
                start_sensitivity: sensitivity(&g.vad.start_sensitivity, "START"),
                end_sensitivity: sensitivity(&g.vad.end_sensitivity, "END"),
                prefix_padding_ms: non_zero(g.vad.prefix_padding_ms),
                silence_duration_ms: non_zero(g.vad.silence_duration_ms),
                activity_handling: Some(
                    if g.vad.barge_in {
                        "START_OF_ACTIVITY_INTERRUPTS"
                    } else {
                        "NO_INTERRUPTION"
                    }
                    .into(),
                ),
            },
            context_compression: g.context_compression.then(|| ContextCompression {
                trigger_tokens: (g.compression_trigger_tokens > 0)
                    .then_some(g.compression_trigger_tokens),
                target_tokens: (g.compression_target_tokens > 0)
                    .then_some(g.compression_target_tokens),
            }),
        };
        CallSettings {
            profile,
            setup,
            call_control_async,
            webhook_scheduling,
            greeting: g.greeting.then(|| g.greeting_instruction.clone()),
            playout_lead: Duration::from_millis(cfg.playout.lead_ms.into()),
            playout_refill: Duration::from_millis(cfg.playout.refill_ms.into()),
            mark_interval_frames: (cfg.playout.mark_interval_ms / 20).max(1),
            preconnect_frames: (cfg.limits.preconnect_buffer_ms / 20) as usize,
            start_timeout: Duration::from_millis(cfg.limits.start_timeout_ms),
            caller_write_timeout: Duration::from_millis(cfg.limits.caller_write_timeout_ms),
            setup_timeout: Duration::from_millis(
                cfg.gemini.connect_timeout_ms + cfg.gemini.setup_timeout_ms,
            ),
            max_call: Duration::from_secs(cfg.limits.max_call_secs),
            dtmf_idle: Duration::from_millis(cfg.limits.dtmf_idle_ms),
            end_call_grace: Duration::from_millis(cfg.limits.end_call_grace_ms),
            transfer_destinations: cfg.transfer.destinations.clone(),
            transfer_allow,
            send_dtmf: cfg.tools.send_dtmf,
            webhook_tools: cfg.tools.webhooks.iter().map(|w| w.name.clone()).collect(),
            silence_timeout: (cfg.limits.silence_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.limits.silence_timeout_secs)),
            wrap_up_grace: Duration::from_millis(cfg.limits.wrap_up_grace_ms),
            tell_model_what_was_heard: g.tell_model_what_was_heard,
            max_reconnects: cfg.session.max_reconnects,
            reconnect_backoff: Duration::from_millis(cfg.session.reconnect_backoff_ms),
            filler_after: (cfg.session.filler_after_ms > 0)
                .then(|| Duration::from_millis(cfg.session.filler_after_ms)),
            filler: bundled_filler(),
            history_chars: cfg.session.history_chars,
            max_sessions: cfg.session.max_sessions_per_call,
            handover_overlap: cfg.session.handover == "overlap",
            idle_stream: Duration::from_secs(cfg.limits.idle_stream_secs),
            shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace_secs),
        }
    }
}

/// `thinkingConfig` for the configured thinking mode, as the profile takes it (config
/// validation has refused the combinations the profile forbids).
fn thinking_config(profile: &ModelProfile, g: &crate::config::GeminiConfig) -> Option<Thinking> {
    use crate::config::ThinkingMode as M;
    match (profile.thinking, g.thinking) {
        (ThinkingRule::Forbidden, _) => None,
        // Dynamic thinking adds latency to every turn of a phone call: off unless asked for.
        (ThinkingRule::Budget, M::Auto | M::Off | M::Level) => Some(Thinking::Budget(0)),
        (ThinkingRule::Budget, M::Budget) => Some(Thinking::Budget(g.thinking_budget)),
        // 3.1 defaults to MINIMAL already.
        (ThinkingRule::Level, M::Auto | M::Budget) => None,
        (ThinkingRule::Level, M::Off) => Some(Thinking::Level("MINIMAL")),
        (ThinkingRule::Level, M::Level) => Some(Thinking::Level(g.thinking_level.as_wire())),
        (ThinkingRule::LevelRequired, _) => Some(Thinking::Level(g.thinking_level.as_wire())),
    }
}
