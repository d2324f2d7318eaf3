//! Rough throughput of the model-leg codec (run: `cargo test --release --test gemini_wire_bench -- --ignored --nocapture`).

use std::time::Instant;

use base64::Engine as _;
use callbridge::gemini::wire::{decompose, to_json, ModelCommand, ModelEvent};

#[test]
#[ignore = "timing measurement, run in release"]
fn codec_throughput() {
    // 40 ms of 24 kHz s16le downlink audio per frame, 20 ms of 16 kHz uplink audio per command.
    let pcm24: Vec<u8> = (0..1920u32).map(|i| (i * 7) as u8).collect();
    let frame = format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{}"}}}}]}}}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(&pcm24)
    );
    let pcm16 = vec![0x55u8; 640];
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let ev = decompose(frame.as_bytes()).unwrap();
        assert!(matches!(ev[0], ModelEvent::Audio(ref a) if a.len() == 1920));
    }
    let dec = t.elapsed() / n;
    let t = Instant::now();
    let mut total = 0;
    for _ in 0..n {
        total += to_json(&ModelCommand::Audio(&pcm16)).len();
    }
    let enc = t.elapsed() / n;
    println!("decompose 40 ms audio frame ({} B): {dec:?}/frame; to_json 20 ms uplink: {enc:?}/frame ({} B)", frame.len(), total / n as usize);
}
