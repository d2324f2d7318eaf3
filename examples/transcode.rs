//! Runs a call leg's real streaming pipeline over a WAV file, in 20 ms chunks, and writes
//! what the other side would receive.
//!
//! ```text
//! cargo run --release --example transcode -- up   IN.mulaw8k.wav OUT16k.wav   # μ-law 8k -> PCM 16k
//! cargo run --release --example transcode -- down IN.pcm24k.wav  OUT8k.wav    # PCM 24k -> μ-law 8k
//! ```
//!
//! The downlink capture is a μ-law WAV: exactly the bytes the caller hears. Output is not
//! trimmed: it starts with the pipeline's delay, and the downlink ends with `finish()`'s tail.
//! Prints the leg's delay and the mean processing time per 20 ms frame.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use callbridge::audio::transcode::{Downlink, Uplink};
use callbridge::audio::wav::{read_wav_file, write_wav_pcm16, write_wav_ulaw, WavFormat};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [leg, input, output] = args.as_slice() else {
        eprintln!("usage: transcode (up|down) INPUT.wav OUTPUT.wav");
        return ExitCode::from(2);
    };
    match run(leg, &PathBuf::from(input), &PathBuf::from(output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transcode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(leg: &str, input: &Path, output: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let wav = read_wav_file(input)?;
    if wav.channels != 1 {
        return Err(format!(
            "{}: {} channels, expected mono",
            input.display(),
            wav.channels
        )
        .into());
    }
    match leg {
        "up" => {
            if wav.sample_rate != 8000 {
                return Err(format!("up: input must be 8 kHz, got {}", wav.sample_rate).into());
            }
            let ulaw = wav.to_ulaw().ok_or("up: input cannot be read as mu-law")?;
            let mut up = Uplink::new()?;
            let mut out = Vec::with_capacity(ulaw.len() * 4 + 64);
            let start = Instant::now();
            let frames = ulaw
                .chunks(160)
                .map(|frame| up.process(frame, &mut out))
                .count();
            let spent = start.elapsed();
            let pcm: Vec<i16> = out
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            write_wav_pcm16(output, 16000, 1, &pcm)?;
            report("up", up.delay(), up.group_delay(), frames, spent);
        }
        "down" => {
            if wav.sample_rate != 24000 || wav.format != WavFormat::Pcm16 {
                return Err("down: input must be 16-bit PCM at 24 kHz".into());
            }
            let mut down = Downlink::new()?;
            let mut out = Vec::with_capacity(wav.data.len() / 6 + 64);
            let start = Instant::now();
            let frames = wav
                .data
                .chunks(960)
                .map(|frame| down.process(frame, &mut out))
                .count();
            down.finish(&mut out);
            let spent = start.elapsed();
            write_wav_ulaw(output, 8000, &out)?;
            report("down", down.delay(), down.group_delay(), frames, spent);
        }
        other => return Err(format!("unknown leg {other:?}, expected up or down").into()),
    }
    Ok(())
}

fn report(
    leg: &str,
    delay: std::time::Duration,
    group: std::time::Duration,
    frames: usize,
    spent: std::time::Duration,
) {
    let per_frame_us = spent.as_secs_f64() * 1e6 / frames.max(1) as f64;
    println!(
        "{leg:4} delay_ms={:.4} group_delay_ms={:.4} frames={frames} us_per_frame={per_frame_us:.2}",
        delay.as_secs_f64() * 1e3,
        group.as_secs_f64() * 1e3
    );
}
