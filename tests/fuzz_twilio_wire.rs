//! Property tests (bounded fuzzing) for the Twilio Media Streams codec, `twilio::wire`.
//!
//! * `parse` never panics: arbitrary strings, arbitrary JSON documents, and near-valid Twilio
//!   messages with mutated fields (removed keys, wrong types, huge numbers, unicode, invalid
//!   base64, payloads up to 1 MiB).
//! * Error messages stay short whatever the peer sent (no 1 MiB log lines).
//! * Valid generated messages round-trip: media payload bytes, counters, track, mark names,
//!   DTMF digits, start metadata.
//! * `to_json` output always parses as JSON with exactly the documented keys, and its values
//!   decode back to what was sent.
//!
//! Case counts are small so `cargo test --release` stays fast; set `CALLBRIDGE_FUZZ_CASES`
//! to run every property with more cases (e.g. `CALLBRIDGE_FUZZ_CASES=20000`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use callbridge::twilio::wire::{parse, to_json, write_json, CallerCommand, CallerEvent};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

mod fuzz_support;
use fuzz_support::config;

/// Longest acceptable error message: the codec truncates echoed peer values.
const MAX_ERROR_LEN: usize = 512;

/// Any JSON value, nested a few levels, with awkward scalars.
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
        Just(json!("")),
        Just(json!("inbound")),
        Just(json!("99999999999999999999999999")),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: mostly names Twilio uses, so mutated messages stay near-valid.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "event", "media", "payload", "chunk", "timestamp", "track", "start", "streamSid",
            "callSid", "accountSid", "tracks", "mediaFormat", "encoding", "sampleRate",
            "channels", "customParameters", "mark", "name", "dtmf", "digit", "protocol",
            "version", "sequenceNumber", "stop",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// Replacement values for a mutated field: wrong types, edge numbers, unicode, bad base64.
fn arb_bad_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!(-0.5)),
        Just(json!(4294967296u64)),
        Just(json!("18446744073709551616")),
        Just(json!("-5")),
        Just(json!(" 1")),
        Just(json!("1a")),
        Just(json!("")),
        Just(json!("é")),
        Just(json!("🎵\u{0}\u{202e}")),
        Just(json!("@@@@")),
        Just(json!("f39")),
        Just(json!("////=////")),
        Just(json!("AA==AA==")),
        Just(json!("-_-_")),
        Just(json!([])),
        Just(json!({})),
        Just(json!(["inbound"])),
        ".{0,40}".prop_map(Value::String),
        arb_json(),
    ]
}

/// A valid message of each kind (Twilio's shapes), to be mutated.
fn valid_messages() -> Vec<Value> {
    vec![
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json!({
            "event": "start", "sequenceNumber": "1",
            "start": {
                "accountSid": "AC0123456789abcdef0123456789abcdef",
                "streamSid": "MZ00112233445566778899aabbccddeeff",
                "callSid": "CAfedcba9876543210fedcba9876543210",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"tenant": "acme"}
            },
            "streamSid": "MZ00112233445566778899aabbccddeeff"
        }),
        json!({
            "event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
            "media": {"track": "inbound", "chunk": "1", "timestamp": "155", "payload": "f39///////9/f39/"}
        }),
        json!({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "1"}}),
        json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "turn-3"}}),
        json!({"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}}),
    ]
}

/// One edit applied at a (random) path inside a message.
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
        // Returns true when the target is this node's child and must be removed.
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
        *v = Value::Null; // removing the root
    }
}

fn assert_bounded_error(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse(text) {
        let msg = e.to_string();
        prop_assert!(
            msg.len() <= MAX_ERROR_LEN,
            "error message of {} bytes: {}",
            msg.len(),
            &msg[..msg.len().min(200)]
        );
    }
    Ok(())
}

/// Base64 as senders produce it: padded (Twilio) or not (other providers).
fn b64(bytes: &[u8], padded: bool) -> String {
    if padded {
        STANDARD.encode(bytes)
    } else {
        STANDARD_NO_PAD.encode(bytes)
    }
}

/// A counter as Twilio (string of digits) or other providers (number) send it.
fn counter(n: u64, as_string: bool) -> Value {
    if as_string {
        json!(n.to_string())
    } else {
        json!(n)
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parse_arbitrary_strings_never_panics(text in any::<String>()) {
        assert_bounded_error(&text)?;
    }

    #[test]
    fn parse_json_like_noise_never_panics(text in "[{}\\[\\]\":,\\\\ a-z0-9.eE+\\-]{0,300}") {
        assert_bounded_error(&text)?;
    }

    #[test]
    fn parse_arbitrary_json_never_panics(v in arb_json()) {
        let text = v.to_string();
        assert_bounded_error(&text)?;
        if !v.is_object() {
            prop_assert!(parse(&text).is_err());
        }
    }

    #[test]
    fn parse_mutated_messages_never_panics(
        which in 0..6usize,
        edits in prop::collection::vec((any::<usize>(), arb_mutation()), 1..4),
        pretty in any::<bool>(),
    ) {
        let mut v = valid_messages().swap_remove(which);
        for (pick, m) in &edits {
            mutate(&mut v, *pick, m);
        }
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            v.to_string()
        };
        assert_bounded_error(&text)?;
        // Truncations of a near-valid message are never accepted as anything but an error
        // (except the empty prefix, which is also an error).
        let cut = text.len() / 2;
        if let Some(prefix) = text.get(..cut) {
            prop_assert!(parse(prefix).is_err());
        }
    }

    #[test]
    fn media_round_trips(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in any::<u64>(),
        timestamp in any::<u64>(),
        track in ".{0,16}",
        padded in any::<bool>(),
        strings in any::<(bool, bool)>(),
        extra in prop::collection::btree_map("x[a-z]{0,6}", arb_json(), 0..3),
    ) {
        let mut media = Map::new();
        media.insert("track".into(), json!(track));
        media.insert("chunk".into(), counter(chunk, strings.0));
        media.insert("timestamp".into(), counter(timestamp, strings.1));
        media.insert("payload".into(), json!(b64(&payload, padded)));
        let mut msg = Map::new();
        msg.insert("event".into(), json!("media"));
        msg.insert("sequenceNumber".into(), json!("7"));
        msg.insert("streamSid".into(), json!("MZ1"));
        msg.insert("media".into(), Value::Object(media));
        for (k, v) in extra {
            msg.insert(k, v); // unknown fields are ignored
        }
        let text = Value::Object(msg).to_string();
        match parse(&text) {
            Ok(CallerEvent::Media(m)) => {
                prop_assert_eq!(m.payload, payload);
                prop_assert_eq!(m.chunk, chunk);
                prop_assert_eq!(m.timestamp_ms, timestamp);
                prop_assert_eq!(m.track, track);
            }
            other => prop_assert!(false, "not media: {:?}", other),
        }
    }

    #[test]
    fn mark_dtmf_connected_round_trip(
        name in any::<String>(),
        digit in prop::sample::select("0123456789*#ABCDabcd".chars().collect::<Vec<_>>()),
        protocol in any::<String>(),
        version in any::<String>(),
    ) {
        let mark = json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}});
        prop_assert_eq!(
            parse(&mark.to_string()).unwrap(),
            CallerEvent::Mark { name: name.clone() }
        );
        let dtmf = json!({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit.to_string()}});
        prop_assert_eq!(parse(&dtmf.to_string()).unwrap(), CallerEvent::Dtmf { digit });
        let connected = json!({"event": "connected", "protocol": protocol, "version": version});
        prop_assert_eq!(
            parse(&connected.to_string()).unwrap(),
            CallerEvent::Connected { protocol, version }
        );
    }

    #[test]
    fn invalid_dtmf_digits_are_errors(digit in any::<String>()) {
        let valid = digit.chars().count() == 1
            && digit.chars().all(|c| c.is_ascii_digit() || "*#ABCDabcd".contains(c));
        let text = json!({"event": "dtmf", "dtmf": {"digit": digit}}).to_string();
        prop_assert_eq!(parse(&text).is_ok(), valid);
    }

    #[test]
    fn start_round_trips(
        stream_sid in ".{1,40}",
        call_sid in ".{0,40}",
        account_sid in ".{0,40}",
        tracks in prop::collection::vec(".{0,10}", 0..3),
        encoding in ".{0,20}",
        sample_rate in any::<u32>(),
        channels in any::<u32>(),
        params in prop::collection::btree_map(".{0,10}", ".{0,20}", 0..5),
        sid_place in 0..3u8,
        rate_as_string in any::<bool>(),
    ) {
        let mut start = json!({
            "accountSid": account_sid, "callSid": call_sid, "tracks": tracks,
            "mediaFormat": {
                "encoding": encoding,
                "sampleRate": if rate_as_string { json!(sample_rate.to_string()) } else { json!(sample_rate) },
                "channels": channels,
            },
            "customParameters": params,
        });
        let mut msg = json!({"event": "start", "sequenceNumber": "1"});
        // The StreamSid inside `start`, at the top level, or both (equal).
        if sid_place != 1 {
            start["streamSid"] = json!(stream_sid);
        }
        if sid_place != 0 {
            msg["streamSid"] = json!(stream_sid);
        }
        msg["start"] = start;
        match parse(&msg.to_string()) {
            Ok(CallerEvent::Start(s)) => {
                prop_assert_eq!(s.stream_sid, stream_sid);
                prop_assert_eq!(s.call_sid, call_sid);
                prop_assert_eq!(s.account_sid, account_sid);
                prop_assert_eq!(s.tracks, tracks);
                prop_assert_eq!(s.encoding, encoding);
                prop_assert_eq!((s.sample_rate, s.channels), (sample_rate, channels));
                prop_assert_eq!(s.custom_parameters, params.into_iter().collect::<BTreeMap<_, _>>());
            }
            other => prop_assert!(false, "not start: {:?}", other),
        }
    }

    #[test]
    fn out_of_range_counters_are_errors(big in (u64::MAX as u128 + 1)..=u128::MAX, as_string in any::<bool>()) {
        let chunk = if as_string { json!(big.to_string()) } else { serde_json::from_str::<Value>(&big.to_string()).unwrap() };
        let text = json!({"event": "media", "media": {"track": "inbound", "chunk": chunk, "timestamp": "1", "payload": ""}}).to_string();
        prop_assert!(parse(&text).is_err());
    }

    #[test]
    fn to_json_has_exactly_the_documented_keys(
        kind in 0..3u8,
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        name in any::<String>(),
        stream_sid in any::<String>(),
        stale in any::<String>(),
    ) {
        let cmd = match kind {
            0 => CallerCommand::Media(&bytes),
            1 => CallerCommand::Mark(&name),
            _ => CallerCommand::Clear,
        };
        let text = to_json(&cmd, &stream_sid);
        let mut reused = stale;
        write_json(&cmd, &stream_sid, &mut reused);
        prop_assert_eq!(&reused, &text);
        let v: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let obj = v.as_object().unwrap();
        let keys = |o: &Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
        prop_assert_eq!(&obj["streamSid"], &json!(stream_sid));
        match cmd {
            CallerCommand::Media(b) => {
                prop_assert_eq!(keys(obj), vec!["event", "media", "streamSid"]);
                prop_assert_eq!(&obj["event"], "media");
                let media = obj["media"].as_object().unwrap();
                prop_assert_eq!(keys(media), vec!["payload"]);
                let decoded = STANDARD.decode(media["payload"].as_str().unwrap()).unwrap();
                prop_assert_eq!(decoded, b.to_vec());
            }
            CallerCommand::Mark(n) => {
                prop_assert_eq!(keys(obj), vec!["event", "mark", "streamSid"]);
                prop_assert_eq!(&obj["event"], "mark");
                let mark = obj["mark"].as_object().unwrap();
                prop_assert_eq!(keys(mark), vec!["name"]);
                prop_assert_eq!(&mark["name"], &json!(n));
                // Twilio echoes the mark back in the same shape; our parser reads it.
                prop_assert_eq!(parse(&text).unwrap(), CallerEvent::Mark { name: n.to_owned() });
            }
            CallerCommand::Clear => {
                prop_assert_eq!(keys(obj), vec!["event", "streamSid"]);
                prop_assert_eq!(&obj["event"], "clear");
            }
        }
    }
}

proptest! {
    // Big inputs are slow to generate; a handful of cases covers the sizes.
    #![proptest_config(config(12))]

    #[test]
    fn mebibyte_payloads_round_trip_or_fail_cleanly(
        len in prop_oneof![Just(1usize << 20), Just((1usize << 20) / 4 * 3), 0..(1usize << 20)],
        seed in any::<u8>(),
        corrupt_at in prop::option::of(any::<usize>()),
        corrupt_with in prop::sample::select(vec!['@', '=', 'é', '-', ' ', '\\']),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let mut b = STANDARD.encode(&payload);
        if let Some(at) = corrupt_at {
            if !b.is_empty() {
                let at = at % b.len();
                b.replace_range(at..at + 1, &corrupt_with.to_string());
            }
        }
        let text = json!({"event": "media", "media": {"track": "inbound", "chunk": "1", "timestamp": "1", "payload": b}}).to_string();
        match (parse(&text), corrupt_at.is_some() && !payload.is_empty()) {
            (Ok(CallerEvent::Media(m)), false) => prop_assert!(m.payload == payload),
            (Ok(other), false) => prop_assert!(false, "not media: {:?}", other),
            (Ok(_), true) => {} // e.g. '=' replacing trailing padding still decodes
            (Err(e), corrupted) => {
                prop_assert!(corrupted, "valid payload rejected: {}", e);
                prop_assert!(e.to_string().len() <= MAX_ERROR_LEN);
            }
        }
    }

    #[test]
    fn mebibyte_garbage_never_panics(
        len in (1usize << 19)..=(1usize << 20),
        alphabet in prop::sample::select(vec!["{}[]\":,\\ae0-", "[", "{\"a\":", "x", "\"\\u"]),
        rotate in any::<usize>(),
    ) {
        let a: Vec<char> = alphabet.chars().collect();
        let text: String = (0..len).map(|i| a[(i + rotate) % a.len()]).collect();
        assert_bounded_error(&text)?;
    }
}
