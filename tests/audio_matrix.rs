//! Chunking must not change the output: any split of the same input (including empty and
//! odd-byte pieces on the downlink) gives byte-identical output to a one-shot run.

mod audio_common;
use audio_common::*;

use callbridge::audio::transcode::{Downlink, Uplink};

/// Speech-like test input: noise plus two tones, 1.3 s.
fn caller_codes() -> Vec<u8> {
    let n = 10_400;
    let a = noise(n, 0.2, 42);
    let b = tone(n, 700, 8000, 0.3);
    ulaw(&a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>())
}

fn model_bytes() -> Vec<u8> {
    let n = 31_203; // odd sample count, not a multiple of 3 or of any chunk size below
    let a = noise(n, 0.2, 9);
    let b = tone(n, 440, 24000, 0.3);
    pcm_bytes(&to_i16(
        &a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>(),
    ))
}

/// Splits `data` by cycling through `sizes` (0 means an empty call).
fn split<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
        i += 1;
    }
    pieces
}

#[test]
fn uplink_chunking_is_invisible() {
    let codes = caller_codes();
    let one_shot = run_uplink(&codes, codes.len());
    assert!(
        one_shot.len() > 2 * 2 * 10_000,
        "one-shot produced {} bytes",
        one_shot.len()
    );
    for sizes in [
        &[1][..],
        &[159],
        &[160],
        &[161],
        &[480],
        &[4001],
        &[0, 160, 0, 1, 7, 0, 4001, 33],
    ] {
        let mut up = Uplink::new().unwrap();
        let mut out = Vec::new();
        for piece in split(&codes, sizes) {
            up.process(piece, &mut out);
            up.process(&[], &mut out);
        }
        assert!(
            out == one_shot,
            "uplink chunk sizes {sizes:?}: output differs"
        );
    }
}

#[test]
fn downlink_chunking_is_invisible() {
    let bytes = model_bytes();
    let one_shot = run_downlink(&bytes, bytes.len());
    for sizes in [
        &[1][..],
        &[3],
        &[159],
        &[160],
        &[161],
        &[480],
        &[961],
        &[960],
        &[4001],
        &[0, 1, 0, 2, 961, 3, 0, 4001],
    ] {
        let mut down = Downlink::new().unwrap();
        let mut out = Vec::new();
        for piece in split(&bytes, sizes) {
            down.process(piece, &mut out);
            down.process(&[], &mut out);
        }
        down.finish(&mut out);
        assert!(
            out == one_shot,
            "downlink chunk sizes {sizes:?}: output differs"
        );
    }
}

#[test]
fn downlink_finish_emits_exactly_the_tail_and_resets() {
    let bytes = model_bytes();
    let samples = bytes.len() / 2;
    let mut down = Downlink::new().unwrap();
    let mut body = Vec::new();
    down.process(&bytes, &mut body);
    let mut tail = Vec::new();
    down.finish(&mut tail);
    // Total = input duration at 8 kHz plus the group delay, rounded up: nothing clipped.
    let group = down.group_delay().as_secs_f64() * 8000.0;
    let expected = (samples as f64 / 3.0 + group).ceil() as usize;
    assert_eq!(body.len() + tail.len(), expected);
    assert!(!tail.is_empty());
    // The tail carries the end of the audio, not silence.
    let tail_energy = mean_square(&from_ulaw(&tail));
    assert!(tail_energy > 1e-4, "tail energy {tail_energy}");

    // After finish the next turn behaves like a fresh pipeline.
    let mut again = Vec::new();
    down.process(&bytes, &mut again);
    down.finish(&mut again);
    assert!(again == [body, tail].concat());
}

#[test]
fn downlink_odd_byte_is_carried_and_dropped_on_reset() {
    let bytes = model_bytes();
    // Carry: 1 byte, then the rest.
    assert!(run_downlink(&bytes, 1) == run_downlink(&bytes, bytes.len()));
    // Barge-in: state (including a dangling byte) is dropped without output.
    let mut down = Downlink::new().unwrap();
    let mut out = Vec::new();
    down.process(&bytes[..9_601], &mut out);
    let before = out.len();
    down.reset();
    assert_eq!(out.len(), before, "reset must not emit");
    let mut fresh = Vec::new();
    down.process(&bytes, &mut fresh);
    down.finish(&mut fresh);
    assert!(
        fresh == run_downlink(&bytes, bytes.len()),
        "after reset output must equal a fresh pipeline"
    );
}

#[test]
fn uplink_reset_equals_fresh() {
    let codes = caller_codes();
    let mut up = Uplink::new().unwrap();
    let mut junk = Vec::new();
    up.process(&codes[..777], &mut junk);
    up.reset();
    let mut out = Vec::new();
    up.process(&codes, &mut out);
    assert!(out == run_uplink(&codes, codes.len()));
}

#[test]
fn silence_in_gives_silence_out() {
    let mut up = Uplink::new().unwrap();
    let mut out = Vec::new();
    up.process(&[0xFF; 1600], &mut out);
    assert!(out.iter().all(|&b| b == 0));
    let mut down = Downlink::new().unwrap();
    let mut out = Vec::new();
    down.process(&[0; 9600], &mut out);
    down.finish(&mut out);
    assert!(out.iter().all(|&b| b == 0xFF));
}
