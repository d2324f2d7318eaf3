//! Alias rejection and passband flatness of both legs, measured with bin-exact tones
//! (periodic in the analysis block, so a rectangular-window FFT has no leakage).

mod audio_common;
use audio_common::*;

use callbridge::audio::resample::{ResamplerSpec, StreamResampler};

const REJECTION_DB: f64 = 50.0;

/// Uplink analysis: 4096 input samples = 8192 output samples per period.
const UP_PERIOD_IN: usize = 4096;
/// Downlink analysis: 12288 input samples = 4096 output samples per period.
const DOWN_PERIOD_IN: usize = 12288;

/// Cycles per period nearest to `hz`.
fn cycles(hz: f64, rate: f64, period: usize) -> usize {
    (hz * period as f64 / rate).round() as usize
}

/// Runs the real uplink (μ-law in) on a tone; returns (exact tone frequency, tone power,
/// power above 4.6 kHz) of one steady-state period of the 16 kHz output. A tone of `k`
/// cycles per 4096 input samples has `k` cycles per 8192 output samples: bin `k`.
fn uplink_tone(hz: f64) -> (f64, f64, f64) {
    let k = cycles(hz, 8000.0, UP_PERIOD_IN);
    let x = tone(UP_PERIOD_IN * 2, k, UP_PERIOD_IN, 0.5);
    let y = from_pcm_bytes(&run_uplink(&ulaw(&x), 160));
    let block = &y[y.len() - 2 * UP_PERIOD_IN..];
    let p = power_spectrum(block);
    let bin_hz = 16000.0 / block.len() as f64;
    let above: f64 = p
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as f64 * bin_hz > 4600.0)
        .map(|(_, v)| v)
        .sum();
    (k as f64 * 8000.0 / UP_PERIOD_IN as f64, p[k], above)
}

#[test]
fn uplink_images_above_4k6_are_50db_down() {
    let mut worst = f64::INFINITY;
    for hz in (300..=3400).step_by(100) {
        let (f, tone_p, above) = uplink_tone(f64::from(hz));
        let rej = db(tone_p / above);
        worst = worst.min(rej);
        assert!(
            rej >= REJECTION_DB,
            "uplink tone {f:.1} Hz: energy above 4.6 kHz only {rej:.1} dB down"
        );
    }
    println!("uplink worst image rejection above 4.6 kHz (μ-law in, 300-3400 Hz): {worst:.1} dB");
}

#[test]
fn downlink_tones_4k6_to_11k9_are_50db_down() {
    // Through the real pipeline, μ-law out: what the caller would hear.
    let mut worst = f64::INFINITY;
    for hz in (4600..=11900).step_by(100) {
        let k = cycles(f64::from(hz), 24000.0, DOWN_PERIOD_IN);
        let x = tone(DOWN_PERIOD_IN * 2, k, DOWN_PERIOD_IN, 0.5);
        let x_q: Vec<f64> = to_i16(&x).iter().map(|&s| f64::from(s) / 32768.0).collect();
        let y = from_ulaw(&run_downlink(&pcm_bytes(&to_i16(&x)), 960));
        // Steady state: skip the first 2000 output samples and the flushed tail.
        let out = &y[2000..y.len() - 100];
        let rej = db(mean_square(&x_q) / mean_square(out).max(1e-30));
        worst = worst.min(rej);
        assert!(
            rej >= REJECTION_DB,
            "downlink tone {hz} Hz: output only {rej:.1} dB below input"
        );
    }
    if worst > 200.0 {
        println!("downlink 4.6-11.9 kHz (after μ-law): output is all-zero codes (residual below μ-law's smallest step)");
    } else {
        println!("downlink worst rejection 4.6-11.9 kHz (after μ-law): {worst:.1} dB");
    }
    // Control: the same measurement on an in-band tone must show it passing, so silence from
    // a broken pipeline cannot pass the test above.
    let k = cycles(1000.0, 24000.0, DOWN_PERIOD_IN);
    let x = tone(DOWN_PERIOD_IN * 2, k, DOWN_PERIOD_IN, 0.5);
    let y = from_ulaw(&run_downlink(&pcm_bytes(&to_i16(&x)), 960));
    let gain = db(mean_square(&y[2000..y.len() - 100]) / mean_square(&x));
    assert!(gain.abs() < 0.5, "1 kHz control tone gain {gain:.2} dB");
}

#[test]
fn resampler_stopband_without_mulaw_noise() {
    // The same checks on the bare resamplers, to show the filter margin itself.
    let mut worst_up = f64::INFINITY;
    for hz in (300..=3400).step_by(100) {
        let k = cycles(f64::from(hz), 8000.0, UP_PERIOD_IN);
        let x = tone(UP_PERIOD_IN * 2, k, UP_PERIOD_IN, 0.5);
        let y = run_resampler(
            &mut StreamResampler::new(ResamplerSpec::UPLINK).unwrap(),
            &x,
        );
        let block = &y[y.len() - 2 * UP_PERIOD_IN..];
        let p = power_spectrum(block);
        let above: f64 = p[(4600.0 / (16000.0 / block.len() as f64)) as usize + 1..]
            .iter()
            .sum();
        worst_up = worst_up.min(db(p[k] / above));
    }
    let mut worst_down = f64::INFINITY;
    for hz in (4600..=11950).step_by(100) {
        let k = cycles(f64::from(hz), 24000.0, DOWN_PERIOD_IN);
        let x = tone(DOWN_PERIOD_IN * 2, k, DOWN_PERIOD_IN, 0.5);
        let y = run_resampler(
            &mut StreamResampler::new(ResamplerSpec::DOWNLINK).unwrap(),
            &x,
        );
        let out = &y[y.len() - DOWN_PERIOD_IN / 3..];
        worst_down = worst_down.min(db(mean_square(&x) / mean_square(out)));
    }
    println!("bare resamplers: uplink worst image rejection {worst_up:.1} dB, downlink worst stopband {worst_down:.1} dB");
    assert!(
        worst_up >= REJECTION_DB + 3.0,
        "uplink filter margin {worst_up:.1} dB"
    );
    assert!(
        worst_down >= REJECTION_DB + 3.0,
        "downlink filter margin {worst_down:.1} dB"
    );
}

#[test]
fn passband_300_to_3400_within_1db() {
    let (mut up_min, mut up_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut dn_min, mut dn_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for hz in (300..=3400).step_by(100) {
        // Uplink: output tone amplitude vs input amplitude (bare resampler, f32, no μ-law).
        let k = cycles(f64::from(hz), 8000.0, UP_PERIOD_IN);
        let x = tone(UP_PERIOD_IN * 2, k, UP_PERIOD_IN, 0.5);
        let y = run_resampler(
            &mut StreamResampler::new(ResamplerSpec::UPLINK).unwrap(),
            &x,
        );
        let block = &y[y.len() - 2 * UP_PERIOD_IN..];
        let p = power_spectrum(block);
        // A sine of amplitude a over N samples gives |X[k]|^2 = (a N / 2)^2.
        let gain = db(p[k] / (0.5 * block.len() as f64 / 2.0).powi(2));
        up_min = up_min.min(gain);
        up_max = up_max.max(gain);

        let k = cycles(f64::from(hz), 24000.0, DOWN_PERIOD_IN);
        let x = tone(DOWN_PERIOD_IN * 2, k, DOWN_PERIOD_IN, 0.5);
        let y = run_resampler(
            &mut StreamResampler::new(ResamplerSpec::DOWNLINK).unwrap(),
            &x,
        );
        let block = &y[y.len() - DOWN_PERIOD_IN / 3..];
        let gain = db(mean_square(block) / mean_square(&x));
        dn_min = dn_min.min(gain);
        dn_max = dn_max.max(gain);
    }
    println!("passband 300-3400 Hz: uplink {up_min:+.2}..{up_max:+.2} dB, downlink {dn_min:+.2}..{dn_max:+.2} dB");
    for (leg, lo, hi) in [("uplink", up_min, up_max), ("downlink", dn_min, dn_max)] {
        assert!(
            lo >= -1.0 && hi <= 1.0,
            "{leg} passband {lo:+.2}..{hi:+.2} dB"
        );
    }
}
