//! The polyphase fast path in `StreamResampler` must reproduce rubato's own streaming loop:
//! the same number of output samples at every call boundary and the same values (to float
//! rounding), for random signals in random chunk sizes, with zero pushes, resets and flushes
//! mixed in, for the production presets and a few other designs.

use callbridge::audio::resample::{ResamplerSpec, StreamResampler};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rubato::WindowFunction;

/// Max abs difference allowed, full scale being 1.0.
const TOL: f32 = 1e-5;

fn specs() -> Vec<ResamplerSpec> {
    let up = ResamplerSpec::UPLINK;
    let down = ResamplerSpec::DOWNLINK;
    vec![
        up,
        down,
        // Other lengths, windows, ratios and tiny chunk limits: the extraction is generic.
        ResamplerSpec {
            sinc_len: 32,
            window: WindowFunction::Blackman,
            max_chunk: 7,
            ..up
        },
        ResamplerSpec {
            sinc_len: 16,
            rate_out: 32000,
            ..up
        },
        ResamplerSpec {
            sinc_len: 72,
            window: WindowFunction::Hann,
            max_chunk: 5,
            ..down
        },
        ResamplerSpec {
            rate_in: 16000,
            max_chunk: 320,
            ..down
        },
    ]
}

fn assert_close(what: &str, fast: &[f32], reference: &[f32]) {
    assert_eq!(fast.len(), reference.len(), "{what}: output lengths differ");
    for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() < TOL,
            "{what}: sample {i} differs: fast {a}, rubato {b}"
        );
    }
}

#[test]
fn fast_path_is_in_use_for_every_design() {
    for spec in specs() {
        let r = StreamResampler::new(spec).unwrap();
        assert!(r.is_fast(), "{spec:?} fell back to rubato");
        assert!(!StreamResampler::new_rubato(spec).unwrap().is_fast());
    }
}

#[test]
fn fast_path_equals_rubato_in_random_chunks() {
    let mut rng = StdRng::seed_from_u64(0x5eed_ca11);
    for spec in specs() {
        for trial in 0..12 {
            let mut fast = StreamResampler::new(spec).unwrap();
            let mut reference = StreamResampler::new_rubato(spec).unwrap();
            let calls = rng.random_range(1..200);
            for call in 0..calls {
                let what = format!("{spec:?} trial {trial} call {call}");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                match rng.random_range(0..40) {
                    0 => {
                        fast.reset();
                        reference.reset();
                    }
                    1 => {
                        let n = rng.random_range(0..300);
                        fast.process_zeros(n, |s| a.extend_from_slice(s));
                        reference.process_zeros(n, |s| b.extend_from_slice(s));
                    }
                    2 => {
                        fast.flush(|s| a.extend_from_slice(s));
                        reference.flush(|s| b.extend_from_slice(s));
                    }
                    op => {
                        // Mostly within one engine call, sometimes several (split by process).
                        let max = if op == 3 {
                            3 * spec.max_chunk
                        } else {
                            spec.max_chunk
                        };
                        let n = rng.random_range(1..=max);
                        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                        fast.process(&x, |s| a.extend_from_slice(s));
                        reference.process(&x, |s| b.extend_from_slice(s));
                    }
                }
                assert_close(&what, &a, &b);
                assert_eq!(fast.frames_in(), reference.frames_in(), "{what}");
                assert_eq!(fast.frames_out(), reference.frames_out(), "{what}");
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            fast.flush(|s| a.extend_from_slice(s));
            reference.flush(|s| b.extend_from_slice(s));
            assert_close(&format!("{spec:?} trial {trial} final flush"), &a, &b);
        }
    }
}

#[test]
fn fast_path_equals_rubato_one_sample_at_a_time() {
    // Every call boundary, including the very first outputs (response to zero history).
    let mut rng = StdRng::seed_from_u64(7);
    for spec in specs() {
        let mut fast = StreamResampler::new(spec).unwrap();
        let mut reference = StreamResampler::new_rubato(spec).unwrap();
        for i in 0..600 {
            let x = [rng.random_range(-1.0f32..1.0)];
            let (mut a, mut b) = (Vec::new(), Vec::new());
            fast.process(&x, |s| a.extend_from_slice(s));
            reference.process(&x, |s| b.extend_from_slice(s));
            assert_close(&format!("{spec:?} sample {i}"), &a, &b);
        }
    }
}

#[test]
fn inexact_ratio_keeps_rubato() {
    // 8 → 24 kHz: rubato steps by 1/3 input sample in f64, so its output count at a call
    // boundary drifts from the exact model; the fast path must not be used there.
    let spec = ResamplerSpec {
        rate_out: 24000,
        ..ResamplerSpec::UPLINK
    };
    let mut r = StreamResampler::new(spec).unwrap();
    assert!(!r.is_fast());
    let mut out = Vec::new();
    r.process(&[0.5; 800], |s| out.extend_from_slice(s));
    assert!(!out.is_empty());
}
