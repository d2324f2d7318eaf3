//! Proto-JSON leniency and static protocol tables for the Gemini simulator.
//!
//! Owns: field lookup that accepts lowerCamel and snake_case spellings, lenient base64,
//! close-reason truncation, the route/path check, the model table (per-model behaviour
//! profiles, which `setup` fields each model refuses or requires, retired ids) and the voice
//! list (spec §4.2, §10, §12). Does not own any session state or I/O.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::Value;

/// Standard close reasons (spec §10.1).
pub const REASON_INVALID_ARGUMENT: &str = "Request contains an invalid argument.";
/// Sent when a native-audio model gets a non-AUDIO setup.
pub const REASON_NON_AUDIO: &str = "Cannot extract voices from a non-audio request.";
/// Sent for a bad or missing API key.
pub const REASON_BAD_KEY: &str = "API key not valid. Please pass a valid API key.";
/// Sent for a tool response naming an unknown call id.
pub const REASON_NOT_FOUND: &str = "Requested entity was not found.";
/// Sent when the connection lifetime expires after `goAway`.
pub const REASON_DEADLINE: &str = "Deadline expired before operation could complete.";

/// Look up a field by its lowerCamel name, falling back to the snake_case spelling
/// (the proto-JSON parser accepts both; the Python SDK mixes them).
pub fn field<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(camel) {
        return Some(x);
    }
    obj.get(&snake(camel))
}

/// The snake_case spelling of a lowerCamel field name.
pub fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The lowerCamel spelling of a (possibly snake_case) field name.
pub fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Follow a path of lowerCamel field names.
pub fn path<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().try_fold(v, |cur, n| field(cur, n))
}

/// A boolean field (proto3 default false).
pub fn bool_field(v: &Value, camel: &str) -> bool {
    field(v, camel).and_then(Value::as_bool).unwrap_or(false)
}

/// An integer field given as a JSON number or a decimal string (int64 in proto JSON).
pub fn int_field(v: &Value, camel: &str) -> Option<i64> {
    match field(v, camel)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Decode base64 in the standard or URL-safe alphabet, with or without padding.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let engine = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if s.contains(['-', '_']) {
        let normalised: String = s
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        engine.decode(normalised)
    } else {
        engine.decode(s)
    }
}

/// Encode the way proto-JSON printers do: standard alphabet, padded.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Cut a close reason to at most 123 bytes on a UTF-8 boundary (RFC 6455 control frame limit).
pub fn truncate_reason(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Which Live method a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Gemini Developer API `GenerativeService.BidiGenerateContent` (API key).
    Live,
    /// Gemini Developer API v1alpha `…BidiGenerateContentConstrained` (ephemeral token).
    Constrained,
    /// Vertex AI `LlmBidiService/BidiGenerateContent` (OAuth2 bearer token; the setup's
    /// model must be a full `projects/…/publishers/google/models/…` path).
    Vertex,
}

/// Collapse repeated leading slashes and match the Live routes; returns the API version
/// (`v1beta`, `v1`, `v1alpha`; Vertex: `v1`, `v1beta1`) and the method.
pub fn match_route(path: &str) -> Option<(&'static str, Method)> {
    let trimmed = path.trim_start_matches('/');
    if let Some(rest) = trimmed.strip_prefix("ws/google.cloud.aiplatform.") {
        // Vertex AI (spec §2.1): `/ws/google.cloud.aiplatform.{v1|v1beta1}.LlmBidiService/BidiGenerateContent`.
        return ["v1beta1", "v1"].into_iter().find_map(|version| {
            (rest.strip_prefix(version)? == ".LlmBidiService/BidiGenerateContent")
                .then_some((version, Method::Vertex))
        });
    }
    let rest = trimmed.strip_prefix("ws/google.ai.generativelanguage.")?;
    for version in ["v1beta", "v1alpha", "v1"] {
        let Some(method) = rest
            .strip_prefix(version)
            .and_then(|r| r.strip_prefix(".GenerativeService."))
        else {
            continue;
        };
        return match method {
            "BidiGenerateContent" => Some((version, Method::Live)),
            "BidiGenerateContentConstrained" if version == "v1alpha" => {
                Some((version, Method::Constrained))
            }
            _ => None,
        };
    }
    None
}

/// The model id of a Vertex resource path `projects/{p}/locations/{l}/publishers/google/models/{m}`
/// (every segment non-empty); `None` for anything else (a bare id, `models/…`).
pub fn vertex_model_id(model: &str) -> Option<&str> {
    let parts: Vec<&str> = model.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "locations", l, "publishers", "google", "models", m]
            if !p.is_empty() && !l.is_empty() && !m.is_empty() =>
        {
            Some(m)
        }
        _ => None,
    }
}

// ---- model table ------------------------------------------------------------------------
//
// Sources (read 2026-12; spec §5.2, §9.4, §12.1):
// - ai.google.dev/gemini-api/docs/models/gemini-3.8-live: no `thinkingConfig`; NON_BLOCKING is
//   the default tool behaviour (SILENT / WHEN_IDLE / INTERRUPT scheduling); `clientContent`
//   without `turnComplete` is appended and the model "waits for subsequent messages";
//   proactive audio always on (`proactiveAudio: false` is an error); affective dialog removed.
// - ai.google.dev/gemini-api/docs/models/gemini-3.8-live-extended-thinking: as 3.8, plus a
//   required `thinkingLevel`, asynchronous function calling only, `interactionStatus` on
//   `turnComplete` (background reasoning) and `thoughtsTokenCount` in `usageMetadata`.
// - ai.google.dev/gemini-api/docs/models/gemini-3.1-flash-live-preview: `thinkingLevel`
//   (default minimal), synchronous function calling only, no affective dialog or proactivity.
// - Vertex AI "Migrate from Gemini 2.5 Flash Live API native audio to Gemini 3.8 Live": BLOCKING
//   may still be declared on 3.8 (new input cancels the running call); an INTERRUPT response
//   while the user is speaking waits until the user's turn ends.
// - 2.5 native audio (model page + public reports, treated as the simulated truth): one member
//   per event, BLOCKING default, `thinkingBudget`, affective dialog and proactivity; a
//   `clientContent` without `turnComplete: true` makes the model stop answering audio until a
//   `clientContent` with `turnComplete: true`.
// - Deprecations page: gemini-live-2.5-flash-preview and gemini-2.0-flash-live-001 shut down
//   2025-12-09 (the service answers "Requested entity was not found.").
//
// The bridge keeps its own table (`gemini::profile`); this one is independent on purpose.

/// What `generationConfig.thinkingConfig` a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingRule {
    /// Not supported: any `thinkingConfig` is refused (3.8).
    Refused,
    /// `thinkingBudget` only; a `thinkingLevel` is refused (2.5).
    Budget,
    /// `thinkingLevel` optional; a `thinkingBudget` is refused (3.1).
    Level,
    /// `thinkingLevel` required; a missing level or a `thinkingBudget` is refused
    /// (3.8 extended thinking).
    LevelRequired,
    /// Not documented for this model: not checked.
    Unchecked,
}

/// What `proactivity` a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProactivityRule {
    /// Accepted as sent (2.5).
    Accepted,
    /// Any `proactivity` is refused (3.1).
    Refused,
    /// Always on: `proactiveAudio: false` is refused, `true` or absent is fine (3.8).
    AlwaysOn,
}

/// `FunctionDeclaration.behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// The model waits for the response before it goes on.
    Blocking,
    /// The model keeps talking; the response's `scheduling` decides what happens.
    NonBlocking,
}

/// Which tool behaviours a model supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolModes {
    /// Both may be declared.
    Both,
    /// Synchronous only: `NON_BLOCKING` is refused (3.1).
    BlockingOnly,
    /// Asynchronous only: `BLOCKING` is refused (3.8 extended thinking).
    NonBlockingOnly,
}

impl ToolModes {
    /// Whether a declaration may name `behavior`.
    pub fn allows(self, behavior: Behavior) -> bool {
        !matches!(
            (self, behavior),
            (ToolModes::BlockingOnly, Behavior::NonBlocking)
                | (ToolModes::NonBlockingOnly, Behavior::Blocking)
        )
    }
}

/// Per-model behaviour (spec §12.1, §7.2, §9.4; sources above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelProfile {
    /// Model id without `models/`.
    pub id: &'static str,
    /// 3.x models put audio and transcription in one event; 2.5 sends one member per event.
    pub multi_part_events: bool,
    /// `generationConfig.thinkingConfig`.
    pub thinking: ThinkingRule,
    /// `generationConfig.enableAffectiveDialog` is accepted (else its presence is refused).
    pub affective_dialog: bool,
    /// `proactivity`.
    pub proactivity: ProactivityRule,
    /// Behaviour of a function declared without `behavior`.
    pub default_tool_behavior: Behavior,
    /// Which behaviours may be declared.
    pub tool_modes: ToolModes,
    /// Every `turnComplete` carries `interactionStatus` (`IN_PROGRESS` / `IDLE`).
    pub interaction_status: bool,
    /// `usageMetadata` on `turnComplete` carries `thoughtsTokenCount`.
    pub thoughts_tokens: bool,
    /// A `clientContent` without `turnComplete: true` stops replies to later caller turns
    /// until a `clientContent` with `turnComplete: true` (2.5).
    pub incomplete_content_stalls: bool,
    /// `realtimeInput.text` sent while the caller is speaking joins that user turn instead of
    /// starting its own reply (2.5).
    pub text_joins_speech: bool,
    /// An INTERRUPT tool response while the caller is speaking waits until their turn ends
    /// (3.8); otherwise it acts at once.
    pub interrupt_waits_for_user: bool,
}

const GEMINI_38: ModelProfile = ModelProfile {
    id: "gemini-3.8-live",
    multi_part_events: true,
    thinking: ThinkingRule::Refused,
    affective_dialog: false,
    proactivity: ProactivityRule::AlwaysOn,
    default_tool_behavior: Behavior::NonBlocking,
    tool_modes: ToolModes::Both,
    interaction_status: false,
    thoughts_tokens: false,
    incomplete_content_stalls: false,
    text_joins_speech: false,
    interrupt_waits_for_user: true,
};

const GEMINI_25: ModelProfile = ModelProfile {
    id: "gemini-2.5-flash-native-audio-preview-12-2025",
    multi_part_events: false,
    thinking: ThinkingRule::Budget,
    affective_dialog: true,
    proactivity: ProactivityRule::Accepted,
    default_tool_behavior: Behavior::Blocking,
    tool_modes: ToolModes::Both,
    interaction_status: false,
    thoughts_tokens: false,
    incomplete_content_stalls: true,
    text_joins_speech: true,
    interrupt_waits_for_user: false,
};

const MODELS: &[ModelProfile] = &[
    GEMINI_38,
    ModelProfile {
        id: "gemini-3.8-live-extended-thinking",
        thinking: ThinkingRule::LevelRequired,
        tool_modes: ToolModes::NonBlockingOnly,
        interaction_status: true,
        thoughts_tokens: true,
        ..GEMINI_38
    },
    ModelProfile {
        id: "gemini-3.1-flash-live-preview",
        multi_part_events: true,
        thinking: ThinkingRule::Level,
        affective_dialog: false,
        proactivity: ProactivityRule::Refused,
        default_tool_behavior: Behavior::Blocking,
        tool_modes: ToolModes::BlockingOnly,
        interaction_status: false,
        thoughts_tokens: false,
        incomplete_content_stalls: false,
        text_joins_speech: false,
        interrupt_waits_for_user: false,
    },
    GEMINI_25,
    ModelProfile {
        id: "gemini-2.5-flash-native-audio-latest",
        ..GEMINI_25
    },
    ModelProfile {
        id: "gemini-2.5-flash-native-audio-preview-09-2025",
        ..GEMINI_25
    },
    // Vertex AI's id for 2.5 native audio.
    ModelProfile {
        id: "gemini-live-2.5-flash-native-audio",
        ..GEMINI_25
    },
    // Speech-to-speech translation: only its event shape is documented; nothing is checked.
    ModelProfile {
        id: "gemini-3.5-live-translate-preview",
        multi_part_events: true,
        thinking: ThinkingRule::Unchecked,
        affective_dialog: true,
        proactivity: ProactivityRule::Accepted,
        default_tool_behavior: Behavior::Blocking,
        tool_modes: ToolModes::Both,
        interaction_status: false,
        thoughts_tokens: false,
        incomplete_content_stalls: false,
        text_joins_speech: false,
        interrupt_waits_for_user: false,
    },
];

/// Model ids that were shut down (closed 1008 [`REASON_NOT_FOUND`]); the builder's
/// `retired_models` adds more.
pub const RETIRED_MODELS: &[&str] = &["gemini-live-2.5-flash-preview", "gemini-2.0-flash-live-001"];

/// Find a model by id (with or without the `models/` prefix).
pub fn model(name: &str) -> Option<ModelProfile> {
    let id = name.strip_prefix("models/").unwrap_or(name);
    MODELS.iter().copied().find(|m| m.id == id)
}

/// `thinkingLevel` values (proto enum `ThinkingLevel`, spec §5.2).
const THINKING_LEVELS: &[&str] = &["MINIMAL", "LOW", "MEDIUM", "HIGH"];

/// Each declared function's name and `behavior` (`None`: not given, or `UNSPECIFIED`), from
/// `setup.tools[].functionDeclarations[]`; `None` if a `behavior` is not a known enum value.
pub fn declared_behaviors(setup: &Value) -> Option<Vec<(String, Option<Behavior>)>> {
    let mut out = Vec::new();
    let tools = field(setup, "tools").and_then(Value::as_array);
    for tool in tools.into_iter().flatten() {
        let decls = field(tool, "functionDeclarations").and_then(Value::as_array);
        for decl in decls.into_iter().flatten() {
            let name = field(decl, "name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let behavior = match field(decl, "behavior") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_str()? {
                    "BEHAVIOR_UNSPECIFIED" | "UNSPECIFIED" => None,
                    "BLOCKING" => Some(Behavior::Blocking),
                    "NON_BLOCKING" => Some(Behavior::NonBlocking),
                    _ => return None,
                },
            };
            out.push((name, behavior));
        }
    }
    Some(out)
}

impl ModelProfile {
    /// Whether this model accepts the profile-specific parts of `setup` (thinking, affective
    /// dialog, proactivity, tool behaviours); `false` means close 1007
    /// [`REASON_INVALID_ARGUMENT`] instead of `setupComplete`.
    pub fn admits(&self, setup: &Value) -> bool {
        let gc = field(setup, "generationConfig").unwrap_or(&Value::Null);
        let thinking = field(gc, "thinkingConfig").filter(|t| !t.is_null());
        let level = thinking.and_then(|t| field(t, "thinkingLevel"));
        let budget = thinking.and_then(|t| field(t, "thinkingBudget"));
        let level_ok =
            level.is_none_or(|l| l.as_str().is_some_and(|l| THINKING_LEVELS.contains(&l)));
        let thinking_ok = match self.thinking {
            ThinkingRule::Refused => thinking.is_none(),
            ThinkingRule::Budget => level.is_none(),
            ThinkingRule::Level => budget.is_none() && level_ok,
            ThinkingRule::LevelRequired => level.is_some() && budget.is_none() && level_ok,
            ThinkingRule::Unchecked => true,
        };
        let affective_ok = self.affective_dialog || field(gc, "enableAffectiveDialog").is_none();
        let proactivity = field(setup, "proactivity");
        let proactivity_ok = match self.proactivity {
            ProactivityRule::Accepted => true,
            ProactivityRule::Refused => proactivity.is_none(),
            ProactivityRule::AlwaysOn => {
                proactivity.and_then(|p| field(p, "proactiveAudio")) != Some(&Value::Bool(false))
            }
        };
        let tools_ok = declared_behaviors(setup).is_some_and(|decls| {
            decls
                .iter()
                .filter_map(|(_, b)| *b)
                .all(|b| self.tool_modes.allows(b))
        });
        thinking_ok && affective_ok && proactivity_ok && tools_ok
    }
}

/// The 30 prebuilt voices (case-sensitive, spec §12.2).
pub const VOICES: &[&str] = &[
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_accept_both_spellings() {
        let v = json!({"voice_config": {"prebuiltVoiceConfig": {"voice_name": "Kore"}}});
        assert_eq!(
            path(&v, &["voiceConfig", "prebuiltVoiceConfig", "voiceName"]),
            Some(&json!("Kore"))
        );
        assert_eq!(
            int_field(&json!({"trigger_tokens": "25600"}), "triggerTokens"),
            Some(25600)
        );
        assert_eq!(
            int_field(&json!({"triggerTokens": 7}), "triggerTokens"),
            Some(7)
        );
        assert_eq!(camel("realtime_input"), "realtimeInput");
        assert_eq!(snake("clientContent"), "client_content");
    }

    #[test]
    fn base64_both_alphabets_any_padding() {
        assert_eq!(
            decode_base64("_9j_").expect("urlsafe"),
            vec![0xff, 0xd8, 0xff]
        );
        assert_eq!(decode_base64("/9j/").expect("std"), vec![0xff, 0xd8, 0xff]);
        assert_eq!(decode_base64("AAE=").expect("padded"), vec![0, 1]);
        assert_eq!(decode_base64("AAE").expect("unpadded"), vec![0, 1]);
        assert!(decode_base64("!!!").is_err());
    }

    #[test]
    fn reasons_truncate_on_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123 && cut.len() >= 122);
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn routes() {
        let p = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
        assert_eq!(match_route(p), Some(("v1beta", Method::Live)));
        assert_eq!(
            match_route(&format!("//{}", &p[1..])),
            Some(("v1beta", Method::Live))
        );
        assert_eq!(
            match_route(
                "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
            ),
            Some(("v1", Method::Live))
        );
        assert_eq!(
            match_route("/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"),
            Some(("v1alpha", Method::Constrained))
        );
        assert_eq!(
            match_route("//ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"),
            Some(("v1", Method::Vertex))
        );
        assert_eq!(
            match_route("/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"),
            Some(("v1beta1", Method::Vertex))
        );
        assert_eq!(
            match_route("/ws/google.cloud.aiplatform.v1alpha.LlmBidiService/BidiGenerateContent"),
            None
        );
        assert_eq!(
            vertex_model_id(
                "projects/p/locations/us-central1/publishers/google/models/gemini-3.8-live"
            ),
            Some("gemini-3.8-live")
        );
        assert_eq!(vertex_model_id("models/gemini-3.8-live"), None);
        assert_eq!(
            vertex_model_id("projects//locations/l/publishers/google/models/m"),
            None
        );
        assert_eq!(
            match_route("/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContentConstrained"),
            None
        );
        assert_eq!(match_route("/ws/other"), None);
    }

    #[test]
    fn model_profiles_admit_only_their_documented_fields() {
        let admits =
            |id: &str, setup: serde_json::Value| model(id).expect("known model").admits(&setup);
        let gc = |v: serde_json::Value| json!({"generationConfig": v});
        assert!(admits("models/gemini-3.8-live", json!({})));
        assert!(!admits(
            "gemini-3.8-live",
            gc(json!({"thinkingConfig": {"thinkingLevel": "LOW"}}))
        ));
        assert!(!admits(
            "gemini-3.8-live",
            gc(json!({"enable_affective_dialog": false}))
        ));
        assert!(admits(
            "gemini-3.8-live",
            json!({"proactivity": {"proactive_audio": true}})
        ));
        assert!(!admits(
            "gemini-3.8-live",
            json!({"proactivity": {"proactiveAudio": false}})
        ));
        let ext = "gemini-3.8-live-extended-thinking";
        assert!(!admits(ext, json!({})));
        assert!(admits(
            ext,
            gc(json!({"thinking_config": {"thinking_level": "HIGH"}}))
        ));
        assert!(!admits(
            ext,
            gc(json!({"thinkingConfig": {"thinkingLevel": "HIGH", "thinkingBudget": 9}}))
        ));
        assert!(!admits(
            ext,
            gc(json!({"thinkingConfig": {"thinkingLevel": "MAXIMAL"}}))
        ));
        let tools = |b: &str| {
            json!({"generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}},
            "tools": [{"functionDeclarations": [{"name": "f", "behavior": b}]}]})
        };
        assert!(admits(ext, tools("NON_BLOCKING")));
        assert!(!admits(ext, tools("BLOCKING")));
        assert!(!admits("gemini-3.8-live", tools("SOMETIMES")));
        let v31 = "gemini-3.1-flash-live-preview";
        assert!(admits(v31, tools("BLOCKING")));
        assert!(!admits(v31, tools("NON_BLOCKING")));
        assert!(!admits(
            v31,
            gc(json!({"thinkingConfig": {"thinkingBudget": 0}}))
        ));
        assert!(!admits(v31, json!({"proactivity": {}})));
        let v25 = "gemini-live-2.5-flash-native-audio";
        assert!(admits(
            v25,
            gc(json!({"thinkingConfig": {"thinkingBudget": 0}, "enableAffectiveDialog": true}))
        ));
        assert!(!admits(
            v25,
            gc(json!({"thinkingConfig": {"thinkingLevel": "LOW"}}))
        ));
        assert_eq!(
            model("gemini-2.5-flash-native-audio-latest").map(|m| m.default_tool_behavior),
            Some(Behavior::Blocking)
        );
        assert_eq!(
            model("gemini-3.8-live").map(|m| m.default_tool_behavior),
            Some(Behavior::NonBlocking)
        );
        assert!(model("gemini-2.0-flash-live-001").is_none());
        assert!(RETIRED_MODELS.contains(&"gemini-2.0-flash-live-001"));
    }
}
