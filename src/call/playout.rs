//! The downlink playout: the model's 24 kHz speech turned into the caller's 20 ms μ-law
//! frames, queued, paced against real time, and accounted with marks.
//!
//! [`Playout`] owns the downlink transcoder, the queue of turns, the real-time estimate of
//! the provider's own queue (`queued_until`) and the marks sent and not yet returned. It
//! knows what the caller has *heard* (marks back) as opposed to what was *sent*. Like the
//! machine it is sans-IO and clock-free: every method that depends on time takes `now`, and
//! its effects are pushed onto the machine's output queue. It decides nothing about the call
//! (barge-in, hang-up, tools): the machine asks it questions (`is_drained`, `all_heard`…) and
//! acts on the answers.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::audio::transcode::{AudioError, Downlink};

use super::event::{CallEvent, CallerOut, Output};
use super::machine::{FRAME, FRAME_BYTES};
use super::settings::CallSettings;

/// μ-law silence.
pub const ULAW_SILENCE: u8 = 0xFF;

/// A model turn whose audio is queued for (or being played to) the caller.
#[derive(Debug)]
struct QueuedTurn {
    id: u32,
    /// Absolute downlink byte position where this turn's audio ends, once generation is done.
    end: Option<u64>,
    frames_sent: u32,
}

/// A mark sent to the provider and not yet returned.
#[derive(Debug)]
struct PendingMark {
    name: String,
    turn: u32,
    frames: u32,
    last_of_turn: bool,
}

/// What a barge-in cut: the turn playing, how much of it the caller heard (by the marks) and
/// how much had been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub turn: u32,
    pub heard_ms: u64,
    pub sent_ms: u64,
}

/// The downlink queue of one call. See the module docs.
pub struct Playout {
    /// Most audio queued ahead of real time at the caller's side.
    lead: Duration,
    /// The lead at which a refill starts.
    refill_point: Duration,
    /// A mark every this many frames of a turn.
    mark_interval_frames: u32,
    /// The call's creation: "at once" for [`Playout::deadline`].
    created: Instant,

    downlink: Downlink,
    downlink_out: Vec<u8>,
    /// μ-law bytes converted and not yet sent.
    pending: VecDeque<u8>,
    /// Absolute byte positions: everything ever queued, and everything sent.
    pushed: u64,
    sent: u64,
    turns: VecDeque<QueuedTurn>,
    /// The turn the model is generating now.
    generating: Option<u32>,
    next_turn: u32,
    /// After `interrupted`, model audio is dropped until that turn's `turnComplete`.
    discarding: bool,
    discarded_bytes: u64,
    /// When the provider's queue runs dry, by the real-time playout estimate.
    queued_until: Option<Instant>,
    marks: VecDeque<PendingMark>,
    /// Marks returned by `clear` (not played) still to come back.
    cleared_marks: HashSet<String>,
    /// Frames of the most recent turn that the caller has been confirmed to hear.
    heard: (u32, u32),
    /// 24 kHz PCM bytes generated for the current model turn.
    turn_generated: u64,
    /// When the latest agent turn's first frame went out.
    last_agent_start: Option<Instant>,
}

impl Playout {
    /// An empty playout with the call's pacing settings.
    pub fn new(settings: &CallSettings, created: Instant) -> Result<Playout, AudioError> {
        Ok(Playout {
            lead: settings.playout_lead,
            refill_point: refill_point(settings.playout_lead, settings.playout_refill),
            mark_interval_frames: settings.mark_interval_frames.max(1),
            created,
            downlink: Downlink::new()?,
            downlink_out: Vec::with_capacity(8192),
            pending: VecDeque::with_capacity(16 * 1024),
            pushed: 0,
            sent: 0,
            turns: VecDeque::with_capacity(4),
            generating: None,
            next_turn: 1,
            discarding: false,
            discarded_bytes: 0,
            queued_until: None,
            marks: VecDeque::with_capacity(64),
            cleared_marks: HashSet::new(),
            heard: (0, 0),
            turn_generated: 0,
            last_agent_start: None,
        })
    }

    /// Model audio (24 kHz s16le) for the turn being generated, opening a turn if none is.
    /// Returns `false` (and counts the bytes as discarded) while an interrupted turn's audio
    /// is still arriving.
    pub fn push_model_audio(&mut self, pcm: &[u8]) -> bool {
        if self.discarding {
            self.discarded_bytes += pcm.len() as u64;
            return false;
        }
        if self.generating.is_none() {
            let id = self.next_turn;
            self.next_turn += 1;
            self.generating = Some(id);
            self.turns.push_back(QueuedTurn {
                id,
                end: None,
                frames_sent: 0,
            });
        }
        self.turn_generated += pcm.len() as u64;
        self.downlink_out.clear();
        self.downlink.process(pcm, &mut self.downlink_out);
        self.pending.extend(self.downlink_out.iter().copied());
        self.pushed += self.downlink_out.len() as u64;
        true
    }

    /// The model finished generating the current turn: flush the resampler's tail and pad the
    /// turn to whole frames so its last words are played, not held back.
    pub fn finish_generation(&mut self) {
        if self.generating.take().is_none() {
            return;
        }
        self.downlink_out.clear();
        self.downlink.finish(&mut self.downlink_out);
        self.pending.extend(self.downlink_out.iter().copied());
        self.pushed += self.downlink_out.len() as u64;
        self.pad_to_frame();
        if let Some(t) = self.turns.back_mut() {
            t.end = Some(self.pushed);
        }
    }

    /// Queues ready-made 8 kHz μ-law (the filler) as a turn of its own.
    pub fn enqueue_ulaw_turn(&mut self, ulaw: &[u8]) {
        if ulaw.is_empty() {
            return;
        }
        let id = self.next_turn;
        self.next_turn += 1;
        self.pending.extend(ulaw.iter().copied());
        self.pushed += ulaw.len() as u64;
        self.pad_to_frame();
        self.turns.push_back(QueuedTurn {
            id,
            end: Some(self.pushed),
            frames_sent: 0,
        });
    }

    fn pad_to_frame(&mut self) {
        let rem = (self.pushed % FRAME_BYTES as u64) as usize;
        if rem != 0 {
            let pad = FRAME_BYTES - rem;
            self.pending.extend(std::iter::repeat_n(ULAW_SILENCE, pad));
            self.pushed += pad as u64;
        }
    }

    /// A barge-in: drop everything not yet sent, `clear` the provider's queue (marks then
    /// come back unplayed), and discard the rest of the interrupted turn's audio.
    pub fn interrupt(&mut self, now: Instant, out: &mut VecDeque<Output>) -> Cut {
        let cut = match self.turns.front() {
            Some(t) => {
                let heard = if self.heard.0 == t.id {
                    self.heard.1
                } else {
                    0
                };
                Cut {
                    turn: t.id,
                    heard_ms: u64::from(heard) * 20,
                    sent_ms: u64::from(t.frames_sent) * 20,
                }
            }
            None => Cut {
                turn: 0,
                heard_ms: 0,
                sent_ms: 0,
            },
        };
        self.pending.clear();
        self.pushed = self.sent;
        self.turns.clear();
        self.generating = None;
        self.discarding = true;
        self.downlink.reset();
        out.push_back(Output::ToCaller(CallerOut::Clear));
        self.queued_until = Some(now);
        for m in self.marks.drain(..) {
            self.cleared_marks.insert(m.name);
        }
        cut
    }

    /// Whether an interrupted turn's audio is being dropped.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// The interrupted turn is over (its `turnComplete` came, or its connection ended).
    pub fn stop_discarding(&mut self) {
        self.discarding = false;
    }

    /// Takes the count of 24 kHz PCM bytes generated for the current model turn.
    pub fn take_turn_generated(&mut self) -> u64 {
        std::mem::take(&mut self.turn_generated)
    }

    /// Bytes generated for the current model turn so far.
    pub fn turn_generated(&self) -> u64 {
        self.turn_generated
    }

    /// The model is generating a turn.
    pub fn is_generating(&self) -> bool {
        self.generating.is_some()
    }

    /// Converted audio is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Nothing waits to be sent and no turn is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.turns.is_empty()
    }

    /// Nothing waits to be sent and the provider's queue has run dry by `now`.
    pub fn is_drained(&self, now: Instant) -> bool {
        self.pending.is_empty() && self.queued_until.is_none_or(|q| q <= now)
    }

    /// The agent is audible or about to be: something is queued, waiting or being generated.
    pub fn is_busy(&self, now: Instant) -> bool {
        self.queued_until.is_some_and(|q| q > now)
            || !self.pending.is_empty()
            || self.is_generating()
    }

    /// Everything generated has been sent and its marks have come back: the caller heard it.
    pub fn all_heard(&self) -> bool {
        self.generating.is_none()
            && self.pending.is_empty()
            && self.turns.is_empty()
            && self.marks.is_empty()
    }

    /// When the provider's queue runs dry, by the real-time estimate.
    pub fn queued_until(&self) -> Option<Instant> {
        self.queued_until
    }

    /// Model audio dropped because it belonged to an interrupted turn.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// Items that grow with a call (pending and cleared marks), for footprint checks.
    pub fn footprint(&self) -> usize {
        self.marks.len() + self.cleared_marks.len()
    }

    /// A new provider stream continues the call: nothing is queued there, and the old
    /// stream's marks never come back.
    pub fn new_stream(&mut self) {
        self.queued_until = None;
        self.marks.clear();
        self.cleared_marks.clear();
    }

    fn final_mark_due(&self) -> bool {
        self.turns.front().is_some_and(|t| t.end == Some(self.sent))
    }

    /// When [`Playout::pump`] has work: the lead has fallen to the refill point while whole
    /// frames (or a turn's final mark) wait. `None` while nothing waits.
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending.len() >= FRAME_BYTES || self.final_mark_due() {
            Some(match self.queued_until {
                Some(q) => q.checked_sub(self.refill_point).unwrap_or(self.created),
                None => self.created,
            })
        } else {
            None
        }
    }

    /// Sends whole frames while the lead at the provider is below the target, with marks.
    /// Refills in batches: nothing is sent while more than the refill point is still queued.
    /// `last_voice` (the caller's last voiced frame) times the agent's response.
    pub fn pump(&mut self, now: Instant, last_voice: Option<Instant>, out: &mut VecDeque<Output>) {
        let lead_now = self
            .queued_until
            .map_or(Duration::ZERO, |q| q.saturating_duration_since(now));
        let refilling = lead_now <= self.refill_point;
        loop {
            if self.final_mark_due() {
                let Some(t) = self.turns.pop_front() else {
                    break;
                };
                self.send_mark(t.id, t.frames_sent, true, out);
                continue;
            }
            if self.pending.len() < FRAME_BYTES {
                break;
            }
            let lead = self
                .queued_until
                .map_or(Duration::ZERO, |q| q.saturating_duration_since(now));
            if !refilling || lead + FRAME > self.lead {
                break;
            }
            let Some(turn) = self.turns.front_mut() else {
                // Audio without a turn cannot happen; drop it rather than play it unaccounted.
                self.pending.clear();
                self.pushed = self.sent;
                break;
            };
            let mut frame = [ULAW_SILENCE; FRAME_BYTES];
            for (dst, src) in frame.iter_mut().zip(self.pending.drain(..FRAME_BYTES)) {
                *dst = src;
            }
            self.sent += FRAME_BYTES as u64;
            turn.frames_sent += 1;
            let (id, frames) = (turn.id, turn.frames_sent);
            let base = self.queued_until.map_or(now, |q| q.max(now));
            self.queued_until = Some(base + FRAME);
            if frames == 1 {
                let response_ms = last_voice
                    .filter(|v| self.last_agent_start.is_none_or(|a| *v > a))
                    .map(|v| now.saturating_duration_since(v).as_millis() as u64);
                self.last_agent_start = Some(now);
                out.push_back(Output::Event(CallEvent::AgentSpeaking {
                    turn: id,
                    response_ms,
                }));
            }
            out.push_back(Output::ToCaller(CallerOut::Media(frame)));
            let at_end = self.turns.front().is_some_and(|t| t.end == Some(self.sent));
            if frames % self.mark_interval_frames == 0 && !at_end {
                self.send_mark(id, frames, false, out);
            }
        }
    }

    fn send_mark(
        &mut self,
        turn: u32,
        frames: u32,
        last_of_turn: bool,
        out: &mut VecDeque<Output>,
    ) {
        let name = if last_of_turn {
            format!("t{turn}-{frames}-end")
        } else {
            format!("t{turn}-{frames}")
        };
        out.push_back(Output::ToCaller(CallerOut::Mark(name.clone())));
        self.marks.push_back(PendingMark {
            name,
            turn,
            frames,
            last_of_turn,
        });
    }

    /// A mark came back: everything up to it was played.
    pub fn on_mark(&mut self, name: &str, out: &mut VecDeque<Output>) {
        if self.cleared_marks.remove(name) {
            // Returned by `clear`: that audio was never played.
            return;
        }
        let Some(pos) = self.marks.iter().position(|m| m.name == name) else {
            tracing::debug!(name, "mark not sent by this call ignored");
            return;
        };
        // Marks come back in order; earlier ones still pending were played too.
        for m in self.marks.drain(..=pos) {
            self.heard = (m.turn, m.frames);
            if m.last_of_turn {
                out.push_back(Output::Event(CallEvent::AgentTurnHeard {
                    turn: m.turn,
                    heard_ms: u64::from(m.frames) * 20,
                }));
            }
        }
    }
}

/// The lead at which a refill starts: `lead - refill` (never below zero, and at least a
/// frame below the lead).
fn refill_point(lead: Duration, refill: Duration) -> Duration {
    lead.saturating_sub(refill.max(FRAME))
        .min(lead.saturating_sub(FRAME))
}
