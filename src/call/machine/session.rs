//! The machine's model sessions: opening one, goAway handover (close-first and overlap),
//! reconnection after a fault, the bounded transcript that seeds a fresh session, and odd turn
//! ends that are retried.

use super::*;

/// A replacement model connection in progress.
#[derive(Debug)]
pub(super) struct Reconnect {
    /// `go_away` or `fault`.
    pub(super) reason: &'static str,
    /// Failed attempts so far.
    pub(super) failures: u32,
    /// When to open the next connection (`None`: one is being opened now).
    pub(super) next_try: Option<Instant>,
    /// When the old connection ended.
    pub(super) since: Instant,
    /// Resume with the handle (else a fresh session seeded with the transcript).
    pub(super) resume: bool,
    pub(super) filler_played: bool,
}

/// Longest wait for the old connection's close handshake in a goAway handover. The drain
/// deadline is `min(time left / 2, HANDOVER_DRAIN_MAX)` from the handover: half of what the
/// goAway left, so it always ends well before the server cuts the connection (the handover
/// itself keeps a fifth of `timeLeft` in hand), and at most a second, so a peer that never
/// answers our close frame costs the caller at most that much extra silence. On a healthy
/// connection the close reply comes after one round trip.
pub const HANDOVER_DRAIN_MAX: Duration = Duration::from_secs(1);

/// A goAway handover closing the old connection: our close frame (1000) is out and the
/// connection is still read, so a `sessionResumptionUpdate` that crossed our close frame is
/// taken (Gemini keeps sending until it sees the close, and everything it sent before comes
/// ahead of its close reply). The next `setup` waits for the end of the handshake, or `until`.
#[derive(Debug)]
pub(super) struct Closing {
    /// When the handover started (caller audio is held from here).
    pub(super) since: Instant,
    /// The drain deadline.
    pub(super) until: Instant,
}

/// The model connection: handover, reconnection, the resumption handle and what waits for the next session.
#[derive(Default)]
pub(super) struct SessionState {
    pub(super) connect_requested: Option<Instant>,
    /// A goAway arrived: hand over before this deadline, at a quiet moment.
    pub(super) go_away_deadline: Option<Instant>,
    /// A replacement model connection is being opened.
    pub(super) reconnect: Option<Reconnect>,
    /// Overlapping handover in progress: since when (caller audio is held meanwhile).
    pub(super) standby: Option<Instant>,
    /// The standby socket is open; its `setup` waits for the old connection's close.
    pub(super) standby_ready: bool,
    /// goAway handover: the old connection is closing (and still read).
    pub(super) closing: Option<Closing>,
    /// When the server will cut the current connection (goAway's `timeLeft` from its arrival).
    pub(super) go_away_ends: Option<Instant>,
    /// Model sessions opened for this call.
    pub(super) opened: u32,
    /// Tool call ids issued by the current model session.
    pub(super) tools: HashSet<String>,
    /// Messages for the model held while no session is live.
    pub(super) deferred: Vec<ModelOut>,
    pub(super) resume_handle: Option<String>,
}

/// The conversation so far (transcripts), bounded, to seed a fresh session.
#[derive(Default)]
pub(super) struct Transcript {
    /// Conversation so far (transcripts), to seed a fresh session.
    pub(super) history: VecDeque<Turn>,
    pub(super) len: usize,
    pub(super) caller: String,
    pub(super) agent: String,
}

impl Call {
    /// The model connection's deadlines: setup, the goAway handover (with its quiet-moment
    /// hints), the standby and the closing drain, and a reconnection's backoff and filler.
    pub(super) fn session_deadline(&self) -> Option<Instant> {
        let ss = &self.session;
        // While a reconnection waits for its backoff, the setup deadline is not armed.
        let setup = match self.phase {
            Phase::Connecting | Phase::SettingUp
                if ss.reconnect.as_ref().is_none_or(|r| r.next_try.is_none()) =>
            {
                ss.connect_requested
                    .map(|c| c + self.settings.setup_timeout)
            }
            _ => None,
        };
        // The goAway handover is acted on only while the session is live (`check_session`).
        let live = self.phase == Phase::Live;
        let go_away = ss.go_away_deadline.filter(|_| live);
        // Re-check for a quiet moment as playback drains and the caller falls silent.
        let (drained, quiet) = if go_away.is_some() {
            (
                self.ahead(self.playout.queued_until()),
                self.ahead(self.last_voice.map(|v| v + QUIET_AFTER_VOICE)),
            )
        } else {
            (None, None)
        };
        let (retry, filler) = match &ss.reconnect {
            Some(r) => (
                r.next_try,
                match (self.settings.filler_after, r.filler_played) {
                    (Some(after), false) => Some(r.since + after),
                    _ => None,
                },
            ),
            None => (None, None),
        };
        [
            setup,
            go_away,
            ss.standby.map(|s| s + self.settings.setup_timeout),
            ss.closing.as_ref().map(|c| c.until),
            drained,
            quiet,
            retry,
            filler,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether a message for the model can go out now: a session is live and not being
    /// replaced (nothing may follow our close frame on the old connection).
    pub(super) fn model_writable(&self) -> bool {
        self.phase == Phase::Live
            && self.session.closing.is_none()
            && self.session.standby.is_none()
    }

    /// Sends to the model now, or after the next `setupComplete` while no session is live.
    pub(super) fn send_to_model(&mut self, m: ModelOut) {
        if self.model_writable() {
            self.outputs.push_back(Output::ToModel(m));
        } else {
            self.session.deferred.push(m);
        }
    }

    /// Keeps the turn's transcripts for seeding a fresh session, bounded by `history_chars`.
    pub(super) fn remember_turn(&mut self, agent: String) {
        let caller = std::mem::take(&mut self.transcript.caller);
        for (role, text) in [(Role::User, caller), (Role::Model, agent)] {
            let text = text.trim().to_string();
            if text.is_empty() {
                continue;
            }
            self.transcript.len += text.len();
            self.transcript.history.push_back(Turn { role, text });
        }
        while self.transcript.len > self.settings.history_chars {
            match self.transcript.history.pop_front() {
                Some(t) => self.transcript.len -= t.text.len(),
                None => break,
            }
        }
    }

    /// After a barge-in: Gemini believes the caller heard everything it generated. Tell it
    /// (as context, without making it answer) how much was actually played, from the marks
    /// and the output transcript.
    pub(super) fn tell_what_was_heard(&mut self, heard_ms: u64) {
        let agent = std::mem::take(&mut self.transcript.agent);
        let generated_ms = self.playout.take_turn_generated() / 48; // 24 kHz s16le: 48 bytes per ms
        let agent = agent.trim();
        if agent.is_empty() || generated_ms == 0 {
            self.remember_turn(String::new());
            return;
        }
        let fraction = (heard_ms as f64 / generated_ms as f64).clamp(0.0, 1.0);
        let mut cut = ((agent.len() as f64) * fraction) as usize;
        while cut < agent.len() && !agent.is_char_boundary(cut) {
            cut += 1;
        }
        // Whole words only.
        let heard = match agent[..cut].rfind(char::is_whitespace) {
            Some(i) if cut < agent.len() => agent[..i].trim_end(),
            _ => agent[..cut].trim_end(),
        };
        self.remember_turn(format!("{heard}…"));
        if !self.settings.tell_model_what_was_heard || fraction >= 0.98 {
            return;
        }
        let note = if heard.is_empty() {
            "[Note: the caller interrupted you before hearing any of your last answer.]".to_string()
        } else {
            format!(
                "[Note: the caller interrupted you. They heard only this much of your last answer: \
                 \"{heard}\". They did not hear the rest.]"
            )
        };
        let note = self.note(note);
        self.send_to_model(note);
    }

    /// goAway handover at a quiet moment, and reconnection timers.
    pub(super) fn check_session(&mut self, now: Instant) {
        if let Some(c) = &self.session.closing {
            if now < c.until {
                return;
            }
            tracing::warn!(
                "old model connection did not finish its close in time; resuming with the newest handle seen"
            );
            self.outputs.push_back(Output::CloseModel);
            self.finish_closing(now);
            if self.phase == Phase::Ended {
                return;
            }
        }
        if let Some(since) = self.session.standby {
            if now >= since + self.settings.setup_timeout {
                self.session.standby = None;
                self.session.standby_ready = false;
                tracing::warn!(
                    "standby connection not ready in time; resuming on a new connection"
                );
                self.start_reconnect(now, "go_away", true);
                return;
            }
        }
        // Only a live session hands over; otherwise a pending reconnection below must still
        // run (returning here left its due retry as a past timer hint: the driver spun).
        if let Some(deadline) = self
            .session
            .go_away_deadline
            .filter(|_| self.phase == Phase::Live)
        {
            let quiet = !self.turn.reply_due
                && !self.playout.is_generating()
                && self.playout.is_drained(now)
                && self.tools.running.is_empty()
                && self.tools.action.is_none()
                && self.tools.awaiting.is_none()
                && !self.turn.in_progress
                && self.last_voice.is_none_or(|v| now >= v + QUIET_AFTER_VOICE);
            if quiet || now >= deadline {
                if !quiet {
                    tracing::info!("no quiet moment before the goAway deadline; handing over now");
                }
                self.session.go_away_deadline = None;
                if self.settings.handover_overlap && self.session.resume_handle.is_some() {
                    if self.session.opened >= self.settings.max_sessions {
                        self.end(CallEnd::ModelLost(
                            "model session cap reached for this call".into(),
                        ));
                        return;
                    }
                    // The new connection's TCP/TLS/WebSocket handshake runs in parallel
                    // with the old one's close; only its `setup` waits.
                    self.session.opened += 1;
                    self.session.standby = Some(now);
                    self.session.standby_ready = false;
                    self.outputs.push_back(Output::ConnectStandby);
                }
                self.begin_closing(now);
                return;
            }
        }
        let Some(r) = &mut self.session.reconnect else {
            return;
        };
        if let (Some(after), false) = (self.settings.filler_after, r.filler_played) {
            if now >= r.since + after {
                r.filler_played = true;
                if self.playout.is_drained(now) {
                    let filler = self.settings.filler.clone();
                    self.playout.enqueue_ulaw_turn(&filler);
                }
            }
        }
        let Some(r) = &mut self.session.reconnect else {
            return;
        };
        if r.next_try.is_some_and(|t| now >= t) {
            r.next_try = None;
            self.open_session(now);
        }
    }

    /// goAway handover: close the old connection with 1000 but keep reading it until its
    /// close handshake completes or the drain deadline (see [`HANDOVER_DRAIN_MAX`]).
    /// Why: handles are opaque and each `sessionResumptionUpdate` supersedes the last
    /// (gemini-live.md §7.6, from the proto and the Python types); that an update can still
    /// arrive on the old connection after `goAway` is the measurement in issue 13 point 10,
    /// not a documented guarantee (unverified against Google's docs).
    pub(super) fn begin_closing(&mut self, now: Instant) {
        let drain = self
            .session
            .go_away_ends
            .take()
            .map_or(HANDOVER_DRAIN_MAX, |end| {
                (end.saturating_duration_since(now) / 2).min(HANDOVER_DRAIN_MAX)
            });
        self.session.closing = Some(Closing {
            since: now,
            until: now + drain,
        });
        if drain.is_zero() {
            // The handover comes at or after the end the server announced: there is nothing
            // left to drain, so the old connection is closed and replaced at once (a drain
            // deadline of `now` would leave a timer already due after this tick).
            tracing::debug!("goAway handover at the announced end; closing without a drain");
            self.outputs.push_back(Output::CloseModel);
            self.finish_closing(now);
            return;
        }
        self.outputs.push_back(Output::DrainModel);
    }

    /// The old connection's close is complete (or its drain deadline passed): the newest
    /// handle it sent is known, so the new connection may send its `setup`.
    pub(super) fn finish_closing(&mut self, now: Instant) {
        let Some(c) = self.session.closing.take() else {
            return;
        };
        if self.session.standby.is_some() {
            // Overlap: the old session's last turn ends here; the standby resumes it.
            self.playout.finish_generation();
            if std::mem::take(&mut self.session.standby_ready) {
                self.send_standby_setup();
            }
        } else {
            self.start_reconnect(now, "go_away", true);
            if let Some(r) = &mut self.session.reconnect {
                r.since = c.since;
            }
        }
    }

    pub(super) fn send_standby_setup(&mut self) {
        let mut setup = self.settings.setup.clone();
        setup.resume_handle = self.session.resume_handle.clone();
        self.outputs
            .push_back(Output::ToStandby(ModelOut::Setup(Box::new(setup))));
    }

    pub(super) fn open_session(&mut self, now: Instant) {
        if self.session.opened >= self.settings.max_sessions {
            self.end(CallEnd::ModelLost(format!(
                "model session cap ({}) reached for this call",
                self.settings.max_sessions
            )));
            return;
        }
        self.session.opened += 1;
        self.phase = Phase::Connecting;
        self.session.connect_requested = Some(now);
        self.outputs.push_back(Output::ConnectModel);
    }

    /// Moves the conversation to a new model connection (the old one is closed or gone).
    pub(super) fn start_reconnect(&mut self, now: Instant, reason: &'static str, resume: bool) {
        // The connection a goAway was about is gone: this reconnection replaces the handover.
        self.session.go_away_deadline = None;
        self.session.go_away_ends = None;
        self.session.reconnect = Some(Reconnect {
            reason,
            failures: 0,
            next_try: Some(now),
            since: now,
            resume: resume && self.session.resume_handle.is_some(),
            filler_played: false,
        });
        // The model's turn in flight ended with the connection; play what was generated, and
        // have the next session finish the reply (all of what was generated is played, so the
        // transcript so far is what the caller hears).
        if self.playout.is_generating() && !self.playout.is_discarding() {
            let heard = std::mem::take(&mut self.transcript.agent)
                .trim()
                .to_string();
            self.remember_turn(format!("{heard}…"));
            self.turn.cut_reply = Some(heard);
        }
        self.playout.finish_generation();
        self.playout.stop_discarding();
        self.turn.open = false;
        self.turn.in_progress = false;
        self.phase = Phase::Connecting;
        self.check_session(now);
    }

    pub(super) fn reconnect_failed(&mut self, now: Instant, why: &str, refused: bool) {
        let max = self.settings.max_reconnects.max(1);
        let backoff = self.settings.reconnect_backoff;
        let Some(r) = &mut self.session.reconnect else {
            return;
        };
        r.failures += 1;
        if refused && r.resume {
            tracing::warn!(
                why,
                "resume refused; starting a fresh session seeded with the transcript"
            );
            r.resume = false;
        } else if r.resume && r.failures >= 2 {
            // Twice in a row with the handle: it may be expired; try fresh next.
            r.resume = false;
        }
        if r.failures > max {
            let why = format!("model unreachable after {} attempts: {why}", r.failures);
            self.session.reconnect = None;
            self.end(CallEnd::ModelLost(why));
            return;
        }
        let wait = backoff * 2u32.saturating_pow(r.failures - 1);
        tracing::warn!(
            attempt = r.failures,
            wait_ms = wait.as_millis() as u64,
            why,
            "model reconnection failed; retrying"
        );
        r.next_try = Some(now + wait);
        self.phase = Phase::Connecting;
    }

    /// Why the turn that just completed was odd, if it was: a refusal or malformed call, or
    /// no audio at all although the caller spoke (and the model did not say it was waiting).
    pub(super) fn odd_turn_end(&self) -> Option<&'static str> {
        if self.turn.waiting_for_input || self.turn.in_progress {
            return None;
        }
        if let Some(r) = self.turn.end_reason.as_deref() {
            return match r {
                "NEED_MORE_INPUT" => None,
                "MALFORMED_FUNCTION_CALL" => Some("malformed_function_call"),
                "RESPONSE_REJECTED" => Some("response_rejected"),
                _ => Some("other_reason"),
            };
        }
        let empty = self.playout.turn_generated() == 0
            && self.turn.caller_spoke
            && !self.turn.had_tool_call
            && self.tools.action.is_none()
            && self.tools.awaiting.is_none();
        empty.then_some("empty_reply")
    }

    /// An odd turn end: the caller hears the filler at once (no dead air) and the model is
    /// asked to answer again — once per caller utterance.
    pub(super) fn recover_odd_turn(&mut self, reason: &'static str) {
        tracing::warn!(reason, "model turn ended without a usable reply; retrying");
        self.outputs
            .push_back(Output::Event(CallEvent::OddTurnEnd { reason }));
        if self.turn.retried || !self.model_writable() {
            return;
        }
        self.turn.retried = true;
        if self.playout.is_empty() {
            let filler = self.settings.filler.clone();
            self.playout.enqueue_ulaw_turn(&filler);
        }
        self.outputs.push_back(Output::ToModel(ModelOut::Text(
            crate::call::prompts::RETRY_REPLY.into(),
        )));
    }
}
