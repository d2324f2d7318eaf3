//! Per-frame cost of each leg of the bridge (project issue 6): one 20 ms frame through
//! parse, base64, G.711, resampling and serialisation, as the bridge does it, plus each
//! step alone.
//!
//! Run: `cargo bench --bench frame` (add `-- --quick` for a short run). Each benchmark
//! processes exactly one 20 ms frame per iteration (`Throughput::Elements(1)`, so criterion's
//! "elem/s" is frames per second and its time is ns per frame). The audio is real speech from
//! `assets/` (see `assets/PROVENANCE.md`), cycled frame by frame through pipelines that are
//! built once and stay warm, like a call's.
//!
//! * `uplink/full`: a Twilio `media` text message → [`twilio::wire::parse`] (JSON + base64
//!   decode) → [`Uplink::process`] (μ-law decode, 8 → 16 kHz) → [`gemini::wire::to_json`]
//!   (base64 encode + `realtimeInput` JSON).
//! * `downlink/full`: a Gemini `serverContent` message with 20 ms of 24 kHz PCM →
//!   [`gemini::wire::decompose`] (JSON + base64 decode) → [`Downlink::process`] (24 → 8 kHz,
//!   μ-law encode) → 160-byte playout frames → [`twilio::wire::to_json`] (base64 + `media`).
//! * `uplink/twilio_parse`, `uplink/transcode`, `uplink/gemini_serialize`, and
//!   `downlink/gemini_parse`, `downlink/transcode`, `downlink/twilio_serialize`: one step each.
//!
//! [`twilio::wire::parse`]: callbridge::twilio::wire::parse
//! [`twilio::wire::to_json`]: callbridge::twilio::wire::to_json
//! [`gemini::wire::to_json`]: callbridge::gemini::wire::to_json
//! [`gemini::wire::decompose`]: callbridge::gemini::wire::decompose

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;

use base64::Engine as _;
use callbridge::audio::wav::read_wav_file;
use callbridge::audio::{Downlink, Uplink};
use callbridge::gemini::wire::{self as gwire, ModelCommand, ModelEvent};
use callbridge::twilio::wire::{self as twire, CallerCommand, CallerEvent};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// μ-law bytes in one 20 ms Twilio frame (8 kHz).
const ULAW_FRAME: usize = 160;
/// Samples in 20 ms of Gemini output audio (24 kHz).
const PCM24_FRAME: usize = 480;
const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

fn asset(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// Whole 20 ms frames of caller speech (μ-law 8 kHz), as Twilio delivers it.
fn caller_frames() -> Vec<Vec<u8>> {
    let ulaw = read_wav_file(&asset("caller_hello.mulaw8k.wav"))
        .expect("caller clip")
        .to_ulaw()
        .expect("μ-law clip");
    let frames: Vec<Vec<u8>> = ulaw.chunks_exact(ULAW_FRAME).map(<[u8]>::to_vec).collect();
    assert!(
        frames.len() > 100,
        "clip too short: {} frames",
        frames.len()
    );
    frames
}

/// Whole 20 ms frames of model speech (s16le 24 kHz), as Gemini Live sends it.
fn model_frames() -> Vec<Vec<u8>> {
    let pcm = read_wav_file(&asset("model_greeting.pcm24k.wav"))
        .expect("model clip")
        .to_pcm16();
    let frames: Vec<Vec<u8>> = pcm
        .chunks_exact(PCM24_FRAME)
        .map(|f| f.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect();
    assert!(
        frames.len() > 100,
        "clip too short: {} frames",
        frames.len()
    );
    frames
}

/// A `media` message exactly as Twilio sends it (counters as strings, inbound track).
fn twilio_media_message(i: usize, ulaw: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(ulaw);
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{STREAM_SID}"}}"#,
        seq = i + 3,
        chunk = i + 1,
        ts = 155 + 20 * i,
    )
}

/// A `serverContent` message carrying one inline audio part, as Gemini Live sends it.
fn gemini_audio_message(pcm: &[u8]) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(pcm);
    format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}}]}}}}}}"#
    )
}

/// Cycles through pre-built inputs, one per iteration.
struct Cycle<T> {
    items: Vec<T>,
    next: usize,
}

impl<T> Cycle<T> {
    fn new(items: Vec<T>) -> Self {
        Cycle { items, next: 0 }
    }

    fn next(&mut self) -> &T {
        let item = &self.items[self.next];
        self.next = (self.next + 1) % self.items.len();
        item
    }
}

fn uplink(c: &mut Criterion) {
    let frames = caller_frames();
    let messages: Vec<String> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| twilio_media_message(i, f))
        .collect();
    // 16 kHz s16le of each frame, for the serialiser alone.
    let pcm16: Vec<Vec<u8>> = {
        let mut up = Uplink::new().expect("uplink");
        frames
            .iter()
            .map(|f| {
                let mut out = Vec::new();
                up.process(f, &mut out);
                out
            })
            .filter(|p| p.len() == 640)
            .collect()
    };

    let mut g = c.benchmark_group("uplink");
    g.throughput(Throughput::Elements(1));

    g.bench_function("full", |b| {
        let mut msgs = Cycle::new(messages.clone());
        let mut up = Uplink::new().expect("uplink");
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            let Ok(CallerEvent::Media(frame)) = twire::parse(black_box(msgs.next())) else {
                unreachable!("media frame")
            };
            out.clear();
            up.process(&frame.payload, &mut out);
            // The machine hands a copy to the driver (`ModelOut::Audio(uplink_out.clone())`).
            let pcm = out.clone();
            black_box(gwire::to_json(&ModelCommand::Audio(&pcm)))
        })
    });

    g.bench_function("twilio_parse", |b| {
        let mut msgs = Cycle::new(messages.clone());
        b.iter(|| black_box(twire::parse(black_box(msgs.next())).expect("media frame")))
    });

    g.bench_function("transcode", |b| {
        let mut input = Cycle::new(frames.clone());
        let mut up = Uplink::new().expect("uplink");
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            up.process(black_box(input.next()), &mut out);
            black_box(out.len())
        })
    });

    g.bench_function("gemini_serialize", |b| {
        let mut input = Cycle::new(pcm16.clone());
        b.iter(|| {
            black_box(gwire::to_json(&ModelCommand::Audio(black_box(
                input.next(),
            ))))
        })
    });
    g.finish();
}

fn downlink(c: &mut Criterion) {
    let frames = model_frames();
    let messages: Vec<String> = frames.iter().map(|f| gemini_audio_message(f)).collect();
    // μ-law playout frames of the clip, for the serialiser alone.
    let ulaw: Vec<[u8; ULAW_FRAME]> = {
        let mut down = Downlink::new().expect("downlink");
        let mut out = Vec::new();
        for f in &frames {
            down.process(f, &mut out);
        }
        out.chunks_exact(ULAW_FRAME)
            .map(|f| f.try_into().expect("whole frame"))
            .collect()
    };

    let mut g = c.benchmark_group("downlink");
    g.throughput(Throughput::Elements(1));

    g.bench_function("full", |b| {
        let mut msgs = Cycle::new(messages.clone());
        let mut down = Downlink::new().expect("downlink");
        let mut out = Vec::with_capacity(8192);
        // The machine's playout queue: whole 160-byte frames leave it (one per 20 ms frame in
        // steady state, the resampler's chunking aside).
        let mut pending: VecDeque<u8> = VecDeque::with_capacity(8192);
        b.iter(|| {
            let events = gwire::decompose(black_box(msgs.next()).as_bytes()).expect("frame");
            for ev in events {
                if let ModelEvent::Audio(pcm) = ev {
                    out.clear();
                    down.process(&pcm, &mut out);
                    pending.extend(out.iter().copied());
                }
            }
            while pending.len() >= ULAW_FRAME {
                let mut frame = [0xFFu8; ULAW_FRAME];
                for (dst, src) in frame.iter_mut().zip(pending.drain(..ULAW_FRAME)) {
                    *dst = src;
                }
                black_box(twire::to_json(&CallerCommand::Media(&frame), STREAM_SID));
            }
        })
    });

    g.bench_function("gemini_parse", |b| {
        let mut msgs = Cycle::new(messages.clone());
        b.iter(|| black_box(gwire::decompose(black_box(msgs.next()).as_bytes()).expect("frame")))
    });

    g.bench_function("transcode", |b| {
        let mut input = Cycle::new(frames.clone());
        let mut down = Downlink::new().expect("downlink");
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            down.process(black_box(input.next()), &mut out);
            black_box(out.len())
        })
    });

    g.bench_function("twilio_serialize", |b| {
        let mut input = Cycle::new(ulaw.clone());
        b.iter(|| {
            black_box(twire::to_json(
                &CallerCommand::Media(black_box(input.next())),
                STREAM_SID,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, uplink, downlink);
criterion_main!(benches);
