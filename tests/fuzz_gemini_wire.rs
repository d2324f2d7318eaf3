//! Property tests (bounded fuzzing) for the Gemini Live codec, `gemini::wire`.
//!
//! * `decompose` never panics: arbitrary bytes, arbitrary JSON, and near-valid server frames
//!   (random parts, fields, key spellings, base64 variants) with random mutations.
//! * Valid generated frames decompose into exactly the documented events in the documented
//!   order; audio parts round-trip byte-for-byte whatever the base64 flavour (standard or
//!   URL-safe, padded or not) and key spelling (camelCase or snake_case).
//! * `to_json` of random `ModelCommand`s is valid JSON carrying what was sent.
//!
//! Set `CALLBRIDGE_FUZZ_CASES` to run every property with more cases.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use callbridge::gemini::wire::{
    decompose, to_json, FunctionCall, FunctionResponse, ModelCommand, ModelEvent, Role, Turn,
    UsageMetadata, WireError,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

mod fuzz_support;
use fuzz_support::config;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys the codec looks at (both spellings) and some it does not.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "setupComplete", "serverContent", "server_content", "modelTurn", "model_turn",
            "parts", "inlineData", "inline_data", "mimeType", "mime_type", "data", "text",
            "thought", "interrupted", "turnComplete", "turn_complete", "generationComplete",
            "inputTranscription", "outputTranscription", "toolCall", "tool_call",
            "functionCalls", "id", "name", "args", "toolCallCancellation", "ids", "goAway",
            "timeLeft", "time_left", "sessionResumptionUpdate", "newHandle", "resumable",
            "usageMetadata", "promptTokenCount", "promptTokensDetails", "modality",
            "tokenCount",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

fn arb_bad_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(-0.5)),
        Just(json!("18446744073709551616")),
        Just(json!("18446744073709551615s")),
        Just(json!("18446744073709551615.999999999s")),
        Just(json!("-1s")),
        Just(json!("1.s")),
        Just(json!(".5s")),
        Just(json!("1.0000000001s")),
        Just(json!("1e3s")),
        Just(json!("")),
        Just(json!("s")),
        Just(json!("audio/pcm;rate=16000")),
        Just(json!("audio/pcm;rate=")),
        Just(json!("AUDIO/PCM;;;")),
        Just(json!("audio/")),
        Just(json!("image/png")),
        Just(json!("@@@@")),
        Just(json!("A")),
        Just(json!("AA=A")),
        Just(json!("-_+/")),
        Just(json!("🎵\u{0}")),
        Just(json!([])),
        Just(json!({})),
        ".{0,40}".prop_map(Value::String),
        arb_json(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    AddKey(String, Value),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => Just(Mutation::Remove),
        3 => arb_bad_value().prop_map(Mutation::Replace),
        1 => (arb_key(), arb_bad_value()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
    ]
}

/// Applies `m` to the `pick`-th node (depth-first) of `v`.
fn mutate(v: &mut Value, pick: usize, m: &Mutation) {
    fn nodes(v: &Value) -> usize {
        1 + match v {
            Value::Object(o) => o.values().map(nodes).sum(),
            Value::Array(a) => a.iter().map(nodes).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, idx: &mut usize, m: &Mutation) -> bool {
        if *idx == 0 {
            match m {
                Mutation::Remove => return true,
                Mutation::Replace(new) => *v = new.clone(),
                Mutation::AddKey(k, new) => {
                    if let Value::Object(o) = v {
                        o.insert(k.clone(), new.clone());
                    } else {
                        *v = new.clone();
                    }
                }
            }
            *idx = usize::MAX;
            return false;
        }
        *idx -= 1;
        match v {
            Value::Object(o) => {
                let keys: Vec<String> = o.keys().cloned().collect();
                for k in keys {
                    if *idx == usize::MAX {
                        break;
                    }
                    if walk(o.get_mut(&k).unwrap(), idx, m) {
                        o.remove(&k);
                        *idx = usize::MAX;
                    }
                }
            }
            Value::Array(a) => {
                let mut i = 0;
                while i < a.len() && *idx != usize::MAX {
                    if walk(&mut a[i], idx, m) {
                        a.remove(i);
                        *idx = usize::MAX;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        false
    }
    let n = nodes(v);
    let mut idx = pick % n;
    if walk(v, &mut idx, m) {
        *v = Value::Null;
    }
}

// ---------------------------------------------------------------------------------------
// Valid frames with their expected events.

/// The four base64 flavours a server might use.
fn encode(bytes: &[u8], flavour: u8) -> String {
    match flavour % 4 {
        0 => STANDARD.encode(bytes),
        1 => STANDARD_NO_PAD.encode(bytes),
        2 => URL_SAFE.encode(bytes),
        _ => URL_SAFE_NO_PAD.encode(bytes),
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
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

/// Spells each key camelCase or snake_case, per a random bit stream.
struct Spelling {
    bits: Vec<bool>,
    i: usize,
}

impl Spelling {
    fn key(&mut self, camel: &str) -> String {
        self.i += 1;
        if self.bits[self.i % self.bits.len()] {
            snake(camel)
        } else {
            camel.to_owned()
        }
    }
}

#[derive(Debug, Clone)]
enum Part {
    Audio {
        pcm: Vec<u8>,
        flavour: u8,
        mime: &'static str,
    },
    /// `data` absent or null: no event.
    NoData {
        null: bool,
    },
    Text {
        text: String,
        thought: Option<bool>,
    },
    /// Non-audio inline media is ignored.
    Image(Vec<u8>),
}

fn arb_part() -> impl Strategy<Value = Part> {
    prop_oneof![
        4 => (
            prop::collection::vec(any::<u8>(), 0..3000),
            any::<u8>(),
            prop::sample::select(vec![
                "audio/pcm;rate=24000",
                "audio/pcm",
                "AUDIO/PCM; rate=24000",
                "audio/pcm;rate=24000;channels=1",
                "audio/pcm ; codec=s16le",
            ]),
        )
            .prop_map(|(pcm, flavour, mime)| Part::Audio { pcm, flavour, mime }),
        1 => any::<bool>().prop_map(|null| Part::NoData { null }),
        2 => (".{0,30}", prop::option::of(any::<bool>()))
            .prop_map(|(text, thought)| Part::Text { text, thought }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Part::Image),
    ]
}

/// prompt, response and total token counts, and response details (modality, count).
type Usage = (u64, u64, u64, Vec<(Option<String>, u64)>);

#[derive(Debug, Clone)]
struct Frame {
    setup_complete: bool,
    input_transcription: Option<String>,
    parts: Option<Vec<Part>>,
    output_transcription: Option<String>,
    flags: [Option<bool>; 3],
    tool_calls: Option<Vec<(String, String, Option<Value>)>>,
    cancellation: Option<Vec<String>>,
    go_away: Option<Option<(u64, String)>>,
    resumption: Option<(Option<String>, Option<bool>)>,
    usage: Option<Usage>,
    unknown: Vec<String>,
    spelling: Vec<bool>,
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let content = (
        any::<bool>(),
        prop::option::of(".{0,20}"),
        prop::option::of(prop::collection::vec(arb_part(), 0..5)),
        prop::option::of(".{0,20}"),
        prop::array::uniform3(prop::option::of(any::<bool>())),
    );
    let rest = (
        prop::option::of(prop::collection::vec(
            (".{0,12}", ".{0,12}", prop::option::of(arb_json())),
            0..3,
        )),
        prop::option::of(prop::collection::vec(".{0,12}", 0..3)),
        prop::option::of(prop::option::of((0..100_000u64, "[0-9]{0,9}"))),
        prop::option::of((prop::option::of(".{0,20}"), prop::option::of(any::<bool>()))),
        prop::option::of((
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec((prop::option::of("[A-Z]{1,8}"), any::<u64>()), 0..3),
        )),
        prop::collection::vec("zz[a-z_]{0,6}", 0..2),
        prop::collection::vec(any::<bool>(), 1..16),
    );
    (content, rest).prop_map(
        |(
            (setup_complete, input_transcription, parts, output_transcription, flags),
            (tool_calls, cancellation, go_away, resumption, usage, unknown, spelling),
        )| Frame {
            setup_complete,
            input_transcription,
            parts,
            output_transcription,
            flags,
            tool_calls,
            cancellation,
            go_away,
            resumption,
            usage,
            unknown,
            spelling,
        },
    )
}

fn reparse(v: &Value) -> Value {
    serde_json::from_str(&v.to_string()).unwrap()
}

/// Builds the JSON of `f` and the events `decompose` must return for it.
fn render(f: &Frame) -> (Value, Vec<ModelEvent>) {
    let mut k = Spelling {
        bits: f.spelling.clone(),
        i: 0,
    };
    let mut top = Map::new();
    let mut want = Vec::new();
    if f.setup_complete {
        top.insert(k.key("setupComplete"), json!({}));
        want.push(ModelEvent::SetupComplete);
    }
    let has_content = f.input_transcription.is_some()
        || f.parts.is_some()
        || f.output_transcription.is_some()
        || f.flags.iter().any(Option::is_some);
    if has_content {
        let mut sc = Map::new();
        if let Some(t) = &f.input_transcription {
            sc.insert(k.key("inputTranscription"), json!({"text": t}));
            if !t.is_empty() {
                want.push(ModelEvent::InputTranscription(t.clone()));
            }
        }
        if let Some(parts) = &f.parts {
            let mut out = Vec::new();
            for p in parts {
                let mut part = Map::new();
                match p {
                    Part::Audio { pcm, flavour, mime } => {
                        let mut inline = Map::new();
                        inline.insert(k.key("mimeType"), json!(mime));
                        inline.insert("data".into(), json!(encode(pcm, *flavour)));
                        part.insert(k.key("inlineData"), Value::Object(inline));
                        if !pcm.is_empty() {
                            want.push(ModelEvent::Audio(pcm.clone()));
                        }
                    }
                    Part::NoData { null } => {
                        let mut inline = Map::new();
                        inline.insert(k.key("mimeType"), json!("audio/pcm;rate=24000"));
                        if *null {
                            inline.insert("data".into(), Value::Null);
                        }
                        part.insert(k.key("inlineData"), Value::Object(inline));
                    }
                    Part::Text { text, thought } => {
                        part.insert("text".into(), json!(text));
                        if let Some(t) = thought {
                            part.insert("thought".into(), json!(t));
                        }
                        if !text.is_empty() && *thought != Some(true) {
                            want.push(ModelEvent::Text(text.clone()));
                        }
                    }
                    Part::Image(bytes) => {
                        part.insert(
                            k.key("inlineData"),
                            json!({"mimeType": "image/png", "data": STANDARD.encode(bytes)}),
                        );
                    }
                }
                out.push(Value::Object(part));
            }
            sc.insert(k.key("modelTurn"), json!({ "parts": out }));
        }
        if let Some(t) = &f.output_transcription {
            sc.insert(k.key("outputTranscription"), json!({"text": t}));
            if !t.is_empty() {
                want.push(ModelEvent::OutputTranscription(t.clone()));
            }
        }
        let names = ["interrupted", "generationComplete", "turnComplete"];
        let events = [
            ModelEvent::Interrupted,
            ModelEvent::GenerationComplete,
            ModelEvent::TurnComplete,
        ];
        for ((flag, name), ev) in f.flags.iter().zip(names).zip(events) {
            if let Some(b) = flag {
                sc.insert(k.key(name), json!(b));
                if *b {
                    want.push(ev);
                }
            }
        }
        top.insert(k.key("serverContent"), Value::Object(sc));
    }
    if let Some(calls) = &f.tool_calls {
        let mut list = Vec::new();
        let mut evs = Vec::new();
        for (id, name, args) in calls {
            let mut c = json!({"id": id, "name": name});
            if let Some(a) = args {
                c["args"] = a.clone();
            }
            list.push(c);
            evs.push(FunctionCall {
                id: id.clone(),
                name: name.clone(),
                args: match args {
                    None | Some(Value::Null) => json!({}),
                    // What a JSON text round trip gives (serde_json's default float parsing
                    // is not exact, so compare against the same parse).
                    Some(a) => reparse(a),
                },
            });
        }
        top.insert(k.key("toolCall"), json!({ k.key("functionCalls"): list }));
        want.push(ModelEvent::ToolCall(evs));
    }
    if let Some(ids) = &f.cancellation {
        top.insert(k.key("toolCallCancellation"), json!({ "ids": ids }));
        want.push(ModelEvent::ToolCallCancellation(ids.clone()));
    }
    if let Some(ga) = &f.go_away {
        let mut obj = Map::new();
        let time_left = ga.as_ref().map(|(secs, frac)| {
            let text = if frac.is_empty() {
                format!("{secs}s")
            } else {
                format!("{secs}.{frac}s")
            };
            obj.insert(k.key("timeLeft"), json!(text));
            let nanos: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}").parse().unwrap()
            };
            Duration::new(*secs, nanos)
        });
        top.insert(k.key("goAway"), Value::Object(obj));
        want.push(ModelEvent::GoAway { time_left });
    }
    if let Some((handle, resumable)) = &f.resumption {
        let mut obj = Map::new();
        if let Some(h) = handle {
            obj.insert(k.key("newHandle"), json!(h));
        }
        if let Some(r) = resumable {
            obj.insert("resumable".into(), json!(r));
        }
        top.insert(k.key("sessionResumptionUpdate"), Value::Object(obj));
        want.push(ModelEvent::SessionResumptionUpdate {
            new_handle: handle.clone().filter(|h| !h.is_empty()),
            resumable: resumable.unwrap_or(false),
        });
    }
    if let Some((p, r, t, details)) = &f.usage {
        let list: Vec<Value> = details
            .iter()
            .map(|(m, n)| {
                let mut e = json!({ k.key("tokenCount"): n });
                if let Some(m) = m {
                    e["modality"] = json!(m);
                }
                e
            })
            .collect();
        let obj = json!({
            k.key("promptTokenCount"): p,
            // Counts as strings of digits are tolerated.
            k.key("responseTokenCount"): r.to_string(),
            k.key("totalTokenCount"): t,
            k.key("responseTokensDetails"): list,
        });
        top.insert(k.key("usageMetadata"), obj);
        want.push(ModelEvent::Usage(UsageMetadata {
            prompt_token_count: *p,
            response_token_count: *r,
            total_token_count: *t,
            prompt_details: Vec::new(),
            response_details: details
                .iter()
                .map(|(m, n)| {
                    (
                        m.clone().unwrap_or_else(|| "MODALITY_UNSPECIFIED".into()),
                        *n,
                    )
                })
                .collect(),
            thoughts_token_count: 0,
        }));
    }
    for u in &f.unknown {
        top.insert(u.clone(), json!({"x": 1}));
    }
    // Unknown members come last, in the map's own key order.
    for key in top.keys() {
        if key.starts_with("zz") {
            want.push(ModelEvent::Unknown(key.clone()));
        }
    }
    (Value::Object(top), want)
}

fn arb_command_parts(
) -> impl Strategy<Value = (u8, Vec<u8>, String, Vec<Turn>, bool, Vec<FunctionResponse>)> {
    let turn = (any::<bool>(), any::<String>()).prop_map(|(user, text)| Turn {
        role: if user { Role::User } else { Role::Model },
        text,
    });
    let response =
        (any::<String>(), any::<String>(), arb_json()).prop_map(|(id, name, response)| {
            FunctionResponse {
                id,
                name,
                response,
                scheduling: None,
            }
        });
    (
        0..7u8,
        prop::collection::vec(any::<u8>(), 0..2000),
        any::<String>(),
        prop::collection::vec(turn, 0..4),
        any::<bool>(),
        prop::collection::vec(response, 0..4),
    )
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn decompose_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let r = decompose(&bytes);
        if std::str::from_utf8(&bytes).is_err() {
            prop_assert!(matches!(r, Err(WireError::NotUtf8(_))));
        }
    }

    #[test]
    fn decompose_json_like_noise_never_panics(text in "[{}\\[\\]\":,\\\\ a-zA-Z0-9._=+/\\-]{0,300}") {
        let _ = decompose(text.as_bytes());
    }

    #[test]
    fn decompose_arbitrary_json_never_panics(v in arb_json()) {
        let r = decompose(v.to_string().as_bytes());
        if !v.is_object() {
            prop_assert!(matches!(r, Err(WireError::NotObject { .. })), "{:?}", r);
        }
    }

    #[test]
    fn valid_frames_give_exactly_the_documented_events(f in arb_frame()) {
        let (v, want) = render(&f);
        let text = v.to_string();
        match decompose(text.as_bytes()) {
            Ok(got) => prop_assert_eq!(got, want, "frame {}", text),
            Err(e) => prop_assert!(false, "valid frame rejected: {}: {}", e, text),
        }
    }

    #[test]
    fn near_valid_frames_never_panic(
        f in arb_frame(),
        edits in prop::collection::vec((any::<usize>(), arb_mutation()), 1..4),
    ) {
        let (mut v, _) = render(&f);
        for (pick, m) in &edits {
            mutate(&mut v, *pick, m);
        }
        let text = v.to_string();
        let _ = decompose(text.as_bytes());
        // Any byte-level damage too.
        let mut bytes = text.into_bytes();
        if let Some((pick, _)) = edits.first() {
            if !bytes.is_empty() {
                let at = pick % bytes.len();
                bytes[at] ^= 0x80;
                let _ = decompose(&bytes);
                bytes.truncate(at);
                let _ = decompose(&bytes);
            }
        }
    }

    #[test]
    fn audio_parts_round_trip(
        chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..5000), any::<u8>()), 1..6),
        snake_keys in any::<bool>(),
    ) {
        let key = |c: &str| if snake_keys { snake(c) } else { c.to_owned() };
        let parts: Vec<Value> = chunks
            .iter()
            .map(|(pcm, flavour)| json!({ key("inlineData"): {
                key("mimeType"): "audio/pcm;rate=24000",
                "data": encode(pcm, *flavour),
            }}))
            .collect();
        let frame = json!({ key("serverContent"): { key("modelTurn"): { "parts": parts } } });
        let got = decompose(frame.to_string().as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<ModelEvent> = chunks
            .iter()
            .filter(|(pcm, _)| !pcm.is_empty())
            .map(|(pcm, _)| ModelEvent::Audio(pcm.clone()))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn corrupted_audio_base64_is_an_error_not_a_panic(
        pcm in prop::collection::vec(any::<u8>(), 1..600),
        flavour in any::<u8>(),
        at in any::<usize>(),
        bad in prop::sample::select(vec!['@', '!', ' ', 'é', '.', '"']),
    ) {
        let mut data = encode(&pcm, flavour);
        let at = at % data.len();
        data.replace_range(at..at + 1, &bad.to_string());
        let frame = json!({"serverContent": {"modelTurn": {"parts": [
            {"inlineData": {"mimeType": "audio/pcm", "data": data}}
        ]}}});
        let r = decompose(frame.to_string().as_bytes());
        prop_assert!(matches!(r, Err(WireError::BadBase64 { .. })), "{:?}", r);
    }

    #[test]
    fn to_json_of_model_commands_is_valid_json((kind, pcm, text, turns, complete, responses) in arb_command_parts()) {
        let cmd = match kind {
            0 => ModelCommand::Audio(&pcm),
            1 => ModelCommand::AudioStreamEnd,
            2 => ModelCommand::ActivityStart,
            3 => ModelCommand::ActivityEnd,
            4 => ModelCommand::Text(&text),
            5 => ModelCommand::ClientContent { turns: &turns, turn_complete: complete },
            _ => ModelCommand::ToolResponse(&responses),
        };
        let out = to_json(&cmd);
        let v: Value = serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        let obj = v.as_object().unwrap();
        prop_assert_eq!(obj.len(), 1, "one top-level member: {}", out);
        match cmd {
            ModelCommand::Audio(b) => {
                let blob = &v["realtimeInput"]["audio"];
                prop_assert_eq!(&blob["mimeType"], "audio/pcm;rate=16000");
                let decoded = STANDARD.decode(blob["data"].as_str().unwrap()).unwrap();
                prop_assert_eq!(decoded, b.to_vec());
            }
            ModelCommand::AudioStreamEnd => prop_assert_eq!(&v["realtimeInput"]["audioStreamEnd"], true),
            ModelCommand::ActivityStart => prop_assert_eq!(&v["realtimeInput"]["activityStart"], &json!({})),
            ModelCommand::ActivityEnd => prop_assert_eq!(&v["realtimeInput"]["activityEnd"], &json!({})),
            ModelCommand::Text(t) => prop_assert_eq!(&v["realtimeInput"]["text"], &json!(t)),
            ModelCommand::ClientContent { turns, turn_complete } => {
                let cc = &v["clientContent"];
                prop_assert_eq!(&cc["turnComplete"], &json!(turn_complete));
                let got = cc.get("turns").and_then(Value::as_array).cloned().unwrap_or_default();
                prop_assert_eq!(got.len(), turns.len());
                for (g, t) in got.iter().zip(turns) {
                    let role = if t.role == Role::User { "user" } else { "model" };
                    prop_assert_eq!(&g["role"], role);
                    prop_assert_eq!(&g["parts"], &json!([{"text": t.text}]));
                }
            }
            ModelCommand::ToolResponse(rs) => {
                let got = v["toolResponse"]["functionResponses"].as_array().unwrap();
                prop_assert_eq!(got.len(), rs.len());
                for (g, r) in got.iter().zip(rs) {
                    prop_assert_eq!(&g["id"], &json!(r.id));
                    prop_assert_eq!(&g["name"], &json!(r.name));
                    prop_assert_eq!(&g["response"], &reparse(&r.response));
                }
            }
        }
    }
}
