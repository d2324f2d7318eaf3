//! Gemini Live (BidiGenerateContent) wire codec: server frames in, client frames out.
//!
//! Owns: the JSON shape of every message after `setup` (camelCase on the way out, camelCase or
//! snake_case on the way in), base64 of audio in both directions, and the order in which one
//! server frame turns into several [`ModelEvent`]s.
//!
//! Does not own: the `setup` message (see [`super::setup`]), the socket (see [`super::connect`]),
//! any decision about what an event means for a call (that is `call::machine`), or resampling
//! (the model speaks 24 kHz PCM and hears 16 kHz PCM; `audio` converts).
//!
//! Pure: no I/O, no clock, no logging. Malformed input is an error value, never a panic.

use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::json_fast::Obj;

/// What the model told us, parsed from one server frame (one frame may give several events).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// The `setup` was accepted; the session is live.
    SetupComplete,
    /// Raw s16le 24 kHz mono PCM decoded from `serverContent.modelTurn.parts[].inlineData`
    /// (mimeType `audio/pcm`, optionally `;rate=24000`). Standard and URL-safe base64, padded
    /// or not, are accepted. Empty chunks are not reported.
    Audio(Vec<u8>),
    /// A text part of `modelTurn` (TEXT modality). Thought parts (`thought: true`) are skipped.
    Text(String),
    /// A fragment of the transcript of what the caller said (concatenate fragments).
    InputTranscription(String),
    /// A fragment of the transcript of what the model said (concatenate fragments).
    OutputTranscription(String),
    /// Caller activity cut the model's generation: flush any queued model audio.
    Interrupted,
    /// The model finished generating this turn (its audio may still be playing out).
    GenerationComplete,
    /// Why the turn ended (`serverContent.turnCompleteReason`), when the server said; comes
    /// just before its [`ModelEvent::TurnComplete`]. `TURN_COMPLETE_REASON_UNSPECIFIED` is not
    /// reported.
    TurnCompleteReason(String),
    /// `serverContent.interactionStatus`; comes before the `TurnComplete` it goes with.
    InteractionStatus(InteractionStatus),
    /// `serverContent.waitingForInput: true`: the model is deliberately silent, waiting for
    /// the caller to go on.
    WaitingForInput,
    /// The model's turn is over.
    TurnComplete,
    /// Token usage, usually attached to the `turnComplete` frame; per turn, not cumulative.
    Usage(UsageMetadata),
    /// The model asks us to run one or more functions; each needs exactly one response.
    ToolCall(Vec<FunctionCall>),
    /// These pending call ids are cancelled; send no response for them.
    ToolCallCancellation(Vec<String>),
    /// The server will end the connection after `time_left` (None when it did not say).
    GoAway {
        /// Parsed from the proto `Duration` string (`"50s"`, `"9.5s"`).
        time_left: Option<Duration>,
    },
    /// A new session-resumption handle (None while the session is not resumable).
    SessionResumptionUpdate {
        /// Opaque handle for `setup.sessionResumption.handle` on a later connection.
        new_handle: Option<String>,
        /// Whether the session could be resumed at this point.
        resumable: bool,
    },
    /// A top-level member we do not know (its name) — the caller logs it; not an error.
    Unknown(String),
}

/// One function call requested by the model (`toolCall.functionCalls[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCall {
    /// Server-generated id that must be echoed in the [`FunctionResponse`].
    pub id: String,
    /// Name of the declared function.
    pub name: String,
    /// Arguments as given by the model (`{}` when absent).
    pub args: Value,
}

/// Token counts from `usageMetadata`; missing counts are 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageMetadata {
    /// `promptTokenCount`.
    pub prompt_token_count: u64,
    /// `responseTokenCount`.
    pub response_token_count: u64,
    /// `totalTokenCount` (as reported, not recomputed).
    pub total_token_count: u64,
    /// `promptTokensDetails[]` as `(modality, tokenCount)`.
    pub prompt_details: Vec<(String, u64)>,
    /// `responseTokensDetails[]` as `(modality, tokenCount)`.
    pub response_details: Vec<(String, u64)>,
    /// `thoughtsTokenCount`: thinking tokens, billed as output text, not part of
    /// `responseTokenCount`.
    pub thoughts_token_count: u64,
}

/// Why a server frame could not be decoded. Field paths use the camelCase names.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame's bytes are not UTF-8.
    #[error("model frame is not utf-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The frame is not JSON.
    #[error("model frame is not json: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The frame is JSON but not an object.
    #[error("model frame is a json {found}, expected an object")]
    NotObject {
        /// JSON type found at the top level.
        found: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("model frame field `{field}` is a json {found}, expected {expected}")]
    WrongType {
        /// Path of the field, e.g. `serverContent.turnComplete`.
        field: String,
        /// What we needed.
        expected: &'static str,
        /// JSON type found.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("model frame field `{field}` is missing")]
    MissingField {
        /// Path of the absent field.
        field: String,
    },
    /// A base64 payload does not decode.
    #[error("model frame field `{field}` is not valid base64: {reason}")]
    BadBase64 {
        /// Path of the field, e.g. `serverContent.modelTurn.parts[0].inlineData.data`.
        field: String,
        /// Decoder message.
        reason: String,
    },
    /// A number that must be a non-negative integer is not.
    #[error("model frame field `{field}` is not a non-negative integer: {value}")]
    BadInteger {
        /// Path of the field.
        field: String,
        /// The offending value as JSON text.
        value: String,
    },
    /// A proto `Duration` string could not be parsed.
    #[error("model frame field `{field}` is not a duration like \"50s\": {value:?}")]
    BadDuration {
        /// Path of the field.
        field: String,
        /// The offending string.
        value: String,
    },
    /// Audio arrived in a format the downlink cannot play (it expects s16le 24 kHz PCM).
    #[error("model audio at `{field}` has unsupported mime type {mime_type:?} (expected audio/pcm;rate=24000)")]
    UnsupportedAudio {
        /// Path of the `inlineData`.
        field: String,
        /// The mime type the server sent.
        mime_type: String,
    },
}

/// Top-level server members we understand, in the order their events are emitted
/// (`usageMetadata` last so usage follows the `turnComplete` it accounts for).
const KNOWN_TOP_LEVEL: [&str; 7] = [
    "setupComplete",
    "serverContent",
    "toolCall",
    "toolCallCancellation",
    "goAway",
    "sessionResumptionUpdate",
    "usageMetadata",
];

/// Decodes one server frame (the payload of a binary or text WebSocket message, UTF-8 JSON)
/// into events, in the order they must be applied.
///
/// Within `serverContent`: `inputTranscription`, then `modelTurn` parts (audio / text) in
/// order, then `outputTranscription`, then `interrupted`, `generationComplete`,
/// `turnComplete`. Other top-level members follow in a fixed order, `usageMetadata` after
/// them, unknown members last as [`ModelEvent::Unknown`]. Unknown fields inside known
/// members (`groundingMetadata`, `turnCompleteReason`, …) are ignored. snake_case spellings of
/// every key are accepted as well as the canonical camelCase.
pub fn decompose(frame: &[u8]) -> Result<Vec<ModelEvent>, WireError> {
    let text = std::str::from_utf8(frame)?;
    if let Some(events) = audio_only(text) {
        return Ok(events);
    }
    decompose_generic(text)
}

/// [`decompose`] without the fast path: any frame, through a `serde_json::Value`.
fn decompose_generic(text: &str) -> Result<Vec<ModelEvent>, WireError> {
    let value: Value = serde_json::from_str(text)?;
    let Value::Object(top) = value else {
        return Err(WireError::NotObject {
            found: json_type(&value),
        });
    };

    let mut events = Vec::new();
    if let Some(v) = get(&top, "setupComplete") {
        // `setupComplete` may carry `sessionId`; nothing in it changes what we do.
        as_object(v, "setupComplete")?;
        events.push(ModelEvent::SetupComplete);
    }
    if let Some(v) = get(&top, "serverContent") {
        server_content(as_object(v, "serverContent")?, &mut events)?;
    }
    if let Some(v) = get(&top, "toolCall") {
        events.push(ModelEvent::ToolCall(tool_call(as_object(v, "toolCall")?)?));
    }
    if let Some(v) = get(&top, "toolCallCancellation") {
        let obj = as_object(v, "toolCallCancellation")?;
        let ids = match get(obj, "ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(ids) => string_array(ids, "toolCallCancellation.ids")?,
        };
        events.push(ModelEvent::ToolCallCancellation(ids));
    }
    if let Some(v) = get(&top, "goAway") {
        let obj = as_object(v, "goAway")?;
        let time_left = match get(obj, "timeLeft") {
            None | Some(Value::Null) => None,
            Some(t) => Some(parse_duration(
                as_str(t, "goAway.timeLeft")?,
                "goAway.timeLeft",
            )?),
        };
        events.push(ModelEvent::GoAway { time_left });
    }
    if let Some(v) = get(&top, "sessionResumptionUpdate") {
        let obj = as_object(v, "sessionResumptionUpdate")?;
        let new_handle = match get(obj, "newHandle") {
            None | Some(Value::Null) => None,
            Some(h) => Some(as_str(h, "sessionResumptionUpdate.newHandle")?)
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
        };
        let resumable = opt_bool(obj, "resumable", "sessionResumptionUpdate.resumable")?;
        events.push(ModelEvent::SessionResumptionUpdate {
            new_handle,
            resumable,
        });
    }
    if let Some(v) = get(&top, "usageMetadata") {
        events.push(ModelEvent::Usage(usage(as_object(v, "usageMetadata")?)?));
    }
    for key in top.keys() {
        let camel = snake_to_camel(key);
        if !KNOWN_TOP_LEVEL.contains(&camel.as_str()) {
            events.push(ModelEvent::Unknown(key.clone()));
        }
    }
    Ok(events)
}

// ---- fast path for the hot frame ------------------------------------------------------
//
// Almost every frame during a model turn is
// `{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=24000",
// "data":"<base64>"}}]}}}`. These types accept exactly that shape (objects where objects
// are, see `crate::json_fast::Obj`; camelCase only, no other members, no duplicates, no
// nulls, strings without escapes so they borrow from the frame) and nothing else;
// `audio_only` also gives up on any other mime type and on base64 that
// the standard alphabet does not decode. Whenever it gives up, `decompose` takes the generic
// path, which then produces the same events or error it always did. When it succeeds, the
// generic path would have produced the same events: the only member is `serverContent`, it
// holds only `modelTurn`, and each part is audio `inlineData` with a 24 kHz PCM mime type,
// whose data the generic path decodes with the same engine (a string the standard alphabet
// accepts has no `-` or `_`, so the generic path picks that alphabet too).

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastFrame<'a> {
    #[serde(rename = "serverContent", borrow)]
    server_content: Obj<FastContent<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastContent<'a> {
    #[serde(rename = "modelTurn", borrow)]
    model_turn: Obj<FastTurn<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastTurn<'a> {
    #[serde(borrow)]
    parts: Vec<Obj<FastPart<'a>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastPart<'a> {
    #[serde(rename = "inlineData", borrow)]
    inline_data: Obj<FastInline<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastInline<'a> {
    #[serde(rename = "mimeType")]
    mime_type: &'a str,
    data: &'a str,
}

/// The events of an audio-only `serverContent` frame, or None to take the generic path.
fn audio_only(text: &str) -> Option<Vec<ModelEvent>> {
    let Obj(frame) = serde_json::from_str::<Obj<FastFrame<'_>>>(text).ok()?;
    let parts = frame.server_content.0.model_turn.0.parts;
    let mut events = Vec::with_capacity(parts.len());
    for Obj(part) in parts {
        let inline = part.inline_data.0;
        if !matches!(inline.mime_type, "audio/pcm;rate=24000" | "audio/pcm") {
            return None;
        }
        let pcm = STANDARD_LENIENT.decode(inline.data).ok()?;
        if !pcm.is_empty() {
            events.push(ModelEvent::Audio(pcm));
        }
    }
    Some(events)
}

fn server_content(sc: &Map<String, Value>, events: &mut Vec<ModelEvent>) -> Result<(), WireError> {
    if let Some(text) = transcription(sc, "inputTranscription")? {
        events.push(ModelEvent::InputTranscription(text));
    }
    if let Some(turn) = get(sc, "modelTurn") {
        let turn = as_object(turn, "serverContent.modelTurn")?;
        if let Some(parts) = get(turn, "parts") {
            let parts = as_array(parts, "serverContent.modelTurn.parts")?;
            for (i, part) in parts.iter().enumerate() {
                let path = format!("serverContent.modelTurn.parts[{i}]");
                model_part(as_object(part, &path)?, &path, events)?;
            }
        }
    }
    if let Some(text) = transcription(sc, "outputTranscription")? {
        events.push(ModelEvent::OutputTranscription(text));
    }
    if opt_bool(sc, "interrupted", "serverContent.interrupted")? {
        events.push(ModelEvent::Interrupted);
    }
    if opt_bool(sc, "generationComplete", "serverContent.generationComplete")? {
        events.push(ModelEvent::GenerationComplete);
    }
    if let Some(v) = get(sc, "turnCompleteReason") {
        let reason = as_str(v, "serverContent.turnCompleteReason")?;
        if !reason.is_empty() && reason != "TURN_COMPLETE_REASON_UNSPECIFIED" {
            events.push(ModelEvent::TurnCompleteReason(bounded(reason)));
        }
    }
    if let Some(v) = get(sc, "interactionStatus") {
        let status = as_str(v, "serverContent.interactionStatus")?;
        let status = match status {
            "IN_PROGRESS" => Some(InteractionStatus::InProgress),
            "IDLE" => Some(InteractionStatus::Idle),
            "" | "INTERACTION_STATUS_UNSPECIFIED" => None,
            other => Some(InteractionStatus::Other(bounded(other))),
        };
        events.extend(status.map(ModelEvent::InteractionStatus));
    }
    if opt_bool(sc, "waitingForInput", "serverContent.waitingForInput")? {
        events.push(ModelEvent::WaitingForInput);
    }
    if opt_bool(sc, "turnComplete", "serverContent.turnComplete")? {
        events.push(ModelEvent::TurnComplete);
    }
    Ok(())
}

/// A peer-supplied enum value, cut to 64 characters (it reaches logs and metrics labels only
/// through a fixed set, but is kept bounded anyway).
fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

fn model_part(
    part: &Map<String, Value>,
    path: &str,
    events: &mut Vec<ModelEvent>,
) -> Result<(), WireError> {
    if let Some(inline) = get(part, "inlineData") {
        let inline_path = format!("{path}.inlineData");
        let inline = as_object(inline, &inline_path)?;
        let mime_type = match get(inline, "mimeType") {
            None | Some(Value::Null) => "",
            Some(m) => as_str(m, &format!("{inline_path}.mimeType"))?,
        };
        let mime_lower = mime_type.to_ascii_lowercase();
        // Only audio matters on a phone call; other inline media (images) is ignored.
        if mime_lower.starts_with("audio/") {
            if !is_pcm_24k(&mime_lower) {
                return Err(WireError::UnsupportedAudio {
                    field: inline_path,
                    mime_type: mime_type.to_owned(),
                });
            }
            let data_path = format!("{inline_path}.data");
            let data = match get(inline, "data") {
                None | Some(Value::Null) => "",
                Some(d) => as_str(d, &data_path)?,
            };
            let pcm = decode_base64(data, &data_path)?;
            if !pcm.is_empty() {
                events.push(ModelEvent::Audio(pcm));
            }
        }
    }
    if let Some(text) = get(part, "text") {
        let text = as_str(text, &format!("{path}.text"))?;
        let thought = opt_bool(part, "thought", &format!("{path}.thought"))?;
        if !thought && !text.is_empty() {
            events.push(ModelEvent::Text(text.to_owned()));
        }
    }
    Ok(())
}

/// `audio/pcm` with no rate or `rate=24000`; the Live API documents 24 kHz output only.
fn is_pcm_24k(mime_lower: &str) -> bool {
    let mut params = mime_lower.split(';').map(str::trim);
    if params.next() != Some("audio/pcm") {
        return false;
    }
    params.all(|p| match p.split_once('=') {
        Some(("rate", rate)) => rate.trim() == "24000",
        _ => true,
    })
}

fn transcription(sc: &Map<String, Value>, name: &str) -> Result<Option<String>, WireError> {
    let Some(t) = get(sc, name) else {
        return Ok(None);
    };
    let path = format!("serverContent.{name}");
    let t = as_object(t, &path)?;
    match get(t, "text") {
        None | Some(Value::Null) => Ok(None),
        Some(text) => {
            let text = as_str(text, &format!("{path}.text"))?;
            Ok((!text.is_empty()).then(|| text.to_owned()))
        }
    }
}

fn tool_call(tc: &Map<String, Value>) -> Result<Vec<FunctionCall>, WireError> {
    let Some(calls) = get(tc, "functionCalls") else {
        return Ok(Vec::new());
    };
    let calls = as_array(calls, "toolCall.functionCalls")?;
    let mut out = Vec::with_capacity(calls.len());
    for (i, call) in calls.iter().enumerate() {
        let path = format!("toolCall.functionCalls[{i}]");
        let call = as_object(call, &path)?;
        let id = required_str(call, "id", &path)?;
        let name = required_str(call, "name", &path)?;
        let args = match get(call, "args") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(a) => a.clone(),
        };
        out.push(FunctionCall { id, name, args });
    }
    Ok(out)
}

fn usage(u: &Map<String, Value>) -> Result<UsageMetadata, WireError> {
    Ok(UsageMetadata {
        prompt_token_count: opt_u64(u, "promptTokenCount", "usageMetadata")?,
        response_token_count: opt_u64(u, "responseTokenCount", "usageMetadata")?,
        total_token_count: opt_u64(u, "totalTokenCount", "usageMetadata")?,
        prompt_details: modality_counts(u, "promptTokensDetails")?,
        response_details: modality_counts(u, "responseTokensDetails")?,
        thoughts_token_count: opt_u64(u, "thoughtsTokenCount", "usageMetadata")?,
    })
}

fn modality_counts(u: &Map<String, Value>, name: &str) -> Result<Vec<(String, u64)>, WireError> {
    let Some(list) = get(u, name) else {
        return Ok(Vec::new());
    };
    let path = format!("usageMetadata.{name}");
    let list = as_array(list, &path)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let entry = as_object(entry, &entry_path)?;
        let modality = match get(entry, "modality") {
            None | Some(Value::Null) => "MODALITY_UNSPECIFIED".to_owned(),
            Some(m) => as_str(m, &format!("{entry_path}.modality"))?.to_owned(),
        };
        out.push((modality, opt_u64(entry, "tokenCount", &entry_path)?));
    }
    Ok(out)
}

/// Parses a proto3 JSON `Duration`: decimal seconds with up to 9 fractional digits and an `s`
/// suffix (`"50s"`, `"9.5s"`, `"0.250s"`). Negative durations make no sense for `timeLeft`.
fn parse_duration(s: &str, field: &str) -> Result<Duration, WireError> {
    let bad = || WireError::BadDuration {
        field: field.to_owned(),
        value: s.to_owned(),
    };
    let number = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    if number.ends_with('.') {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        // Right-pad to nanoseconds: "25" -> "250000000".
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(secs, nanos))
}

/// Standard base64 with padding tolerated either way.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// URL-safe base64 (what the Python SDK emits) with padding tolerated either way.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_base64(data: &str, field: &str) -> Result<Vec<u8>, WireError> {
    // proto-JSON parsers accept either alphabet; the presence of `-` or `_` picks URL-safe.
    let engine = if data.contains(['-', '_']) {
        &URL_SAFE_LENIENT
    } else {
        &STANDARD_LENIENT
    };
    engine.decode(data).map_err(|e| WireError::BadBase64 {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

// ---- lenient field access --------------------------------------------------------------

/// Looks a field up by its camelCase name, falling back to the snake_case spelling that
/// proto-JSON parsers also accept.
fn get<'a>(obj: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(&camel_to_snake(camel)))
}

fn camel_to_snake(camel: &str) -> String {
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

fn snake_to_camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
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

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(field: &str, expected: &'static str, v: &Value) -> WireError {
    WireError::WrongType {
        field: field.to_owned(),
        expected,
        found: json_type(v),
    }
}

fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, WireError> {
    v.as_object()
        .ok_or_else(|| wrong_type(field, "an object", v))
}

fn as_array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, WireError> {
    v.as_array().ok_or_else(|| wrong_type(field, "an array", v))
}

fn as_str<'a>(v: &'a Value, field: &str) -> Result<&'a str, WireError> {
    v.as_str().ok_or_else(|| wrong_type(field, "a string", v))
}

fn required_str(obj: &Map<String, Value>, name: &str, parent: &str) -> Result<String, WireError> {
    let field = format!("{parent}.{name}");
    match get(obj, name) {
        None | Some(Value::Null) => Err(WireError::MissingField { field }),
        Some(v) => Ok(as_str(v, &field)?.to_owned()),
    }
}

/// An optional boolean: absent or null is `false`.
fn opt_bool(obj: &Map<String, Value>, name: &str, field: &str) -> Result<bool, WireError> {
    match get(obj, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(wrong_type(field, "a boolean", v)),
    }
}

fn string_array(v: &Value, field: &str) -> Result<Vec<String>, WireError> {
    as_array(v, field)?
        .iter()
        .enumerate()
        .map(|(i, s)| as_str(s, &format!("{field}[{i}]")).map(str::to_owned))
        .collect()
}

/// An optional int64 count: proto JSON prints int64 as a string, but numbers are accepted.
fn opt_u64(obj: &Map<String, Value>, name: &str, parent: &str) -> Result<u64, WireError> {
    let field = || format!("{parent}.{name}");
    match get(obj, name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| WireError::BadInteger {
            field: field(),
            value: n.to_string(),
        }),
        Some(Value::String(s)) => s.parse().map_err(|_| WireError::BadInteger {
            field: field(),
            value: format!("{s:?}"),
        }),
        Some(v) => Err(wrong_type(&field(), "an integer", v)),
    }
}

// ---- client frames ---------------------------------------------------------------------

/// What we tell the model after `setup`.
#[derive(Debug, Clone, Copy)]
pub enum ModelCommand<'a> {
    /// Caller audio, raw s16le 16 kHz mono; sent as
    /// `{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":<std base64>}}}`.
    Audio(&'a [u8]),
    /// The caller's audio stream paused (`realtimeInput.audioStreamEnd`); flushes server VAD.
    AudioStreamEnd,
    /// Manual VAD (automatic detection disabled): the caller started speaking.
    ActivityStart,
    /// Manual VAD (automatic detection disabled): the caller stopped speaking.
    ActivityEnd,
    /// Text treated like speech (`realtimeInput.text`), e.g. "the caller pressed 3".
    Text(&'a str),
    /// History-bearing turns (`clientContent`); `turn_complete: true` makes the model answer.
    ClientContent {
        /// Turns appended to the conversation, in order (omitted from the JSON when empty).
        turns: &'a [Turn],
        /// Whether the model should respond now.
        turn_complete: bool,
    },
    /// Results of function calls (`toolResponse`).
    ToolResponse(&'a [FunctionResponse]),
}

/// One turn of `clientContent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who spoke.
    pub role: Role,
    /// The text of the turn (one text part).
    pub text: String,
}

/// Speaker of a [`Turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `"user"`.
    User,
    /// `"model"`.
    Model,
}

/// Result of one function call; `id` and `name` echo the [`FunctionCall`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionResponse {
    /// The call id from [`FunctionCall::id`] (required by the Gemini API).
    pub id: String,
    /// The function name.
    pub name: String,
    /// By convention `{"output": …}` on success or `{"error": …}` on failure.
    pub response: Value,
    /// For a NON_BLOCKING call: when the model speaks about the result. None (omitted) for
    /// BLOCKING calls, where it has no meaning (gemini-live.md §6.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
}

/// `FunctionResponse.scheduling` (NON_BLOCKING calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scheduling {
    /// Added to the context; the model does not speak about it.
    Silent,
    /// Spoken about once the model is idle (the API's default).
    WhenIdle,
    /// Cuts the model's current answer to speak about it.
    Interrupt,
}

/// `serverContent.interactionStatus` (background-reasoning models).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InteractionStatus {
    /// Still reasoning or running tools: `turnComplete` does not mean idle.
    InProgress,
    /// Done; waiting for input.
    Idle,
    /// A value this bridge does not know (kept, bounded, for the log).
    Other(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ClientMessage<'a> {
    RealtimeInput(RealtimeInput<'a>),
    ClientContent(ClientContentMsg<'a>),
    ToolResponse(ToolResponseMsg<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum RealtimeInput<'a> {
    Audio(Blob),
    AudioStreamEnd(bool),
    ActivityStart(Empty),
    ActivityEnd(Empty),
    Text(&'a str),
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    mime_type: &'static str,
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientContentMsg<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    turns: Vec<ContentOut<'a>>,
    turn_complete: bool,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    role: Role,
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResponseMsg<'a> {
    function_responses: &'a [FunctionResponse],
}

/// Mime type of the caller audio we send: the bridge resamples telephony audio to 16 kHz
/// itself rather than relying on undocumented server-side resampling.
pub const INPUT_AUDIO_MIME: &str = "audio/pcm;rate=16000";

/// Encodes a command as one camelCase JSON text frame.
pub fn to_json(cmd: &ModelCommand<'_>) -> String {
    let msg = match *cmd {
        ModelCommand::Audio(pcm) => ClientMessage::RealtimeInput(RealtimeInput::Audio(Blob {
            mime_type: INPUT_AUDIO_MIME,
            data: STANDARD.encode(pcm),
        })),
        ModelCommand::AudioStreamEnd => {
            ClientMessage::RealtimeInput(RealtimeInput::AudioStreamEnd(true))
        }
        ModelCommand::ActivityStart => {
            ClientMessage::RealtimeInput(RealtimeInput::ActivityStart(Empty {}))
        }
        ModelCommand::ActivityEnd => {
            ClientMessage::RealtimeInput(RealtimeInput::ActivityEnd(Empty {}))
        }
        ModelCommand::Text(text) => ClientMessage::RealtimeInput(RealtimeInput::Text(text)),
        ModelCommand::ClientContent {
            turns,
            turn_complete,
        } => ClientMessage::ClientContent(ClientContentMsg {
            turns: turns
                .iter()
                .map(|t| ContentOut {
                    role: t.role,
                    parts: [TextPart { text: &t.text }],
                })
                .collect(),
            turn_complete,
        }),
        ModelCommand::ToolResponse(responses) => ClientMessage::ToolResponse(ToolResponseMsg {
            function_responses: responses,
        }),
    };
    // Serialising these types cannot fail: every map key is a string and `Value` cannot hold
    // a non-finite number.
    serde_json::to_string(&msg).expect("client messages always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_parsing() {
        let ok = |s: &str| parse_duration(s, "f").unwrap();
        assert_eq!(ok("50s"), Duration::from_secs(50));
        assert_eq!(ok("9.5s"), Duration::from_millis(9500));
        assert_eq!(ok("0.250s"), Duration::from_millis(250));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        for bad in [
            "",
            "s",
            "50",
            "-5s",
            "1.s",
            ".5s",
            "1.0000000001s",
            "5ms",
            "1e3s",
            " 5s",
        ] {
            assert!(
                parse_duration(bad, "f").is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn key_spelling_conversions() {
        assert_eq!(camel_to_snake("serverContent"), "server_content");
        assert_eq!(camel_to_snake("text"), "text");
        assert_eq!(
            snake_to_camel("tool_call_cancellation"),
            "toolCallCancellation"
        );
        assert_eq!(snake_to_camel("goAway"), "goAway");
    }

    #[test]
    fn audio_fast_path_agrees_with_generic_path_or_declines() {
        let frame =
            |body: &str| format!(r#"{{"serverContent":{{"modelTurn":{{"parts":[{body}]}}}}}}"#);
        let audio = |mime: &str, data: &str| {
            format!(r#"{{"inlineData":{{"mimeType":"{mime}","data":"{data}"}}}}"#)
        };
        let taken = [
            frame(&audio("audio/pcm;rate=24000", "AAEC")),
            frame(&audio("audio/pcm", "AAECAw")),
            frame(&audio("audio/pcm", "")),
            frame(""),
            frame(&[audio("audio/pcm", "AAEC"), audio("audio/pcm;rate=24000", "+/8=")].join(",")),
            r#" { "serverContent" : { "modelTurn" : { "parts" : [ { "inlineData" : { "data" : "AAEC" , "mimeType" : "audio/pcm" } } ] } } } "#.to_owned(),
        ];
        for text in &taken {
            let fast = audio_only(text).unwrap_or_else(|| panic!("declined {text}"));
            assert_eq!(fast, decompose_generic(text).unwrap(), "{text}");
            assert_eq!(decompose(text.as_bytes()).unwrap(), fast);
        }
        let declined = [
            // Arrays where objects belong (derived Deserialize would take them as structs).
            r#"{"serverContent":[[[{"inlineData":{"mimeType":"audio/pcm","data":"AAEC"}}]]]}"#
                .to_owned(),
            r#"{"serverContent":{"modelTurn":{"parts":[[["audio/pcm","AAEC"]]]}}}"#.to_owned(),
            r#"[{"modelTurn":{"parts":[]}}]"#.to_owned(),
            // Other mime types, spellings, members, nulls, escapes, alphabets, duplicates.
            frame(&audio("audio/PCM;rate=24000", "AAEC")),
            frame(&audio("audio/pcm;rate=16000", "AAEC")),
            frame(&audio("image/png", "AAEC")),
            frame(&audio("audio/pcm", "-_8")),
            frame(&audio("audio/pcm", "A")),
            frame(&audio("audio/pcm", r"AA\/C")),
            frame(r#"{"inlineData":{"mimeType":"audio/pcm","data":null}}"#),
            frame(r#"{"inline_data":{"mimeType":"audio/pcm","data":"AAEC"}}"#),
            frame(r#"{"inlineData":{"mimeType":"audio/pcm","data":"AAEC"},"text":"hi"}"#),
            frame(r#"{"inlineData":{"mimeType":"audio/pcm","data":"AAEC","data":"AAEC"}}"#),
            r#"{"serverContent":{"modelTurn":{"parts":[]},"turnComplete":true}}"#.to_owned(),
            r#"{"serverContent":{"modelTurn":{"parts":[]}},"usageMetadata":{}}"#.to_owned(),
            r#"{"server_content":{"modelTurn":{"parts":[]}}}"#.to_owned(),
        ];
        for text in &declined {
            assert!(audio_only(text).is_none(), "took {text}");
        }
    }

    #[test]
    fn pcm_mime_types() {
        assert!(is_pcm_24k("audio/pcm;rate=24000"));
        assert!(is_pcm_24k("audio/pcm"));
        assert!(is_pcm_24k("audio/pcm; rate=24000"));
        assert!(!is_pcm_24k("audio/pcm;rate=16000"));
        assert!(!is_pcm_24k("audio/wav"));
    }
}
