//! Twilio Media Streams JSON, both directions (telephony spec §1.3, §1.4).
//!
//! Owns: parsing one WebSocket text frame from Twilio into a typed [`CallerEvent`], and
//! serialising a [`CallerCommand`] into exactly the documented outbound JSON. Base64 for the
//! μ-law payloads lives here and nowhere else.
//!
//! Does not own: what the events mean for a call (that is `call::machine`), audio
//! transcoding (`audio`), socket handling, or the voice webhook (`twilio::webhook`).
//! It is a pure codec: no clock, no I/O, no panics on any input.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::json_fast::Obj;

/// Longest excerpt of a peer-supplied value that is copied into an error message, so a
/// 1 MiB garbage frame cannot turn into a 1 MiB log line.
const MAX_ECHO: usize = 64;

/// Decoder for `media.payload`: standard alphabet, padding optional (Twilio pads; other
/// providers' clones are not always as careful).
const PAYLOAD_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One message from Twilio, parsed (spec §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerEvent {
    /// First frame of every stream: `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
    Connected {
        /// `protocol`, `"Call"` on Twilio.
        protocol: String,
        /// `version`, `"1.0.0"` on Twilio.
        version: String,
    },
    /// Second frame: stream metadata (ids, media format, `<Parameter>`s).
    Start(StreamStart),
    /// 20 ms of caller audio.
    Media(MediaFrame),
    /// The caller pressed a key.
    Dtmf {
        /// `0`–`9`, `*`, `#` (and `A`–`D`, which other providers send).
        digit: char,
    },
    /// A mark we sent has been reached (played, or returned by a `clear`).
    Mark {
        /// The name we gave the mark.
        name: String,
    },
    /// The stream ended (hang-up, redirect); Twilio closes the socket next.
    Stop,
}

/// The `start` message's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// `MZ…`; every outbound message must carry it.
    pub stream_sid: String,
    /// `CA…`; the handle for REST call control.
    pub call_sid: String,
    /// `AC…`.
    pub account_sid: String,
    /// `["inbound"]` for `<Connect><Stream>`; empty if the peer omitted the field.
    pub tracks: Vec<String>,
    /// `mediaFormat.encoding`, `"audio/x-mulaw"` on Twilio.
    pub encoding: String,
    /// `mediaFormat.sampleRate`, 8000 on Twilio.
    pub sample_rate: u32,
    /// `mediaFormat.channels`, 1 on Twilio.
    pub channels: u32,
    /// `customParameters`: the TwiML `<Parameter>` pairs (empty if absent).
    pub custom_parameters: BTreeMap<String, String>,
}

/// One `media` message, payload already base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// Per-track counter, from 1.
    pub chunk: u64,
    /// Milliseconds since the stream started (per track; Twilio's first is ≈155, not 0).
    pub timestamp_ms: u64,
    /// `"inbound"` on a `<Connect>` stream.
    pub track: String,
    /// Raw μ-law bytes (160 = 20 ms on Twilio).
    pub payload: Vec<u8>,
}

/// Why a frame from the caller leg could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame is not JSON at all (or is truncated / too deeply nested).
    #[error("caller frame is not valid json: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Valid JSON, but not an object.
    #[error("caller frame is json but not an object (found {found})")]
    NotObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("caller frame is missing field `{field}`")]
    MissingField {
        /// Dotted path of the field, e.g. `media.payload`.
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("caller frame field `{field}` should be {expected}, found {found}")]
    WrongType {
        /// Dotted path of the field.
        field: String,
        /// What the protocol says it is.
        expected: &'static str,
        /// The JSON type actually found.
        found: &'static str,
    },
    /// A field has the right type but an unusable value (e.g. chunk `"12a"`, digit `"12"`).
    #[error("caller frame field `{field}` has invalid value {value:?}")]
    InvalidValue {
        /// Dotted path of the field.
        field: String,
        /// The offending value (truncated).
        value: String,
    },
    /// `media.payload` is not base64.
    #[error("caller media payload is not valid base64: {0}")]
    BadBase64(#[source] base64::DecodeError),
    /// `event` names something this codec does not know.
    #[error("unknown caller event {event:?}")]
    UnknownEvent {
        /// The event name (truncated).
        event: String,
    },
}

/// What we tell Twilio (spec §1.4). Borrowed so the hot path does not copy audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerCommand<'a> {
    /// μ-law bytes to append to the caller's playout queue (no WAV header).
    Media(&'a [u8]),
    /// Ask to be told (with an echoed `mark`) when playback reaches this point.
    Mark(&'a str),
    /// Barge-in: drop all queued audio; pending marks come back.
    Clear,
}

/// Parse one text frame from Twilio.
///
/// Counters (`sequenceNumber`, `media.chunk`, `media.timestamp`) arrive as JSON strings of
/// digits on Twilio; JSON numbers are accepted too, because other providers send them.
/// Unknown extra fields are ignored (Twilio adds fields over time), but every field this
/// codec needs must be present with the documented type.
pub fn parse(text: &str) -> Result<CallerEvent, WireError> {
    if let Some(media) = media_fast(text) {
        return Ok(CallerEvent::Media(media));
    }
    parse_generic(text)
}

/// [`parse`] without the `media` fast path: any frame, through a `serde_json::Value`.
fn parse_generic(text: &str) -> Result<CallerEvent, WireError> {
    let value: Value = serde_json::from_str(text).map_err(WireError::NotJson)?;
    let obj = match &value {
        Value::Object(map) => map,
        other => {
            return Err(WireError::NotObject {
                found: type_name(other),
            })
        }
    };
    let event = req_str(obj, "event", "event")?;
    match event {
        "connected" => Ok(CallerEvent::Connected {
            protocol: req_str(obj, "protocol", "protocol")?.to_owned(),
            version: req_str(obj, "version", "version")?.to_owned(),
        }),
        "start" => parse_start(obj).map(CallerEvent::Start),
        "media" => {
            let media = req_obj(obj, "media", "media")?;
            let payload = req_str(media, "payload", "media.payload")?;
            let mut bytes = Vec::with_capacity(payload.len() / 4 * 3 + 3);
            PAYLOAD_B64
                .decode_vec(payload, &mut bytes)
                .map_err(WireError::BadBase64)?;
            Ok(CallerEvent::Media(MediaFrame {
                chunk: req_counter(media, "chunk", "media.chunk")?,
                timestamp_ms: req_counter(media, "timestamp", "media.timestamp")?,
                track: req_str(media, "track", "media.track")?.to_owned(),
                payload: bytes,
            }))
        }
        "dtmf" => {
            let dtmf = req_obj(obj, "dtmf", "dtmf")?;
            let digit = req_str(dtmf, "digit", "dtmf.digit")?;
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if is_dtmf_key(c) => Ok(CallerEvent::Dtmf { digit: c }),
                _ => Err(invalid("dtmf.digit", digit)),
            }
        }
        "mark" => {
            let mark = req_obj(obj, "mark", "mark")?;
            Ok(CallerEvent::Mark {
                name: req_str(mark, "name", "mark.name")?.to_owned(),
            })
        }
        "stop" => Ok(CallerEvent::Stop),
        other => Err(WireError::UnknownEvent {
            event: truncate(other),
        }),
    }
}

// ---- fast path for `media` -------------------------------------------------------------
//
// Fifty `media` frames a second per call. These borrowed types read only what `parse` needs
// from one, ignoring other members as `parse` does; `media_fast` gives up (and `parse` takes
// the generic path, which then yields the same event or error as always) on anything but
// `event == "media"` with `chunk`, `timestamp`, `track` and `payload` present as strings
// without escapes, counters of decimal digits that fit a u64, a payload that decodes, and
// no duplicated member among those read (the generic path keeps the last duplicate; derived
// `Deserialize` rejects duplicates). Objects must be objects (`crate::json_fast::Obj`).

#[derive(serde::Deserialize)]
struct FastFrame<'a> {
    event: &'a str,
    #[serde(borrow)]
    media: Obj<FastMedia<'a>>,
}

#[derive(serde::Deserialize)]
struct FastMedia<'a> {
    chunk: &'a str,
    timestamp: &'a str,
    track: &'a str,
    payload: &'a str,
}

/// A `media` frame parsed without a `serde_json::Value`, or None to take the generic path.
fn media_fast(text: &str) -> Option<MediaFrame> {
    let Obj(frame) = serde_json::from_str::<Obj<FastFrame<'_>>>(text).ok()?;
    if frame.event != "media" {
        return None;
    }
    let media = frame.media.0;
    let counter = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok()
    };
    let mut payload = Vec::with_capacity(media.payload.len() / 4 * 3 + 3);
    PAYLOAD_B64.decode_vec(media.payload, &mut payload).ok()?;
    Some(MediaFrame {
        chunk: counter(media.chunk)?,
        timestamp_ms: counter(media.timestamp)?,
        track: media.track.to_owned(),
        payload,
    })
}

/// Serialise a command with exactly the documented keys (§1.4) — Twilio drops messages with
/// extra fields (warning 31951), so nothing else is ever added.
///
/// * media: `{"event":"media","streamSid":…,"media":{"payload":…}}`
/// * mark: `{"event":"mark","streamSid":…,"mark":{"name":…}}`
/// * clear: `{"event":"clear","streamSid":…}`
pub fn to_json(cmd: &CallerCommand<'_>, stream_sid: &str) -> String {
    let mut out = String::new();
    write_json(cmd, stream_sid, &mut out);
    out
}

/// Like [`to_json`], but writes into `out` (cleared first) so a per-call buffer can be reused
/// for every 20 ms frame instead of allocating.
pub fn write_json(cmd: &CallerCommand<'_>, stream_sid: &str, out: &mut String) {
    out.clear();
    match cmd {
        CallerCommand::Media(bytes) => {
            out.reserve(64 + stream_sid.len() + bytes.len().div_ceil(3) * 4);
            out.push_str(r#"{"event":"media","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push_str(r#","media":{"payload":""#);
            // Base64's alphabet needs no JSON escaping.
            PAYLOAD_B64.encode_string(bytes, out);
            out.push_str(r#""}}"#);
        }
        CallerCommand::Mark(name) => {
            out.push_str(r#"{"event":"mark","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push_str(r#","mark":{"name":"#);
            push_json_str(out, name);
            out.push_str("}}");
        }
        CallerCommand::Clear => {
            out.push_str(r#"{"event":"clear","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push('}');
        }
    }
}

fn parse_start(obj: &Map<String, Value>) -> Result<StreamStart, WireError> {
    let start = req_obj(obj, "start", "start")?;
    // Twilio repeats the StreamSid inside `start` and at the top level; either suffices, but
    // two different values mean the frame is not to be trusted.
    let inner = opt_str(start, "streamSid", "start.streamSid")?;
    let outer = opt_str(obj, "streamSid", "streamSid")?;
    let stream_sid = match (inner, outer) {
        (Some(a), Some(b)) if a != b => return Err(invalid("streamSid", b)),
        (Some(a), _) | (None, Some(a)) => a.to_owned(),
        (None, None) => {
            return Err(WireError::MissingField {
                field: "start.streamSid".into(),
            })
        }
    };
    let tracks = match start.get("tracks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| match t {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong("start.tracks[]", "a string", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong("start.tracks", "an array", other)),
    };
    let format = req_obj(start, "mediaFormat", "start.mediaFormat")?;
    let custom_parameters = match start.get("customParameters") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(wrong(
                    &format!("start.customParameters.{}", truncate(k)),
                    "a string",
                    other,
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong("start.customParameters", "an object", other)),
    };
    Ok(StreamStart {
        stream_sid,
        call_sid: req_str(start, "callSid", "start.callSid")?.to_owned(),
        account_sid: req_str(start, "accountSid", "start.accountSid")?.to_owned(),
        tracks,
        encoding: req_str(format, "encoding", "start.mediaFormat.encoding")?.to_owned(),
        sample_rate: req_u32(format, "sampleRate", "start.mediaFormat.sampleRate")?,
        channels: req_u32(format, "channels", "start.mediaFormat.channels")?,
        custom_parameters,
    })
}

fn is_dtmf_key(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'a'..='d')
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, WireError> {
    match obj.get(key) {
        Some(Value::Null) | None => Err(WireError::MissingField { field: path.into() }),
        Some(v) => Ok(v),
    }
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, WireError> {
    match get(obj, key, path)? {
        Value::String(s) => Ok(s),
        other => Err(wrong(path, "a string", other)),
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, WireError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong(path, "a string", other)),
    }
}

fn req_obj<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, WireError> {
    match get(obj, key, path)? {
        Value::Object(m) => Ok(m),
        other => Err(wrong(path, "an object", other)),
    }
}

/// A Twilio counter: a JSON string of decimal digits, or (other providers) a JSON number.
fn req_counter(obj: &Map<String, Value>, key: &str, path: &str) -> Result<u64, WireError> {
    match get(obj, key, path)? {
        Value::String(s) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(path, s));
            }
            s.parse::<u64>().map_err(|_| invalid(path, s))
        }
        Value::Number(n) => n.as_u64().ok_or_else(|| invalid(path, &n.to_string())),
        other => Err(wrong(path, "a string of digits", other)),
    }
}

/// `mediaFormat` numbers are JSON numbers on Twilio; strings of digits are tolerated.
fn req_u32(obj: &Map<String, Value>, key: &str, path: &str) -> Result<u32, WireError> {
    let n = match get(obj, key, path)? {
        Value::Number(n) => n.as_u64().ok_or_else(|| invalid(path, &n.to_string()))?,
        Value::String(_) => req_counter(obj, key, path)?,
        other => return Err(wrong(path, "a number", other)),
    };
    u32::try_from(n).map_err(|_| invalid(path, &n.to_string()))
}

fn wrong(path: &str, expected: &'static str, found: &Value) -> WireError {
    WireError::WrongType {
        field: path.into(),
        expected,
        found: type_name(found),
    }
}

fn invalid(path: &str, value: &str) -> WireError {
    WireError::InvalidValue {
        field: path.into(),
        value: truncate(value),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Append `s` as a JSON string literal (quotes included).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "MZ00112233445566778899aabbccddeeff";

    // Every example message of telephony.md §1.3, verbatim.
    const CONNECTED: &str = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
    const START: &str = r#"{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "AC0123456789abcdef0123456789abcdef",
    "streamSid": "MZ00112233445566778899aabbccddeeff",
    "callSid": "CAfedcba9876543210fedcba9876543210",
    "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    "customParameters": {"tenant": "acme", "callerId": "+14155550123"}
  },
  "streamSid": "MZ00112233445566778899aabbccddeeff"
}"#;
    const MEDIA: &str = r#"{
  "event": "media",
  "sequenceNumber": "2",
  "media": {"track": "inbound", "chunk": "1", "timestamp": "155", "payload": "f39///////9/f39/"},
  "streamSid": "MZ00112233445566778899aabbccddeeff"
}"#;
    const DTMF: &str = r#"{"event":"dtmf","streamSid":"MZ00112233445566778899aabbccddeeff","sequenceNumber":"5",
 "dtmf":{"track":"inbound_track","digit":"1"}}"#;
    const MARK: &str = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ00112233445566778899aabbccddeeff",
 "mark":{"name":"turn-3"}}"#;
    const STOP: &str = r#"{"event":"stop","sequenceNumber":"378","streamSid":"MZ00112233445566778899aabbccddeeff",
 "stop":{"accountSid":"AC0123456789abcdef0123456789abcdef","callSid":"CAfedcba9876543210fedcba9876543210"}}"#;

    #[test]
    fn media_fast_path_agrees_with_generic_path_or_declines() {
        let media = |inner: &str| {
            format!(
                r#"{{"event":"media","sequenceNumber":"3","streamSid":"MZ1","media":{{{inner}}}}}"#
            )
        };
        let taken = [
            MEDIA.to_owned(),
            media(r#""track":"inbound","chunk":"1","timestamp":"5","payload":"//8A""#),
            media(r#""payload":"//8","timestamp":"0","chunk":"18446744073709551615","track":"x","extra":[1,{"a":null}]"#),
            media(r#""track":"inbound","chunk":"1","timestamp":"5","payload":"""#),
            r#"{"media":{"track":"t","chunk":"1","timestamp":"2","payload":"AA=="},"event":"media","start":7,"sequenceNumber":"1","sequenceNumber":"2"}"#.to_owned(),
        ];
        for text in &taken {
            let fast = media_fast(text).unwrap_or_else(|| panic!("declined {text}"));
            assert_eq!(
                CallerEvent::Media(fast),
                parse_generic(text).unwrap(),
                "{text}"
            );
        }
        let declined = [
            media(r#""track":"inbound","chunk":1,"timestamp":"5","payload":"AA==""#),
            media(r#""track":"inbound","chunk":"1","timestamp":"+5","payload":"AA==""#),
            media(r#""track":"inbound","chunk":"","timestamp":"5","payload":"AA==""#),
            media(r#""track":"inbound","chunk":"18446744073709551616","timestamp":"5","payload":"AA==""#),
            media(r#""track":"inbound","chunk":"1","timestamp":"5","payload":"A""#),
            media(r#""track":"inbound","chunk":"1","timestamp":"5","payload":"-_==""#),
            media(r#""track":"in\u0062ound","chunk":"1","timestamp":"5","payload":"AA==""#),
            media(r#""track":null,"chunk":"1","timestamp":"5","payload":"AA==""#),
            media(r#""chunk":"1","timestamp":"5","payload":"AA==""#),
            media(r#""track":"a","track":"b","chunk":"1","timestamp":"5","payload":"AA==""#),
            r#"{"event":"media","media":["inbound","1","5","AA=="]}"#.to_owned(),
            r#"["media",{"track":"inbound","chunk":"1","timestamp":"5","payload":"AA=="}]"#.to_owned(),
            r#"{"event":"mark","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"AA=="},"mark":{"name":"m"}}"#.to_owned(),
            r#"{"event":"media","event":"media","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"AA=="}}"#.to_owned(),
        ];
        for text in &declined {
            assert!(media_fast(text).is_none(), "took {text}");
        }
    }

    #[test]
    fn spec_connected_parses() {
        assert_eq!(
            parse(CONNECTED).unwrap(),
            CallerEvent::Connected {
                protocol: "Call".into(),
                version: "1.0.0".into()
            }
        );
    }

    #[test]
    fn spec_start_parses() {
        let CallerEvent::Start(s) = parse(START).unwrap() else {
            panic!("not a start")
        };
        assert_eq!(s.stream_sid, SID);
        assert_eq!(s.call_sid, "CAfedcba9876543210fedcba9876543210");
        assert_eq!(s.account_sid, "AC0123456789abcdef0123456789abcdef");
        assert_eq!(s.tracks, vec!["inbound".to_string()]);
        assert_eq!(s.encoding, "audio/x-mulaw");
        assert_eq!((s.sample_rate, s.channels), (8000, 1));
        assert_eq!(s.custom_parameters.len(), 2);
        assert_eq!(s.custom_parameters["tenant"], "acme");
        assert_eq!(s.custom_parameters["callerId"], "+14155550123");
    }

    #[test]
    fn spec_media_parses_and_decodes_payload() {
        let CallerEvent::Media(m) = parse(MEDIA).unwrap() else {
            panic!("not media")
        };
        assert_eq!((m.chunk, m.timestamp_ms), (1, 155));
        assert_eq!(m.track, "inbound");
        // "f39///////9/f39/" is base64 of μ-law near-silence bytes.
        assert_eq!(
            m.payload,
            vec![0x7f, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x7f, 0x7f, 0x7f]
        );
    }

    #[test]
    fn spec_dtmf_mark_stop_parse() {
        assert_eq!(parse(DTMF).unwrap(), CallerEvent::Dtmf { digit: '1' });
        assert_eq!(
            parse(MARK).unwrap(),
            CallerEvent::Mark {
                name: "turn-3".into()
            }
        );
        assert_eq!(parse(STOP).unwrap(), CallerEvent::Stop);
    }

    #[test]
    fn full_size_twilio_frame_is_160_bytes() {
        let payload = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
        assert_eq!(payload.len(), 216);
        let text = format!(
            r#"{{"event":"media","sequenceNumber":"74","media":{{"track":"inbound","chunk":"73","timestamp":"1593","payload":"{payload}"}},"streamSid":"{SID}"}}"#
        );
        let CallerEvent::Media(m) = parse(&text).unwrap() else {
            panic!()
        };
        assert_eq!((m.chunk, m.timestamp_ms, m.payload.len()), (73, 1593, 160));
    }

    #[test]
    fn numeric_counters_are_accepted() {
        let text = r#"{"event":"media","media":{"track":"inbound","chunk":7,"timestamp":295,"payload":"/w=="}}"#;
        let CallerEvent::Media(m) = parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.chunk, m.timestamp_ms, m.payload.clone()),
            (7, 295, vec![0xff])
        );
        // Unpadded base64 too.
        let text = r#"{"event":"media","media":{"track":"inbound","chunk":"1","timestamp":"1","payload":"/w"}}"#;
        assert!(matches!(parse(text), Ok(CallerEvent::Media(m)) if m.payload == vec![0xff]));
    }

    #[test]
    fn start_without_custom_parameters_or_inner_sid() {
        let text = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
        let CallerEvent::Start(s) = parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(s.stream_sid, "MZ1");
        assert!(s.custom_parameters.is_empty());
    }

    #[test]
    fn malformed_json_is_not_json() {
        for bad in ["", "{", "not json", r#"{"event":"media""#, "\u{0}"] {
            assert!(matches!(parse(bad), Err(WireError::NotJson(_))), "{bad:?}");
        }
        assert!(matches!(
            parse("[1,2]"),
            Err(WireError::NotObject { found: "an array" })
        ));
        assert!(matches!(
            parse("\"media\""),
            Err(WireError::NotObject { .. })
        ));
    }

    #[test]
    fn unknown_event_is_named() {
        let err = parse(r#"{"event":"playAudio","streamSid":"MZ1"}"#).unwrap_err();
        assert!(matches!(&err, WireError::UnknownEvent { event } if event == "playAudio"));
        assert_eq!(err.to_string(), "unknown caller event \"playAudio\"");
        let huge = format!(r#"{{"event":"{}"}}"#, "x".repeat(10_000));
        let msg = parse(&huge).unwrap_err().to_string();
        assert!(
            msg.len() < 200,
            "error message must be bounded: {}",
            msg.len()
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            (r#"{"streamSid":"MZ1"}"#, "event"),
            (r#"{"event":"media"}"#, "media"),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"1","timestamp":"1"}}"#,
                "media.payload",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","timestamp":"1","payload":""}}"#,
                "media.chunk",
            ),
            (r#"{"event":"mark","mark":{}}"#, "mark.name"),
            (r#"{"event":"mark","streamSid":"MZ1"}"#, "mark"),
            (
                r#"{"event":"dtmf","dtmf":{"track":"inbound_track"}}"#,
                "dtmf.digit",
            ),
            (
                r#"{"event":"start","start":{"accountSid":"AC1","callSid":"CA1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
                "start.streamSid",
            ),
            (
                r#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"AC1","callSid":"CA1"}}"#,
                "start.mediaFormat",
            ),
            (r#"{"event":"connected","protocol":"Call"}"#, "version"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(WireError::MissingField { field }) => assert_eq!(field, want, "{text}"),
                other => panic!("{text}: expected missing {want}, got {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (r#"{"event":7}"#, "event", "a number"),
            (r#"{"event":"media","media":"abc"}"#, "media", "a string"),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"1","timestamp":"1","payload":42}}"#,
                "media.payload",
                "a number",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":true,"timestamp":"1","payload":""}}"#,
                "media.chunk",
                "a boolean",
            ),
            (
                r#"{"event":"mark","mark":{"name":["a"]}}"#,
                "mark.name",
                "an array",
            ),
            (
                r#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"AC1","callSid":"CA1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"n":1}}}"#,
                "start.customParameters.n",
                "a number",
            ),
        ];
        for (text, want_field, want_found) in cases {
            match parse(text) {
                Err(WireError::WrongType { field, found, .. }) => {
                    assert_eq!((field.as_str(), found), (want_field, want_found), "{text}")
                }
                other => panic!("{text}: expected wrong type, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"1a","timestamp":"1","payload":""}}"#,
                "media.chunk",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"1","timestamp":"-5","payload":""}}"#,
                "media.timestamp",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"","timestamp":"1","payload":""}}"#,
                "media.chunk",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":-1,"timestamp":"1","payload":""}}"#,
                "media.chunk",
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"99999999999999999999999","timestamp":"1","payload":""}}"#,
                "media.chunk",
            ),
            (r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#, "dtmf.digit"),
            (r#"{"event":"dtmf","dtmf":{"digit":""}}"#, "dtmf.digit"),
            (r#"{"event":"dtmf","dtmf":{"digit":"x"}}"#, "dtmf.digit"),
            (
                r#"{"event":"start","streamSid":"MZ2","start":{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
                "streamSid",
            ),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(WireError::InvalidValue { field, .. }) => assert_eq!(field, want, "{text}"),
                other => panic!("{text}: expected invalid {want}, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_base64_is_reported() {
        for payload in ["@@@@", "f39", "////=////", "ü"] {
            let text = format!(
                r#"{{"event":"media","media":{{"track":"inbound","chunk":"1","timestamp":"1","payload":"{payload}"}}}}"#
            );
            assert!(
                matches!(parse(&text), Err(WireError::BadBase64(_))),
                "{payload}"
            );
        }
    }

    #[test]
    fn one_mebibyte_frames_do_not_panic() {
        let mib = 1 << 20;
        // Valid: a 1 MiB payload (≈65 s of audio).
        let payload = base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; mib / 4 * 3]);
        let text = format!(
            r#"{{"event":"media","media":{{"track":"inbound","chunk":"1","timestamp":"1","payload":"{payload}"}}}}"#
        );
        assert!(
            matches!(parse(&text), Ok(CallerEvent::Media(m)) if m.payload.len() == mib / 4 * 3)
        );
        // Garbage and pathological nesting.
        let _ = parse(&"x".repeat(mib));
        let _ = parse(&"[".repeat(mib));
        let _ = parse(&"{\"a\":".repeat(mib / 5));
        let junk: String = (0..mib)
            .map(|i| char::from(b"{}[]\":,\\ae0-"[i % 12]))
            .collect();
        let _ = parse(&junk);
    }

    #[test]
    fn outbound_json_is_byte_exact() {
        // §1.4 examples (their payloads are elided in the spec; these decode to real bytes).
        let media = to_json(
            &CallerCommand::Media(&[0xfe, 0xfe, 0xfe, 0xfe, 0x7e, 0x7e]),
            SID,
        );
        assert_eq!(
            media,
            r#"{"event":"media","streamSid":"MZ00112233445566778899aabbccddeeff","media":{"payload":"/v7+/n5+"}}"#
        );
        assert_eq!(
            to_json(&CallerCommand::Mark("turn-3"), SID),
            r#"{"event":"mark","streamSid":"MZ00112233445566778899aabbccddeeff","mark":{"name":"turn-3"}}"#
        );
        assert_eq!(
            to_json(&CallerCommand::Clear, SID),
            r#"{"event":"clear","streamSid":"MZ00112233445566778899aabbccddeeff"}"#
        );
    }

    #[test]
    fn outbound_key_sets_are_exactly_documented() {
        fn keys(v: &Value) -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        }
        let media: Value =
            serde_json::from_str(&to_json(&CallerCommand::Media(&[1, 2, 3]), SID)).unwrap();
        assert_eq!(keys(&media), ["event", "media", "streamSid"]);
        assert_eq!(keys(&media["media"]), ["payload"]);
        let mark: Value = serde_json::from_str(&to_json(&CallerCommand::Mark("m"), SID)).unwrap();
        assert_eq!(keys(&mark), ["event", "mark", "streamSid"]);
        assert_eq!(keys(&mark["mark"]), ["name"]);
        let clear: Value = serde_json::from_str(&to_json(&CallerCommand::Clear, SID)).unwrap();
        assert_eq!(keys(&clear), ["event", "streamSid"]);
    }

    #[test]
    fn outbound_strings_are_json_escaped_and_payload_round_trips() {
        let name = "q\"uo\\te\n\u{1}é";
        let v: Value = serde_json::from_str(&to_json(&CallerCommand::Mark(name), SID)).unwrap();
        assert_eq!(v["mark"]["name"], name);
        let audio: Vec<u8> = (0..=255u8).cycle().take(1601).collect();
        let v: Value = serde_json::from_str(&to_json(&CallerCommand::Media(&audio), SID)).unwrap();
        let b = base64::engine::general_purpose::STANDARD
            .decode(v["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, audio);
        // Empty payload is still well-formed.
        let v: Value = serde_json::from_str(&to_json(&CallerCommand::Media(&[]), SID)).unwrap();
        assert_eq!(v["media"]["payload"], "");
    }

    #[test]
    fn write_json_reuses_buffer() {
        let mut buf = String::from("stale");
        write_json(&CallerCommand::Clear, "MZ1", &mut buf);
        assert_eq!(buf, r#"{"event":"clear","streamSid":"MZ1"}"#);
    }
}
