//! The two per-call audio pipelines.
//!
//! * [`Uplink`] (caller → model): G.711 μ-law 8 kHz → 16-bit little-endian PCM 16 kHz.
//! * [`Downlink`] (model → caller): 16-bit little-endian PCM 24 kHz → μ-law 8 kHz.
//!
//! Owns sample-format conversion, byte framing (odd byte counts on the downlink) and the
//! per-turn lifecycle (flush at the end of a model turn, drop on barge-in). Filter design and
//! delay bookkeeping live in [`crate::audio::resample`]. Knows nothing about JSON, base64,
//! sockets or clocks. Everything is allocated in `new()`; `process` only appends to the
//! caller's `out`, so a pre-reserved `out` means no allocation per frame.

use std::time::Duration;

use crate::audio::g711::{ulaw_decode, ulaw_encode};
use crate::audio::resample::{ResampleError, ResamplerSpec, StreamResampler};

/// Errors building a pipeline (call set-up only; processing cannot fail).
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The resampler could not be built.
    #[error("audio pipeline set-up failed: {0}")]
    Resampler(#[from] ResampleError),
}

/// Converts a float sample in [-1, 1) to 16-bit PCM, rounding and saturating.
#[inline]
fn to_i16(x: f32) -> i16 {
    // `as` saturates for out-of-range floats (and maps NaN to 0), which is the clipping we want.
    (x * 32768.0).round() as i16
}

#[inline]
fn to_f32(s: i16) -> f32 {
    f32::from(s) / 32768.0
}

/// Caller → model: μ-law 8 kHz in, 16 kHz s16le out.
#[derive(Debug)]
pub struct Uplink {
    resampler: StreamResampler,
    /// Decoded input block, reused across calls.
    block: Vec<f32>,
}

impl Uplink {
    /// Builds the pipeline and all its buffers.
    pub fn new() -> Result<Uplink, AudioError> {
        let resampler = StreamResampler::new(ResamplerSpec::UPLINK)?;
        let block = vec![0.0; resampler.spec().max_chunk];
        Ok(Uplink { resampler, block })
    }

    /// Appends 16 kHz s16le bytes for `ulaw` (any length, usually 160 bytes → 640 bytes out in
    /// steady state). The output lags the input by [`Self::delay`]; the first call's output
    /// is correspondingly shorter.
    pub fn process(&mut self, ulaw: &[u8], out: &mut Vec<u8>) {
        let block_len = self.block.len();
        for piece in ulaw.chunks(block_len) {
            for (dst, &code) in self.block.iter_mut().zip(piece) {
                *dst = to_f32(ulaw_decode(code));
            }
            self.resampler
                .process(&self.block[..piece.len()], |samples| {
                    for &s in samples {
                        out.extend_from_slice(&to_i16(s).to_le_bytes());
                    }
                });
        }
    }

    /// Algorithmic delay of this leg: from a caller sample's arrival to the emission of the
    /// 16 kHz sample that represents it, worst case over output phases (1.625 ms).
    pub fn delay(&self) -> Duration {
        self.resampler.delay()
    }

    /// Offset of the output stream against the input as cross-correlation measures it
    /// (1.375 ms = 22 samples at 16 kHz); smaller than [`Self::delay`] because the resampler
    /// emits each sample one to 1.5 input samples later than its filter window strictly needs.
    pub fn group_delay(&self) -> Duration {
        self.resampler.group_delay()
    }

    /// Drops the filter history (e.g. when a new stream starts on the same object).
    pub fn reset(&mut self) {
        self.resampler.reset();
    }
}

/// Model → caller: 24 kHz s16le in (any chunking), μ-law 8 kHz out.
#[derive(Debug)]
pub struct Downlink {
    resampler: StreamResampler,
    /// Converted input block, reused across calls.
    block: Vec<f32>,
    /// Low byte of a sample whose high byte has not arrived yet.
    carry: Option<u8>,
}

impl Downlink {
    /// Builds the pipeline and all its buffers.
    pub fn new() -> Result<Downlink, AudioError> {
        let resampler = StreamResampler::new(ResamplerSpec::DOWNLINK)?;
        let block = vec![0.0; resampler.spec().max_chunk];
        Ok(Downlink {
            resampler,
            block,
            carry: None,
        })
    }

    /// Accepts 24 kHz s16le bytes in any chunking (an odd trailing byte is carried to the next
    /// call); appends μ-law 8 kHz bytes to `out`.
    pub fn process(&mut self, pcm24k_le: &[u8], out: &mut Vec<u8>) {
        let mut bytes = pcm24k_le;
        let block_len = self.block.len();
        let mut filled = 0;
        if let Some(lo) = self.carry {
            if let Some((&hi, rest)) = bytes.split_first() {
                self.block[0] = to_f32(i16::from_le_bytes([lo, hi]));
                filled = 1;
                self.carry = None;
                bytes = rest;
            }
        }
        let mut pairs = bytes.chunks_exact(2);
        loop {
            for (dst, pair) in self.block[filled..].iter_mut().zip(pairs.by_ref()) {
                *dst = to_f32(i16::from_le_bytes([pair[0], pair[1]]));
                filled += 1;
            }
            if filled == 0 {
                break;
            }
            self.resampler
                .process(&self.block[..filled], |samples| encode(samples, out));
            if filled < block_len {
                break;
            }
            filled = 0;
        }
        if let [last] = pairs.remainder() {
            self.carry = Some(*last);
        }
    }

    /// End of a model turn: emits the filter tail (the audio still inside the filter) so the
    /// end of the turn is not clipped, then resets for the next turn. A dangling odd byte is
    /// dropped (half a sample cannot be played).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.carry = None;
        self.resampler.flush(|samples| encode(samples, out));
    }

    /// Barge-in: drops all internal state (carried byte, filter history) without output.
    pub fn reset(&mut self) {
        self.carry = None;
        self.resampler.reset();
    }

    /// Algorithmic delay of this leg: from a model sample's arrival to the emission of the
    /// 8 kHz sample that represents it (1.833 ms).
    pub fn delay(&self) -> Duration {
        self.resampler.delay()
    }

    /// Offset of the output stream against the input as cross-correlation measures it
    /// (1.667 ms = 13.3 samples at 8 kHz).
    pub fn group_delay(&self) -> Duration {
        self.resampler.group_delay()
    }
}

fn encode(samples: &[f32], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| ulaw_encode(to_i16(s))));
}
