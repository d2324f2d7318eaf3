//! One load-test call: Twilio's side of a phone call, lean enough to run a thousand at once.
//!
//! Like Twilio: the signed voice webhook, a signed WebSocket upgrade to the `<Stream url>`,
//! `connected` + `start` with the webhook's `<Parameter>`s, then one 160-byte μ-law `media`
//! frame every 20 ms for the whole call (speech from the clips, silence between them).
//! Outbound audio is "played" on a playout clock: marks are echoed when playback reaches
//! them, `clear` empties the queue and returns pending marks. Frames that arrive after the
//! queue ran dry in the middle of an agent turn are counted late (the caller would hear a gap).
//!
//! The script: wait for the greeting, then alternate caller utterances and agent replies until
//! the call's end time, hang up at the next quiet moment (`stop`, then close).
//! Messages are pre-encoded; nothing here builds a `serde_json::Value` per frame.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::LoadMetrics;
use crate::sim::caller::{twilio_signature, webhook_stream, SimCaller};

/// What every call of a run shares.
pub struct CallEnv {
    /// `http://127.0.0.1:port` of the bridge.
    pub bridge: String,
    /// The bridge's public URL (what Twilio signs).
    pub public_url: String,
    /// Twilio auth token the bridge checks signatures with.
    pub auth_token: String,
    /// `AC…`.
    pub account_sid: String,
    /// Caller utterances, as base64 payloads of 160-byte frames.
    pub clips: Vec<Arc<[String]>>,
    /// Base64 of one 160-byte frame of μ-law silence.
    pub silence: String,
    /// Counters of the whole run.
    pub metrics: Arc<LoadMetrics>,
}

/// How long the caller waits for the agent before giving up.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Quiet after the agent's audio played out that counts as the end of its turn.
const QUIET: Duration = Duration::from_millis(700);
/// After the end time, how long to wait for a quiet moment before hanging up anyway.
const HANG_UP_SLACK: Duration = Duration::from_secs(20);

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow, default)]
    media: Option<IncomingMedia<'a>>,
    #[serde(default)]
    mark: Option<IncomingMark>,
}

#[derive(Deserialize)]
struct IncomingMedia<'a> {
    #[serde(borrow)]
    payload: &'a str,
}

#[derive(Deserialize)]
struct IncomingMark {
    name: String,
}

enum Phase {
    /// Waiting for the greeting (or, after `Speaking`, the reply).
    Listening { since: Instant },
    /// Sending utterance `clip`, next frame `frame`.
    Speaking { clip: usize, frame: usize },
}

/// Runs one call until it hangs up at `end_at` (plus the next quiet moment).
pub async fn run(env: Arc<CallEnv>, index: u64, end_at: Instant) -> Result<(), String> {
    let m = &env.metrics;
    let call_sid = format!("CA{:032x}", 0x10ad_0000_0000u128 + u128::from(index));
    let stream_sid = format!("MZ{:032x}", 0x10ad_0000_0000u128 + u128::from(index));
    let builder = SimCaller::builder()
        .webhook(format!("{}/twilio/voice", env.bridge))
        .public_webhook_url(format!("{}/twilio/voice", env.public_url))
        .account_sid(env.account_sid.clone())
        .auth_token(env.auth_token.clone())
        .from(format!("+1415555{:04}", index % 10_000));
    let (stream_url, params) = webhook_stream(&builder, &call_sid)
        .await
        .map_err(|e| format!("webhook: {e}"))?;

    // Twilio signs the wss:// URL it was given; we connect to the same path on loopback.
    let signature = twilio_signature(&env.auth_token, &stream_url, &[]);
    let path = stream_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/twilio/media");
    let ws_base = env.bridge.replacen("http://", "ws://", 1);
    let mut request = format!("{ws_base}{path}")
        .into_client_request()
        .map_err(|e| format!("stream url: {e}"))?;
    request.headers_mut().insert(
        "X-Twilio-Signature",
        signature.parse().map_err(|_| "signature header")?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("media upgrade: {e}"))?;
    let (mut tx, mut rx) = ws.split();

    let start = serde_json::json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": env.account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params.iter().collect::<BTreeMap<_, _>>(),
        },
        "streamSid": stream_sid,
    });
    let send_err = |e: tokio_tungstenite::tungstenite::Error| format!("send: {e}");
    tx.feed(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .map_err(send_err)?;
    tx.send(Message::text(start.to_string()))
        .await
        .map_err(send_err)?;
    m.streams_started.fetch_add(1, Relaxed);

    let opened = Instant::now();
    let mut seq: u64 = 1;
    let mut chunk: u64 = 0;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now(), Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut phase = Phase::Listening { since: opened };
    let mut utterances = 0usize;
    // Playout: the queue of agent audio plays out until `play_until`.
    let mut play_until = opened;
    let mut heard_since_spoke = false;
    let mut turn_open = false;
    let mut utterance_end: Option<Instant> = None;
    let mut marks: VecDeque<(String, Instant, Instant)> = VecDeque::new();
    let mut hung_up = false;

    loop {
        tokio::select! {
            tick = ticker.tick() => {
                let now = Instant::now();
                m.send_lag.record(now.saturating_duration_since(tick.into_std()));
                // Echo every mark playback has reached.
                while marks.front().is_some_and(|(_, at, _)| *at <= now) {
                    let (name, _, got) = marks.pop_front().expect("checked");
                    m.mark_echo_delay.record(now - got);
                    seq += 1;
                    tx.feed(Message::text(mark_echo(seq, &stream_sid, name)))
                        .await
                        .map_err(send_err)?;
                    m.marks_echoed.fetch_add(1, Relaxed);
                }
                let quiet = heard_since_spoke && now >= play_until + QUIET && marks.is_empty();
                let payload: &str = match &mut phase {
                    Phase::Listening { since } => {
                        if quiet {
                            turn_open = false;
                            if now >= end_at {
                                hung_up = true;
                            } else {
                                let clip = utterances % env.clips.len();
                                utterances += 1;
                                phase = Phase::Speaking { clip, frame: 0 };
                            }
                        } else if !heard_since_spoke && now.duration_since(*since) > AGENT_TIMEOUT {
                            return Err(format!(
                                "no agent audio within {} s (utterance {utterances})",
                                AGENT_TIMEOUT.as_secs()
                            ));
                        } else if now >= end_at + HANG_UP_SLACK {
                            return Err("no quiet moment to hang up in".into());
                        }
                        match &mut phase {
                            Phase::Speaking { clip, frame } => {
                                *frame = 1;
                                &env.clips[*clip][0]
                            }
                            Phase::Listening { .. } => &env.silence,
                        }
                    }
                    Phase::Speaking { clip, frame } => {
                        let frames = &env.clips[*clip];
                        let p = &frames[*frame];
                        *frame += 1;
                        if *frame == frames.len() {
                            phase = Phase::Listening { since: now };
                            heard_since_spoke = false;
                            utterance_end = Some(now);
                        }
                        p
                    }
                };
                if hung_up {
                    seq += 1;
                    let stop = format!(
                        r#"{{"event":"stop","sequenceNumber":"{seq}","streamSid":"{stream_sid}","stop":{{"accountSid":"{}","callSid":"{call_sid}"}}}}"#,
                        env.account_sid
                    );
                    tx.send(Message::text(stop)).await.map_err(send_err)?;
                    let _ = tokio::time::timeout(Duration::from_secs(2), tx.close()).await;
                    // Drain until the bridge closes, so its close handshake completes.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = rx.next().await {}
                    })
                    .await;
                    m.agent_turns.fetch_add(utterances as u64 + 1, Relaxed);
                    return Ok(());
                }
                seq += 1;
                chunk += 1;
                let media = format!(
                    r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{stream_sid}"}}"#,
                    (chunk - 1) * 20
                );
                tx.send(Message::text(media)).await.map_err(send_err)?;
                m.frames_sent.fetch_add(1, Relaxed);
            }
            msg = rx.next() => {
                let now = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(format!(
                            "bridge closed the stream after {} s",
                            opened.elapsed().as_secs()
                        ))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("receive: {e}")),
                };
                let parsed: Incoming<'_> = match serde_json::from_str(text.as_str()) {
                    Ok(p) => p,
                    Err(e) => return Err(format!("bad message from the bridge: {e}")),
                };
                match parsed.event {
                    "media" => {
                        let Some(media) = parsed.media else {
                            return Err("media without payload".into());
                        };
                        let bytes = base64_len(media.payload);
                        if !bytes.is_multiple_of(160) {
                            m.partial_frames.fetch_add(1, Relaxed);
                        }
                        m.media_bytes_received.fetch_add(bytes as u64, Relaxed);
                        if now > play_until {
                            if turn_open {
                                // The queue ran dry mid-turn: this frame is heard late.
                                m.late_frames.fetch_add(1, Relaxed);
                                m.underrun.record(now - play_until);
                            } else if let Some(end) = utterance_end.take() {
                                m.response_time.record(now - end);
                            }
                            play_until = now;
                        }
                        turn_open = true;
                        heard_since_spoke = true;
                        play_until += Duration::from_micros(bytes as u64 * 125);
                    }
                    "mark" => {
                        let Some(mark) = parsed.mark else {
                            return Err("mark without name".into());
                        };
                        m.marks_received.fetch_add(1, Relaxed);
                        marks.push_back((mark.name, play_until.max(now), now));
                    }
                    "clear" => {
                        m.clears_received.fetch_add(1, Relaxed);
                        play_until = now;
                        // Every pending mark is returned: they are all due now, and go out
                        // with the next 20 ms tick.
                        for (_, at, _) in marks.iter_mut() {
                            *at = now;
                        }
                    }
                    other => return Err(format!("unexpected event {other:?} from the bridge")),
                }
            }
        }
    }
}

/// Twilio's `mark` message for a mark playback reached (or `clear` returned).
fn mark_echo(seq: u64, stream_sid: &str, name: String) -> String {
    format!(
        r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{stream_sid}","mark":{{"name":{}}}}}"#,
        serde_json::Value::from(name)
    )
}

/// Decoded length of a padded base64 string.
fn base64_len(s: &str) -> usize {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4) * 3 - pad.min(2)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn base64_length_matches_decoding() {
        for n in 0..400 {
            let s = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
            assert_eq!(super::base64_len(&s), n);
        }
    }
}
