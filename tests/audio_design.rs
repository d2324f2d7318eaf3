//! Design sweep over rubato's sinc configuration space (run with `--ignored --nocapture`).
//!
//! For every window, filter length and cutoff it measures the real rubato filter (impulse
//! response through `StreamResampler`) and prints, per length and window, the cutoff that
//! maximises alias rejection while keeping 300-3400 Hz within ±1 dB, with the latency that
//! length costs. This is the evidence behind the presets in `src/audio/resample.rs`.

use callbridge::audio::resample::{ResamplerSpec, StreamResampler};
use rubato::WindowFunction;

const WINDOWS: [WindowFunction; 6] = [
    WindowFunction::Hann,
    WindowFunction::Hann2,
    WindowFunction::Blackman,
    WindowFunction::Blackman2,
    WindowFunction::BlackmanHarris,
    WindowFunction::BlackmanHarris2,
];

/// Impulse response of the resampler at `rate` (the faster of the two rates).
fn impulse_response(spec: ResamplerSpec) -> Vec<f64> {
    let up = spec.rate_out > spec.rate_in;
    let phases = if up {
        1
    } else {
        (spec.rate_in / spec.rate_out) as usize
    };
    let mut h = Vec::new();
    for p in 0..phases {
        let mut r = StreamResampler::new(spec).unwrap();
        let mut x = vec![0.0f32; spec.sinc_len * 4 + 64];
        x[32 + p] = 1.0;
        let mut y = Vec::new();
        r.process(&x, |s| y.extend(s.iter().map(|&v| f64::from(v))));
        if h.is_empty() {
            h = vec![0.0; y.len() * phases];
        }
        // Output k at phase p is h[k*phases - p] of the input-rate filter (shifted).
        for (k, v) in y.iter().enumerate() {
            let i = k * phases + (phases - 1 - p);
            if i < h.len() {
                h[i] = *v;
            }
        }
    }
    h
}

fn mag(h: &[f64], rate: f64, f: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f / rate;
    let (re, im) = h.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, v)| {
        (re + v * (w * n as f64).cos(), im - v * (w * n as f64).sin())
    });
    (re * re + im * im).sqrt()
}

fn db(x: f64) -> f64 {
    20.0 * x.max(1e-15).log10()
}

fn sweep(base: ResamplerSpec, lens: &[usize]) {
    let up = base.rate_out > base.rate_in;
    let rate = f64::from(base.rate_in.max(base.rate_out));
    let pass: Vec<f64> = (300..=3400).step_by(50).map(f64::from).collect();
    for &len in lens {
        for window in WINDOWS {
            let mut best: Option<(f64, f32, f64)> = None;
            for c in 0..=40 {
                let f_cutoff = 0.80 + 0.005 * c as f32;
                let spec = ResamplerSpec {
                    sinc_len: len,
                    window,
                    f_cutoff,
                    ..base
                };
                let h = impulse_response(spec);
                let dc = if up {
                    mag(&h, rate, 0.0) / 2.0
                } else {
                    mag(&h, rate, 0.0)
                };
                let h: Vec<f64> = h.iter().map(|v| v / dc).collect();
                let gain = |f: f64| {
                    if up {
                        mag(&h, rate, f) / 2.0
                    } else {
                        mag(&h, rate, f)
                    }
                };
                let ripple = pass.iter().map(|&f| db(gain(f)).abs()).fold(0.0, f64::max);
                if ripple > 1.0 {
                    continue;
                }
                let rejection = if up {
                    pass.iter()
                        .map(|&f| db(gain(f)) - db(gain(8000.0 - f)))
                        .fold(f64::INFINITY, f64::min)
                } else {
                    (4600..=11950)
                        .step_by(25)
                        .map(|f| -db(gain(f64::from(f))))
                        .fold(f64::INFINITY, f64::min)
                };
                if best.is_none_or(|b| rejection > b.0) {
                    best = Some((rejection, f_cutoff, ripple));
                }
            }
            let latency_ms = ResamplerSpec {
                sinc_len: len,
                ..base
            }
            .latency_input_samples()
                / f64::from(base.rate_in)
                * 1e3;
            match best {
                Some((rej, fc, rip)) => println!(
                    "{} -> {}: len {len:3} {window:?}: best cutoff {fc:.3}: rejection {rej:5.1} dB, passband ±{rip:.2} dB, latency {latency_ms:.3} ms",
                    base.rate_in, base.rate_out
                ),
                None => println!("{} -> {}: len {len:3} {window:?}: no cutoff keeps ±1 dB", base.rate_in, base.rate_out),
            }
        }
    }
}

#[test]
#[ignore = "design sweep; prints a table, takes a few seconds in release"]
fn sweep_rubato_sinc_configurations() {
    sweep(ResamplerSpec::UPLINK, &[16, 24, 32]);
    sweep(ResamplerSpec::DOWNLINK, &[72, 80, 88, 96]);
}

#[test]
fn presets_are_what_the_sweep_recommends() {
    // Keep the presets and the reasoning in resample.rs in step.
    assert_eq!(ResamplerSpec::UPLINK.sinc_len, 24);
    assert_eq!(ResamplerSpec::UPLINK.window, WindowFunction::Hann);
    assert_eq!(ResamplerSpec::DOWNLINK.sinc_len, 88);
    assert_eq!(ResamplerSpec::DOWNLINK.window, WindowFunction::Blackman);
}
