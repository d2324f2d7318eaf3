//! Streaming fixed-ratio resampling for the two call legs, built on rubato's sinc resampler.
//!
//! Owns the filter design (window, length, cutoff), the exact delay bookkeeping and the
//! streaming wrapper that lets callers push any number of samples per call without
//! allocating. It does not know about μ-law, byte order or turns; that is
//! [`crate::audio::transcode`].
//!
//! # Why this configuration
//!
//! Both legs use rubato's `Async::new_sinc` at a fixed ratio with
//! [`SincInterpolationType::Nearest`]. For ratio 2 (8 → 16 kHz) an oversampling factor of 2
//! and for ratio 1/3 (24 → 8 kHz) a factor of 1 put every output instant exactly on a
//! precomputed sinc phase, so the resampler is an exact polyphase FIR: no interpolation
//! error between sinc phases, and one dot product per output sample.
//!
//! The delay budget (≤ 2 ms per leg) fixes the filter length: a linear-phase FIR of
//! `sinc_len` input samples needs about `sinc_len / 2` samples of lookahead. Telephone speech
//! occupies 300–3400 Hz, so the transition band may run from 3.4 kHz to 4.6 kHz (the image of
//! 3.4 kHz around 4 kHz). Sweeping rubato's six windows, lengths and cutoffs (see
//! `tests/audio_design.rs`, run with `--ignored --nocapture`; `tests/audio_alias.rs` measures
//! the chosen presets) gave:
//!
//! * uplink, 8 → 16 kHz: 24 taps at 8 kHz with a Hann window and cutoff 0.945 × 4 kHz:
//!   images ≥ 54 dB down, passband within −0.6 dB, latency 1.625 ms (group delay 1.375 ms).
//!   Blackman at 24 taps is about as good on rejection (54.2 dB) but droops −0.9 dB.
//!   32 taps (Blackman, ~75 dB) would have a group delay of 1.875 ms but a latency of 2.125 ms
//!   once rubato's emission rule is counted, so it misses the budget; 16 taps reach only
//!   ~35 dB.
//! * downlink, 24 → 8 kHz: 88 taps at 24 kHz with a Blackman window and cutoff 0.945 × 4 kHz:
//!   ≥ 75 dB rejection from 4.6 kHz up, passband within −0.6 dB, latency 1.833 ms (group
//!   delay 1.667 ms). 96 taps would give exactly 2.0 ms for no audible gain.
//!
//! rubato's FFT resampler was not used: with 20 ms chunks it adds about 10 ms.
//!
//! # Delay accounting
//!
//! rubato reports `output_delay() = sinc_len × ratio / 2` output frames, which is not what
//! its `Async` resampler actually does: it starts at `last_index = -(sinc_len - 1)` and takes
//! one step before the first output, and with `Nearest` the sinc peak sits at tap
//! `sinc_len/2 - 1 + 1/oversampling`. Working through `asynchro.rs`/`sinc.rs` gives, in input
//! samples:
//!
//! * group delay (what cross-correlating output against input shows):
//!   `sinc_len/2 - 1/ratio - 1/oversampling`;
//! * latency (from the arrival of an input sample to the emission of the output sample that
//!   represents it): rubato emits an output only once one input sample beyond its filter
//!   window has arrived, and the window must start on a whole input sample. That gives
//!   `sinc_len/2 + 1 - 1/oversampling` for some output phases and up to `1 - 1/oversampling`
//!   more for the others; the worst case, reported as the delay, is
//!   `sinc_len/2 + 2 - 2/oversampling` (on the uplink: the outputs that fall on input sample
//!   instants, 13 input samples; on the downlink every phase: 44 input samples).
//!
//! [`StreamResampler::delay`] reports the latency (the honest, larger number);
//! [`StreamResampler::group_delay`] the correlation offset. Tests measure both. Nothing is
//! trimmed: the first output samples are the filter's response to the zero history.

use std::time::Duration;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler, Resizable, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

/// Error building a resampler (only at call set-up; processing itself cannot fail).
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// rubato rejected the configuration.
    #[error("cannot build resampler {from} Hz -> {to} Hz: {source}")]
    Construction {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's reason.
        #[source]
        source: rubato::ResamplerConstructionError,
    },
    /// The rates are not an integer up- or down-sampling pair this wrapper supports exactly.
    #[error("unsupported rate pair {from} Hz -> {to} Hz (need an integer ratio)")]
    UnsupportedRatio {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
    },
    /// `max_chunk` was zero.
    #[error("max_chunk must be at least 1, got {0}")]
    ZeroChunk(usize),
}

/// Filter design for one resampler; see the module docs for why the presets look as they do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResamplerSpec {
    /// Input sample rate in Hz.
    pub rate_in: u32,
    /// Output sample rate in Hz.
    pub rate_out: u32,
    /// Filter length in input samples (rubato rounds it up to a multiple of 8).
    pub sinc_len: usize,
    /// Window applied to the sinc.
    pub window: WindowFunction,
    /// Cutoff relative to the lower of the two Nyquist frequencies.
    pub f_cutoff: f32,
    /// Largest number of input samples handed to rubato at once; bounds the scratch buffer.
    pub max_chunk: usize,
}

impl ResamplerSpec {
    /// Caller → model: 8 kHz → 16 kHz.
    pub const UPLINK: ResamplerSpec = ResamplerSpec {
        rate_in: 8000,
        rate_out: 16000,
        sinc_len: 24,
        window: WindowFunction::Hann,
        f_cutoff: 0.945,
        max_chunk: 480,
    };

    /// Model → caller: 24 kHz → 8 kHz.
    pub const DOWNLINK: ResamplerSpec = ResamplerSpec {
        rate_in: 24000,
        rate_out: 8000,
        sinc_len: 88,
        window: WindowFunction::Blackman,
        f_cutoff: 0.945,
        max_chunk: 960,
    };

    /// Oversampling factor that puts every output instant exactly on a sinc phase, if the
    /// ratio allows it: `rate_out/rate_in` for integer upsampling, 1 for integer downsampling.
    fn exact_oversampling(&self) -> Option<usize> {
        let (i, o) = (self.rate_in, self.rate_out);
        if i == 0 || o == 0 {
            None
        } else if o >= i && o % i == 0 {
            Some((o / i) as usize)
        } else if i > o && i % o == 0 {
            Some(1)
        } else {
            None
        }
    }

    fn rounded_len(&self) -> usize {
        self.sinc_len.next_multiple_of(8)
    }

    /// Worst case, over output phases, of the input samples from an input sample's arrival
    /// to the emission of the output sample that represents it.
    pub fn latency_input_samples(&self) -> f64 {
        let f = self.exact_oversampling().unwrap_or(1) as f64;
        // len/2 + 1 - 1/f for outputs on integer input positions, plus up to (1 - 1/f) for
        // the phases between input samples, which wait for the next whole input sample.
        self.rounded_len() as f64 / 2.0 + 2.0 - 2.0 / f
    }

    /// Offset, in input samples, between the input stream and the output stream as
    /// cross-correlation sees it.
    pub fn group_delay_input_samples(&self) -> f64 {
        let f = self.exact_oversampling().unwrap_or(1) as f64;
        let t = f64::from(self.rate_in) / f64::from(self.rate_out);
        self.rounded_len() as f64 / 2.0 - t - 1.0 / f
    }
}

/// A streaming resampler: push any number of samples, get every output sample that the
/// input so far determines. All buffers are allocated in [`StreamResampler::new`].
pub struct StreamResampler {
    spec: ResamplerSpec,
    inner: Async<f32>,
    /// rubato writes here; sized to its maximum output for `max_chunk` input frames.
    scratch: Vec<f32>,
    /// Total input frames pushed since the last reset.
    frames_in: u64,
    /// Total output frames emitted since the last reset.
    frames_out: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("spec", &self.spec)
            .field("frames_in", &self.frames_in)
            .field("frames_out", &self.frames_out)
            .finish()
    }
}

impl StreamResampler {
    /// Builds the resampler and all its buffers.
    pub fn new(spec: ResamplerSpec) -> Result<Self, ResampleError> {
        let unsupported = ResampleError::UnsupportedRatio {
            from: spec.rate_in,
            to: spec.rate_out,
        };
        let oversampling = spec.exact_oversampling().ok_or(unsupported)?;
        if spec.max_chunk == 0 {
            return Err(ResampleError::ZeroChunk(spec.max_chunk));
        }
        let params = SincInterpolationParameters::new(spec.sinc_len, spec.window)
            .f_cutoff(spec.f_cutoff)
            .oversampling_factor(oversampling)
            .interpolation(SincInterpolationType::Nearest);
        let ratio = f64::from(spec.rate_out) / f64::from(spec.rate_in);
        let inner =
            Async::<f32>::new_sinc(ratio, 1.0, &params, spec.max_chunk, 1, FixedAsync::Input)
                .map_err(|source| ResampleError::Construction {
                    from: spec.rate_in,
                    to: spec.rate_out,
                    source,
                })?;
        let scratch = vec![0.0; inner.output_frames_max()];
        Ok(StreamResampler {
            spec,
            inner,
            scratch,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// The design this resampler was built from.
    pub fn spec(&self) -> &ResamplerSpec {
        &self.spec
    }

    /// Latency: from an input sample's arrival to the emission of the output sample that
    /// represents it (see the module docs). This is the number to budget with.
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.spec.latency_input_samples() / f64::from(self.spec.rate_in))
    }

    /// Offset between input and output streams as cross-correlation measures it.
    pub fn group_delay(&self) -> Duration {
        Duration::from_secs_f64(
            self.spec.group_delay_input_samples() / f64::from(self.spec.rate_in),
        )
    }

    /// [`Self::group_delay`] in output samples (may be fractional).
    pub fn group_delay_output_samples(&self) -> f64 {
        self.spec.group_delay_input_samples() * f64::from(self.spec.rate_out)
            / f64::from(self.spec.rate_in)
    }

    /// rubato's own `output_delay()` figure (output frames), for reporting; see the module
    /// docs for why it is not used.
    pub fn rubato_output_delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Total input frames pushed since construction or the last reset.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// Total output frames emitted since construction or the last reset.
    pub fn frames_out(&self) -> u64 {
        self.frames_out
    }

    /// Resamples `input` (any length, including zero) and calls `sink` with each block of
    /// output samples in order. Does not allocate.
    pub fn process(&mut self, input: &[f32], mut sink: impl FnMut(&[f32])) {
        for piece in input.chunks(self.spec.max_chunk) {
            let n = self.run_chunk(piece);
            sink(&self.scratch[..n]);
        }
    }

    /// Pushes `frames` zeros, as [`Self::process`] would, without needing an input buffer.
    pub fn process_zeros(&mut self, mut frames: usize, mut sink: impl FnMut(&[f32])) {
        // A small stack block of zeros keeps this allocation-free.
        const ZEROS: [f32; 64] = [0.0; 64];
        while frames > 0 {
            let take = frames.min(ZEROS.len());
            let n = self.run_chunk(&ZEROS[..take]);
            sink(&self.scratch[..n]);
            frames -= take;
        }
    }

    /// Emits the filter tail: pushes zeros until every output sample that depends on real
    /// input has been produced, and stops exactly there (the output then holds
    /// `ceil(frames_in × ratio + group_delay)` samples in total). Then resets.
    pub fn flush(&mut self, mut sink: impl FnMut(&[f32])) {
        let ratio = f64::from(self.spec.rate_out) / f64::from(self.spec.rate_in);
        let target =
            (self.frames_in as f64 * ratio + self.group_delay_output_samples()).ceil() as u64;
        while self.frames_out < target {
            let before = self.frames_out;
            let n = self.run_chunk(&[0.0; 8]);
            let keep = (target - before).min(n as u64) as usize;
            sink(&self.scratch[..keep]);
            self.frames_out = before + keep as u64;
        }
        self.reset();
    }

    /// Drops all filter history, as if newly built.
    pub fn reset(&mut self) {
        self.inner.reset();
        self.frames_in = 0;
        self.frames_out = 0;
    }

    /// Runs one rubato call on `piece` (1..=max_chunk frames); returns output frames written
    /// to `scratch`.
    fn run_chunk(&mut self, piece: &[f32]) -> usize {
        if piece.is_empty() {
            return 0;
        }
        // Cannot fail: piece.len() is in 1..=max_chunk by construction of every caller.
        if self.inner.set_chunk_size(piece.len()).is_err() {
            debug_assert!(false, "chunk size {} rejected", piece.len());
            return 0;
        }
        let Ok(input) = InterleavedSlice::new(piece, 1, piece.len()) else {
            return 0;
        };
        let frames = self.scratch.len();
        let Ok(mut output) = InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames) else {
            return 0;
        };
        match self.inner.process_into_buffer(&input, &mut output, None) {
            Ok((_, written)) => {
                self.frames_in += piece.len() as u64;
                self.frames_out += written as u64;
                written
            }
            Err(e) => {
                // Only reachable through a bug in the size bookkeeping above.
                debug_assert!(false, "rubato process failed: {e}");
                tracing::error!(error = %e, "resampler rejected a chunk");
                0
            }
        }
    }
}
