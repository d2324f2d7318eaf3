//! Stereo call recordings: one WAV per call (8 kHz, 16-bit PCM, caller left, agent right as
//! the caller heard it), written while the call goes on.
//!
//! **One timeline for both channels**, in 8 kHz samples from the call's first audio:
//! * Caller frames are placed by Twilio's per-track `timestamp` relative to the call's first
//!   one (whose arrival anchors it to the wall clock). Frames follow each other back to back
//!   unless the timestamp jumps ahead by more than half a frame (lost packets: silence);
//!   a timestamp that does not advance (a duplicate or reordered frame) is ignored. A continued
//!   stream (after `send_dtmf`) starts its timestamps afresh, so it is anchored anew.
//! * Agent frames: Twilio queues what the bridge sends and plays it back to back, so a frame
//!   starts at `max(now, end of the agent audio queued before it)`; a `clear` drops what was
//!   queued beyond now.
//!
//! **Bounded memory.** Each call keeps a small window: samples are handed to the writer once
//! both channels are known up to a point (the caller's audio has arrived, and agent audio
//! there can no longer be cleared, i.e. it is in the past). The window never spans more than
//! a couple of seconds: caller audio later than [`LATE_CALLER`] is given up (silence), and
//! agent audio queued further ahead than `playout.lead_ms` plus [`AGENT_AHEAD_SLACK`] is not
//! recorded (the bridge never queues that far; counted).
//!
//! **No I/O on the call task.** Files are written by one dedicated thread fed through a
//! channel. The samples waiting for it are bounded ([`MAX_PENDING_BYTES`]); beyond that a
//! chunk is dropped with a counted warning rather than block a call, and the writer pads the
//! gap with silence so the channels stay aligned. The header is rewritten every few seconds
//! (a crash leaves a readable file) and finalised when the call ends; a stream discarded as
//! a continuation of a parked call deletes its file.

use std::collections::{HashMap, VecDeque};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use super::journal::Journal;
use super::{CallId, CallObserver, CallSource};
use crate::audio::g711::ulaw_decode;
use crate::call::event::CallEvent;
use crate::config::Config;

/// Samples per second (both channels).
pub const SAMPLE_RATE: u32 = 8_000;
const PER_MS: u64 = SAMPLE_RATE as u64 / 1000;
/// Caller audio arriving this much later than the wall clock is given up (silence).
pub const LATE_CALLER: Duration = Duration::from_secs(2);
/// How far beyond `playout.lead_ms` agent audio may be queued and still be recorded.
pub const AGENT_AHEAD_SLACK: Duration = Duration::from_secs(2);
/// Samples go to the writer in chunks of at least this much audio.
const CHUNK: Duration = Duration::from_millis(200);
/// A caller timestamp within this of the end of the previous frame follows it back to back.
const CALLER_TOLERANCE: u64 = 10 * PER_MS;
/// Bytes of samples waiting for the writer thread, all calls together, at most.
pub const MAX_PENDING_BYTES: usize = 32 * 1024 * 1024;
/// The header is rewritten after this much audio (so a crash leaves a readable file).
const HEADER_EVERY: u64 = 5 * SAMPLE_RATE as u64;

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// Where the caller's timestamps are anchored on the timeline.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// The first timestamp of this stream, ms.
    first_ts: u64,
    /// Its position, samples.
    base: u64,
    /// The newest timestamp placed.
    last_ts: u64,
}

/// Samples ready for the file: interleaved (left, right), starting at `start`.
#[derive(Debug, PartialEq)]
struct Chunk {
    start: u64,
    data: Vec<i16>,
}

/// One call's timeline and window (sans-IO: positions in, chunks out).
#[derive(Debug)]
struct Track {
    /// The wall-clock instant of sample 0 (the call's first audio).
    origin: Option<Instant>,
    anchor: Option<Anchor>,
    /// End of the caller audio placed, samples.
    caller_end: u64,
    /// End of the agent audio queued at Twilio, samples.
    agent_end: u64,
    /// Everything before this has gone to the writer; `window[0]` is at this position.
    written: u64,
    window: VecDeque<[i16; 2]>,
    /// Agent audio further ahead than this is not kept, samples.
    ahead_cap: u64,
    /// Caller audio later than this behind the wall clock is given up, samples.
    lag_cap: u64,
    /// Samples dropped (not recorded or not written), and whether that was logged.
    dropped: u64,
    warned: bool,
}

impl Track {
    fn new(ahead_cap: u64, lag_cap: u64) -> Track {
        Track {
            origin: None,
            anchor: None,
            caller_end: 0,
            agent_end: 0,
            written: 0,
            window: VecDeque::new(),
            ahead_cap,
            lag_cap,
            dropped: 0,
            warned: false,
        }
    }

    /// The timeline position of a wall-clock instant (the first one seen is position 0).
    fn wall(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let us = now.saturating_duration_since(origin).as_micros() as u64;
        us * PER_MS / 1000
    }

    /// Writes samples of one channel from `pos` on; what lies before the written point or
    /// beyond the window's bound is not kept.
    fn place(&mut self, pos: u64, channel: usize, samples: impl Iterator<Item = i16>) {
        let bound = self.lag_cap + self.ahead_cap + 2 * CHUNK.as_millis() as u64 * PER_MS;
        for (i, s) in samples.enumerate() {
            let p = pos + i as u64;
            if p < self.written {
                continue;
            }
            let idx = (p - self.written) as usize;
            if idx as u64 >= bound {
                self.dropped += 1;
                continue;
            }
            if idx >= self.window.len() {
                self.window.resize(idx + 1, [0, 0]);
            }
            self.window[idx][channel] = s;
        }
    }

    /// One caller frame with Twilio's timestamp, arriving at `now` (timeline position).
    fn caller(&mut self, now: u64, timestamp_ms: u64, ulaw: &[u8]) {
        let pos = match self.anchor.as_mut() {
            None => {
                let base = now.max(self.caller_end);
                self.anchor = Some(Anchor {
                    first_ts: timestamp_ms,
                    base,
                    last_ts: timestamp_ms,
                });
                base
            }
            Some(a) => {
                if timestamp_ms <= a.last_ts {
                    return; // a duplicate or reordered frame
                }
                a.last_ts = timestamp_ms;
                // Saturating: a peer-supplied timestamp (up to u64::MAX) must not overflow.
                let by_ts = a
                    .base
                    .saturating_add((timestamp_ms - a.first_ts).saturating_mul(PER_MS));
                if by_ts > now + self.ahead_cap {
                    // A jump far ahead of the wall clock: a new anchor, not minutes of silence.
                    a.first_ts = timestamp_ms;
                    a.base = now.max(self.caller_end);
                    a.base
                } else if by_ts > self.caller_end + CALLER_TOLERANCE {
                    by_ts // lost packets: the gap stays silent
                } else {
                    self.caller_end
                }
            }
        };
        self.place(pos, LEFT, ulaw.iter().map(|&c| ulaw_decode(c)));
        self.caller_end = self.caller_end.max(pos + ulaw.len() as u64);
    }

    /// One agent frame sent at `now`: it plays once the audio queued before it has.
    fn agent(&mut self, now: u64, ulaw: &[u8]) {
        let start = now.max(self.agent_end);
        self.agent_end = start + ulaw.len() as u64;
        if self.agent_end > now + self.ahead_cap {
            self.dropped += ulaw.len() as u64;
            return;
        }
        self.place(start, RIGHT, ulaw.iter().map(|&c| ulaw_decode(c)));
    }

    /// `clear` at `now`: agent audio queued beyond now is never played.
    fn clear(&mut self, now: u64) {
        if self.agent_end <= now {
            return;
        }
        let from = now.max(self.written);
        for p in from..self.agent_end {
            match self.window.get_mut((p - self.written) as usize) {
                Some(frame) => frame[RIGHT] = 0,
                None => break,
            }
        }
        self.agent_end = now;
    }

    /// The next caller frame belongs to a new stream (its timestamps start afresh).
    fn new_stream(&mut self) {
        self.anchor = None;
    }

    /// Hands over what is settled at `now`: both channels known (the caller's audio there
    /// has arrived, or is later than `lag_cap`; agent audio there can no longer be cleared).
    fn settle(&mut self, now: u64) -> Option<Chunk> {
        let known = self.caller_end.min(now);
        let target = known.max(now.saturating_sub(self.lag_cap));
        if target < self.written + CHUNK.as_millis() as u64 * PER_MS {
            return None;
        }
        self.take_until(target)
    }

    /// Everything up to `end` (silence where nothing was placed), leaving the rest.
    fn take_until(&mut self, end: u64) -> Option<Chunk> {
        if end <= self.written {
            return None;
        }
        let n = ((end - self.written) as usize).min(self.window.len());
        let start = self.written;
        self.written = end;
        if n == 0 {
            return None;
        }
        let mut data = Vec::with_capacity(n * 2);
        for frame in self.window.drain(..n) {
            data.extend_from_slice(&frame);
        }
        if self.window.is_empty() {
            self.window.clear();
        }
        if self.window.capacity() > 4 * (self.window.len() + SAMPLE_RATE as usize) {
            self.window
                .shrink_to(self.window.len() + SAMPLE_RATE as usize);
        }
        Some(Chunk { start, data })
    }

    /// The call ended at `now`: everything the caller sent or heard, and the end position.
    fn finish(&mut self, now: u64) -> (Option<Chunk>, u64) {
        let end = self
            .caller_end
            .max(self.agent_end.min(now))
            .max(self.written);
        (self.take_until(end), end)
    }
}

/// Work for the writer thread.
enum Job {
    Open { id: CallId, path: PathBuf },
    Samples { id: CallId, chunk: Chunk },
    Finish { id: CallId, end: u64 },
    Discard { id: CallId },
    Sync(mpsc::Sender<()>),
}

/// Writes stereo WAV recordings of calls. See the module docs.
pub struct Recorder {
    dir: PathBuf,
    calls: DashMap<CallId, Track>,
    jobs: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
    dropped: AtomicU64,
    ahead_cap: u64,
    lag_cap: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.dir)
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing to `recording.dir` (created if missing), with its writer thread.
    pub fn new(config: &Config) -> std::io::Result<Recorder> {
        let dir = PathBuf::from(&config.recording.dir);
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer_pending = pending.clone();
        std::thread::Builder::new()
            .name("callbridge-recorder".into())
            .spawn(move || write_loop(rx, writer_pending))?;
        let lead = Duration::from_millis(config.playout.lead_ms.into());
        Ok(Recorder {
            dir,
            calls: DashMap::new(),
            jobs: tx,
            pending,
            dropped: AtomicU64::new(0),
            ahead_cap: samples(lead + AGENT_AHEAD_SLACK),
            lag_cap: samples(LATE_CALLER),
        })
    }

    /// Where a call's recording goes (the path the call record shows).
    pub fn path(&self, id: &str) -> PathBuf {
        Journal::recording_path(&self.dir, id)
    }

    /// Samples not recorded so far, all calls (writer behind, or agent audio queued further
    /// ahead than a recording keeps).
    pub fn dropped_samples(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until the writer has carried out everything queued so far (finished calls'
    /// files are complete), or `timeout` passed; returns whether it caught up. For tests and
    /// shutdown: call it off the async runtime (`spawn_blocking`).
    pub fn sync(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Sync(tx));
        rx.recv_timeout(timeout).is_ok()
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the recording writer has stopped; recordings are incomplete");
        }
    }

    /// Queues samples for the writer, or drops them (counted) when it is too far behind.
    fn send_chunk(&self, id: &CallId, track: &mut Track, chunk: Option<Chunk>) {
        let Some(chunk) = chunk else { return };
        let bytes = chunk.data.len() * 2;
        if self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_PENDING_BYTES {
            self.pending.fetch_sub(bytes, Ordering::Relaxed);
            let n = (chunk.data.len() / 2) as u64;
            self.dropped.fetch_add(n, Ordering::Relaxed);
            if !track.warned {
                track.warned = true;
                tracing::warn!(
                    samples = n,
                    "recording writer is behind; audio dropped from this call's recording"
                );
            }
            return;
        }
        self.send(Job::Samples {
            id: id.clone(),
            chunk,
        });
    }

    /// Runs `f` on a live call's track at `now`, then hands over what has settled.
    fn with_track(&self, id: &CallId, now: Instant, f: impl FnOnce(&mut Track, u64)) {
        let Some(mut track) = self.calls.get_mut(id) else {
            return;
        };
        let track: &mut Track = &mut track;
        let pos = track.wall(now);
        // Settle first: it keeps the window short before anything is placed.
        let chunk = track.settle(pos);
        self.send_chunk(id, track, chunk);
        let dropped = track.dropped;
        f(track, pos);
        if track.dropped > dropped {
            self.dropped
                .fetch_add(track.dropped - dropped, Ordering::Relaxed);
            if !track.warned {
                track.warned = true;
                tracing::warn!(
                    samples = track.dropped - dropped,
                    "audio outside the recording window (agent audio queued too far ahead) \
                     is not recorded"
                );
            }
        }
    }

    fn caller_audio_at(&self, id: &CallId, timestamp_ms: u64, ulaw: &[u8], now: Instant) {
        self.with_track(id, now, |t, pos| t.caller(pos, timestamp_ms, ulaw));
    }

    fn agent_audio_at(&self, id: &CallId, ulaw: &[u8], now: Instant) {
        self.with_track(id, now, |t, pos| t.agent(pos, ulaw));
    }

    fn agent_clear_at(&self, id: &CallId, now: Instant) {
        self.with_track(id, now, |t, pos| t.clear(pos));
    }

    fn end_at(&self, id: &CallId, now: Instant) {
        let Some((_, mut track)) = self.calls.remove(id) else {
            return;
        };
        let pos = track.wall(now);
        let (chunk, end) = track.finish(pos);
        self.send_chunk(id, &mut track, chunk);
        self.send(Job::Finish {
            id: id.clone(),
            end,
        });
    }
}

fn samples(d: Duration) -> u64 {
    d.as_millis() as u64 * PER_MS
}

impl CallObserver for Recorder {
    fn call_opened(&self, id: &CallId, _conn: u64, _source: CallSource) {
        self.calls
            .insert(id.clone(), Track::new(self.ahead_cap, self.lag_cap));
        self.send(Job::Open {
            id: id.clone(),
            path: self.path(id),
        });
    }

    fn event(&self, id: &CallId, _at: SystemTime, event: &CallEvent) {
        match event {
            CallEvent::Continued { .. } => {
                if let Some(mut t) = self.calls.get_mut(id) {
                    t.new_stream();
                }
            }
            CallEvent::Ended(_) => self.end_at(id, Instant::now()),
            _ => {}
        }
    }

    fn caller_audio(&self, id: &CallId, timestamp_ms: u64, ulaw: &[u8]) {
        self.caller_audio_at(id, timestamp_ms, ulaw, Instant::now());
    }

    fn agent_audio(&self, id: &CallId, ulaw: &[u8]) {
        self.agent_audio_at(id, ulaw, Instant::now());
    }

    fn agent_clear(&self, id: &CallId) {
        self.agent_clear_at(id, Instant::now());
    }

    fn call_discarded(&self, id: &CallId) {
        if self.calls.remove(id).is_some() {
            self.send(Job::Discard { id: id.clone() });
        }
    }

    fn call_failed(&self, id: &CallId) {
        // Keep what was recorded: it may show what went wrong.
        self.end_at(id, Instant::now());
    }
}

/// One open recording on the writer thread.
struct File {
    path: PathBuf,
    /// `None` after an I/O error (later jobs for the call are ignored).
    wav: Option<hound::WavWriter<BufWriter<std::fs::File>>>,
    /// Stereo frames written.
    frames: u64,
    since_header: u64,
}

impl File {
    fn open(path: PathBuf) -> File {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = match hound::WavWriter::create(&path, spec) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot create the call recording");
                None
            }
        };
        File {
            path,
            wav,
            frames: 0,
            since_header: 0,
        }
    }

    /// Writes frames from `start` on (padding a gap with silence, skipping an overlap).
    fn write(&mut self, start: u64, data: &[i16]) {
        if start > self.frames {
            self.pad(start);
        }
        let skip = (self.frames.saturating_sub(start) * 2) as usize;
        let data = data.get(skip..).unwrap_or(&[]);
        self.put(data.iter().copied(), (data.len() / 2) as u64);
    }

    fn pad(&mut self, end: u64) {
        let n = end.saturating_sub(self.frames);
        self.put(std::iter::repeat_n(0, n as usize * 2), n);
    }

    fn put(&mut self, samples: impl Iterator<Item = i16>, frames: u64) {
        let Some(wav) = self.wav.as_mut() else { return };
        let mut result = Ok(());
        for s in samples {
            result = wav.write_sample(s);
            if result.is_err() {
                break;
            }
        }
        self.frames += frames;
        self.since_header += frames;
        if result.is_ok() && self.since_header >= HEADER_EVERY {
            self.since_header = 0;
            result = wav.flush();
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %self.path.display(), "call recording write failed; recording stopped");
            self.wav = None;
        }
    }

    fn finish(mut self, end: u64) {
        self.pad(end);
        if let Some(wav) = self.wav.take() {
            match wav.finalize() {
                Ok(()) => tracing::debug!(
                    secs = self.frames as f64 / SAMPLE_RATE as f64,
                    path = %self.path.display(),
                    "call recording written"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.path.display(), "call recording could not be finished")
                }
            }
        }
    }

    fn discard(mut self) {
        drop(self.wav.take());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot delete a discarded recording")
            }
        }
    }
}

/// The writer thread: carries out jobs in order until the recorder is dropped.
fn write_loop(rx: mpsc::Receiver<Job>, pending: Arc<AtomicUsize>) {
    let mut files: HashMap<CallId, File> = HashMap::new();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Open { id, path } => {
                files.insert(id, File::open(path));
            }
            Job::Samples { id, chunk } => {
                pending.fetch_sub(chunk.data.len() * 2, Ordering::Relaxed);
                if let Some(f) = files.get_mut(&id) {
                    f.write(chunk.start, &chunk.data);
                }
            }
            Job::Finish { id, end } => {
                if let Some(f) = files.remove(&id) {
                    f.finish(end);
                }
            }
            Job::Discard { id } => {
                if let Some(f) = files.remove(&id) {
                    f.discard();
                }
            }
            Job::Sync(ack) => {
                let _ = ack.send(());
            }
        }
    }
    for (_, f) in files.drain() {
        let end = f.frames;
        f.finish(end);
    }
}

/// The recording file of call `id` under `dir` (`recording.dir`): `<dir>/<id>.wav`, built
/// from the two alone. `None` unless `id` has the shape of a call id
/// ([`super::is_call_id`]: 16 hex digits, so no separator, no `..`). What is served is always
/// this path, never one a stored record names.
pub fn recording_file(dir: &Path, id: &str) -> Option<PathBuf> {
    super::is_call_id(id).then(|| Journal::recording_path(dir, id))
}

/// Reads a recording back as (left, right) samples; for tests and tools.
pub fn read_stereo(path: &Path) -> Result<(Vec<i16>, Vec<i16>), String> {
    let wav = crate::audio::wav::read_wav_file(path).map_err(|e| e.to_string())?;
    if wav.channels != 2 || wav.sample_rate != SAMPLE_RATE {
        return Err(format!(
            "expected 2 channels at {SAMPLE_RATE} Hz, found {} at {} Hz",
            wav.channels, wav.sample_rate
        ));
    }
    let pcm = wav.to_pcm16();
    Ok((
        pcm.iter().step_by(2).copied().collect(),
        pcm.iter().skip(1).step_by(2).copied().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::g711::ulaw_encode;

    const FRAME: usize = 160;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A 20 ms μ-law frame of a tone (`hz`, amplitude 8000), or silence for `hz == 0`.
    fn frame(hz: f64) -> Vec<u8> {
        (0..FRAME)
            .map(|i| {
                let v = if hz == 0.0 {
                    0.0
                } else {
                    8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()
                };
                ulaw_encode(v as i16)
            })
            .collect()
    }

    /// RMS of each 20 ms frame.
    fn frame_rms(x: &[i16]) -> Vec<f64> {
        x.chunks(FRAME)
            .map(|c| (c.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
            .collect()
    }

    /// Indices of the frames with audio.
    fn loud(x: &[i16]) -> Vec<usize> {
        frame_rms(x)
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 1000.0)
            .map(|(i, _)| i)
            .collect()
    }

    fn first_loud_sample(x: &[i16], from: usize) -> Option<usize> {
        x.iter()
            .skip(from)
            .position(|v| v.unsigned_abs() > 2000)
            .map(|p| p + from)
    }

    #[test]
    fn a_recording_file_is_built_from_the_dir_and_a_well_formed_id_only() {
        let dir = Path::new("/var/lib/callbridge/recordings");
        let id = crate::ops::new_call_id();
        assert_eq!(
            recording_file(dir, &id),
            Some(dir.join(format!("{id}.wav")))
        );
        assert_eq!(
            recording_file(dir, &id),
            Some(Journal::recording_path(dir, &id))
        );
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "0123456789abcde/",
            "0123456789abcd..",
            "/123456789abcdef",
            "0123456789abcde\\",
            "0123456789abcdeg",
            "０123456789abcde",
        ] {
            assert_eq!(recording_file(dir, bad), None, "{bad:?}");
        }
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn recorder() -> (Recorder, Dir) {
        let dir = std::env::temp_dir().join(format!(
            "callbridge-recorder-test-{:016x}",
            rand::random::<u64>()
        ));
        let mut c = Config::default();
        c.recording.enabled = true;
        c.recording.dir = dir.display().to_string();
        (Recorder::new(&c).expect("recorder"), Dir(dir))
    }

    enum Ev {
        Caller(u64, Vec<u8>),
        Agent(Vec<u8>),
        Clear,
    }

    /// Feeds timed events (ms since t0) in time order, then ends the call at `end_ms`.
    fn run(r: &Recorder, id: &CallId, t0: Instant, mut events: Vec<(u64, Ev)>, end_ms: u64) {
        events.sort_by_key(|e| e.0);
        for (at, e) in events {
            let now = t0 + ms(at);
            match e {
                Ev::Caller(ts, f) => r.caller_audio_at(id, ts, &f, now),
                Ev::Agent(f) => r.agent_audio_at(id, &f, now),
                Ev::Clear => r.agent_clear_at(id, now),
            }
        }
        r.end_at(id, t0 + ms(end_ms));
        assert!(r.sync(Duration::from_secs(10)), "writer caught up");
    }

    #[test]
    fn caller_by_timestamp_agent_at_playout_and_cleared_audio_absent() {
        let (r, _dir) = recorder();
        let id: CallId = "00000000000000aa".into();
        r.call_opened(&id, 1, CallSource::Phone);
        let t0 = Instant::now();
        let mut events = Vec::new();
        // 3 s of caller frames; Twilio's timestamps start at 155 ms; frames 50..55 were lost;
        // arrival jitters by up to 7 ms (never reordered); a duplicate of frame 10 arrives late.
        // A 1 kHz tone in frames 20..40 and 60..63, silence otherwise.
        for k in 0..150u64 {
            if (50..55).contains(&k) {
                continue;
            }
            let tone = (20..40).contains(&k) || (60..63).contains(&k);
            let f = frame(if tone { 1000.0 } else { 0.0 });
            let jitter = [0, 3, 7, 1, 5][k as usize % 5];
            events.push((k * 20 + jitter, Ev::Caller(155 + k * 20, f)));
        }
        events.push((260, Ev::Caller(155 + 200, frame(1000.0))));
        // Agent: 500 ms sent in one burst at 1000 ms (Twilio plays it back to back), a clear
        // at 1200 ms, then 200 ms more sent at 2000 ms.
        for _ in 0..25 {
            events.push((1000, Ev::Agent(frame(500.0))));
        }
        events.push((1200, Ev::Clear));
        for _ in 0..10 {
            events.push((2000, Ev::Agent(frame(700.0))));
        }
        run(&r, &id, t0, events, 3000);

        let (left, right) = read_stereo(&r.path(&id)).expect("a stereo 8 kHz wav");
        assert_eq!(left.len(), right.len());
        // Ends with the last caller frame: (149 * 20 + 20) ms.
        assert!(
            (left.len() as i64 - 24_000).abs() <= FRAME as i64,
            "{} samples",
            left.len()
        );
        // The caller's tone, at its timestamp's offset (±1 frame), in the left channel only.
        let at = first_loud_sample(&left, 0).expect("caller tone");
        assert!((at as i64 - 20 * 160).abs() <= FRAME as i64, "tone at {at}");
        let expected_left: Vec<usize> = (20..40).chain(60..63).collect();
        assert_eq!(loud(&left), expected_left, "caller frames with the tone");
        // After the gap the tone sits at its timestamp, not 5 frames early.
        let after_gap = first_loud_sample(&left, 50 * 160).unwrap();
        assert!(
            (after_gap as i64 - 60 * 160).abs() <= FRAME as i64,
            "tone after the gap at {after_gap}"
        );
        // The burst plays from 1000 ms back to back, is cut by the clear at 1200 ms; the
        // second burst plays 2000..2200 ms.
        let expected_right: Vec<usize> = (50..60).chain(100..110).collect();
        assert_eq!(loud(&right), expected_right, "agent frames heard");
        let start = first_loud_sample(&right, 0).unwrap();
        assert!((start as i64 - 8_000).abs() <= FRAME as i64, "{start}");
        assert!(
            right[9_600 + 8..16_000].iter().all(|&v| v == 0),
            "cleared audio absent"
        );
        assert_eq!(r.dropped_samples(), 0);
        assert!(r.calls.is_empty());
    }

    #[test]
    fn a_burst_far_ahead_is_bounded_and_the_window_stays_small() {
        let (r, _dir) = recorder();
        let id: CallId = "00000000000000bb".into();
        r.call_opened(&id, 1, CallSource::Phone);
        let t0 = Instant::now();
        // A normal minute: caller frames in real time, agent audio kept 200 ms ahead.
        let mut max_window = 0;
        for k in 0..3_000u64 {
            let now = t0 + ms(k * 20);
            r.caller_audio_at(&id, 160 + k * 20, &frame(300.0), now);
            if k % 10 == 0 {
                for _ in 0..10 {
                    r.agent_audio_at(&id, &frame(500.0), now);
                }
            }
            max_window = max_window.max(r.calls.get(&id).unwrap().window.len());
        }
        assert!(
            max_window <= 8 * (200 + 200 + 40),
            "window up to {max_window} samples"
        );
        // Ten minutes of agent audio in one burst: only what a recording keeps ahead is held.
        let now = t0 + ms(60_000);
        for _ in 0..30_000 {
            r.agent_audio_at(&id, &frame(500.0), now);
        }
        let window = r.calls.get(&id).unwrap().window.len() as u64;
        let bound = r.ahead_cap + r.lag_cap + 2 * 1600;
        assert!(window <= bound, "window {window} > {bound}");
        assert!(r.dropped_samples() >= 30_000 * 160 - r.ahead_cap);
        r.end_at(&id, now + ms(1_000));
        assert!(r.sync(Duration::from_secs(10)));
        let (left, right) = read_stereo(&r.path(&id)).unwrap();
        // The call lasted 61 s; the burst was heard until the call ended.
        assert!(
            (left.len() as i64 - 61 * 8000).abs() <= 2 * FRAME as i64,
            "{}",
            left.len()
        );
        assert!(frame_rms(&right[60 * 8000..61 * 8000 - FRAME])
            .iter()
            .all(|r| *r > 1000.0));
    }

    #[test]
    fn duplicates_jumps_and_continued_streams_on_the_timeline() {
        let mut t = Track::new(8 * 2200, 8 * 2000);
        let f = frame(1000.0);
        t.caller(0, 155, &f);
        t.caller(160, 175, &f);
        assert_eq!(t.caller_end, 320);
        t.caller(320, 175, &f); // duplicate: ignored
        t.caller(320, 170, &f); // backwards: ignored
        assert_eq!(t.caller_end, 320);
        t.caller(320, 194, &f); // 1 ms early: back to back
        assert_eq!(t.caller_end, 480);
        t.caller(500, 255, &f); // two frames lost
        assert_eq!(t.caller_end, 100 * 8 + 160);
        // A timestamp an hour ahead: re-anchored at the wall clock, not an hour of silence.
        t.caller(1_000, 3_600_000, &f);
        assert_eq!(t.caller_end, 1_000 + 160);
        // A continued stream starts its timestamps afresh.
        t.new_stream();
        t.caller(5_000, 120, &f);
        assert_eq!(t.caller_end, 5_160);
        t.caller(5_160, 140, &f);
        assert_eq!(t.caller_end, 5_320);
        // Agent: back to back from now, clear drops what is queued beyond now.
        t.agent(5_000, &f);
        t.agent(5_000, &f);
        assert_eq!(t.agent_end, 5_320);
        t.clear(5_100);
        assert_eq!(t.agent_end, 5_100);
        t.agent(5_110, &f);
        assert_eq!(t.agent_end, 5_270);
        let (chunk, end) = t.finish(5_400);
        assert_eq!(end, 5_320);
        let chunk = chunk.unwrap();
        assert_eq!(chunk.start, 0);
        assert_eq!(chunk.data.len(), 2 * 5_320);
        // Right channel: 5000..5100 audio, 5100..5110 cleared, 5110..5270 audio.
        let right: Vec<i16> = chunk.data.iter().skip(1).step_by(2).copied().collect();
        assert!(right[5_100..5_110].iter().all(|&v| v == 0));
        assert!(right[5_110..5_270].iter().any(|&v| v != 0));
        assert!(right[5_270..].iter().all(|&v| v == 0));
    }

    #[test]
    fn discarded_streams_leave_no_file_and_failed_calls_keep_theirs() {
        let (r, _dir) = recorder();
        let gone: CallId = "00000000000000cc".into();
        let failed: CallId = "00000000000000dd".into();
        r.call_opened(&gone, 1, CallSource::Phone);
        r.call_opened(&failed, 2, CallSource::Phone);
        assert!(r.sync(Duration::from_secs(10)));
        assert!(r.path(&gone).exists());
        r.call_discarded(&gone);
        let t0 = Instant::now();
        for k in 0..50u64 {
            r.caller_audio_at(&failed, k * 20, &frame(1000.0), t0 + ms(k * 20));
        }
        r.call_failed(&failed);
        assert!(r.sync(Duration::from_secs(10)));
        assert!(!r.path(&gone).exists());
        let (left, _) = read_stereo(&r.path(&failed)).unwrap();
        assert_eq!(left.len(), 50 * FRAME);
        // Events for unknown calls are ignored.
        r.caller_audio_at(&gone, 0, &frame(0.0), t0);
        r.event(
            &gone,
            SystemTime::now(),
            &CallEvent::Ended(crate::call::event::CallEnd::CallerHungUp),
        );
        assert!(r.sync(Duration::from_secs(10)));
        assert!(!r.path(&gone).exists());
    }
}
