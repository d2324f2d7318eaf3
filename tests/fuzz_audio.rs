//! Property tests (bounded fuzzing) for the two audio pipelines, `audio::transcode`.
//!
//! Random input bytes cut at random boundaries (empty chunks and, on the downlink, odd byte
//! counts included), with `finish` and `reset` at random points:
//!
//! * nothing panics;
//! * chunking is invisible: output is byte-for-byte what one-shot processing of the same
//!   bytes gives on a fresh pipeline (`finish` and `reset` start a fresh pipeline);
//! * output length is exactly determined by input length (formulas below).
//!
//! Set `CALLBRIDGE_FUZZ_CASES` to run every property with more cases.

use callbridge::audio::transcode::{Downlink, Uplink};
use proptest::prelude::*;

mod fuzz_support;
use fuzz_support::config;

/// Uplink output bytes for `n` μ-law bytes pushed since construction or reset: two 16 kHz
/// samples per input sample, less the 4 output samples the resampler still holds, 2 bytes
/// each.
fn uplink_len(n: usize) -> usize {
    2 * (2 * n).saturating_sub(4)
}

/// Downlink output bytes for `samples` 24 kHz samples pushed (no `finish`): one per three
/// input samples, the last one held until one more input sample arrives.
fn downlink_body_len(samples: usize) -> usize {
    ((samples + 1) / 3).saturating_sub(1)
}

/// Downlink output bytes for `samples` 24 kHz samples after `finish`: the input duration at
/// 8 kHz plus the group delay (40 input samples), rounded up: ceil((samples + 40) / 3).
fn downlink_finished_len(samples: usize) -> usize {
    (samples + 40).div_ceil(3)
}

/// Splits `data` by cycling through `sizes` (0 = an empty call); every byte is covered.
fn split<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    let mut i = 0;
    let mut empty_run = 0;
    while !rest.is_empty() {
        let mut n = sizes[i % sizes.len()].min(rest.len());
        if n == 0 {
            // All-zero size lists would never finish: after a full cycle, take the rest.
            empty_run += 1;
            if empty_run > sizes.len() {
                n = rest.len();
            }
        } else {
            empty_run = 0;
        }
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
        i += 1;
    }
    pieces
}

fn one_shot_uplink(codes: &[u8]) -> Vec<u8> {
    let mut up = Uplink::new().unwrap();
    let mut out = Vec::new();
    up.process(codes, &mut out);
    out
}

fn one_shot_downlink(bytes: &[u8], finish: bool) -> Vec<u8> {
    let mut down = Downlink::new().unwrap();
    let mut out = Vec::new();
    down.process(bytes, &mut out);
    if finish {
        down.finish(&mut out);
    }
    out
}

/// What ends a segment of input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The next segment continues the same stream.
    Continue,
    Finish,
    Reset,
}

fn arb_end() -> impl Strategy<Value = End> {
    prop_oneof![
        2 => Just(End::Continue),
        1 => Just(End::Finish),
        1 => Just(End::Reset),
    ]
}

/// Random input: mostly uniform bytes, sometimes loud structured signal or silence.
fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..max),
        1 => (0..max, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (0..max, any::<u16>()).prop_map(|(n, f)| {
            (0..n).map(|i| ((i as u32 * (u32::from(f) | 1)) >> 3) as u8).collect()
        }),
    ]
}

fn arb_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![
            1 => Just(0usize),
            3 => 1..8usize,
            3 => 8..1100usize,
            1 => Just(160usize),
            1 => Just(961usize),
            1 => 1100..5000usize,
        ],
        1..12,
    )
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn uplink_chunking_is_invisible_and_length_is_exact(
        codes in arb_bytes(12_000),
        sizes in arb_sizes(),
        empties in any::<bool>(),
    ) {
        let want = one_shot_uplink(&codes);
        prop_assert_eq!(want.len(), uplink_len(codes.len()), "one-shot length for {} bytes", codes.len());
        let mut up = Uplink::new().unwrap();
        let mut out = Vec::new();
        let mut fed = 0;
        for piece in split(&codes, &sizes) {
            up.process(piece, &mut out);
            if empties {
                up.process(&[], &mut out);
            }
            fed += piece.len();
            prop_assert_eq!(out.len(), uplink_len(fed), "after {} bytes", fed);
        }
        prop_assert!(out == want, "chunked output differs from one-shot (sizes {:?})", sizes);
    }

    #[test]
    fn uplink_reset_at_random_points_equals_fresh_pipelines(
        segments in prop::collection::vec((arb_bytes(3000), arb_sizes(), any::<bool>()), 1..6),
    ) {
        let mut up = Uplink::new().unwrap();
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut run: Vec<u8> = Vec::new();
        for (codes, sizes, reset) in &segments {
            for piece in split(codes, sizes) {
                up.process(piece, &mut out);
            }
            run.extend_from_slice(codes);
            if *reset {
                up.reset();
                want.extend(one_shot_uplink(&run));
                run.clear();
            }
        }
        want.extend(one_shot_uplink(&run));
        prop_assert!(out == want);
    }

    #[test]
    fn downlink_chunking_finish_and_reset_are_exact(
        segments in prop::collection::vec((arb_bytes(8000), arb_sizes(), arb_end()), 1..6),
        finish_at_end in any::<bool>(),
    ) {
        let mut down = Downlink::new().unwrap();
        let mut out = Vec::new();
        let mut want = Vec::new();
        // Input of the stream in progress (since construction or the last finish/reset).
        let mut run: Vec<u8> = Vec::new();
        for (bytes, sizes, end) in &segments {
            for piece in split(bytes, sizes) {
                down.process(piece, &mut out);
            }
            run.extend_from_slice(bytes);
            match end {
                End::Continue => {}
                End::Finish => {
                    let before = out.len();
                    down.finish(&mut out);
                    let expect = one_shot_downlink(&run, true);
                    prop_assert_eq!(expect.len(), downlink_finished_len(run.len() / 2),
                        "finished length for {} bytes", run.len());
                    want.extend(expect);
                    prop_assert!(out.len() >= before);
                    run.clear();
                }
                End::Reset => {
                    let before = out.len();
                    down.reset();
                    prop_assert_eq!(out.len(), before, "reset must not emit");
                    want.extend(one_shot_downlink(&run, false));
                    run.clear();
                }
            }
            if *end != End::Continue {
                prop_assert!(out == want, "output differs after a {:?}", end);
            }
        }
        if finish_at_end {
            down.finish(&mut out);
        }
        want.extend(one_shot_downlink(&run, finish_at_end));
        prop_assert_eq!(out.len(), want.len());
        prop_assert!(out == want, "chunked output differs from one-shot");
    }

    #[test]
    fn downlink_output_length_depends_only_on_input_length(
        a in arb_bytes(10_000),
        seed in any::<u8>(),
        sizes in arb_sizes(),
    ) {
        // Same length, different content, different chunking: same output length at every
        // stage, and a process-only length that never exceeds the finished length.
        let b: Vec<u8> = a.iter().map(|x| x.wrapping_add(seed) ^ 0x5a).collect();
        let mut down = Downlink::new().unwrap();
        let mut out = Vec::new();
        let mut fed = 0;
        for piece in split(&b, &sizes) {
            down.process(piece, &mut out);
            fed += piece.len();
            prop_assert_eq!(out.len(), downlink_body_len(fed / 2), "after {} bytes", fed);
        }
        let body = one_shot_downlink(&a, false).len();
        prop_assert_eq!(out.len(), body);
        prop_assert_eq!(body, downlink_body_len(a.len() / 2));
        down.finish(&mut out);
        prop_assert_eq!(out.len(), downlink_finished_len(a.len() / 2));
    }
}
