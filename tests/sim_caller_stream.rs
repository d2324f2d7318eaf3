//! The simulated Twilio caller against tiny fake bridges (plain tokio-tungstenite servers
//! written here, not the real bridge): wire shapes, cadence, marks, clear, warnings, timing.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use callbridge::sim::caller::{
    codes, CallEnding, Script, SimCaller, SimCallerError, TimelineEvent,
};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;
const TOKEN: &str = "test-token-123";

/// Accept one WebSocket on a fresh port, record the upgrade headers, hand the socket to `f`.
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's header callback signature returns its own ErrorResponse"
)]
async fn fake_bridge<F, Fut, T>(f: F) -> (String, JoinHandle<(HeaderMap, String, T)>)
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = (HeaderMap::new(), String::new());
        let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            seen = (req.headers().clone(), req.uri().to_string());
            Ok(resp)
        })
        .await
        .unwrap();
        let out = f(ws).await;
        (seen.0, seen.1, out)
    });
    (format!("ws://127.0.0.1:{port}/twilio/media"), task)
}

/// Next text frame as JSON (None on close/end).
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Read until `connected` and `start` have arrived; returns the streamSid.
async fn read_opening(ws: &mut Ws) -> String {
    let c = next_json(ws).await.unwrap();
    assert_eq!(c["event"], "connected");
    let s = next_json(ws).await.unwrap();
    assert_eq!(s["event"], "start");
    s["streamSid"].as_str().unwrap().to_string()
}

fn media_msg(sid: &str, bytes: &[u8]) -> Message {
    Message::text(
        json!({"event":"media","streamSid":sid,"media":{"payload": base64::engine::general_purpose::STANDARD.encode(bytes)}})
            .to_string(),
    )
}
fn mark_msg(sid: &str, name: &str) -> Message {
    Message::text(json!({"event":"mark","streamSid":sid,"mark":{"name":name}}).to_string())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}
fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}
fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34
        && s.starts_with(prefix)
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn handshake_headers_and_message_shapes_follow_the_spec() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let mut msgs = Vec::new();
        let mut close_code = None;
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Text(t) => msgs.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
                Message::Close(f) => {
                    close_code = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        (msgs, close_code)
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(&url)
        .auth_token(TOKEN)
        .custom_parameter("tenant", "acme")
        .script(Script::new().silence(300).hang_up())
        .spawn()
        .join()
        .await
        .unwrap();
    let (headers, uri, (msgs, close_code)) = bridge.await.unwrap();

    // §6.1: headers, signature over the wss:// URL, nothing else.
    assert_eq!(uri, "/twilio/media");
    assert_eq!(headers["user-agent"], "Twilio.TmeWs/1.0");
    assert_eq!(headers["accept-encoding"], "gzip");
    let wss = url.replacen("ws://", "wss://", 1);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(wss.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(headers["x-twilio-signature"], want.as_str());
    assert_eq!(report.signed_stream_url, wss);
    for absent in [
        "origin",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    ] {
        assert!(!headers.contains_key(absent), "{absent} must not be sent");
    }

    // connected, exactly.
    assert_eq!(
        msgs[0],
        json!({"event":"connected","protocol":"Call","version":"1.0.0"})
    );
    // start.
    let start = &msgs[1];
    assert_eq!(
        keys(start),
        set(&["event", "sequenceNumber", "start", "streamSid"])
    );
    assert_eq!(start["sequenceNumber"], "1");
    assert_eq!(
        keys(&start["start"]),
        set(&[
            "accountSid",
            "streamSid",
            "callSid",
            "tracks",
            "mediaFormat",
            "customParameters"
        ])
    );
    let sid = start["streamSid"].as_str().unwrap();
    assert!(is_sid(sid, "MZ"), "{sid}");
    assert_eq!(start["start"]["streamSid"], sid);
    assert!(is_sid(start["start"]["callSid"].as_str().unwrap(), "CA"));
    assert!(is_sid(start["start"]["accountSid"].as_str().unwrap(), "AC"));
    assert_eq!(start["start"]["tracks"], json!(["inbound"]));
    assert_eq!(
        start["start"]["mediaFormat"],
        json!({"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1})
    );
    assert_eq!(start["start"]["customParameters"], json!({"tenant":"acme"}));

    // media frames: shapes, counters as strings, 160 bytes of silence.
    let media: Vec<&Value> = msgs.iter().filter(|m| m["event"] == "media").collect();
    assert!(media.len() >= 10, "{} frames", media.len());
    for (i, m) in media.iter().enumerate() {
        assert_eq!(
            keys(m),
            set(&["event", "sequenceNumber", "media", "streamSid"])
        );
        assert_eq!(
            keys(&m["media"]),
            set(&["track", "chunk", "timestamp", "payload"])
        );
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], (i + 1).to_string());
        assert_eq!(m["media"]["timestamp"], (155 + 20 * i).to_string());
        let p = m["media"]["payload"].as_str().unwrap();
        assert_eq!(p.len(), 216);
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert_eq!(bytes, vec![0xFF; 160]);
    }
    // One sequence counter for everything after connected.
    let seqs: Vec<u64> = msgs[1..]
        .iter()
        .map(|m| m["sequenceNumber"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // stop, then close 1000.
    let stop = msgs.last().unwrap();
    assert_eq!(
        keys(stop),
        set(&["event", "sequenceNumber", "streamSid", "stop"])
    );
    assert_eq!(stop["stop"]["callSid"], start["start"]["callSid"]);
    assert_eq!(stop["stop"]["accountSid"], start["start"]["accountSid"]);
    assert_eq!(close_code, Some(1000));
    assert_eq!(report.ended_by, Some(CallEnding::ScriptDone));
    assert_eq!(report.media_frames_sent as usize, media.len());
}

#[tokio::test]
async fn media_cadence_is_20ms_without_drift() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let mut times = Vec::new();
        while let Some(m) = next_json(&mut ws).await {
            if m["event"] == "media" {
                times.push(Instant::now());
            }
        }
        times
    })
    .await;
    SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(2000).hang_up())
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, times) = bridge.await.unwrap();
    let n = times.len();
    assert!((99..=102).contains(&n), "{n} frames in 2 s");
    let span = times[n - 1].duration_since(times[0]).as_secs_f64() * 1000.0;
    let ideal = 20.0 * (n - 1) as f64;
    println!("frames {n}, span {span:.1} ms, ideal {ideal} ms");
    assert!(
        (span - ideal).abs() < 15.0,
        "drift: span {span:.1} ms vs {ideal} ms"
    );
    let mut gaps: Vec<f64> = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .collect();
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    assert!((18.0..=22.0).contains(&median), "median gap {median:.2} ms");
}

#[tokio::test]
async fn say_sends_the_fixture_bytes_in_order() {
    let wav = std::fs::read("assets/caller_hello.mulaw8k.wav").unwrap();
    // Independent minimal read of the data chunk.
    let pos = wav.windows(4).position(|w| w == b"data").unwrap();
    let len = u32::from_le_bytes(wav[pos + 4..pos + 8].try_into().unwrap()) as usize;
    let data = wav[pos + 8..pos + 8 + len].to_vec();
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let mut audio = Vec::new();
        while let Some(m) = next_json(&mut ws).await {
            if m["event"] == "media" {
                audio.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(m["media"]["payload"].as_str().unwrap())
                        .unwrap(),
                );
            }
        }
        audio
    })
    .await;
    // Speak only the first 0.5 s to keep the test short.
    let report = SimCaller::builder()
        .stream_url(url)
        .script(
            Script::new()
                .say_ulaw("hello", data[..4000].to_vec())
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, audio) = bridge.await.unwrap();
    assert_eq!(&audio[..4000], &data[..4000]);
    assert_eq!(audio.len(), 4000, "25 frames, then stop");
    assert_eq!(report.sent, audio);
    let starts = report
        .timeline
        .iter()
        .filter(|e| matches!(&e.event, TimelineEvent::UtteranceStart { label } if label == "hello"))
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test]
async fn marks_are_echoed_after_playout_and_immediately_when_idle() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let sid = read_opening(&mut ws).await;
        ws.send(media_msg(&sid, &[0x11; 800])).await.unwrap();
        ws.send(mark_msg(&sid, "m1")).await.unwrap();
        let sent_at = Instant::now();
        let echo = loop {
            let m = next_json(&mut ws).await.unwrap();
            if m["event"] == "mark" {
                break m;
            }
        };
        let played_after = sent_at.elapsed();
        ws.send(mark_msg(&sid, "idle")).await.unwrap();
        let idle_at = Instant::now();
        let echo2 = loop {
            let m = next_json(&mut ws).await.unwrap();
            if m["event"] == "mark" {
                break m;
            }
        };
        let idle_after = idle_at.elapsed();
        // The bridge ends the call by closing the socket.
        ws.close(None).await.unwrap();
        let mut after_close = Vec::new();
        while let Some(m) = next_json(&mut ws).await {
            after_close.push(m);
        }
        (echo, played_after, echo2, idle_after, after_close)
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(10_000))
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, (echo, played_after, echo2, idle_after, after_close)) = bridge.await.unwrap();
    assert_eq!(
        keys(&echo),
        set(&["event", "sequenceNumber", "streamSid", "mark"])
    );
    assert_eq!(echo["mark"], json!({"name":"m1"}));
    let ms = played_after.as_millis();
    assert!(
        (95..=170).contains(&ms),
        "100 ms of audio, mark echoed after {ms} ms"
    );
    assert_eq!(echo2["mark"]["name"], "idle");
    assert!(
        idle_after.as_millis() <= 60,
        "idle mark after {idle_after:?}"
    );
    assert!(
        after_close.is_empty(),
        "nothing after the bridge closed: {after_close:?}"
    );
    assert_eq!(report.marks.len(), 2);
    assert!(report.marks.iter().all(|m| m.played));
    assert_eq!(report.ended_by, Some(CallEnding::BridgeClosed));
    assert!(report.warnings.contains(&codes::SERVER_CLOSED));
    assert_eq!(report.heard.iter().filter(|&&b| b == 0x11).count(), 800);
}

#[tokio::test]
async fn clear_drops_queued_audio_and_returns_pending_marks_in_order() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let sid = read_opening(&mut ws).await;
        let t_audio = Instant::now();
        for _ in 0..50 {
            ws.send(media_msg(&sid, &[0x22; 800])).await.unwrap(); // 5 s in 100 ms chunks
        }
        ws.send(mark_msg(&sid, "a")).await.unwrap();
        ws.send(media_msg(&sid, &[0x22; 8000])).await.unwrap();
        ws.send(mark_msg(&sid, "b")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text(
            json!({"event":"clear","streamSid":sid}).to_string(),
        ))
        .await
        .unwrap();
        let t_clear = Instant::now();
        let mut marks = Vec::new();
        while marks.len() < 2 {
            let m = next_json(&mut ws).await.unwrap();
            if m["event"] == "mark" {
                marks.push((m, t_clear.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.close(None).await.unwrap();
        while next_json(&mut ws).await.is_some() {}
        (marks, t_clear.duration_since(t_audio))
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(10_000))
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, (marks, clear_after)) = bridge.await.unwrap();
    assert_eq!(marks[0].0["mark"]["name"], "a");
    assert_eq!(marks[1].0["mark"]["name"], "b");
    let s0: u64 = marks[0].0["sequenceNumber"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let s1: u64 = marks[1].0["sequenceNumber"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(s1, s0 + 1);
    assert!(
        marks[1].1 < Duration::from_millis(50),
        "marks returned after {:?}",
        marks[1].1
    );
    assert_eq!(
        report.marks.iter().map(|m| m.played).collect::<Vec<_>>(),
        [false, false]
    );
    assert_eq!(report.clears_received, 1);
    // About 300 ms played before the clear, nothing after.
    let played = report.heard.iter().filter(|&&b| b == 0x22).count();
    let expect = clear_after.as_millis() as usize * 8;
    assert!(
        played.abs_diff(expect) <= 480,
        "played {played} bytes, expected ≈{expect}"
    );
    let first = report.heard.iter().position(|&b| b == 0x22).unwrap();
    let last = report.heard.iter().rposition(|&b| b == 0x22).unwrap();
    assert_eq!(
        last + 1 - first,
        played,
        "audio is contiguous and stops at the clear"
    );
    let dropped = report.timeline.iter().find_map(|e| match e.event {
        TimelineEvent::ClearReceived {
            dropped_ms,
            marks_returned,
        } => Some((dropped_ms, marks_returned)),
        _ => None,
    });
    let (dropped_ms, returned) = dropped.unwrap();
    assert_eq!(returned, 2);
    assert!(dropped_ms > 5500, "{dropped_ms}");
    assert!(report.timeline.iter().any(|e| matches!(
        e.event,
        TimelineEvent::AgentAudioEnd {
            interrupted: true,
            ..
        }
    )));
}

#[tokio::test]
async fn invalid_messages_are_dropped_and_warned_once_per_stream() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let sid = read_opening(&mut ws).await;
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        ws.send(Message::binary(vec![4u8])).await.unwrap();
        for bad in [
            "not json".to_string(),
            json!({"event":"playAudio","streamSid":sid}).to_string(),
            json!({"event":"clear","streamSid":sid,"extra":true}).to_string(),
            json!({"event":"clear","streamSid":"MZ00000000000000000000000000000000"}).to_string(),
            json!({"event":"mark","streamSid":sid}).to_string(),
            json!({"event":"media","streamSid":sid,"media":{"payload":"/w==","track":"outbound"}})
                .to_string(),
        ] {
            ws.send(Message::text(bad)).await.unwrap();
        }
        // The stream is still up: valid audio plays and its mark comes back.
        ws.send(media_msg(&sid, &[0x33; 160])).await.unwrap();
        ws.send(mark_msg(&sid, "ok")).await.unwrap();
        loop {
            let m = next_json(&mut ws).await.unwrap();
            if m["event"] == "mark" {
                assert_eq!(m["mark"]["name"], "ok");
                break;
            }
        }
        ws.close(None).await.unwrap();
        while next_json(&mut ws).await.is_some() {}
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(10_000))
        .spawn()
        .join()
        .await
        .unwrap();
    bridge.await.unwrap();
    assert_eq!(report.invalid_messages, 8);
    assert_eq!(
        report.warnings,
        BTreeSet::from([
            codes::BINARY_MESSAGE,
            codes::INVALID_MESSAGE,
            codes::SERVER_CLOSED
        ])
    );
    for code in [codes::BINARY_MESSAGE, codes::INVALID_MESSAGE] {
        let n = report
            .timeline
            .iter()
            .filter(|e| matches!(e.event, TimelineEvent::Warning { code: c, .. } if c == code))
            .count();
        assert_eq!(n, 1, "warning {code} logged {n} times");
    }
    assert_eq!(report.heard.iter().filter(|&&b| b == 0x33).count(), 160);
}

#[tokio::test]
async fn heard_track_is_real_time() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let opened = Instant::now(); // ≈ the simulator's t0 (connected is sent right away)
        let sid = read_opening(&mut ws).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent_ms = opened.elapsed().as_millis() as u64;
        ws.send(media_msg(&sid, &[0x44; 3200])).await.unwrap(); // 400 ms
        tokio::time::sleep(Duration::from_millis(700)).await;
        ws.close(None).await.unwrap();
        while next_json(&mut ws).await.is_some() {}
        sent_ms
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(10_000))
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, sent_ms) = bridge.await.unwrap();
    let first = report.heard.iter().position(|&b| b == 0x44).unwrap();
    let first_ms = report.heard_offset_ms + (first as u64 / 160) * 20;
    assert!(
        first_ms.abs_diff(sent_ms) <= 45,
        "audio sent at ≈{sent_ms} ms, heard from {first_ms} ms"
    );
    assert_eq!(first % 160, 0, "playback starts on a frame boundary");
    assert_eq!(report.heard.iter().filter(|&&b| b == 0x44).count(), 3200);
    let (start, end) = report
        .timeline
        .iter()
        .fold((None, None), |acc, e| match e.event {
            TimelineEvent::AgentAudioStart { turn: 1 } => (Some(e.at_ms), acc.1),
            TimelineEvent::AgentAudioEnd {
                turn: 1, played_ms, ..
            } => {
                assert_eq!(played_ms, 400);
                (acc.0, Some(e.at_ms))
            }
            _ => acc,
        });
    assert_eq!(start, Some(first_ms));
    assert_eq!(end, Some(first_ms + 400));
    // heard is continuous real time: one frame per tick until the end of the call.
    assert_eq!(report.heard.len() % 160, 0);
}

#[tokio::test]
async fn dtmf_shares_the_sequence_counter_and_hang_up_sends_stop() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let mut msgs = Vec::new();
        while let Some(m) = next_json(&mut ws).await {
            msgs.push(m);
        }
        msgs
    })
    .await;
    let handle = SimCaller::builder()
        .stream_url(url)
        .script(Script::new().silence(100).dtmf("5#").silence(10_000))
        .spawn();
    tokio::time::sleep(Duration::from_millis(600)).await;
    handle.hang_up();
    let report = handle.join().await.unwrap();
    let (_, _, msgs) = bridge.await.unwrap();
    let dtmf: Vec<&Value> = msgs.iter().filter(|m| m["event"] == "dtmf").collect();
    assert_eq!(dtmf.len(), 2);
    for (d, digit) in dtmf.iter().zip(["5", "#"]) {
        assert_eq!(
            keys(d),
            set(&["event", "streamSid", "sequenceNumber", "dtmf"])
        );
        assert_eq!(d["dtmf"], json!({"track":"inbound_track","digit":digit}));
    }
    let seqs: Vec<u64> = msgs[1..]
        .iter()
        .map(|m| m["sequenceNumber"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(msgs.last().unwrap()["event"], "stop");
    assert_eq!(report.ended_by, Some(CallEnding::HangUpRequested));
}

#[tokio::test]
async fn max_duration_hangs_up() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let mut last = None;
        while let Some(m) = next_json(&mut ws).await {
            last = Some(m);
        }
        last
    })
    .await;
    let t = Instant::now();
    let report = SimCaller::builder()
        .stream_url(url)
        .max_duration(Duration::from_millis(400))
        .script(Script::new().silence(60_000))
        .spawn()
        .join()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    let (_, _, last) = bridge.await.unwrap();
    assert_eq!(last.unwrap()["event"], "stop");
    assert_eq!(report.ended_by, Some(CallEnding::MaxDuration));
}

#[tokio::test]
async fn non_101_answer_is_a_handshake_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let err = SimCaller::builder()
        .stream_url(format!("ws://127.0.0.1:{port}/twilio/media"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SimCallerError::Handshake { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("31920"));
}

#[tokio::test]
async fn barge_in_script_speaks_while_the_agent_is_talking() {
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let sid = read_opening(&mut ws).await;
        ws.send(media_msg(&sid, &[0x55; 16000])).await.unwrap(); // 2 s of agent speech
        let mut caller_spoke_at = None;
        let t = Instant::now();
        while let Some(m) = next_json(&mut ws).await {
            if m["event"] == "media" && caller_spoke_at.is_none() {
                let p = base64::engine::general_purpose::STANDARD
                    .decode(m["media"]["payload"].as_str().unwrap())
                    .unwrap();
                if p[0] == 0x66 {
                    caller_spoke_at = Some(t.elapsed());
                    ws.send(Message::text(
                        json!({"event":"clear","streamSid":sid}).to_string(),
                    ))
                    .await
                    .unwrap();
                }
            }
        }
        caller_spoke_at
    })
    .await;
    let report = SimCaller::builder()
        .stream_url(url)
        .script(
            Script::new()
                .wait_for_agent_audio(2000)
                .silence(300)
                .say_ulaw("interrupt", vec![0x66; 1600])
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let (_, _, spoke) = bridge.await.unwrap();
    let spoke = spoke.expect("caller never barged in");
    assert!(spoke < Duration::from_millis(1000), "{spoke:?}");
    let heard = report.heard.iter().filter(|&&b| b == 0x55).count();
    assert!(
        heard < 16000 / 2,
        "clear cut the agent off after {heard} bytes"
    );
}

#[tokio::test]
async fn cli_places_a_call_and_writes_the_heard_wav() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        call: callbridge::sim::caller::CallArgs,
    }
    let (url, bridge) = fake_bridge(|mut ws| async move {
        let sid = read_opening(&mut ws).await;
        ws.send(media_msg(&sid, &[0x12; 1600])).await.unwrap(); // a 200 ms "greeting"
        let mut said = 0usize;
        while let Some(m) = next_json(&mut ws).await {
            if m["event"] == "media" {
                let p = base64::engine::general_purpose::STANDARD
                    .decode(m["media"]["payload"].as_str().unwrap())
                    .unwrap();
                said += p.iter().filter(|&&b| b != 0xFF).count();
            }
        }
        said
    })
    .await;
    let dir = std::env::temp_dir().join(format!("sim-caller-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("heard.wav");
    let cli = Cli::parse_from([
        "call",
        "--url",
        &url,
        "--wav",
        "assets/caller_bye.mulaw8k.wav",
        "--quiet-ms",
        "200",
        "--max-seconds",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    callbridge::sim::caller::run_cli(cli.call).await.unwrap();
    let (_, _, said) = bridge.await.unwrap();
    assert!(
        said > 8000,
        "the caller said its wav after the greeting ({said} bytes)"
    );
    let wav = std::fs::read(&out).unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(
        u16::from_le_bytes([wav[20], wav[21]]),
        7,
        "mu-law format tag"
    );
    assert!(wav.windows(4).any(|w| w == b"fact"));
    // RIFF 12 + fmt 26 + fact 12 + data header 8 = 58 bytes of header.
    assert_eq!(wav[58..].iter().filter(|&&b| b == 0x12).count(), 1600);
    assert_eq!(wav.len() - 58, 4 * 8000, "4 s of real-time heard audio");
    let _ = std::fs::remove_dir_all(&dir);
}
