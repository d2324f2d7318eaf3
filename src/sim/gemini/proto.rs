//! Proto-JSON leniency and static protocol tables for the Gemini simulator.
//!
//! Owns: field lookup that accepts lowerCamel and snake_case spellings, lenient base64,
//! close-reason truncation, the route/path check, the model table and the voice list
//! (spec §4.2, §10, §12). Does not own any session state or I/O.

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

/// Collapse repeated leading slashes and match the Live routes; returns the API version
/// (`v1beta`, `v1`, `v1alpha`) and whether the constrained (ephemeral token) method was used.
pub fn match_route(path: &str) -> Option<(&'static str, bool)> {
    let trimmed = path.trim_start_matches('/');
    let rest = trimmed.strip_prefix("ws/google.ai.generativelanguage.")?;
    for version in ["v1beta", "v1alpha", "v1"] {
        let Some(method) = rest
            .strip_prefix(version)
            .and_then(|r| r.strip_prefix(".GenerativeService."))
        else {
            continue;
        };
        return match method {
            "BidiGenerateContent" => Some((version, false)),
            "BidiGenerateContentConstrained" if version == "v1alpha" => Some((version, true)),
            _ => None,
        };
    }
    None
}

/// Per-model behaviour (spec §12.1, §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelProfile {
    /// Model id without `models/`.
    pub id: &'static str,
    /// 3.x models put audio and transcription in one event; 2.5 sends one member per event.
    pub multi_part_events: bool,
    /// 3.8 rejects thinkingConfig, enableAffectiveDialog and proactiveAudio:false.
    pub is_3_8: bool,
}

const MODELS: &[ModelProfile] = &[
    ModelProfile {
        id: "gemini-3.8-live",
        multi_part_events: true,
        is_3_8: true,
    },
    ModelProfile {
        id: "gemini-3.8-live-extended-thinking",
        multi_part_events: true,
        is_3_8: true,
    },
    ModelProfile {
        id: "gemini-3.1-flash-live-preview",
        multi_part_events: true,
        is_3_8: false,
    },
    ModelProfile {
        id: "gemini-2.5-flash-native-audio-preview-12-2025",
        multi_part_events: false,
        is_3_8: false,
    },
    ModelProfile {
        id: "gemini-2.5-flash-native-audio-latest",
        multi_part_events: false,
        is_3_8: false,
    },
    ModelProfile {
        id: "gemini-2.5-flash-native-audio-preview-09-2025",
        multi_part_events: false,
        is_3_8: false,
    },
    ModelProfile {
        id: "gemini-3.5-live-translate-preview",
        multi_part_events: true,
        is_3_8: false,
    },
];

/// Find a model by id (with or without the `models/` prefix).
pub fn model(name: &str) -> Option<ModelProfile> {
    let id = name.strip_prefix("models/").unwrap_or(name);
    MODELS.iter().copied().find(|m| m.id == id)
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
        assert_eq!(match_route(p), Some(("v1beta", false)));
        assert_eq!(
            match_route(&format!("//{}", &p[1..])),
            Some(("v1beta", false))
        );
        assert_eq!(
            match_route(
                "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
            ),
            Some(("v1", false))
        );
        assert_eq!(
            match_route("/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"),
            Some(("v1alpha", true))
        );
        assert_eq!(
            match_route("/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContentConstrained"),
            None
        );
        assert_eq!(match_route("/ws/other"), None);
        assert_eq!(
            model("models/gemini-3.8-live").map(|m| m.is_3_8),
            Some(true)
        );
        assert!(model("gemini-2.0-flash-live-001").is_none());
    }
}
