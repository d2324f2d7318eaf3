//! Streaming fixed-ratio resampling for the two call legs, designed by rubato's sinc resampler.
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
//!
//! # Fast path
//!
//! rubato stays the filter designer and the reference, but its streaming loop costs far more
//! than the dot products it computes (per-sample adapter writes, f64 index arithmetic,
//! floor/round per output, buffer copies). Since the configuration above is an exact,
//! linear time-invariant polyphase FIR, [`StreamResampler::new`] reads the tap tables off
//! rubato's impulse responses at construction and filters with a small hand-written
//! polyphase loop (`Polyphase`) that follows rubato's positions and emission rule exactly:
//! same outputs (to float rounding; the sums are taken in a different order), same number
//! of them after every call, same zero-history start. The extraction checks rubato's
//! behaviour against that model and falls back to rubato's loop if it ever disagrees (it
//! does for ratios whose step is not exact in binary, e.g. 8 → 24 kHz).
//! [`StreamResampler::new_rubato`] builds the reference; `tests/audio_fastpath.rs` compares.

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
    engine: Engine,
    /// The engine writes here; sized to its maximum output for `max_chunk` input frames.
    scratch: Vec<f32>,
    /// Total input frames pushed since the last reset.
    frames_in: u64,
    /// Total output frames emitted since the last reset.
    frames_out: u64,
    /// rubato's `output_delay()` for this spec, kept for reporting.
    rubato_output_delay: usize,
}

/// What does the filtering: the polyphase FIR extracted from rubato (the normal case), or
/// rubato's own streaming loop (the reference, and the fallback should extraction fail).
enum Engine {
    Fast(Polyphase),
    Rubato(Box<Async<f32>>),
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("spec", &self.spec)
            .field("fast", &self.is_fast())
            .field("frames_in", &self.frames_in)
            .field("frames_out", &self.frames_out)
            .finish()
    }
}

impl StreamResampler {
    /// Builds the resampler and all its buffers: designs the filter with rubato, extracts its
    /// polyphase taps and runs them in [`Polyphase`] (see the module docs). Falls back to
    /// rubato's own loop, with a warning, if rubato does not behave as that engine assumes.
    pub fn new(spec: ResamplerSpec) -> Result<Self, ResampleError> {
        Self::build(spec, true)
    }

    /// Builds the resampler on rubato's own streaming loop, without the extracted polyphase
    /// engine: same output (to float rounding), several times slower. The reference the fast
    /// path is tested against.
    pub fn new_rubato(spec: ResamplerSpec) -> Result<Self, ResampleError> {
        Self::build(spec, false)
    }

    fn build(spec: ResamplerSpec, fast: bool) -> Result<Self, ResampleError> {
        let unsupported = ResampleError::UnsupportedRatio {
            from: spec.rate_in,
            to: spec.rate_out,
        };
        let oversampling = spec.exact_oversampling().ok_or(unsupported)?;
        if spec.max_chunk == 0 {
            return Err(ResampleError::ZeroChunk(spec.max_chunk));
        }
        let inner = build_rubato(&spec, oversampling, spec.max_chunk)?;
        let rubato_output_delay = inner.output_delay();
        let mut scratch_len = inner.output_frames_max();
        let engine = if fast {
            match Polyphase::extract(&spec, oversampling) {
                Ok(poly) => {
                    scratch_len = scratch_len.max(poly.max_output(spec.max_chunk));
                    Engine::Fast(poly)
                }
                Err(reason) => {
                    tracing::warn!(
                        from = spec.rate_in,
                        to = spec.rate_out,
                        %reason,
                        "polyphase extraction failed; resampling with rubato's loop"
                    );
                    Engine::Rubato(Box::new(inner))
                }
            }
        } else {
            Engine::Rubato(Box::new(inner))
        };
        Ok(StreamResampler {
            spec,
            engine,
            scratch: vec![0.0; scratch_len],
            frames_in: 0,
            frames_out: 0,
            rubato_output_delay,
        })
    }

    /// Whether the extracted polyphase engine is running (false: rubato's own loop).
    pub fn is_fast(&self) -> bool {
        matches!(self.engine, Engine::Fast(_))
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
        self.rubato_output_delay
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
            let take = frames.min(ZEROS.len()).min(self.spec.max_chunk);
            let n = self.run_chunk(&ZEROS[..take]);
            sink(&self.scratch[..n]);
            frames -= take;
        }
    }

    /// Emits the filter tail: pushes zeros until every output sample that depends on real
    /// input has been produced, and stops exactly there (the output then holds
    /// `ceil(frames_in × ratio + group_delay)` samples in total). Then resets.
    pub fn flush(&mut self, mut sink: impl FnMut(&[f32])) {
        const ZEROS: [f32; 8] = [0.0; 8];
        let ratio = f64::from(self.spec.rate_out) / f64::from(self.spec.rate_in);
        let target =
            (self.frames_in as f64 * ratio + self.group_delay_output_samples()).ceil() as u64;
        while self.frames_out < target {
            let before = self.frames_out;
            let take = ZEROS.len().min(self.spec.max_chunk);
            let n = self.run_chunk(&ZEROS[..take]);
            let keep = (target - before).min(n as u64) as usize;
            sink(&self.scratch[..keep]);
            self.frames_out = before + keep as u64;
        }
        self.reset();
    }

    /// Drops all filter history, as if newly built.
    pub fn reset(&mut self) {
        match &mut self.engine {
            Engine::Fast(poly) => poly.reset(),
            Engine::Rubato(inner) => inner.reset(),
        }
        self.frames_in = 0;
        self.frames_out = 0;
    }

    /// Runs the engine on `piece` (1..=max_chunk frames); returns output frames written to
    /// `scratch`.
    fn run_chunk(&mut self, piece: &[f32]) -> usize {
        if piece.is_empty() {
            return 0;
        }
        let written = match &mut self.engine {
            Engine::Fast(poly) => poly.process(piece, &mut self.scratch),
            Engine::Rubato(inner) => run_rubato(inner, piece, &mut self.scratch),
        };
        self.frames_in += piece.len() as u64;
        self.frames_out += written as u64;
        written
    }
}

/// rubato's resampler for `spec`, taking up to `max_chunk` input frames per call.
fn build_rubato(
    spec: &ResamplerSpec,
    oversampling: usize,
    max_chunk: usize,
) -> Result<Async<f32>, ResampleError> {
    let params = SincInterpolationParameters::new(spec.sinc_len, spec.window)
        .f_cutoff(spec.f_cutoff)
        .oversampling_factor(oversampling)
        .interpolation(SincInterpolationType::Nearest);
    let ratio = f64::from(spec.rate_out) / f64::from(spec.rate_in);
    Async::<f32>::new_sinc(ratio, 1.0, &params, max_chunk, 1, FixedAsync::Input).map_err(|source| {
        ResampleError::Construction {
            from: spec.rate_in,
            to: spec.rate_out,
            source,
        }
    })
}

/// One rubato call on `piece` (1..=its max chunk frames); returns output frames written to
/// `out`, which must hold `output_frames_max()` frames.
fn run_rubato(inner: &mut Async<f32>, piece: &[f32], out: &mut [f32]) -> usize {
    // Cannot fail: piece.len() is in 1..=max_chunk by construction of every caller.
    if inner.set_chunk_size(piece.len()).is_err() {
        debug_assert!(false, "chunk size {} rejected", piece.len());
        return 0;
    }
    let Ok(input) = InterleavedSlice::new(piece, 1, piece.len()) else {
        return 0;
    };
    let frames = out.len();
    let Ok(mut output) = InterleavedSlice::new_mut(out, 1, frames) else {
        return 0;
    };
    match inner.process_into_buffer(&input, &mut output, None) {
        Ok((_, written)) => written,
        Err(e) => {
            // Only reachable through a bug in the size bookkeeping above.
            debug_assert!(false, "rubato process failed: {e}");
            tracing::error!(error = %e, "resampler rejected a chunk");
            0
        }
    }
}

/// The polyphase FIR that rubato's `Async` sinc resampler is at an exact integer ratio with
/// `Nearest` interpolation, run without rubato's per-call and per-sample overhead.
///
/// Positions are counted in `1/phases` of an input sample. Output `k` (from 0 after a reset)
/// sits at `G_k = (k + 1)·step − (len − 1)·phases`; its window starts at input
/// `n_k = floor(G_k / phases)` and it uses tap table `G_k mod phases`:
/// `y[k] = Σ_p taps[G_k mod phases][p] · x[n_k + p]`, with `x[j] = 0` for `j < 0`. It is
/// emitted once `G_k ≤ (N − len − 1)·phases`, `N` being the input frames so far (rubato's
/// emission rule, which waits for one input sample beyond the window). The taps are read
/// off rubato's impulse responses, so nothing here depends on how rubato designs them.
struct Polyphase {
    /// Taps per phase (rubato's `sinc_len` rounded up to a multiple of 8).
    len: usize,
    /// Number of phases (the oversampling factor).
    phases: usize,
    /// `phases` tables of `len` taps, phase-major.
    taps: Vec<f32>,
    /// Distance between consecutive outputs, in whole input samples and extra phases.
    step_whole: usize,
    step_frac: usize,
    /// Input history: `hist[..fill]` holds the samples from the next window onwards.
    hist: Vec<f32>,
    fill: usize,
    /// Window start (index into `hist`) and phase of the next output.
    start: usize,
    phase: usize,
}

impl Polyphase {
    /// Reads the taps off rubato: one fresh rubato resampler per impulse position, one input
    /// sample per call. Checks at every call that rubato emits exactly as many outputs as
    /// the model in the type docs predicts, that every output not touching the impulse is
    /// exactly zero, and that every tap of every phase was seen; any surprise is an error
    /// (the caller then keeps rubato).
    fn extract(spec: &ResamplerSpec, oversampling: usize) -> Result<Polyphase, String> {
        let len = spec.rounded_len();
        let phases = oversampling;
        let num = phases as u64 * u64::from(spec.rate_in);
        if !num.is_multiple_of(u64::from(spec.rate_out)) {
            return Err("output instants are not on a sinc phase".into());
        }
        let step = (num / u64::from(spec.rate_out)) as usize;
        // rubato steps its read position by `1 / ratio` in f64 and counts outputs with floor
        // and round on it. The model below is exact only if that arithmetic is: the step must
        // come out exactly as `step / phases` with a power-of-two `phases` (true for 8 → 16
        // kHz and, since 1.0 / (1/3) rounds to exactly 3.0, for 24 → 8 kHz; not for 8 → 24
        // kHz, where the accumulated 1/3 steps round and the output count drifts by one).
        let t_ratio = 1.0 / (f64::from(spec.rate_out) / f64::from(spec.rate_in));
        if !phases.is_power_of_two() || t_ratio * phases as f64 != step as f64 {
            return Err(format!(
                "rubato's position step {t_ratio} is not exact in binary; its output is not \
                 a fixed polyphase FIR"
            ));
        }
        let mut probe = build_rubato(spec, oversampling, 1).map_err(|e| e.to_string())?;
        let mut out = vec![0.0f32; probe.output_frames_max()];
        let mut taps = vec![f32::NAN; phases * len];
        let (p_i, step_i, lead) = (phases as i64, step as i64, len as i64 - 1);
        // One impulse per residue of its position modulo the output spacing: together they
        // meet every tap of every phase.
        for j in 0..step {
            probe.reset();
            let at = len + j;
            let mut k: i64 = 0;
            for i in 0..at + len + 2 * step + 4 {
                let x = [if i == at { 1.0f32 } else { 0.0 }];
                let written = run_rubato(&mut probe, &x, &mut out);
                let n = i as i64 + 1;
                let expected = if n >= 2 { (n - 2) * p_i / step_i } else { 0 };
                if k + written as i64 != expected {
                    return Err(format!(
                        "rubato emitted {} outputs after {n} inputs, model says {expected}",
                        k + written as i64
                    ));
                }
                for &y in &out[..written] {
                    let g = (k + 1) * step_i - lead * p_i;
                    let (first, phase) = (g.div_euclid(p_i), g.rem_euclid(p_i) as usize);
                    let offset = at as i64 - first;
                    if (0..len as i64).contains(&offset) {
                        taps[phase * len + offset as usize] = y;
                    } else if y != 0.0 {
                        return Err(format!("output {k} = {y} outside the impulse's reach"));
                    }
                    k += 1;
                }
            }
        }
        if taps.iter().any(|t| t.is_nan()) {
            return Err("some taps were never observed".into());
        }
        let mut poly = Polyphase {
            len,
            phases,
            taps,
            step_whole: step / phases,
            step_frac: step % phases,
            hist: vec![0.0; spec.max_chunk + len + 2],
            fill: 0,
            start: 0,
            phase: 0,
        };
        poly.reset();
        Ok(poly)
    }

    /// Most outputs one call with `max_chunk` input frames can produce.
    fn max_output(&self, max_chunk: usize) -> usize {
        let step = self.step_whole * self.phases + self.step_frac;
        max_chunk * self.phases / step + 2
    }

    /// Zero history: `x[-(len-1)..0]` are zeros at `hist[..len-1]`, so output 0's window
    /// (`n_0 = floor(step/phases) − (len − 1)`) starts at `hist[step_whole]`.
    fn reset(&mut self) {
        self.fill = self.len - 1;
        self.hist[..self.fill].fill(0.0);
        self.start = self.step_whole;
        self.phase = self.step_frac;
    }

    /// Appends `input` (at most the `max_chunk` the history was sized for) and writes every
    /// output it completes to `out`; returns how many.
    fn process(&mut self, input: &[f32], out: &mut [f32]) -> usize {
        let (len, phases) = (self.len, self.phases);
        self.hist[self.fill..self.fill + input.len()].copy_from_slice(input);
        self.fill += input.len();
        let limit = self.fill * phases;
        let mut n = 0;
        while (self.start + len + 1) * phases + self.phase <= limit {
            let window = &self.hist[self.start..self.start + len];
            let taps = &self.taps[self.phase * len..(self.phase + 1) * len];
            out[n] = dot(window, taps);
            n += 1;
            self.start += self.step_whole;
            self.phase += self.step_frac;
            if self.phase >= phases {
                self.phase -= phases;
                self.start += 1;
            }
        }
        // Keep only what later windows need.
        let drop = self.start.min(self.fill);
        self.hist.copy_within(drop..self.fill, 0);
        self.fill -= drop;
        self.start -= drop;
        n
    }
}

/// Dot product with eight independent accumulators, so LLVM can vectorise it without being
/// allowed to reassociate float additions.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for ((s, p), q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
