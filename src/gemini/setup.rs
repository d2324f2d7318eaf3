//! The Gemini Live `setup` message — the first client frame of every model connection.
//!
//! Owns: turning plain data ([`SetupParams`]) into `{"setup": {...}}` in the camelCase shape the
//! JS SDK puts on the wire, and the list of prebuilt voices used for config validation.
//!
//! Does not own: reading or validating the bridge's config (that is `config`, which fills a
//! [`SetupParams`]), the tools' behaviour (that is `call`), or the socket. It deliberately
//! imports neither, so dependencies keep pointing down.
//!
//! Never emits a top-level `config` key: that shape comes from a documentation error and is
//! not part of the protocol (gemini-live.md §4.3).

use serde::Serialize;
use serde_json::Value;

/// Everything the `setup` message can carry for a phone call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetupParams {
    /// Model id; `models/` is prefixed when missing.
    pub model: String,
    /// Prebuilt voice name (one of [`VOICES`]); None lets the server choose.
    pub voice: Option<String>,
    /// BCP-47 language code for speech output (`speechConfig.languageCode`).
    pub language: Option<String>,
    /// Sent as a `Content` `{role:"user", parts:[{text}]}`.
    pub system_instruction: Option<String>,
    /// Function declarations (one `tools[]` entry holds them all); empty = no tools.
    pub tools: Vec<FunctionDeclaration>,
    /// Ask for `inputTranscription` events (what the caller said).
    pub input_transcription: bool,
    /// Ask for `outputTranscription` events (what the model said).
    pub output_transcription: bool,
    /// Ask for `sessionResumptionUpdate` events: sends `sessionResumption: {}`, or
    /// `{"handle": h}` when [`Self::resume_handle`] is set.
    pub session_resumption: bool,
    /// A handle from an earlier `sessionResumptionUpdate`, to resume that session.
    /// Only sent when `session_resumption` is on; never sent as `null`.
    pub resume_handle: Option<String>,
    /// Voice activity detection and barge-in settings.
    pub vad: ActivityDetection,
    /// Sliding-window context compression (lets sessions outlive the 15-minute audio limit).
    pub context_compression: Option<ContextCompression>,
    /// `generationConfig.thinkingConfig`; None omits it (required by 3.8, which refuses it).
    pub thinking: Option<Thinking>,
    /// `generationConfig.enableAffectiveDialog`; None omits it.
    pub affective_dialog: Option<bool>,
    /// `proactivity.proactiveAudio`; None omits `proactivity`.
    pub proactive_audio: Option<bool>,
}

/// `generationConfig.thinkingConfig`: a token budget (2.5) or a level (3.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thinking {
    /// `thinkingBudget` in tokens (0 = no thinking).
    Budget(u32),
    /// `thinkingLevel`: `MINIMAL` | `LOW` | `MEDIUM` | `HIGH`.
    Level(&'static str),
}

/// One function the model may call (`tools[].functionDeclarations[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionDeclaration {
    /// Function name the model will use in `toolCall`.
    pub name: String,
    /// What the function does, for the model; omitted from the JSON when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// OpenAPI-style schema (upper-case types) passed through as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// `BLOCKING` or `NON_BLOCKING`; None leaves the model's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
}

/// `realtimeInputConfig`: server-side voice activity detection and barge-in handling.
/// All-default (enabled, nothing overridden) sends no `realtimeInputConfig` at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityDetection {
    /// Turn server VAD off; the bridge must then send activityStart/activityEnd.
    pub disabled: bool,
    /// `START_SENSITIVITY_LOW` | `START_SENSITIVITY_HIGH`.
    pub start_sensitivity: Option<String>,
    /// `END_SENSITIVITY_LOW` | `END_SENSITIVITY_HIGH`.
    pub end_sensitivity: Option<String>,
    /// Speech needed before a start of speech is committed.
    pub prefix_padding_ms: Option<u32>,
    /// Silence needed before an end of speech is committed.
    pub silence_duration_ms: Option<u32>,
    /// `START_OF_ACTIVITY_INTERRUPTS` (barge-in, the default) | `NO_INTERRUPTION`.
    pub activity_handling: Option<String>,
}

/// `contextWindowCompression` with a sliding window; None fields use the server defaults
/// (trigger at 80 % of the context window, target half of that).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextCompression {
    /// `triggerTokens`.
    pub trigger_tokens: Option<u64>,
    /// `slidingWindow.targetTokens`.
    pub target_tokens: Option<u64>,
}

/// The 30 prebuilt voices (case-sensitive), gemini-live.md §12.2.
pub const VOICES: [&str; 30] = [
    "Zephyr",
    "Puck",
    "Charon",
    "Kore",
    "Fenrir",
    "Leda",
    "Orus",
    "Aoede",
    "Callirrhoe",
    "Autonoe",
    "Enceladus",
    "Iapetus",
    "Umbriel",
    "Algieba",
    "Despina",
    "Erinome",
    "Algenib",
    "Rasalgethi",
    "Laomedeia",
    "Achernar",
    "Alnilam",
    "Schedar",
    "Gacrux",
    "Pulcherrima",
    "Achird",
    "Zubenelgenubi",
    "Vindemiatrix",
    "Sadachbia",
    "Sadaltager",
    "Sulafat",
];

/// Whether `name` is one of the prebuilt [`VOICES`] (exact, case-sensitive match).
pub fn is_known_voice(name: &str) -> bool {
    VOICES.contains(&name)
}

/// Builds the `{"setup": {...}}` text frame (camelCase). Always asks for
/// `responseModalities: ["AUDIO"]` — native-audio models reject setups without it — and adds
/// `speechConfig` when a voice or language is given.
pub fn setup_message(p: &SetupParams) -> String {
    // A Vertex resource path (`projects/…/publishers/google/models/…`) goes as it is.
    let model = if p.model.starts_with("models/") || p.model.starts_with("projects/") {
        p.model.clone()
    } else {
        format!("models/{}", p.model)
    };

    let speech_config = (p.voice.is_some() || p.language.is_some()).then(|| SpeechConfig {
        voice_config: p.voice.as_deref().map(|voice_name| VoiceConfig {
            prebuilt_voice_config: PrebuiltVoiceConfig { voice_name },
        }),
        language_code: p.language.as_deref(),
    });

    let vad = &p.vad;
    let detection_set = vad.disabled
        || vad.start_sensitivity.is_some()
        || vad.end_sensitivity.is_some()
        || vad.prefix_padding_ms.is_some()
        || vad.silence_duration_ms.is_some();
    let realtime_input_config =
        (detection_set || vad.activity_handling.is_some()).then(|| RealtimeInputConfig {
            automatic_activity_detection: detection_set.then_some(AutomaticActivityDetection {
                disabled: vad.disabled,
                start_of_speech_sensitivity: vad.start_sensitivity.as_deref(),
                end_of_speech_sensitivity: vad.end_sensitivity.as_deref(),
                prefix_padding_ms: vad.prefix_padding_ms,
                silence_duration_ms: vad.silence_duration_ms,
            }),
            activity_handling: vad.activity_handling.as_deref(),
        });

    let setup = Setup {
        model,
        generation_config: GenerationConfig {
            response_modalities: ["AUDIO"],
            speech_config,
            thinking_config: p.thinking.as_ref().map(|t| match t {
                Thinking::Budget(b) => ThinkingConfig {
                    thinking_budget: Some(*b),
                    thinking_level: None,
                },
                Thinking::Level(l) => ThinkingConfig {
                    thinking_budget: None,
                    thinking_level: Some(l),
                },
            }),
            enable_affective_dialog: p.affective_dialog,
        },
        system_instruction: p.system_instruction.as_deref().map(|text| Content {
            role: "user",
            parts: [TextPart { text }],
        }),
        tools: if p.tools.is_empty() {
            Vec::new()
        } else {
            vec![Tool {
                function_declarations: &p.tools,
            }]
        },
        realtime_input_config,
        session_resumption: p.session_resumption.then_some(SessionResumption {
            handle: p.resume_handle.as_deref(),
        }),
        context_window_compression: p.context_compression.map(|c| ContextWindowCompression {
            trigger_tokens: c.trigger_tokens,
            sliding_window: SlidingWindow {
                target_tokens: c.target_tokens,
            },
        }),
        input_audio_transcription: p.input_transcription.then_some(Empty {}),
        output_audio_transcription: p.output_transcription.then_some(Empty {}),
        proactivity: p
            .proactive_audio
            .map(|proactive_audio| Proactivity { proactive_audio }),
    };
    // Cannot fail: string keys only, and `Value` cannot hold a non-finite number.
    serde_json::to_string(&SetupEnvelope { setup }).expect("setup message always serialises")
}

#[derive(Serialize)]
struct SetupEnvelope<'a> {
    setup: Setup<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Setup<'a> {
    model: String,
    generation_config: GenerationConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_input_config: Option<RealtimeInputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_resumption: Option<SessionResumption<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_window_compression: Option<ContextWindowCompression>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_audio_transcription: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_audio_transcription: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proactivity: Option<Proactivity>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Proactivity {
    proactive_audio: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_budget: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_level: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    response_modalities: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    speech_config: Option<SpeechConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enable_affective_dialog: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpeechConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    voice_config: Option<VoiceConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language_code: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VoiceConfig<'a> {
    prebuilt_voice_config: PrebuiltVoiceConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrebuiltVoiceConfig<'a> {
    voice_name: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    function_declarations: &'a [FunctionDeclaration],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RealtimeInputConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    automatic_activity_detection: Option<AutomaticActivityDetection<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activity_handling: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AutomaticActivityDetection<'a> {
    disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_of_speech_sensitivity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_of_speech_sensitivity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix_padding_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silence_duration_ms: Option<u32>,
}

#[derive(Serialize)]
struct SessionResumption<'a> {
    // `{"handle": null}` was reported rejected by 3.1 models, so an absent handle is omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContextWindowCompression {
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger_tokens: Option<u64>,
    sliding_window: SlidingWindow,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SlidingWindow {
    #[serde(skip_serializing_if = "Option::is_none")]
    target_tokens: Option<u64>,
}

#[derive(Serialize)]
struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup_value(p: &SetupParams) -> Value {
        serde_json::from_str(&setup_message(p)).expect("setup_message emits JSON")
    }

    #[test]
    fn minimal_setup_prefixes_model_and_asks_for_audio() {
        let v = setup_value(&SetupParams {
            model: "gemini-3.8-live".into(),
            ..Default::default()
        });
        assert_eq!(
            v,
            json!({"setup": {"model": "models/gemini-3.8-live",
                "generationConfig": {"responseModalities": ["AUDIO"]}}})
        );
    }

    #[test]
    fn model_prefix_not_doubled() {
        let v = setup_value(&SetupParams {
            model: "models/gemini-3.8-live".into(),
            ..Default::default()
        });
        assert_eq!(v["setup"]["model"], "models/gemini-3.8-live");
    }

    #[test]
    fn voices_are_thirty_and_distinct() {
        let mut v = VOICES.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 30);
        assert!(is_known_voice("Kore"));
        assert!(!is_known_voice("kore"));
    }
}
