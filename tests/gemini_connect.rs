//! `gemini::connect` against tiny loopback servers: what the upgrade request carries, that a
//! binary `setupComplete` frame is read, and that failures name the status without the secret.

use std::time::Duration;

use callbridge::gemini::connect::{
    close_code_and_reason, connect, describe_close, ConnectError, Credential,
};
use callbridge::gemini::wire::{decompose, ModelEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const V1BETA_PATH: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the fake server saw in the upgrade request.
#[derive(Debug)]
struct SeenRequest {
    path: String,
    query: Option<String>,
    api_key: Option<String>,
    first_frame: Option<Message>,
}

/// Accepts one WebSocket, records the request, sends `{"setupComplete":{}}` as a binary frame,
/// reads one client frame, then closes with `close`.
#[expect(
    clippy::result_large_err,
    reason = "the handshake callback signature is fixed by tungstenite"
)]
async fn spawn_live_server(
    close: Option<(u16, &'static str)>,
) -> (String, oneshot::Receiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = None;
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            seen = Some(SeenRequest {
                path: req.uri().path().to_owned(),
                query: req.uri().query().map(str::to_owned),
                api_key: req
                    .headers()
                    .get("x-goog-api-key")
                    .map(|v| v.to_str().unwrap().to_owned()),
                first_frame: None,
            });
            Ok(resp)
        })
        .await
        .unwrap();
        let mut seen = seen.unwrap();
        ws.send(Message::binary(br#"{"setupComplete":{}}"#.to_vec()))
            .await
            .unwrap();
        seen.first_frame = ws.next().await.and_then(Result::ok);
        if let Some((code, reason)) = close {
            ws.close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .unwrap();
        }
        let _ = tx.send(seen);
        // Drain until the client goes away so the close handshake can complete.
        while let Some(Ok(_)) = ws.next().await {}
    });
    (format!("ws://{addr}"), rx)
}

#[tokio::test]
async fn api_key_in_header_and_binary_setup_complete_is_read() {
    let (base, seen) = spawn_live_server(Some((1008, "models/x is not found"))).await;
    let url = format!("{base}{V1BETA_PATH}");
    let mut ws = connect(&url, &Credential::ApiKey("test-key-123".into()), TIMEOUT)
        .await
        .expect("connects");

    let frame = ws.next().await.expect("a frame").expect("no error");
    let Message::Binary(payload) = frame else {
        panic!("expected a binary frame, got {frame:?}");
    };
    assert_eq!(decompose(&payload).unwrap(), [ModelEvent::SetupComplete]);

    ws.send(Message::text(r#"{"setup":{"model":"models/x"}}"#))
        .await
        .unwrap();
    let closing = ws.next().await.expect("close frame").expect("no error");
    let Message::Close(frame) = closing else {
        panic!("expected close, got {closing:?}");
    };
    let (code, reason) = close_code_and_reason(frame.as_ref());
    assert_eq!((code, reason.as_str()), (1008, "models/x is not found"));
    assert!(describe_close(code).contains("not found"));

    let seen = seen.await.unwrap();
    assert_eq!(seen.path, V1BETA_PATH);
    assert_eq!(seen.query, None, "the api key must not be in the url");
    assert_eq!(seen.api_key.as_deref(), Some("test-key-123"));
    assert!(
        matches!(seen.first_frame, Some(Message::Text(ref t)) if t.as_str().starts_with(r#"{"setup""#))
    );
}

#[tokio::test]
async fn ephemeral_token_goes_to_constrained_v1alpha_with_access_token() {
    let (base, seen) = spawn_live_server(None).await;
    let url = format!("{base}{V1BETA_PATH}");
    let mut ws = connect(
        &url,
        &Credential::EphemeralToken("auth_tokens/EPHEMERAL_XYZ".into()),
        TIMEOUT,
    )
    .await
    .expect("connects");
    let Some(Ok(Message::Binary(payload))) = ws.next().await else {
        panic!("expected binary setupComplete");
    };
    assert_eq!(decompose(&payload).unwrap(), [ModelEvent::SetupComplete]);
    ws.send(Message::text("{}")).await.unwrap();

    let seen = seen.await.unwrap();
    assert_eq!(
        seen.path,
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
    );
    assert_eq!(
        seen.query.as_deref(),
        Some("access_token=auth_tokens%2FEPHEMERAL_XYZ")
    );
    assert_eq!(seen.api_key, None, "no key header with an ephemeral token");
}

/// A server that answers the upgrade with a plain HTTP status.
async fn spawn_status_server(status_line: &'static str, body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let response = format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
        let _ = tcp.shutdown().await;
    });
    format!("ws://{addr}{V1BETA_PATH}")
}

#[tokio::test]
async fn http_429_on_upgrade_names_the_status() {
    let url = spawn_status_server(
        "429 Too Many Requests",
        r#"{"error":{"code":429,"message":"quota exceeded"}}"#.into(),
    )
    .await;
    let err = connect(&url, &Credential::ApiKey("k".into()), TIMEOUT)
        .await
        .expect_err("429 must fail");
    assert!(
        matches!(err, ConnectError::HttpStatus { status: 429, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("429"), "{msg}");
    assert!(msg.contains("quota exceeded"), "{msg}");
}

#[tokio::test]
async fn errors_never_contain_the_secret() {
    // The server echoes the token back in its body; the error must not repeat it.
    let token = "auth_tokens/TOP_SECRET_TOKEN";
    let url = spawn_status_server(
        "404 Not Found",
        format!("no such method for access_token={token}"),
    )
    .await;
    let err = connect(&url, &Credential::EphemeralToken(token.into()), TIMEOUT)
        .await
        .expect_err("404 must fail");
    assert!(
        matches!(err, ConnectError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("TOP_SECRET_TOKEN"), "{shown}");
    assert!(shown.contains("access_token=REDACTED"), "{shown}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tcp);
    });
    let timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let err = connect(
        &format!("ws://{addr}/x"),
        &Credential::ApiKey("k".into()),
        timeout,
    )
    .await
    .expect_err("must time out");
    assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    holder.abort();
}

#[tokio::test]
async fn refused_connection_is_an_io_error() {
    // Bind then drop to get a port that is (almost certainly) closed.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let err = connect(
        &format!("ws://127.0.0.1:{port}/x"),
        &Credential::ApiKey("k".into()),
        TIMEOUT,
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, ConnectError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn wss_connect_does_not_panic_without_a_tls_server() {
    // Exercises the rustls ClientConfig construction (crypto provider) and reports the failed
    // TLS handshake as an error.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let err = connect(
        &format!("wss://{addr}/x"),
        &Credential::ApiKey("k".into()),
        TIMEOUT,
    )
    .await
    .expect_err("not a TLS server");
    assert!(matches!(err, ConnectError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_urls_are_rejected_without_the_secret() {
    for url in ["http://127.0.0.1:1/x", "not a url"] {
        let err = connect(url, &Credential::ApiKey("k".into()), TIMEOUT)
            .await
            .expect_err("bad url");
        assert!(
            matches!(err, ConnectError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
    }
    let err = connect(
        "ws://127.0.0.1:1/x",
        &Credential::ApiKey("bad\nkey".into()),
        TIMEOUT,
    )
    .await
    .expect_err("newline in key");
    assert!(matches!(err, ConnectError::InvalidCredential), "{err:?}");
    assert!(!err.to_string().contains("bad"), "{err}");
}
