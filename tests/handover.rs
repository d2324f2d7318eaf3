//! goAway handover takes the newest resumption handle (hardening issue 13 point 10).
//!
//! Gemini keeps sending on a connection after `goAway` until it sees the client's close, so a
//! `sessionResumptionUpdate` can cross the bridge's close frame. The bridge must keep reading
//! the old connection until its close handshake completes (or a bounded drain deadline), take
//! the newest `resumable: true` handle that arrives, close with 1000 (Normal), and only then
//! send the new `setup`. Measured against the simulator and against a test-local fake server
//! that sends the newer handle a few ms after `goAway`, without reading meanwhile (as if the
//! bridge's close frame were still on its way).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbridge::sim::caller::{CallEnding, Script};
use callbridge::sim::gemini::{CloseRecord, Scenario, DEFAULT_PATH};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A silent caller (Twilio still streams silence) that hangs up after `ms`.
fn silent_for(ms: u64) -> Script {
    Script::new().silence(ms).hang_up()
}

/// Resumed connections: for each one, whether its setup carried the newest resumable handle
/// its predecessor had sent (the last entry of `handles_issued`).
fn resumed_with_newest(h: &Harness) -> Vec<(usize, bool, String)> {
    let rec = h.sim.record();
    rec.connections
        .windows(2)
        .map(|w| {
            let newest = w[0].handles_issued.last().cloned().unwrap_or_default();
            let used = w[1].resumed_from.clone().unwrap_or_default();
            (w[1].index, !used.is_empty() && used == newest, used)
        })
        .collect()
}

/// (a) with the simulator: the goAway is followed at once by a newer handle on the old
/// connection; the new setup resumes with that one. (b) The old connection is closed with a
/// close frame 1000 and the handshake completed, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_sent_right_after_go_away_is_the_one_resumed() {
    let mut h = harness(
        |s| {
            s.scenario(Scenario::default())
                .lifetime(Duration::from_millis(1_500))
                .go_away_lead(Duration::from_millis(1_200))
                .handle_after_go_away(Duration::ZERO)
        },
        |c| c.gemini.greeting = false,
    )
    .await;
    let report = h
        .caller()
        .script(silent_for(800))
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds.iter().any(|k| k == "reconnected go_away resumed"),
        "{kinds:?}"
    );
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let rec = h.sim.record();
    let (old, new) = (&rec.connections[0], &rec.connections[1]);
    assert!(
        old.handles_issued.len() >= 2,
        "a handle after setup and one after goAway: {:?}",
        old.handles_issued
    );
    assert_eq!(
        new.resumed_from.as_deref(),
        old.handles_issued.last().map(String::as_str),
        "the new setup carries the handle sent after goAway, not {:?}",
        old.handles_issued.first()
    );
    assert_eq!(
        old.close,
        Some(CloseRecord::ByClient {
            code: Some(1000),
            reason: String::new()
        }),
        "the old connection got a close frame 1000"
    );
}

/// (c) 16 back-to-back handovers, each racing a handle sent right after its goAway: every
/// new setup carries the newest handle of the connection before it, and every old connection
/// is closed with 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_back_to_back_handovers_each_resume_with_the_newest_handle() {
    let mut h = harness(
        |s| {
            // goAway 100 ms into each connection, 200 ms before the end: the handover
            // starts at once (less than the 0.5 s margin left), with a drain of ≤ 100 ms.
            s.scenario(Scenario::default())
                .lifetime(Duration::from_millis(300))
                .go_away_lead(Duration::from_millis(200))
                .handle_after_go_away(Duration::ZERO)
        },
        |c| c.gemini.greeting = false,
    )
    .await;
    let caller = h.caller().script(silent_for(30_000)).spawn();
    // Hang up once 16 handovers are done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.sim.record().connections.len() < 17 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} connections",
            h.sim.record().connections.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the 17th connection's setup complete.
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller.hang_up();
    let report = caller.join().await.unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("reconnected fault"))
            .count(),
        0,
        "no connection expired before its handover: {kinds:?}"
    );
    assert_eq!(report.ended_by, Some(CallEnding::HangUpRequested));
    let results = resumed_with_newest(&h);
    let first16 = &results[..16];
    let newest = first16.iter().filter(|(_, ok, _)| *ok).count();
    eprintln!("{newest}/16 handovers resumed with the newest handle");
    assert_eq!(newest, 16, "{first16:#?}");
    let rec = h.sim.record();
    for c in &rec.connections[..16] {
        assert_eq!(
            c.close,
            Some(CloseRecord::ByClient {
                code: Some(1000),
                reason: String::new()
            }),
            "connection {} closed with 1000",
            c.index
        );
    }
}

/// The `overlap` strategy connects in parallel but sends the setup only after the old
/// connection's close: it too resumes with the handle that followed the goAway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_handover_also_resumes_with_the_newest_handle() {
    let mut h = harness(
        |s| {
            s.scenario(Scenario::default())
                .lifetime(Duration::from_millis(300))
                .go_away_lead(Duration::from_millis(200))
                .handle_after_go_away(Duration::ZERO)
        },
        |c| {
            c.gemini.greeting = false;
            c.session.handover = "overlap".into();
        },
    )
    .await;
    let caller = h.caller().script(silent_for(30_000)).spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.sim.record().connections.len() < 5 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller.hang_up();
    caller.join().await.unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds
            .iter()
            .filter(|k| *k == "reconnected go_away resumed")
            .count()
            >= 4,
        "{kinds:?}"
    );
    let results = resumed_with_newest(&h);
    assert!(results[..4].iter().all(|(_, ok, _)| *ok), "{results:#?}");
    let rec = h.sim.record();
    for c in &rec.connections[..4] {
        assert!(
            matches!(
                c.close,
                Some(CloseRecord::ByClient {
                    code: Some(1000),
                    ..
                })
            ),
            "connection {} closed with 1000: {:?}",
            c.index,
            c.close
        );
    }
}

/// What the fake server saw on one connection.
#[derive(Debug, Default, Clone)]
struct FakeConn {
    setup: Option<Value>,
    /// The client's close frame: `Some(None)` = a close frame without a status code.
    close: Option<Option<u16>>,
    /// After the close frame, the stream ended without an error (handshake complete).
    clean_end: bool,
}

/// A minimal Live server: connection 0 sends setupComplete, handle `h-old`, goAway, and —
/// 3 ms later, without reading meanwhile — handle `h-new`; later connections answer their
/// setup and stay open.
async fn fake_gemini() -> (String, Arc<Mutex<Vec<FakeConn>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}{}", listener.local_addr().unwrap(), DEFAULT_PATH);
    let log: Arc<Mutex<Vec<FakeConn>>> = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut index = 0usize;
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log2.clone();
            let i = index;
            index += 1;
            log.lock().unwrap().push(FakeConn::default());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let send = |v: Value| Message::Binary(v.to_string().into_bytes().into());
                // The setup.
                let setup = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            break v["setup"].clone();
                        }
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                log.lock().unwrap()[i].setup = Some(setup);
                let _ = ws.send(send(json!({"setupComplete": {}}))).await;
                let first = if i == 0 {
                    "h-old".to_string()
                } else {
                    format!("h-{i}")
                };
                let _ = ws
                    .send(send(json!({"sessionResumptionUpdate": {
                        "newHandle": first, "resumable": true}})))
                    .await;
                if i == 0 {
                    // Give the bridge time to flush its greeting-less start, then announce.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = ws.send(send(json!({"goAway": {"timeLeft": "10s"}}))).await;
                    // Not reading: the bridge's close frame, if any, waits in our buffer.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let _ = ws
                        .send(send(json!({"sessionResumptionUpdate": {
                            "newHandle": "h-new", "resumable": true}})))
                        .await;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map(|f| u16::from(f.code));
                            log.lock().unwrap()[i].close = Some(code);
                            // Reading on flushes the close reply and sees the end.
                            let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
                            log.lock().unwrap()[i].clean_end = matches!(end, Ok(None));
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    }
                }
            });
        }
    });
    (url, log)
}

/// (a) + (b) with a fake server: a newer handle sent 3 ms after goAway (crossing the bridge's
/// close frame) is the one the new setup carries; the old connection gets a close frame with
/// code 1000 and the close handshake completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_handle_crossing_the_close_frame_is_resumed_and_the_close_is_clean() {
    let (url, log) = fake_gemini().await;
    let mut h = harness(
        |s| s,
        |c| {
            c.gemini.url = url;
            c.gemini.greeting = false;
        },
    )
    .await;
    let report = h
        .caller()
        .script(silent_for(1_500))
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds.iter().any(|k| k == "reconnected go_away resumed"),
        "{kinds:?}"
    );
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    let log = log.lock().unwrap().clone();
    assert!(log.len() >= 2, "{log:#?}");
    assert_eq!(
        log[1].setup.as_ref().unwrap()["sessionResumption"]["handle"],
        json!("h-new"),
        "the new setup resumes with the handle that arrived after goAway"
    );
    assert_eq!(log[0].close, Some(Some(1000)), "close frame 1000: {log:#?}");
    assert!(log[0].clean_end, "close handshake completed: {log:#?}");
}
