//! The operator observers through the real server: `GET /metrics` (through the router, and
//! after a real simulated call) and stereo call recordings of a real simulated call.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use callbridge::call::event::CallEvent;
use callbridge::config::Config;
use callbridge::server::{app, AppState};
use callbridge::sim::caller::{CallReport, Script, TimelineEvent};
use callbridge::sim::gemini::{Clip, Reply, Scenario, ToolCall, Turn};
use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

/// One sample line of the text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text format strictly enough to catch a malformed exposition:
/// `# HELP`/`# TYPE` lines, `name{k="v",…} value` samples, and the closing `# EOF`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("# EOF"), "exposition ends with # EOF");
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(typed.insert(name.to_string()), "TYPE twice for {name}");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let labels = body
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label=value");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(name.starts_with("callbridge_"), "{name}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    assert!(!typed.is_empty(), "no TYPE lines");
    out
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// A histogram series: its buckets must be cumulative and end in `+Inf` = `_count`; returns
/// (`_count`, `_sum`).
fn histogram(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| {
            s.name == format!("{name}_bucket")
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("le"),
            };
            (le, s.value)
        })
        .collect();
    assert!(buckets.len() >= 2, "{name} {labels:?} has buckets");
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} cumulative: {buckets:?}"
    );
    let count = get(samples, &format!("{name}_count"), labels).expect("_count");
    let total = get(samples, &format!("{name}_sum"), labels).expect("_sum");
    let last = buckets.last().unwrap();
    assert_eq!(last.0, f64::INFINITY);
    assert_eq!(last.1, count, "{name}: +Inf bucket = _count");
    assert!(total >= 0.0);
    (count, total)
}

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

// ---- through the router -------------------------------------------------------------------

fn state(tweak: impl FnOnce(&mut Config)) -> Arc<AppState> {
    let mut c = Config::default();
    c.server.public_url = "https://bridge.example.com".into();
    c.twilio.validate_signatures = false;
    tweak(&mut c);
    c.validate().unwrap();
    AppState::new(c, None)
}

async fn get_metrics(state: Arc<AppState>) -> axum::response::Response {
    app(state)
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics_text() {
    let st = state(|_| {});
    st.stats
        .uplink
        .record(std::time::Duration::from_micros(300));
    let resp = get_metrics(st).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let s = parse_metrics(&body);
    assert_eq!(get(&s, "callbridge_live_calls", &[]), Some(0.0));
    assert_eq!(
        get(&s, "callbridge_calls_opened_total", &[("source", "phone")]),
        Some(0.0)
    );
    let (count, total) = histogram(
        &s,
        "callbridge_bridge_latency_seconds",
        &[("leg", "uplink")],
    );
    assert_eq!(count, 1.0);
    assert!((total - 0.0003).abs() < 1e-12);
    assert_eq!(
        get(
            &s,
            "callbridge_bridge_latency_seconds_bucket",
            &[("leg", "uplink"), ("le", "0.00025")]
        )
        .or_else(|| get(
            &s,
            "callbridge_bridge_latency_seconds_bucket",
            &[("leg", "uplink"), ("le", "2.5e-4")]
        )),
        Some(0.0)
    );
}

#[tokio::test]
async fn metrics_endpoint_is_404_when_disabled() {
    let st = state(|c| c.metrics.enabled = false);
    assert!(st.metrics.is_none());
    let resp = get_metrics(st).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

// ---- a real call --------------------------------------------------------------------------

fn goodbye() -> Reply {
    Reply {
        clip: Some(
            Clip::from_wav_bytes(&std::fs::read(asset("model_goodbye.pcm24k.wav")).unwrap())
                .unwrap(),
        ),
        text: "You're welcome. Goodbye!".into(),
    }
}

/// Greeting; the caller says hello; the agent says goodbye and calls `end_call`; the bridge
/// hangs up through the fake REST API once the goodbye was heard.
async fn hello_goodbye_call(tweak: impl FnOnce(&mut Config)) -> (Harness, CallReport) {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![Turn {
            tool_calls: vec![ToolCall {
                name: "end_call".into(),
                args: json!({"reason": "done"}),
            }],
            ..Turn::reply(goodbye())
        }],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), tweak).await;
    let call_sid = "CA000000000000000000000000000000e7";
    let caller = h
        .caller()
        .call_sid(call_sid)
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .silence(30_000),
        )
        .spawn();
    h.rest.register_caller(call_sid, &caller);
    let report = caller.join().await.expect("call runs");
    let notes = h.notes_until_end(Duration::from_secs(10)).await;
    let kinds = event_kinds(&notes);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ended agent_hung_up"),
        "{kinds:?}"
    );
    assert!(
        notes.iter().any(|n| matches!(
            n.event,
            CallEvent::AgentSpeaking {
                response_ms: Some(_),
                ..
            }
        )),
        "the reply has a response time"
    );
    (h, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_real_call() {
    let (h, _report) = hello_goodbye_call(|_| {}).await;
    let resp = reqwest::get(format!("http://{}/metrics", h.addr))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = resp.text().await.unwrap();
    let s = parse_metrics(&body);
    let show = || body.clone();

    assert_eq!(
        get(&s, "callbridge_live_calls", &[]),
        Some(0.0),
        "{}",
        show()
    );
    assert_eq!(
        get(&s, "callbridge_calls_total", &[("reason", "agent_hung_up")]),
        Some(1.0),
        "{}",
        show()
    );
    assert_eq!(sum(&s, "callbridge_calls_total"), 1.0);
    assert_eq!(
        get(&s, "callbridge_calls_opened_total", &[("source", "phone")]),
        Some(1.0)
    );
    assert_eq!(get(&s, "callbridge_model_sessions_total", &[]), Some(1.0));
    assert_eq!(
        get(
            &s,
            "callbridge_tool_calls_total",
            &[("tool", "end_call"), ("outcome", "ok")]
        ),
        Some(1.0),
        "{}",
        show()
    );
    let audio_in = get(
        &s,
        "callbridge_model_tokens_total",
        &[("direction", "prompt"), ("modality", "AUDIO")],
    )
    .unwrap_or(0.0);
    let audio_out = get(
        &s,
        "callbridge_model_tokens_total",
        &[("direction", "response"), ("modality", "AUDIO")],
    )
    .unwrap_or(0.0);
    assert!(
        audio_in > 0.0 && audio_out > 0.0,
        "tokens {audio_in} {audio_out}: {}",
        show()
    );
    let cost = get(&s, "callbridge_model_cost_usd_total", &[]).expect("cost");
    assert!(cost > 0.0 && cost < 1.0, "cost {cost}");
    let (responses, seconds) = histogram(&s, "callbridge_response_time_seconds", &[]);
    assert!(responses >= 1.0, "{}", show());
    assert!(
        seconds / responses > 0.05 && seconds / responses < 10.0,
        "mean response {}",
        seconds / responses
    );
    let (calls, secs) = histogram(&s, "callbridge_call_duration_seconds", &[]);
    assert_eq!(calls, 1.0);
    assert!(secs > 3.0 && secs < 60.0, "call lasted {secs} s");
    for leg in ["uplink", "downlink"] {
        let (frames, total) = histogram(&s, "callbridge_bridge_latency_seconds", &[("leg", leg)]);
        assert!(frames > 50.0, "{leg}: {frames} frames");
        assert!(total / frames < 0.05, "{leg}: mean {} s", total / frames);
    }
    assert!(get(&s, "callbridge_frames_to_caller_total", &[]).unwrap() > 50.0);
    // Nothing personal or per-call in any label.
    for sample in &s {
        for v in sample.labels.values() {
            assert!(!v.contains("+1") && !v.starts_with("CA") && !v.starts_with("MZ"));
            assert!(v.len() < 40, "{v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_of_a_real_call() {
    let dir = std::env::temp_dir().join(format!(
        "callbridge-e2e-recordings-{:016x}",
        rand::random::<u64>()
    ));
    let dir_for_config = dir.clone();
    let (h, report) = hello_goodbye_call(move |c| {
        c.recording.enabled = true;
        c.recording.dir = dir_for_config.display().to_string();
    })
    .await;
    let recorder = h.state.recorder.clone().expect("recorder on");
    assert!(
        tokio::task::spawn_blocking(move || recorder.sync(Duration::from_secs(10)))
            .await
            .unwrap(),
        "recording writer caught up"
    );
    let records = h.state.journal.recent();
    assert_eq!(records.len(), 1);
    let path = records[0]
        .recording
        .clone()
        .expect("recording path in the record");
    assert!(path.starts_with(&dir.display().to_string()), "{path}");
    let (left, right) =
        callbridge::ops::recorder::read_stereo(std::path::Path::new(&path)).expect("stereo wav");

    // Length ≈ the call: everything the caller sent, 20 ms per frame.
    let sent = ulaw_to_pcm(&report.sent);
    let diff = left.len() as i64 - sent.len() as i64;
    assert!(
        (-800..=800).contains(&diff),
        "recording {} samples, caller sent {}",
        left.len(),
        sent.len()
    );

    // Left: the caller's audio, from the start of the file.
    let hello = ulaw_to_pcm(&caller_clip("caller_hello"));
    let (score, hello_at_left) = find_in(&left, &hello);
    assert!(score > 0.99, "caller hello in the left channel: {score:.3}");
    let (score, sent_at) = find_in(&left, &sent[..sent.len().min(left.len())]);
    assert!(
        score > 0.99,
        "left channel = what the caller sent: {score:.3}"
    );
    assert!(sent_at <= 160, "caller audio starts at {sent_at}");

    // Right: the agent as the caller heard it.
    let greeting = pcm("model_greeting.ref8k.wav");
    let (score, greeting_at_right) = find_in(&right, &greeting);
    assert!(score > 0.9, "greeting in the right channel: {score:.3}");
    // Each channel carries one side only: the agent was silent while the caller said hello,
    // and the caller while the greeting played.
    assert!(
        rms(&right[hello_at_left..(hello_at_left + hello.len()).min(right.len())]) < 50.0,
        "agent channel during the caller's hello"
    );
    assert!(rms(&hello) > 500.0);
    assert!(
        rms(&left[greeting_at_right..(greeting_at_right + greeting.len()).min(left.len())]) < 50.0,
        "caller channel during the greeting"
    );
    assert!(rms(&right[greeting_at_right..greeting_at_right + greeting.len()]) > 500.0);
    let heard = ulaw_to_pcm(&report.heard);
    let (score, greeting_at_heard) = find_in(&heard, &greeting);
    assert!(score > 0.9, "the caller heard the greeting: {score:.3}");

    // Aligned: the caller started saying hello this long after hearing the greeting start,
    // on the caller's clock; the recording shows the same gap (within three frames).
    let hello_sent_ms = report
        .timeline
        .iter()
        .find_map(|e| match &e.event {
            TimelineEvent::UtteranceStart { label } if label == "hello" => Some(e.at_ms),
            _ => None,
        })
        .expect("hello said");
    let greeting_heard_ms = report.heard_offset_ms as f64 + greeting_at_heard as f64 / 8.0;
    let caller_gap = hello_sent_ms as f64 - greeting_heard_ms;
    let recorded_gap = (hello_at_left as f64 - greeting_at_right as f64) / 8.0;
    eprintln!(
        "recording: {} samples (caller sent {}); greeting → hello {caller_gap:.0} ms at the \
         caller, {recorded_gap:.0} ms in the recording",
        left.len(),
        sent.len()
    );
    assert!(
        (caller_gap - recorded_gap).abs() <= 60.0,
        "greeting → hello: {caller_gap:.0} ms at the caller, {recorded_gap:.0} ms recorded"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
