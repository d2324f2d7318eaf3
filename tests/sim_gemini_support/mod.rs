//! A raw Gemini Live test client for the simulator tests: tokio-tungstenite and plain JSON,
//! deliberately independent of `callbridge::gemini`.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A simulator that runs a turn in milliseconds: 25× real-time pacing, 10 ms response
/// latency, no wait for real-time playback.
pub fn fast() -> callbridge::sim::gemini::GeminiSimBuilder {
    callbridge::sim::gemini::GeminiSim::builder()
        .pace(25.0)
        .response_latency(Duration::from_millis(10))
        .realtime_playback(false)
}

/// Model audio: a 24 kHz square wave of `ms` milliseconds.
pub fn tone(ms: u32) -> callbridge::sim::gemini::Clip {
    callbridge::sim::gemini::Clip::from_samples(
        (0..ms * 24)
            .map(|i| if i % 12 < 6 { 4000 } else { -4000 })
            .collect(),
    )
}

pub const MODEL_25: &str = "models/gemini-2.5-flash-native-audio-preview-12-2025";

/// What the client saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Json {
        value: Value,
        binary: bool,
    },
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// Socket ended without a close frame.
    Dropped(String),
    Timeout,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, &[]).await.expect("connect")
    }

    pub async fn connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, v.parse().expect("header value"));
        }
        let (ws, _resp) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_raw(&v.to_string()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// Send a ping and wait for the matching pong (skipping data frames).
    pub async fn ping_pong(&mut self) -> bool {
        self.ws
            .send(Message::Ping(b"hb".to_vec().into()))
            .await
            .expect("ping");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Pong(p) = m {
                return p.as_ref() == b"hb";
            }
        }
        false
    }

    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Next event, waiting at most `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Event {
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(m) => m,
            };
            return match msg {
                Some(Ok(Message::Binary(b))) => Event::Json {
                    value: serde_json::from_slice(&b).expect("server json"),
                    binary: true,
                },
                Some(Ok(Message::Text(t))) => Event::Json {
                    value: serde_json::from_str(t.as_str()).expect("server json"),
                    binary: false,
                },
                Some(Ok(Message::Close(f))) => Event::Closed {
                    code: f.as_ref().map(|f| u16::from(f.code)),
                    reason: f.map(|f| f.reason.as_str().to_string()).unwrap_or_default(),
                },
                Some(Ok(_)) => continue,
                Some(Err(e)) => Event::Dropped(e.to_string()),
                None => Event::Dropped("stream ended".into()),
            };
        }
    }

    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(5)).await
    }

    /// Next JSON message; panics on anything else.
    pub async fn json(&mut self) -> Value {
        match self.next().await {
            Event::Json { value, .. } => value,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Read until close; panics if JSON arrives first unless `skip_json`.
    pub async fn expect_close(&mut self) -> (Option<u16>, String) {
        loop {
            match self.next().await {
                Event::Closed { code, reason } => return (code, reason),
                Event::Json { .. } => continue,
                other => panic!("expected close, got {other:?}"),
            }
        }
    }

    /// Setup and wait for `setupComplete` (skipping the initial resumption update).
    pub async fn setup(&mut self, setup: Value) {
        self.send(&json!({ "setup": setup })).await;
        let first = self.json().await;
        assert_eq!(first, json!({"setupComplete": {}}), "first server message");
    }

    /// Messages up to and including the next `turnComplete`.
    pub async fn turn(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.json().await;
            let done = v["serverContent"]["turnComplete"] == json!(true);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    pub async fn send_audio(&mut self, samples: &[i16]) {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.send(&json!({"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": data}}}))
            .await;
    }
}

/// A typical bridge setup for the 2.5 model with transcription both ways.
pub fn setup_25() -> Value {
    json!({
        "model": MODEL_25,
        "generationConfig": {"responseModalities": ["AUDIO"],
            "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}},
        "systemInstruction": {"role": "user", "parts": [{"text": "You are a phone agent."}]},
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
    })
}

pub fn with_key(url: &str) -> String {
    format!("{url}?key=test-key")
}

/// 16 kHz mono samples of a bundled PCM16 WAV (tiny RIFF reader, test-local on purpose).
pub fn read_wav16(name: &str) -> Vec<i16> {
    let path = format!("{}/assets/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).expect("wav");
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("len")) as usize;
        if &bytes[pos..pos + 4] == b"data" {
            return bytes[pos + 8..pos + 8 + len]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk in {path}");
}

/// Decoded bytes of every modelTurn audio part in `msgs`.
pub fn audio_bytes(msgs: &[Value]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter_map(|m| m["serverContent"]["modelTurn"]["parts"].as_array())
        .flatten()
        .filter_map(|p| p["inlineData"]["data"].as_str())
        .map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d)
                .expect("std base64")
        })
        .collect()
}

/// Concatenated output transcription.
pub fn output_text(msgs: &[Value]) -> String {
    msgs.iter()
        .filter_map(|m| m["serverContent"]["outputTranscription"]["text"].as_str())
        .collect()
}

pub fn input_text(msgs: &[Value]) -> String {
    msgs.iter()
        .filter_map(|m| m["serverContent"]["inputTranscription"]["text"].as_str())
        .collect()
}

pub fn has(msgs: &[Value], f: impl Fn(&Value) -> bool) -> bool {
    msgs.iter().any(f)
}

pub fn position(msgs: &[Value], f: impl Fn(&Value) -> bool) -> Option<usize> {
    msgs.iter().position(f)
}
