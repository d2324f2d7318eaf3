//! Model preflight against the built-in Gemini simulator: one session opened exactly as a call
//! would (same URL, credential and `setup`), reported as accepted, refused (Google's close code
//! and reason, never the key) or unreachable; the `check-model` subcommand's exit codes; and
//! `serve`'s background check as `/healthz` and `/metrics` show it. Bridges started through
//! the library (`run::spawn`, as the other tests do) never run a preflight, so the simulator
//! connection counts elsewhere stay exact.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use callbridge::call::settings::CallSettings;
use callbridge::config::{Config, Secret};
use callbridge::gemini::preflight::{check, ModelHealth, PreflightOutcome, PreflightTarget};
use callbridge::server::{self, AppState};
use callbridge::sim::gemini::{CloseRecord, GeminiSim, GeminiSimHandle};
use http_body_util::BodyExt;
use tower::ServiceExt;

const KEY: &str = "test-api-key";
const BAD_KEY: &str = "AIzaWrong-Key-0123456789";
const RETIRED: &str = "gemini-0.9-retired-live";

async fn sim() -> GeminiSimHandle {
    GeminiSim::builder()
        .keys(vec![KEY.into()])
        .spawn()
        .await
        .expect("simulator")
}

fn config(url: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.public_url = "https://bridge.test.invalid".into();
    c.gemini.url = url.into();
    c.gemini.api_key = Secret::new(KEY);
    c.twilio.validate_signatures = false;
    c.records.enabled = false;
    tweak(&mut c);
    c.validate().expect("valid test config");
    c
}

/// The target `serve` and `check-model` build: the calls' own URL, credential and setup.
fn target(c: &Config) -> PreflightTarget {
    callbridge::run::preflight_target(
        c,
        server::model_credential(c),
        &CallSettings::from_config(c).setup,
    )
}

/// A WebSocket server that upgrades and then never says anything.
async fn silent_model() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
            }
        }
    });
    format!(
        "ws://{addr}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
}

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("ws://127.0.0.1:{port}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
}

#[tokio::test]
async fn a_model_the_simulator_serves_is_accepted_over_exactly_one_connection_with_our_setup() {
    let sim = sim().await;
    let c = config(&sim.url(), |_| {});
    let t = target(&c);
    let outcome = check(&t).await;
    assert!(
        matches!(&outcome, PreflightOutcome::Accepted { model, .. } if model == &c.gemini.model),
        "{outcome:?}"
    );
    assert_eq!(outcome.health(), ModelHealth::Ok);
    let line = outcome.one_line();
    assert!(line.contains(&c.gemini.model), "{line}");
    assert!(!line.contains(KEY), "{line}");

    let deadline = Instant::now() + Duration::from_secs(3);
    let rec = loop {
        let rec = sim.record();
        if rec.connections.iter().all(|c| c.close.is_some()) || Instant::now() > deadline {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rec.connections.len(), 1, "{rec:?}");
    let conn = &rec.connections[0];
    assert_eq!(conn.credential_source, "key-header");
    let sent: serde_json::Value = serde_json::from_str(&t.setup).unwrap();
    assert_eq!(conn.setup.as_ref(), Some(&sent["setup"]));
    // Exactly the setup message a call sends first, and nothing else (no audio, no greeting).
    let expected = callbridge::gemini::setup::setup_message(&CallSettings::from_config(&c).setup);
    assert_eq!(conn.raw_frames(), vec![expected.as_str()]);
    assert!(
        matches!(
            &conn.close,
            Some(CloseRecord::ByClient {
                code: Some(1000),
                ..
            })
        ),
        "closed by us with 1000: {:?}",
        conn.close
    );
}

#[tokio::test]
async fn an_unknown_model_id_is_refused_with_1008_and_the_simulators_reason() {
    let sim = sim().await;
    let c = config(&sim.url(), |c| c.gemini.model = RETIRED.into());
    let outcome = check(&target(&c)).await;
    let PreflightOutcome::Refused {
        model,
        code,
        reason,
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(model, RETIRED);
    assert_eq!(*code, 1008);
    assert_eq!(
        reason,
        &format!(
            "models/{RETIRED} is not found for API version v1beta, or is not supported for bidiGenerateContent."
        )
    );
    let line = outcome.one_line();
    assert!(
        line.starts_with(&format!(
            "model {RETIRED} refused: close 1008 \"models/{RETIRED}"
        )),
        "{line}"
    );
    assert!(line.contains("set gemini.model"), "{line}");
    assert_eq!(outcome.health(), ModelHealth::Refused);
    assert_eq!(sim.record().connections.len(), 1);
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_with_the_key_message_and_the_key_never_appears() {
    let sim = sim().await;
    let c = config(&sim.url(), |c| c.gemini.api_key = Secret::new(BAD_KEY));
    let outcome = check(&target(&c)).await;
    assert!(
        matches!(&outcome, PreflightOutcome::Refused { code: 1007, reason, .. }
            if reason == "API key not valid. Please pass a valid API key."),
        "{outcome:?}"
    );
    let line = outcome.one_line();
    assert!(line.contains("GEMINI_API_KEY"), "{line}");
    assert!(!line.contains(BAD_KEY), "{line}");
    assert!(!format!("{outcome:?}").contains(BAD_KEY));
}

#[tokio::test]
async fn nothing_listening_is_unreachable_not_refused() {
    let c = config(&dead_url(), |_| {});
    let outcome = check(&target(&c)).await;
    assert!(
        matches!(&outcome, PreflightOutcome::Unreachable { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.health(), ModelHealth::Unchecked);
    let line = outcome.one_line();
    assert!(line.contains("not checked"), "{line}");
    assert!(line.contains("gemini.url"), "{line}");
    assert!(!line.contains(KEY), "{line}");
}

#[tokio::test]
async fn a_model_that_never_answers_the_setup_is_unreachable_after_both_timeouts() {
    let url = silent_model().await;
    let c = config(&url, |c| {
        c.gemini.connect_timeout_ms = 200;
        c.gemini.setup_timeout_ms = 300;
    });
    let t0 = Instant::now();
    let outcome = check(&target(&c)).await;
    let took = t0.elapsed();
    assert!(
        matches!(&outcome, PreflightOutcome::Unreachable { why, .. } if why.contains("500 ms")),
        "{outcome:?}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn bridges_started_through_the_library_open_no_preflight_session() {
    // `run::spawn` is what the call tests' harness (tests/common) and the demo use; preflight
    // is on by default.
    let sim = sim().await;
    let c = config(&sim.url(), |_| {});
    assert!(c.gemini.preflight);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = callbridge::run::spawn(c, listener);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(sim.record().connections.is_empty());
    assert_eq!(state.model_status.health(), ModelHealth::Unchecked);
    state.shutdown.cancel();
}

#[tokio::test]
async fn preflight_off_starts_nothing() {
    let sim = sim().await;
    let off = AppState::new(config(&sim.url(), |c| c.gemini.preflight = false), None);
    assert!(callbridge::run::spawn_preflight(&off).is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.record().connections.is_empty());
}

async fn healthz(state: &std::sync::Arc<AppState>) -> serde_json::Value {
    let resp = server::app(state.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a refused model never fails /healthz");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn a_refused_start_up_check_shows_in_healthz_and_metrics() {
    let sim = sim().await;
    let state = AppState::new(
        config(&sim.url(), |c| {
            c.gemini.model = RETIRED.into();
            c.gemini.preflight_interval_secs = 0;
        }),
        None,
    );
    assert_eq!(healthz(&state).await["model"], "unchecked");
    let metrics = state.metrics.clone().expect("metrics on by default");
    let before = metrics.render(&state.stats);
    assert!(
        before.contains(r#"callbridge_model_preflight_status{status="unchecked"} 1"#),
        "{before}"
    );
    let task = callbridge::run::spawn_preflight(&state).expect("preflight on");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("interval 0: one check, then done")
        .unwrap();
    let v = healthz(&state).await;
    assert_eq!(v["model"], "refused", "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let snap = state.model_status.snapshot();
    assert!(snap.message.unwrap().contains("close 1008"));
    let text = metrics.render(&state.stats);
    for line in [
        r#"callbridge_model_preflight_status{status="refused"} 1"#,
        r#"callbridge_model_preflight_status{status="ok"} 0"#,
        r#"callbridge_model_preflight_status{status="unchecked"} 0"#,
        r#"callbridge_model_preflight_checks_total{result="refused"} 1"#,
        r#"callbridge_model_preflight_checks_total{result="accepted"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert_eq!(sim.record().connections.len(), 1);
}

#[tokio::test]
async fn the_check_repeats_every_interval_and_stops_at_shutdown() {
    let sim = sim().await;
    let state = AppState::new(
        config(&sim.url(), |c| c.gemini.preflight_interval_secs = 1),
        None,
    );
    let task = callbridge::run::spawn_preflight(&state).expect("preflight on");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(state.model_status.health(), ModelHealth::Ok);
    assert_eq!(sim.record().connections.len(), 2);
    state.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops at shutdown")
        .unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_check_in_flight() {
    let url = silent_model().await;
    let state = AppState::new(
        config(&url, |c| {
            c.gemini.connect_timeout_ms = 60_000;
            c.gemini.setup_timeout_ms = 60_000;
        }),
        None,
    );
    let task = callbridge::run::spawn_preflight(&state).expect("preflight on");
    tokio::time::sleep(Duration::from_millis(200)).await;
    state.shutdown.cancel();
    tokio::time::timeout(Duration::from_millis(500), task)
        .await
        .expect("the check in flight is dropped")
        .unwrap();
    assert_eq!(state.model_status.health(), ModelHealth::Unchecked);
}

// ---- the binary -----------------------------------------------------------------------------

/// A temp directory with a bridge config for `url` and `model` (plus `extra` TOML lines).
fn write_config(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "callbridge-preflight-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bridge.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn bridge_toml(listen: &str, url: &str, model: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\npublic_url = \"https://bridge.test.invalid\"\n\
         [gemini]\nurl = \"{url}\"\nmodel = \"{model}\"\n[twilio]\nvalidate_signatures = false\n\
         [records]\nenabled = false\n"
    )
}

fn callbridge(args: &[&str], config: &std::path::Path, key: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_callbridge"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("GEMINI_API_KEY", key)
        .env("RUST_LOG", "info")
        .env_remove("CALLBRIDGE_CONFIG")
        .env_remove("CALLBRIDGE_LISTEN")
        .env_remove("CALLBRIDGE_PUBLIC_URL")
        .env_remove("CALLBRIDGE_GEMINI_URL")
        .env_remove("CALLBRIDGE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn check_model_exits_0_accepted_1_refused_2_unreachable_or_bad_config() {
    let sim = sim().await;
    let run = |path: PathBuf, key: &'static str| async move {
        let out = callbridge(&["check-model"], &path, key)
            .output()
            .await
            .expect("run callbridge");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = write_config(
        "ok",
        &bridge_toml("127.0.0.1:0", &sim.url(), "gemini-3.8-live"),
    );
    let (code, out, err) = run(good, KEY).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("model gemini-3.8-live accepted"), "{out}");

    let retired = write_config("retired", &bridge_toml("127.0.0.1:0", &sim.url(), RETIRED));
    let (code, out, err) = run(retired, KEY).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with(&format!("model {RETIRED} refused: close 1008 ")),
        "{out}"
    );
    assert!(out.contains("gemini.model"), "{out}");

    let bad_key = write_config(
        "key",
        &bridge_toml("127.0.0.1:0", &sim.url(), "gemini-3.8-live"),
    );
    let (code, out, err) = run(bad_key, BAD_KEY).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("close 1007"), "{out}");
    assert!(
        !out.contains(BAD_KEY) && !err.contains(BAD_KEY),
        "{out}{err}"
    );

    let dead = write_config(
        "dead",
        &bridge_toml("127.0.0.1:0", &dead_url(), "gemini-3.8-live"),
    );
    let (code, out, err) = run(dead, KEY).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("not checked"), "{out}");

    let invalid = write_config("invalid", "[gemini]\nno_such_key = 1\n");
    let (code, out, err) = run(invalid, KEY).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("no_such_key"), "{err}");
    assert_eq!(sim.record().connections.len(), 3);
}

/// `callbridge serve` on a free port; returns the child and its HTTP base.
async fn serve(name: &str, url: &str, model: &str) -> (tokio::process::Child, String, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let path = write_config(name, &bridge_toml(&listen, url, model));
    let child = callbridge(&["serve"], &path, KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start callbridge serve");
    (child, format!("http://{listen}"), path)
}

/// Polls `/healthz` until its `model` is no longer `unchecked` (or 10 s pass).
async fn settled_healthz(http: &str) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{http}/healthz")).send().await {
            assert_eq!(r.status(), 200);
            last = r.json().await.unwrap();
            if last["model"] != "unchecked" {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("model still unchecked after 10 s: {last}");
}

#[tokio::test]
async fn serve_reports_ok_after_its_start_up_check_and_refused_for_an_unknown_model() {
    let sim = sim().await;
    let (mut ok, http, path) = serve("serve-ok", &sim.url(), "gemini-3.8-live").await;
    let v = settled_healthz(&http).await;
    assert_eq!(v["model"], "ok", "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let metrics = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"callbridge_model_preflight_status{status="ok"} 1"#),
        "{metrics}"
    );
    assert_eq!(sim.record().connections.len(), 1);
    let _ = ok.kill().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());

    let (mut refused, http, path) = serve("serve-refused", &sim.url(), RETIRED).await;
    let v = settled_healthz(&http).await;
    assert_eq!(v["model"], "refused", "{v}");
    // The bridge stays up and still answers Twilio (the fallback verbs follow the stream).
    let twiml = reqwest::Client::new()
        .post(format!("{http}/twilio/voice"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA0123&From=%2B14155550123&To=%2B15005550006")
        .send()
        .await
        .unwrap();
    assert_eq!(twiml.status(), 200);
    let _ = refused.kill().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
