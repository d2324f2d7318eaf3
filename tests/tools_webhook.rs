//! Operator webhook tools over loopback HTTP: `call::webhook_tools::HttpToolExecutor` against the
//! fake operator (`sim::operator`), plus declarations, signatures and the recording fake.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbridge::call::webhook_tools::{
    declarations, request_body, sign, verify_webhook_signature, HttpToolExecutor,
    RecordingExecutor, SignatureError, ToolCallContext, ToolError, ToolExecutor, MAX_REPLY_BYTES,
    SIGNATURE_TOLERANCE, STATUS_EXCERPT_CHARS,
};
use callbridge::config::tool_schema::check_schemas;
use callbridge::config::{Secret, ToolsConfig, WebhookToolConfig};
use callbridge::sim::operator::{FakeOperator, FakeOperatorHandle};
use serde_json::{json, Value};

const SECRET: &str = "s3cret-tools-key";

fn tool(name: &str, url: String, timeout_ms: u64) -> WebhookToolConfig {
    WebhookToolConfig {
        scheduling: Default::default(),
        name: name.into(),
        description: format!("the {name} tool"),
        parameters: None,
        url,
        // The fake operator serves plain http on 127.0.0.1.
        allow_insecure: true,
        timeout_ms,
    }
}

fn ctx() -> ToolCallContext {
    ToolCallContext {
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        stream_sid: "MZ0123456789abcdef0123456789abcdef".into(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        from: None,
        to: None,
    }
}

fn executor() -> HttpToolExecutor {
    HttpToolExecutor::new(Secret::new(SECRET))
}

async fn run(
    op: &FakeOperatorHandle,
    name: &str,
    timeout_ms: u64,
    args: Value,
) -> Result<Value, ToolError> {
    let t = tool(name, op.url(name), timeout_ms);
    executor().execute(&t, "call-1", &args, &ctx()).await
}

#[tokio::test]
async fn success_returns_the_operator_json() {
    let reply = json!({"order": "A17", "status": "shipped", "eta_days": 2});
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("lookup_order", reply.clone())
        .spawn()
        .await
        .unwrap();
    let got = run(&op, "lookup_order", 2_000, json!({"order_number": "A17"})).await;
    assert_eq!(got, Ok(reply));
    let reqs = op.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].signature_valid);
    assert_eq!(reqs[0].tool, "lookup_order");
    assert_eq!(reqs[0].tool_header.as_deref(), Some("lookup_order"));
    assert_eq!(reqs[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(op.answered(), vec!["call-1".to_string()]);
}

#[tokio::test]
async fn non_object_reply_is_wrapped_and_empty_2xx_is_an_empty_object() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("count", json!(3))
        .status("done", 204, "")
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        run(&op, "count", 2_000, json!({})).await,
        Ok(json!({"result": 3}))
    );
    assert_eq!(run(&op, "done", 2_000, json!({})).await, Ok(json!({})));
}

/// The wall-clock instant `unix_secs` seconds after the epoch.
fn at(unix_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The real executor sends `X-Callbridge-Timestamp` (now) and `X-Callbridge-Signature:
/// v1=<hex>` over `"{timestamp}.{body}"`; the library's verifier accepts exactly that and
/// nothing keyed, dated or worded differently. (The old scheme sent `sha256=<HMAC of the body>`
/// and no timestamp.)
#[tokio::test]
async fn signature_header_is_v1_over_timestamp_and_body() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("t", json!({}))
        .spawn()
        .await
        .unwrap();
    let before = now_secs();
    run(&op, "t", 2_000, json!({"x": 1})).await.unwrap();
    let after = now_secs();
    let req = &op.requests()[0];
    assert!(req.signature_valid, "the fake operator accepts it");
    let ts = req.timestamp.clone().expect("timestamp header sent");
    let sent: u64 = ts.parse().expect("decimal unix seconds");
    assert!(
        (before..=after).contains(&sent),
        "{before} <= {sent} <= {after}"
    );
    let header = req.signature.clone().expect("signature header sent");
    let hex = header.strip_prefix("v1=").expect("v1= prefix");
    assert_eq!(hex.len(), 64);
    assert!(hex
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    let body = req.raw_body.as_bytes();
    let now = at(sent);
    let check = |secret: &[u8], ts: &str, sig: &str, body: &[u8]| {
        verify_webhook_signature(secret, ts, sig, body, now, SIGNATURE_TOLERANCE)
    };
    assert_eq!(check(SECRET.as_bytes(), &ts, &header, body), Ok(()));
    assert_eq!(sign(SECRET.as_bytes(), sent, body), header);
    assert_eq!(
        check(b"wrong", &ts, &header, body),
        Err(SignatureError::Mismatch)
    );
    // The timestamp is signed: moving it (even by one second) breaks the signature.
    assert_eq!(
        check(SECRET.as_bytes(), &(sent + 1).to_string(), &header, body),
        Err(SignatureError::Mismatch)
    );
    // The old scheme's header (HMAC of the body alone, `sha256=`) is not accepted.
    let old = {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", ::hex::encode(mac.finalize().into_bytes()))
    };
    assert_eq!(
        check(SECRET.as_bytes(), &ts, &old, body),
        Err(SignatureError::MissingSignature)
    );
    assert_eq!(
        check(SECRET.as_bytes(), &ts, hex, body),
        Err(SignatureError::MissingSignature),
        "no version label"
    );
    assert_eq!(
        check(SECRET.as_bytes(), &ts, "v1=zz", body),
        Err(SignatureError::MissingSignature)
    );
    assert_eq!(
        check(SECRET.as_bytes(), "", &header, body),
        Err(SignatureError::MissingTimestamp)
    );
    assert_eq!(
        check(SECRET.as_bytes(), &format!("+{ts}"), &header, body),
        Err(SignatureError::MalformedTimestamp)
    );
    // A list: unknown versions are skipped, any matching v1 is enough (key rotation).
    let other = sign(b"next-key", sent, body);
    assert_eq!(
        check(
            SECRET.as_bytes(),
            &ts,
            &format!("v0=abcd, {other}, {header}"),
            body
        ),
        Ok(())
    );
}

/// Replay protection: the same signed request is accepted while fresh, refused once it is
/// more than 5 minutes old (or dated more than 5 minutes ahead), and a changed body is refused
/// even when fresh.
#[test]
fn verifier_rejects_replayed_stale_and_tampered_requests() {
    let body = request_body(
        "lookup_order",
        "fc-1",
        &json!({"order_number": "A17"}),
        &ctx(),
    );
    let sent = 1_767_225_600;
    let ts = sent.to_string();
    let sig = sign(SECRET.as_bytes(), sent, &body);
    let verify_at = |now: u64, body: &[u8]| {
        verify_webhook_signature(
            SECRET.as_bytes(),
            &ts,
            &sig,
            body,
            at(now),
            SIGNATURE_TOLERANCE,
        )
    };
    assert_eq!(SIGNATURE_TOLERANCE, Duration::from_secs(300));
    // Fresh: at once, a little later, at the edge, and with the receiver's clock a bit behind.
    for now in [sent, sent + 30, sent + 300, sent - 300] {
        assert_eq!(
            verify_at(now, &body),
            Ok(()),
            "now = sent{:+}",
            now as i64 - sent as i64
        );
    }
    // Replayed later: refused as stale, although the signature itself is intact.
    assert_eq!(
        verify_at(sent + 301, &body),
        Err(SignatureError::Expired {
            age_secs: 301,
            tolerance_secs: 300
        })
    );
    assert!(matches!(
        verify_at(sent + 86_400, &body),
        Err(SignatureError::Expired { .. })
    ));
    // Dated too far ahead.
    assert_eq!(
        verify_at(sent - 301, &body),
        Err(SignatureError::FromTheFuture {
            ahead_secs: 301,
            tolerance_secs: 300
        })
    );
    // Tampered body, fresh timestamp.
    let mut tampered = body.clone();
    let pos = tampered.windows(3).position(|w| w == b"A17").unwrap();
    tampered[pos + 2] = b'8';
    assert_eq!(verify_at(sent, &tampered), Err(SignatureError::Mismatch));
    let mut padded = body.clone();
    padded.push(b' ');
    assert_eq!(verify_at(sent, &padded), Err(SignatureError::Mismatch));
    // Re-dating a captured request to look fresh breaks its signature.
    let now = sent + 3_600;
    assert_eq!(
        verify_webhook_signature(
            SECRET.as_bytes(),
            &now.to_string(),
            &sig,
            &body,
            at(now),
            SIGNATURE_TOLERANCE
        ),
        Err(SignatureError::Mismatch)
    );
}

/// A stale request sent to the fake operator (which checks as a receiver should) gets 401;
/// the same body signed now passes.
#[tokio::test]
async fn fake_operator_refuses_a_replayed_request() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("t", json!({"ok": true}))
        .spawn()
        .await
        .unwrap();
    let body = request_body("t", "fc-replay", &json!({}), &ctx());
    let client = reqwest::Client::new();
    let post = |ts: u64| {
        client
            .post(op.url("t"))
            .header("Content-Type", "application/json")
            .header("X-Callbridge-Timestamp", ts.to_string())
            .header("X-Callbridge-Signature", sign(SECRET.as_bytes(), ts, &body))
            .body(body.clone())
            .send()
    };
    let stale = post(now_secs() - 600).await.unwrap();
    assert_eq!(stale.status(), 401);
    let fresh = post(now_secs()).await.unwrap();
    assert_eq!(fresh.status(), 200);
    let reqs = op.requests();
    assert_eq!(
        reqs.iter().map(|r| r.signature_valid).collect::<Vec<_>>(),
        [false, true]
    );
}

/// HMAC-SHA256 of `"1767225600." + RFC 4231 test case 2's data` under its key, computed with
/// Python's `hmac` module, so `sign` is held against an outside reference, not only itself.
#[test]
fn sign_matches_an_outside_reference() {
    assert_eq!(
        sign(b"Jefe", 1_767_225_600, b"what do ya want for nothing?"),
        "v1=8bf4bab82972f519c62eab705abd744e0bc4e8a7e292de99189f49e03834693a"
    );
}

/// A tool with a plain http:// URL is not called unless it says `allow_insecure` (config
/// validation refuses it too; this covers a config built in code).
#[tokio::test]
async fn plain_http_without_allow_insecure_is_not_called() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("t", json!({}))
        .spawn()
        .await
        .unwrap();
    let mut t = tool("t", op.url("t"), 2_000);
    t.allow_insecure = false;
    let err = executor()
        .execute(&t, "fc-1", &json!({}), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Transport(m) if m.contains("allow_insecure")),
        "{err:?}"
    );
    assert!(op.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn wrong_secret_gets_401_from_the_operator() {
    let op = FakeOperator::builder()
        .secret("operator-has-another-key")
        .reply("t", json!({}))
        .spawn()
        .await
        .unwrap();
    let err = run(&op, "t", 2_000, json!({})).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Status { status: 401, body } if body.contains("invalid signature")),
        "{err:?}"
    );
    assert!(!op.requests()[0].signature_valid);
}

#[tokio::test]
async fn body_carries_tool_id_arguments_and_call_context() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .reply("lookup_order", json!({}))
        .spawn()
        .await
        .unwrap();
    let t = tool("lookup_order", op.url("lookup_order"), 2_000);
    let args = json!({"order_number": "A17", "verbose": true});
    let mut with_numbers = ctx();
    with_numbers.from = Some("+14155550123".into());
    with_numbers.to = Some("+15005550006".into());
    let exec = executor();
    exec.execute(&t, "fc-1", &args, &ctx()).await.unwrap();
    exec.execute(&t, "fc-2", &args, &with_numbers)
        .await
        .unwrap();

    let reqs = op.requests();
    let body: Value = serde_json::from_str(&reqs[0].raw_body).unwrap();
    assert_eq!(
        body,
        json!({
            "tool": "lookup_order",
            "id": "fc-1",
            "arguments": {"order_number": "A17", "verbose": true},
            "call": {
                "call_sid": "CA0123456789abcdef0123456789abcdef",
                "stream_sid": "MZ0123456789abcdef0123456789abcdef",
                "account_sid": "AC0123456789abcdef0123456789abcdef"
            }
        })
    );
    // Compact, in the documented field order, byte for byte what request_body() gives.
    assert!(reqs[0]
        .raw_body
        .starts_with(r#"{"tool":"lookup_order","id":"fc-1","arguments":"#));
    assert_eq!(
        reqs[0].raw_body.as_bytes(),
        request_body("lookup_order", "fc-1", &args, &ctx())
    );
    assert_eq!(reqs[0].id, "fc-1");
    assert_eq!(reqs[0].arguments, args);
    assert_eq!(reqs[1].call["from"], "+14155550123");
    assert_eq!(reqs[1].call["to"], "+15005550006");
}

#[tokio::test]
async fn timeout_is_reported_on_time_and_the_request_is_dropped() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .delay("slow", Duration::from_secs(3))
        .spawn()
        .await
        .unwrap();
    // The executor outlives the call, as in the bridge, so only the timeout can close the
    // request's connection.
    let exec = executor();
    let t = tool("slow", op.url("slow"), 300);
    let started = Instant::now();
    let err = exec
        .execute(&t, "call-1", &json!({}), &ctx())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, ToolError::Timeout { ms: 300 });
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(300 + 250), "{elapsed:?}");
    assert!(
        op.wait_until(Duration::from_secs(2), |o| o.cancelled() == ["call-1"])
            .await,
        "the operator should see the timed-out request go away"
    );
    assert!(op.answered().is_empty());
    drop(exec);
}

#[tokio::test]
async fn non_2xx_is_a_status_error_with_a_short_excerpt() {
    let long = "x".repeat(1_000);
    let op = FakeOperator::builder()
        .secret(SECRET)
        .status("broken", 500, "oops")
        .status("verbose", 502, &long)
        .status("moved", 302, "")
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        run(&op, "broken", 2_000, json!({})).await,
        Err(ToolError::Status {
            status: 500,
            body: "oops".into()
        })
    );
    match run(&op, "verbose", 2_000, json!({})).await {
        Err(ToolError::Status { status: 502, body }) => {
            assert_eq!(body.chars().count(), STATUS_EXCERPT_CHARS)
        }
        other => panic!("{other:?}"),
    }
    // Redirects are not followed: a signed POST must not turn into something else.
    assert!(matches!(
        run(&op, "moved", 2_000, json!({})).await,
        Err(ToolError::Status { status: 302, .. })
    ));
}

#[tokio::test]
async fn invalid_json_reply_is_invalid_json() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .invalid_json("bad")
        .reply("huge", json!({"blob": "y".repeat(MAX_REPLY_BYTES)}))
        .spawn()
        .await
        .unwrap();
    let err = run(&op, "bad", 2_000, json!({})).await.unwrap_err();
    assert!(matches!(err, ToolError::InvalidJson(_)), "{err:?}");
    let err = run(&op, "huge", 2_000, json!({})).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidJson(m) if m.contains("larger than")),
        "{err:?}"
    );
}

/// A port nobody listens on: bind, note the port, close.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn unreachable_url_is_a_transport_error_without_the_url() {
    let port = dead_port().await;
    let url = format!("http://ops:hunter2@127.0.0.1:{port}/hook?token=TOPSECRET");
    let t = tool("lookup_order", url, 2_000);
    let err = executor()
        .execute(&t, "fc-1", &json!({}), &ctx())
        .await
        .unwrap_err();
    let ToolError::Transport(text) = &err else {
        panic!("{err:?}")
    };
    for shown in [text.clone(), err.to_string(), err.for_model()] {
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("127.0.0.1"), "{shown}");
    }
}

#[tokio::test]
async fn for_model_never_contains_the_url_or_credentials() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .status("broken", 500, "oops at https://internal.example/TOPSECRET")
        .status("denied", 403, "nope")
        .invalid_json("bad")
        .delay("slow", Duration::from_secs(3))
        .spawn()
        .await
        .unwrap();
    let port = dead_port().await;
    let mut errors = Vec::new();
    for name in ["broken", "denied", "bad", "slow"] {
        let url = format!("{}?token=TOPSECRET&user=ops:hunter2", op.url(name));
        let t = tool(name, url, 300);
        errors.push(
            executor()
                .execute(&t, "fc", &json!({}), &ctx())
                .await
                .unwrap_err(),
        );
    }
    let t = tool(
        "gone",
        format!("http://ops:hunter2@127.0.0.1:{port}/?token=TOPSECRET"),
        300,
    );
    errors.push(
        executor()
            .execute(&t, "fc", &json!({}), &ctx())
            .await
            .unwrap_err(),
    );
    let kinds: Vec<_> = errors.iter().map(ToolError::kind).collect();
    assert_eq!(
        kinds,
        ["status", "status", "invalid_json", "timeout", "transport"]
    );
    for e in &errors {
        let text = e.for_model();
        for bad in [
            "TOPSECRET",
            "hunter2",
            "http",
            "127.0.0.1",
            "oops",
            "internal.example",
            SECRET,
        ] {
            assert!(!text.contains(bad), "{text:?} contains {bad:?}");
        }
        assert!(text.contains("try again later"), "{text}");
        assert_eq!(e.response(), json!({ "error": text }));
    }
    assert!(errors[0].for_model().contains("500"));
    assert!(errors[3].for_model().contains("0.3 seconds"));
}

#[tokio::test]
async fn aborting_the_task_cancels_the_request_at_the_operator() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .hang("stuck")
        .spawn()
        .await
        .unwrap();
    let exec: Arc<dyn ToolExecutor> = Arc::new(executor());
    let t = tool("stuck", op.url("stuck"), 30_000);
    // As the driver does: one spawned task per tool call, aborted on toolCallCancellation,
    // while the shared executor lives on.
    let shared = exec.clone();
    let task = tokio::spawn(async move {
        shared
            .execute(&t, "fc-cancel", &json!({"q": 1}), &ctx())
            .await
    });
    assert!(
        op.wait_until(Duration::from_secs(2), |o| o.requests().len() == 1)
            .await
    );
    assert!(op.cancelled().is_empty());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        op.wait_until(Duration::from_secs(2), |o| o.cancelled() == ["fc-cancel"])
            .await,
        "the operator should see the connection close"
    );
    assert!(op.answered().is_empty());
    drop(exec);
}

#[tokio::test]
async fn dropping_the_future_cancels_the_request_at_the_operator() {
    let op = FakeOperator::builder()
        .secret(SECRET)
        .hang("stuck")
        .spawn()
        .await
        .unwrap();
    let exec = executor();
    let t = tool("stuck", op.url("stuck"), 30_000);
    let args = json!({});
    let c = ctx();
    // Already a `Pin<Box<…>>`: `drop(fut)` below really drops the request future.
    let mut fut = exec.execute(&t, "fc-drop", &args, &c);
    tokio::select! {
        r = &mut fut => panic!("a hanging tool answered: {r:?}"),
        ok = op.wait_until(Duration::from_secs(2), |o| o.requests().len() == 1) => assert!(ok),
    }
    drop(fut);
    // The executor (and its connection pool) stays alive, as in the bridge: only the
    // dropped request's connection closes.
    assert!(
        op.wait_until(Duration::from_secs(2), |o| o.cancelled() == ["fc-drop"])
            .await
    );
    drop(exec);
}

const TOOLS_TOML: &str = r#"
[[webhooks]]
name = "lookup_order"
description = "Look up an order's delivery status by order number."
url = "https://ops.example.com/hooks/lookup_order"
timeout_ms = 5000
parameters = { type = "OBJECT", properties = { order_number = { type = "STRING", description = "As printed on the receipt" }, items = { type = "ARRAY", items = { type = "INTEGER" } } }, required = ["order_number"] }

[[webhooks]]
name = "opening_hours"
description = "Today's opening hours."
url = "https://ops.example.com/hooks/hours"
"#;

#[test]
fn declarations_convert_the_toml_schema_to_json() {
    let cfg: ToolsConfig = toml::from_str(TOOLS_TOML).unwrap();
    check_schemas(&cfg.webhooks).unwrap();
    let decls = declarations(&cfg.webhooks);
    let json = serde_json::to_value(&decls).unwrap();
    assert_eq!(
        json,
        json!([
            {
                "name": "lookup_order",
                "description": "Look up an order's delivery status by order number.",
                "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "order_number": {"type": "STRING", "description": "As printed on the receipt"},
                        "items": {"type": "ARRAY", "items": {"type": "INTEGER"}}
                    },
                    "required": ["order_number"]
                }
            },
            {"name": "opening_hours", "description": "Today's opening hours."}
        ])
    );
    assert_eq!(decls[1].parameters, None);
    assert_eq!(decls[0].behavior, None);
}

#[test]
fn check_schemas_names_the_bad_node() {
    let bad = |params: &str| {
        let src = format!(
            "[[webhooks]]\nname = \"t\"\ndescription = \"\"\nurl = \"https://x\"\nparameters = {params}\n"
        );
        let cfg: ToolsConfig = toml::from_str(&src).unwrap();
        check_schemas(&cfg.webhooks).unwrap_err()
    };
    let e = bad(r#"{ properties = { a = { type = "STRING" } } }"#);
    assert_eq!((e.tool.as_str(), e.path.as_str()), ("t", "parameters"));
    assert!(e.reason.contains("missing type"));
    let e = bad(r#"{ type = "OBJECT", properties = { a = { description = "no type" } } }"#);
    assert_eq!(e.path, "parameters.properties.a");
    let e = bad(r#"{ type = "OBJECT", properties = { a = { type = "STRNG" } } }"#);
    assert_eq!(e.path, "parameters.properties.a.type");
    let e = bad(r#"{ type = "ARRAY", items = { nope = 1 } }"#);
    assert_eq!(e.path, "parameters.items");
    let e =
        bad(r#"{ type = "OBJECT", properties = { a = { type = "STRING" } }, required = ["b"] }"#);
    assert_eq!(e.path, "parameters.required");
    assert!(e.to_string().contains("\"b\""), "{e}");
    // Lower-case JSON-schema spelling passes (it is sent as written).
    let cfg: ToolsConfig = toml::from_str(
        "[[webhooks]]\nname = \"t\"\ndescription = \"\"\nurl = \"https://x\"\nparameters = { type = \"object\" }\n",
    )
    .unwrap();
    check_schemas(&cfg.webhooks).unwrap();
}

#[tokio::test]
async fn recording_executor_scripts_records_and_sees_cancellation() {
    let rec = RecordingExecutor::new()
        .reply("lookup", json!({"n": 1}))
        .reply("lookup", json!("two"))
        .error(
            "broken",
            ToolError::Status {
                status: 500,
                body: "oops".into(),
            },
        )
        .delay("lookup", Duration::from_millis(200))
        .hang("stuck");
    let exec: Arc<dyn ToolExecutor> = Arc::new(rec.clone());
    let lookup = tool("lookup", "http://unused".into(), 1_000);
    let args = json!({"q": "x"});

    let started = tokio::time::Instant::now();
    assert_eq!(
        exec.execute(&lookup, "a", &args, &ctx()).await,
        Ok(json!({"n": 1}))
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The last reply repeats; a non-object is wrapped as the HTTP executor does.
    for id in ["b", "c"] {
        assert_eq!(
            exec.execute(&lookup, id, &args, &ctx()).await,
            Ok(json!({"result": "two"}))
        );
    }
    assert!(matches!(
        exec.execute(&tool("broken", String::new(), 1), "d", &args, &ctx())
            .await,
        Err(ToolError::Status { status: 500, .. })
    ));
    assert!(matches!(
        exec.execute(&tool("unscripted", String::new(), 1), "e", &args, &ctx())
            .await,
        Err(ToolError::Transport(m)) if m.contains("unscripted")
    ));

    let e2 = exec.clone();
    let stuck = tool("stuck", String::new(), 1);
    let task = tokio::spawn(async move { e2.execute(&stuck, "f", &json!({}), &ctx()).await });
    tokio::time::timeout(Duration::from_secs(1), rec.wait_calls(6))
        .await
        .unwrap();
    task.abort();
    let _ = task.await;

    let calls = rec.calls();
    assert_eq!(
        calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d", "e", "f"]
    );
    assert_eq!(calls[0].tool, "lookup");
    assert_eq!(calls[0].args, args);
    assert_eq!(calls[0].ctx, ctx());
    assert_eq!(rec.finished(), ["a", "b", "c", "d", "e"]);
    assert_eq!(rec.cancelled(), ["f"]);
}
