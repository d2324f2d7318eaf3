//! The hostile-input corpus (`tests/corpus/`): every file is fed to the real production parser
//! or handler of its leg, and the outcome must match its name: `accept-*` must be accepted
//! (and give a sane value), `reject-*` must be refused with a clear error. A panic, a 5xx or a
//! dropped connection is wrong for both. Each directory's test collects every mismatch and
//! fails once, naming each file; `--nocapture` shows how many inputs each directory holds.
//!
//! * `gemini_ws/`: server frames from the Gemini Live API, through `gemini::wire::decompose`
//!   (what the call driver runs on every model frame; `.bin` are binary frames, `.txt` and
//!   `.json` text frames). Token counts of accepted frames also go through
//!   `ops::journal::TokenUsage::add`, which the call record and the metrics run on each.
//! * `twilio_ws/`: caller-leg Media Streams frames (Twilio and other providers' dialects),
//!   through `twilio::wire::parse` (what the driver runs on every text frame). `.bin` are
//!   binary frames, which the driver ignores (Twilio sends text): always rejected.
//! * `webhook_form/`: bodies of `POST /twilio/voice`, through the route of a real bridge
//!   (the body cap, the field cap, the UTF-8 check and the form/JSON decoding live there),
//!   signed with a valid `X-Twilio-Signature`. `.json` bodies are sent as Twilio sends JSON:
//!   `bodySHA256` in the query string, the URL alone signed (the route decides on that, not on
//!   `Content-Type`).
//! * `operator_api/`: raw HTTP requests (`METHOD target`, headers, blank line, body) written
//!   to the operator API of one real bridge. `%TOKEN%` is the operator token; the call id
//!   `0123456789abcdef` (and `0123456789ABCDEF`) stands for a live call's id; requests with
//!   no `Authorization` header get the right one unless they say `x-corpus-auth: none`.
//!   Accepted = 2xx (101/3xx would count too), rejected = 4xx.
//! * `config/`: TOML files through `Config::load` with a fixed environment (secrets come
//!   from the environment only).
//!
//! Files renamed (accept <-> reject) because the file, not the code, was wrong:
//! * `twilio_ws/accept-telnyx-media-snake-case-envelope.json` ->
//!   `reject-telnyx-media-payload-trailing-bits-set.json`: its payload `no+Jho==` (the spec's
//!   elided `no+Jho…` completed by hand) has non-zero trailing bits, non-canonical base64 that
//!   `reject-media-base64-trailing-bits-set.json` says must be refused. The accept name now
//!   holds the same frame with the canonical payload `no+Jhg==`, so the snake_case envelope
//!   is still covered.

mod common;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use callbridge::config::{Config, Secret, TransferDestination};
use callbridge::gemini::wire::{self as gwire, InteractionStatus, ModelEvent, UsageMetadata};
use callbridge::ops::journal::TokenUsage;
use callbridge::sim::caller::{Script, SimCallerHandle};
use callbridge::sim::gemini::{Reply, Scenario};
use callbridge::twilio::signature::{body_sha256_hex, compute_signature};
use callbridge::twilio::webhook;
use callbridge::twilio::wire::{self as twire, CallerEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Harness, AUTH_TOKEN, PUBLIC_URL};

/// Fewest files a directory may hold (so an emptied directory cannot pass).
const MIN_FILES: usize = 40;
/// Fewest files in `config/`.
const MIN_CONFIG_FILES: usize = 30;

/// What one input did.
#[derive(Debug)]
enum Outcome {
    /// Accepted, with a short description of the value.
    Accepted(String),
    /// Refused, with the error.
    Rejected(String),
    /// Neither: a panic, a 5xx, a dropped connection, an insane value.
    Failed(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Accept,
    Reject,
}

/// The corpus files of `dir`, sorted, with what their names expect.
fn corpus(dir: &str) -> Vec<(String, PathBuf, Option<Expect>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<(String, PathBuf, Option<Expect>)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let expect = if name.starts_with("accept-") {
                Some(Expect::Accept)
            } else if name.starts_with("reject-") {
                Some(Expect::Reject)
            } else {
                None
            };
            (name, p, expect)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Records one outcome; returns the mismatch line, if any.
fn judge(name: &str, expect: Option<Expect>, outcome: &Outcome) -> Option<String> {
    let Some(expect) = expect else {
        return Some(format!(
            "{name}: not named accept-* or reject-* ({outcome:?})"
        ));
    };
    match (expect, outcome) {
        (Expect::Accept, Outcome::Accepted(_)) | (Expect::Reject, Outcome::Rejected(_)) => None,
        (Expect::Accept, Outcome::Rejected(e)) => {
            Some(format!("{name}: should be accepted, was rejected: {e}"))
        }
        (Expect::Reject, Outcome::Accepted(v)) => {
            Some(format!("{name}: should be rejected, was accepted: {v}"))
        }
        (_, Outcome::Failed(e)) => Some(format!("{name}: FAILED: {e}")),
    }
}

/// With `CORPUS_VERBOSE=1`, prints what every input did.
fn note(dir: &str, name: &str, outcome: &Outcome) {
    if std::env::var_os("CORPUS_VERBOSE").is_some() {
        println!("{dir}/{name}: {outcome:?}");
    }
}

/// Runs a synchronous parser, turning a panic into [`Outcome::Failed`].
fn guarded(f: impl FnOnce() -> Outcome) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Outcome::Failed(format!("panicked: {msg}"))
        }
    }
}

/// Shortens a description for the report.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(160).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Fails once with every mismatch of a directory.
fn report(dir: &str, count: usize, min: usize, mismatches: Vec<String>) {
    println!(
        "corpus {dir}: {count} inputs, {} mismatches",
        mismatches.len()
    );
    assert!(
        count >= min,
        "tests/corpus/{dir} holds {count} files; expected at least {min}"
    );
    assert!(
        mismatches.is_empty(),
        "tests/corpus/{dir}: {} of {count} inputs did not match their names:\n  {}",
        mismatches.len(),
        mismatches.join("\n  ")
    );
}

fn ext(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

// ---- gemini_ws --------------------------------------------------------------------------

const GEMINI_TOP_LEVEL: [&str; 7] = [
    "setupComplete",
    "serverContent",
    "toolCall",
    "toolCallCancellation",
    "goAway",
    "sessionResumptionUpdate",
    "usageMetadata",
];

/// Whether decoded model events are sane (what the decoder documents about them).
fn sane_model_events(events: &[ModelEvent]) -> Result<(), String> {
    for ev in events {
        let bad = match ev {
            ModelEvent::Audio(pcm) => pcm.is_empty().then_some("an empty audio chunk"),
            ModelEvent::Text(t)
            | ModelEvent::InputTranscription(t)
            | ModelEvent::OutputTranscription(t) => t.is_empty().then_some("an empty text"),
            ModelEvent::TurnCompleteReason(r) => {
                (r.is_empty() || r == "TURN_COMPLETE_REASON_UNSPECIFIED" || r.chars().count() > 64)
                    .then_some("an empty, unspecified or unbounded turnCompleteReason")
            }
            ModelEvent::InteractionStatus(InteractionStatus::Other(s)) => (s.is_empty()
                || s.chars().count() > 64)
                .then_some("an empty or unbounded interactionStatus"),
            ModelEvent::SessionResumptionUpdate {
                new_handle: Some(h),
                ..
            } => h.is_empty().then_some("an empty resumption handle"),
            ModelEvent::Unknown(k) => {
                let camel = snake_to_camel(k);
                GEMINI_TOP_LEVEL
                    .contains(&camel.as_str())
                    .then_some("a known member reported as unknown")
            }
            _ => None,
        };
        if let Some(bad) = bad {
            return Err(format!("{bad}: {}", short(&format!("{ev:?}"))));
        }
        if let ModelEvent::Usage(u) = ev {
            usage_sums(u)?;
        }
    }
    Ok(())
}

/// What the call record and the metrics make of a `usageMetadata` (`TokenUsage::add`, run
/// on every one): a modality's sum covers every count added for it, and a second turn with
/// the same counts never lowers a sum (the model's counts are any u64).
fn usage_sums(u: &UsageMetadata) -> Result<(), String> {
    let mut sums = TokenUsage::default();
    sums.add(u);
    let once = sums.clone();
    sums.add(u);
    let bad = |what: &str| {
        Err(format!(
            "TokenUsage::add {what}: {}",
            short(&format!("{u:?}"))
        ))
    };
    for (map, details) in [
        (&once.prompt, &u.prompt_details),
        (&once.response, &u.response_details),
    ] {
        for (modality, n) in details {
            if map
                .get(&modality.to_ascii_uppercase())
                .copied()
                .unwrap_or(0)
                < *n
            {
                return bad(&format!("sums {modality} below one of its counts"));
            }
        }
    }
    for (first, second) in [
        (&once.prompt, &sums.prompt),
        (&once.response, &sums.response),
    ] {
        if first
            .iter()
            .any(|(k, v)| second.get(k).is_none_or(|w| w < v))
        {
            return bad("lowered a sum on a second turn");
        }
    }
    if once.total < u.total_token_count || sums.total < once.total {
        return bad("lost totalTokenCount");
    }
    Ok(())
}

fn snake_to_camel(key: &str) -> String {
    let mut out = String::new();
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

fn describe_events(events: &[ModelEvent]) -> String {
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            ModelEvent::Audio(pcm) => format!("Audio({} bytes)", pcm.len()),
            other => short(&format!("{other:?}")),
        })
        .collect();
    short(&format!("[{}]", kinds.join(", ")))
}

/// One model frame, as the driver treats it: binary frames' bytes as they are, text frames
/// (which a WebSocket guarantees are UTF-8) as their bytes.
fn gemini_outcome(path: &Path, bytes: &[u8]) -> Outcome {
    if ext(path) != "bin" && std::str::from_utf8(bytes).is_err() {
        return Outcome::Rejected("not UTF-8: cannot be a WebSocket text frame".into());
    }
    guarded(|| match gwire::decompose(bytes) {
        Ok(events) => match sane_model_events(&events) {
            Ok(()) => Outcome::Accepted(describe_events(&events)),
            Err(e) => Outcome::Failed(format!("accepted with an insane value: {e}")),
        },
        Err(e) => {
            let msg = e.to_string();
            if msg.is_empty() {
                Outcome::Failed("rejected with an empty error".into())
            } else {
                Outcome::Rejected(short(&msg))
            }
        }
    })
}

#[test]
fn gemini_ws_corpus() {
    let files = corpus("gemini_ws");
    let mut mismatches = Vec::new();
    for (name, path, expect) in &files {
        let bytes = std::fs::read(path).unwrap();
        let outcome = gemini_outcome(path, &bytes);
        note("gemini_ws", name, &outcome);
        mismatches.extend(judge(name, *expect, &outcome));
    }
    report("gemini_ws", files.len(), MIN_FILES, mismatches);
}

// ---- twilio_ws --------------------------------------------------------------------------

/// Errors of the caller-leg codec are bounded (a 1 MiB frame must not become a 1 MiB log line).
const MAX_CALLER_ERROR: usize = 512;

fn sane_caller_event(ev: &CallerEvent) -> Result<(), String> {
    match ev {
        CallerEvent::Dtmf { digit } => {
            if digit.is_ascii_digit() || matches!(digit, '*' | '#' | 'A'..='D' | 'a'..='d') {
                Ok(())
            } else {
                Err(format!("DTMF digit {digit:?} is not a key"))
            }
        }
        _ => Ok(()),
    }
}

fn describe_caller_event(ev: &CallerEvent) -> String {
    match ev {
        CallerEvent::Media(m) => format!(
            "Media(chunk {}, ts {}, track {:?}, {} bytes)",
            m.chunk,
            m.timestamp_ms,
            short(&m.track),
            m.payload.len()
        ),
        other => short(&format!("{other:?}")),
    }
}

/// One caller frame, as the driver treats it: text frames through `twilio::wire::parse`,
/// binary frames ignored.
fn twilio_outcome(path: &Path, bytes: &[u8]) -> Outcome {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Outcome::Rejected(format!("not UTF-8 ({e}): no text frame carries it")),
    };
    let parsed = guarded(|| match twire::parse(text) {
        Ok(ev) => match sane_caller_event(&ev) {
            Ok(()) => Outcome::Accepted(describe_caller_event(&ev)),
            Err(e) => Outcome::Failed(format!("accepted with an insane value: {e}")),
        },
        Err(e) => {
            let msg = e.to_string();
            if msg.is_empty() || msg.len() > MAX_CALLER_ERROR {
                Outcome::Failed(format!(
                    "rejected with an empty or unbounded error ({} bytes): {}",
                    msg.len(),
                    short(&msg)
                ))
            } else {
                Outcome::Rejected(short(&msg))
            }
        }
    });
    if ext(path) == "bin" {
        // The driver ignores every binary frame on the caller leg; the parser must still
        // survive the bytes.
        return match parsed {
            Outcome::Failed(e) => Outcome::Failed(e),
            Outcome::Accepted(v) | Outcome::Rejected(v) => Outcome::Rejected(format!(
                "binary frame: ignored by the call driver (as text: {v})"
            )),
        };
    }
    parsed
}

#[test]
fn twilio_ws_corpus() {
    let files = corpus("twilio_ws");
    let mut mismatches = Vec::new();
    for (name, path, expect) in &files {
        let bytes = std::fs::read(path).unwrap();
        let outcome = twilio_outcome(path, &bytes);
        note("twilio_ws", name, &outcome);
        mismatches.extend(judge(name, *expect, &outcome));
    }
    report("twilio_ws", files.len(), MIN_FILES, mismatches);
}

// ---- webhook_form -----------------------------------------------------------------------

/// Tags TwiML from the voice webhook may hold (ours plus the default fallback's verbs).
const TWIML_TAGS: [&str; 6] = [
    "Response",
    "Connect",
    "Stream",
    "Parameter",
    "Say",
    "Hangup",
];

/// Whether the webhook's TwiML is sane: our document, every peer string escaped (no tag, no
/// raw control character came from the request).
fn sane_twiml(xml: &str) -> Result<(), String> {
    const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://bridge.test.invalid/twilio/media">"#;
    if !xml.starts_with(HEAD) || !xml.ends_with("</Response>") {
        return Err(format!(
            "not our <Connect><Stream> document: {}",
            short(xml)
        ));
    }
    if let Some(c) = xml.chars().find(|c| (*c as u32) < 0x20) {
        return Err(format!("raw control character {c:?} in the TwiML"));
    }
    let body = &xml[HEAD.len() - 1..];
    for (i, _) in body.match_indices('<') {
        let rest = body[i + 1..].trim_start_matches('/');
        let tag: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if !TWIML_TAGS.contains(&tag.as_str()) {
            return Err(format!("unexpected markup <{}", short(rest)));
        }
    }
    for p in body.split("<Parameter name=\"").skip(1) {
        let name = p.split('"').next().unwrap_or_default();
        if !matches!(name, "from" | "to" | "direction" | "token") {
            return Err(format!("unexpected <Parameter name={name:?}>"));
        }
    }
    Ok(())
}

async fn webhook_outcome(h: &Harness, path: &Path, body: Vec<u8>) -> Outcome {
    let json = ext(path) == "json";
    // The route's own parser, outside the route too: it must not panic on any text.
    if let Ok(text) = std::str::from_utf8(&body) {
        if let Outcome::Failed(e) = guarded(|| {
            let _ = webhook::parse_form(text);
            Outcome::Accepted(String::new())
        }) {
            return Outcome::Failed(format!("webhook::parse_form {e}"));
        }
    }
    let (path_and_query, params, content_type) = if json {
        (
            format!("/twilio/voice?bodySHA256={}", body_sha256_hex(&body)),
            Vec::new(),
            "application/json",
        )
    } else {
        // Twilio signs the decoded fields; a body that does not decode is refused before
        // its signature is looked at, so any signature does for it.
        let params = std::str::from_utf8(&body)
            .ok()
            .and_then(|t| webhook::parse_form(t).ok())
            .unwrap_or_default();
        (
            "/twilio/voice".to_string(),
            params,
            "application/x-www-form-urlencoded",
        )
    };
    let signature = compute_signature(
        AUTH_TOKEN,
        &format!("{PUBLIC_URL}{path_and_query}"),
        &params,
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path_and_query}", h.addr))
        .header("Content-Type", content_type)
        .header("X-Twilio-Signature", signature)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("no response: {e}")),
    };
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("{status} with an unreadable body: {e}")),
    };
    match status {
        200 if ct == "text/xml" => match sane_twiml(&text) {
            Ok(()) => Outcome::Accepted(format!("200 {}", short(&text))),
            Err(e) => Outcome::Failed(format!("200 with insane TwiML: {e}")),
        },
        200..=299 => Outcome::Failed(format!("{status} but not TwiML ({ct}): {}", short(&text))),
        400..=499 if !text.trim().is_empty() => {
            Outcome::Rejected(format!("{status} {}", short(text.trim())))
        }
        400..=499 => Outcome::Failed(format!("{status} with no reason in the body")),
        _ => Outcome::Failed(format!("{status}: {}", short(&text))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_form_corpus() {
    let h = common::harness(|s| s, |_| {}).await;
    let files = corpus("webhook_form");
    let mut mismatches = Vec::new();
    for (name, path, expect) in &files {
        let bytes = std::fs::read(path).unwrap();
        let outcome = webhook_outcome(&h, path, bytes).await;
        note("webhook_form", name, &outcome);
        mismatches.extend(judge(name, *expect, &outcome));
    }
    h.state.shutdown.cancel();
    report("webhook_form", files.len(), MIN_FILES, mismatches);
}

// ---- operator_api -----------------------------------------------------------------------

/// The operator token (`reject-token-prefix.req` sends its first 15 characters).
const OPERATOR_TOKEN: &str = "corpus-operator-token-5f0c2a9e71d4";
/// The placeholder for a live call's id in the request files.
const LIVE_ID: &str = "0123456789abcdef";

fn replace_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A request file as parts: request line, header lines, body (all bytes, placeholders kept).
struct RawRequest {
    line: Vec<u8>,
    headers: Vec<Vec<u8>>,
    body: Vec<u8>,
}

fn parse_request_file(bytes: &[u8]) -> RawRequest {
    let (head, body) = match bytes.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&bytes[..i], bytes[i + 2..].to_vec()),
        None => (bytes, Vec::new()),
    };
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or_default();
    RawRequest {
        line,
        headers: lines.collect(),
        body,
    }
}

/// The bytes to put on the wire for a request file, the live call id substituted.
fn wire_request(req: &RawRequest, addr: std::net::SocketAddr, live_id: &str) -> Vec<u8> {
    let subst = |b: &[u8]| {
        let b = replace_bytes(b, b"%TOKEN%", OPERATOR_TOKEN.as_bytes());
        let b = replace_bytes(&b, LIVE_ID.as_bytes(), live_id.as_bytes());
        replace_bytes(
            &b,
            LIVE_ID.to_ascii_uppercase().as_bytes(),
            live_id.to_ascii_uppercase().as_bytes(),
        )
    };
    let lower = |h: &[u8]| h.to_ascii_lowercase();
    let no_auth = req
        .headers
        .iter()
        .any(|h| lower(h).starts_with(b"x-corpus-auth:") && contains(&lower(h), b"none"));
    let has_auth = req
        .headers
        .iter()
        .any(|h| lower(h).starts_with(b"authorization:"));
    let mut out = subst(&req.line);
    if !contains(&req.line, b" HTTP/") {
        out.extend_from_slice(b" HTTP/1.1");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
    for h in &req.headers {
        if lower(h).starts_with(b"x-corpus-auth:") {
            continue;
        }
        out.extend_from_slice(&subst(h));
        out.extend_from_slice(b"\r\n");
    }
    if !has_auth && !no_auth {
        out.extend_from_slice(format!("authorization: Bearer {OPERATOR_TOKEN}\r\n").as_bytes());
    }
    let method = req.line.split(|b| *b == b' ').next().unwrap_or_default();
    let body = subst(&req.body);
    if !body.is_empty() || matches!(method, b"POST" | b"PUT" | b"PATCH") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// What came back for one raw request.
struct RawResponse {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Writes `request`, reads the response: the whole of it, or only the head for a stream
/// (`text/event-stream`) or an upgrade (101).
async fn send_raw(addr: std::net::SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let io = async {
        let mut sock = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sock.write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = sock
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} bytes, before a response head",
                    buf.len()
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {:?}", short(&head)))?;
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let mut body = buf[head_end + 4..].to_vec();
        if status != 101 && !content_type.starts_with("text/event-stream") {
            sock.read_to_end(&mut body)
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
        }
        Ok(RawResponse {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .map_err(|_| "no complete response within 30 s".to_string())?
}

fn operator_outcome(target: &str, method: &str, resp: &RawResponse) -> Outcome {
    let body = String::from_utf8_lossy(&resp.body);
    let shown = format!("{} {}", resp.status, short(body.trim()));
    let api = target.starts_with("/api/") || target == "/api";
    match resp.status {
        101 | 300..=399 => Outcome::Accepted(shown),
        200..=299 => {
            let needs_json = api
                && method != "HEAD"
                && !resp.content_type.starts_with("text/event-stream")
                && !target.ends_with("/recording");
            let json_ok = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .is_ok_and(|v| v.is_object());
            if needs_json && !json_ok {
                Outcome::Failed(format!(
                    "{shown}: a 2xx from the API that is not a JSON object"
                ))
            } else {
                Outcome::Accepted(shown)
            }
        }
        400..=499 => {
            // The API's refusals are JSON `{"error": "..."}` (its module docs).
            let clear = !api
                || serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()));
            if clear {
                Outcome::Rejected(shown)
            } else {
                Outcome::Failed(format!("{shown}: an API refusal without a JSON error"))
            }
        }
        _ => Outcome::Failed(shown),
    }
}

/// A live phone call on the bridge for the requests that name one.
struct LiveCall {
    id: String,
    _caller: SimCallerHandle,
}

async fn start_live_call(h: &Harness, n: u32) -> LiveCall {
    let call_sid = format!("CA{:032x}", 0xc0_0000 + n);
    let caller = h
        .caller()
        .call_sid(&call_sid)
        .script(Script::new().silence(600_000))
        .max_duration(Duration::from_secs(600))
        .spawn();
    h.rest.register_caller(&call_sid, &caller);
    for _ in 0..400 {
        if let Some(r) = h
            .state
            .journal
            .live_calls()
            .into_iter()
            .find(|r| r.call_sid.as_deref() == Some(call_sid.as_str()) && r.sessions > 0)
        {
            return LiveCall {
                id: r.id,
                _caller: caller,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("call {call_sid} never went live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_corpus() {
    let h = common::harness(
        |s| {
            s.scenario(Scenario {
                greeting: Some(Reply::greeting()),
                ..Scenario::default()
            })
        },
        |c| {
            c.operator.token = Secret::new(OPERATOR_TOKEN);
            c.limits.silence_timeout_secs = 0;
            c.limits.idle_stream_secs = 3_600;
            c.transfer.destinations.insert(
                "sales".into(),
                TransferDestination {
                    target: "+14155550100".into(),
                    description: "The sales team.".into(),
                    whisper: String::new(),
                },
            );
        },
    )
    .await;
    let files = corpus("operator_api");
    let mut mismatches = Vec::new();
    let mut live: Option<LiveCall> = None;
    let mut calls_started = 0;
    for (name, path, expect) in &files {
        let bytes = std::fs::read(path).unwrap();
        let req = parse_request_file(&bytes);
        let names_live_call = contains(&req.line, LIVE_ID.as_bytes())
            || contains(&req.line, LIVE_ID.to_ascii_uppercase().as_bytes());
        // Requests that name the live call get one that is live now (a hang-up or a transfer
        // that was carried out ends it).
        let live_id = if names_live_call {
            let still_live = live
                .as_ref()
                .is_some_and(|c| h.state.journal.live_call(&c.id).is_some());
            if !still_live {
                calls_started += 1;
                live = Some(start_live_call(&h, calls_started).await);
            }
            live.as_ref().unwrap().id.clone()
        } else {
            LIVE_ID.to_string()
        };
        let line = String::from_utf8_lossy(&req.line).into_owned();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let wire = wire_request(&req, h.addr, &live_id);
        let outcome = match send_raw(h.addr, &wire).await {
            Ok(resp) => operator_outcome(&target, &method, &resp),
            Err(e) => Outcome::Failed(e),
        };
        if names_live_call && matches!(outcome, Outcome::Accepted(_)) && method == "POST" {
            // Carried out: the call is ending; the next request gets a fresh one.
            live = None;
        }
        note("operator_api", name, &outcome);
        mismatches.extend(judge(name, *expect, &outcome));
    }
    println!("corpus operator_api: {calls_started} live calls used");
    h.state.shutdown.cancel();
    report("operator_api", files.len(), MIN_FILES, mismatches);
}

// ---- config -----------------------------------------------------------------------------

/// The fixed environment of the config corpus: the secrets (which come from the environment
/// only) and nothing that overrides a file's keys.
const CONFIG_ENV: [(&str, &str); 4] = [
    ("GEMINI_API_KEY", "corpus-gemini-api-key"),
    ("TWILIO_AUTH_TOKEN", "corpus-twilio-auth-token"),
    ("CALLBRIDGE_TOOLS_SECRET", "corpus-tools-secret"),
    (
        "CALLBRIDGE_OPERATOR_TOKEN",
        "corpus-operator-token-0123456789",
    ),
];

fn config_outcome(path: &Path) -> Outcome {
    let env: HashMap<String, String> = CONFIG_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = move |k: &str| env.get(k).cloned();
    guarded(|| match Config::load(Some(path), &get) {
        Ok(cfg) => {
            if let Err(e) = cfg.validate() {
                return Outcome::Failed(format!("loaded but does not validate again: {e}"));
            }
            if cfg.gemini.api_key.expose() != CONFIG_ENV[0].1
                || cfg.twilio.auth_token.expose() != CONFIG_ENV[1].1
            {
                return Outcome::Failed("secrets not taken from the environment".into());
            }
            let debug = format!("{cfg:?}");
            if let Some((k, _)) = CONFIG_ENV.iter().find(|(_, v)| debug.contains(v)) {
                return Outcome::Failed(format!("{k} printed by Debug"));
            }
            Outcome::Accepted(format!(
                "model {:?}, max_call_secs {}",
                short(&cfg.gemini.model),
                cfg.limits.max_call_secs
            ))
        }
        Err(e) => {
            let msg = e.to_string();
            if msg.is_empty() {
                Outcome::Failed("rejected with an empty error".into())
            } else if CONFIG_ENV.iter().any(|(_, v)| msg.contains(v)) {
                Outcome::Failed(format!("the error prints a secret: {}", short(&msg)))
            } else {
                Outcome::Rejected(short(&msg))
            }
        }
    })
}

#[test]
fn config_corpus() {
    let files = corpus("config");
    let mut mismatches = Vec::new();
    for (name, path, expect) in &files {
        let outcome = config_outcome(path);
        note("config", name, &outcome);
        mismatches.extend(judge(name, *expect, &outcome));
    }
    report("config", files.len(), MIN_CONFIG_FILES, mismatches);
}
