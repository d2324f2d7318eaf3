//! Shared helpers for the audio integration tests: signals, an FFT, and one-shot runners.
#![allow(dead_code)]

use callbridge::audio::g711::{ulaw_decode, ulaw_encode};
use callbridge::audio::resample::StreamResampler;
use callbridge::audio::transcode::{Downlink, Uplink};

/// Deterministic white noise in [-amp, amp] (xorshift64*).
pub fn noise(n: usize, amp: f64, mut seed: u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (r as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// `cycles` periods of a sine per `period` samples, `n` samples long.
pub fn tone(n: usize, cycles: usize, period: usize, amp: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            amp * (2.0 * std::f64::consts::PI * (cycles * i % period) as f64 / period as f64).sin()
        })
        .collect()
}

pub fn to_i16(x: &[f64]) -> Vec<i16> {
    x.iter()
        .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

pub fn pcm_bytes(x: &[i16]) -> Vec<u8> {
    x.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn from_pcm_bytes(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(2)
        .map(|p| f64::from(i16::from_le_bytes([p[0], p[1]])) / 32768.0)
        .collect()
}

pub fn from_ulaw(b: &[u8]) -> Vec<f64> {
    b.iter()
        .map(|&c| f64::from(ulaw_decode(c)) / 32768.0)
        .collect()
}

pub fn ulaw(x: &[f64]) -> Vec<u8> {
    to_i16(x).into_iter().map(ulaw_encode).collect()
}

/// Runs the uplink over all of `codes` in `chunk`-byte pieces.
pub fn run_uplink(codes: &[u8], chunk: usize) -> Vec<u8> {
    let mut up = Uplink::new().expect("uplink");
    let mut out = Vec::new();
    for piece in codes.chunks(chunk) {
        up.process(piece, &mut out);
    }
    out
}

/// Runs the downlink over all of `bytes` in `chunk`-byte pieces, then `finish`.
pub fn run_downlink(bytes: &[u8], chunk: usize) -> Vec<u8> {
    let mut down = Downlink::new().expect("downlink");
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        down.process(piece, &mut out);
    }
    down.finish(&mut out);
    out
}

/// Runs a bare resampler over `x` in one go (f32 path, no quantisation).
pub fn run_resampler(r: &mut StreamResampler, x: &[f64]) -> Vec<f64> {
    let input: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut out = Vec::new();
    r.process(&input, |s| out.extend(s.iter().map(|&v| f64::from(v))));
    out
}

/// In-place iterative radix-2 FFT; `re.len()` must be a power of two.
pub fn fft(re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    assert!(n.is_power_of_two() && im.len() == n);
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = -2.0 * std::f64::consts::PI / len as f64;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = (ang * k as f64).sin_cos();
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * c - im[b] * s;
                let ti = re[b] * s + im[b] * c;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

/// One-sided power per bin (bins 0..=n/2) of a real block, rectangular window.
pub fn power_spectrum(x: &[f64]) -> Vec<f64> {
    let mut re = x.to_vec();
    let mut im = vec![0.0; x.len()];
    fft(&mut re, &mut im);
    (0..=x.len() / 2)
        .map(|k| re[k] * re[k] + im[k] * im[k])
        .collect()
}

pub fn db(ratio: f64) -> f64 {
    10.0 * ratio.max(1e-30).log10()
}

pub fn mean_square(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64
}

/// Index of the largest value of the cross-correlation `sum_k y[k] * x[k*step - lag]`
/// over `lag` in `0..max_lag`, i.e. the lag (in x samples) at which y best matches x.
/// For upsampling pass x zero-stuffed to y's rate and `step` = 1.
pub fn xcorr_peak(x: &[f64], y: &[f64], step: usize, max_lag: usize) -> (usize, Vec<f64>) {
    let c: Vec<f64> = (0..max_lag)
        .map(|lag| {
            y.iter()
                .enumerate()
                .filter_map(|(k, &v)| {
                    (k * step)
                        .checked_sub(lag)
                        .and_then(|i| x.get(i))
                        .map(|&u| u * v)
                })
                .sum()
        })
        .collect();
    let best = (0..max_lag)
        .max_by(|&a, &b| c[a].abs().total_cmp(&c[b].abs()))
        .unwrap_or(0);
    (best, c)
}
