//! The machine's timers: start and setup deadlines, idle streams, maximum length, silence
//! wrap-up, shutdown drain and the caller's DTMF pause.

use super::*;

/// The agent was asked to wrap up.
#[derive(Debug)]
pub(super) struct WrapUp {
    pub(super) deadline: Instant,
    pub(super) reason: CallEnd,
    /// The deadline was pushed back once because the model was still IN_PROGRESS.
    pub(super) extended: bool,
}

impl Call {
    /// The call's own timers: start, maximum length, wrap-up, shutdown drain, idle stream, and
    /// the hints for silence wrap-up and a late continuation.
    pub(super) fn timers_deadline(&self) -> Option<Instant> {
        let start = (self.phase == Phase::AwaitingStart)
            .then(|| self.created + self.settings.start_timeout);
        let max_call = self
            .wrap_up
            .is_none()
            .then(|| self.created + self.settings.max_call);
        let idle = (self.start.is_some() && self.phase != Phase::Parked)
            .then(|| self.last_media + self.settings.idle_stream);
        let continuation = (self.turn.awaiting_continuation
            && self.settings.filler_after.is_some()
            && !self.playout.has_pending())
        .then(|| self.ahead(self.playout.queued_until().map(|q| q + CONTINUATION_GAP)))
        .flatten();
        let silence = match self.settings.silence_timeout {
            Some(t)
                if self.phase == Phase::Live
                    && self.wrap_up.is_none()
                    && self.tools.action.is_none()
                    && self.tools.awaiting.is_none() =>
            {
                let busy_until = self.playout.queued_until().unwrap_or(self.last_activity);
                self.ahead(Some(self.last_activity.max(busy_until) + t))
            }
            _ => None,
        };
        [
            start,
            max_call,
            self.wrap_up.as_ref().map(|w| w.deadline),
            self.drain_at,
            idle,
            continuation,
            silence,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn check_timers(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingStart if now >= self.created + self.settings.start_timeout => {
                self.end(CallEnd::StartTimeout);
                return;
            }
            Phase::Connecting | Phase::SettingUp
                if self
                    .session
                    .reconnect
                    .as_ref()
                    .is_some_and(|r| r.next_try.is_none()) =>
            {
                if let Some(c) = self.session.connect_requested {
                    if now >= c + self.settings.setup_timeout {
                        self.outputs.push_back(Output::CloseModel);
                        self.reconnect_failed(now, "no setupComplete in time", false);
                        if self.phase == Phase::Ended {
                            return;
                        }
                        // Go on: with no backoff the retry is due now, and `check_session`
                        // makes it (returning left it as a past timer hint: the driver spun).
                    }
                }
            }
            Phase::Connecting | Phase::SettingUp if self.session.reconnect.is_some() => {}
            Phase::Connecting | Phase::SettingUp => {
                if let Some(c) = self.session.connect_requested {
                    if now >= c + self.settings.setup_timeout {
                        self.end(CallEnd::ModelUnavailable(format!(
                            "no setupComplete within {} ms",
                            self.settings.setup_timeout.as_millis()
                        )));
                        return;
                    }
                }
            }
            _ => {}
        }
        if self.start.is_some()
            && self.phase != Phase::Parked
            && now >= self.last_media + self.settings.idle_stream
        {
            tracing::warn!(
                secs = self.settings.idle_stream.as_secs(),
                "no media from the caller leg; closing the stream"
            );
            self.end(CallEnd::IdleStream);
            return;
        }
        if self.drain_at.is_some_and(|d| now >= d) {
            self.drain_at = None;
            tracing::info!(
                "shutdown grace over; ending the call once the agent's sentence is heard"
            );
            self.tools.action = Some(PendingAction {
                action: AfterHeard::CloseStream(CallEnd::Shutdown),
                deadline: now + self.settings.end_call_grace,
                wait_turn_complete: false,
                model_done: false,
            });
        }
        self.check_session(now);
        if self.phase == Phase::Ended {
            return;
        }
        if self.turn.awaiting_continuation
            && self.settings.filler_after.is_some()
            && self.phase == Phase::Live
            && !self.playout.has_pending()
            && !self.playout.is_generating()
            && self
                .playout
                .queued_until()
                .is_none_or(|q| now >= q + CONTINUATION_GAP)
        {
            // The rest of the cut reply is late: no dead air meanwhile.
            self.turn.awaiting_continuation = false;
            let filler = self.settings.filler.clone();
            self.playout.enqueue_ulaw_turn(&filler);
        }
        if self.phase == Phase::Ended {
            return;
        }
        if let Some(w) = self.wrap_up.as_mut() {
            if now >= w.deadline && self.turn.in_progress && !w.extended {
                // Background reasoning still running: give it one more grace, never more.
                w.extended = true;
                w.deadline = now + self.settings.end_call_grace;
            }
        }
        if let Some(w) = &self.wrap_up {
            if now >= w.deadline {
                let reason = w.reason.clone();
                tracing::info!(
                    reason = reason.as_str(),
                    "wrap-up grace over; ending the call"
                );
                self.wrap_up = None;
                self.hang_up(reason);
                return;
            }
        } else if now >= self.created + self.settings.max_call {
            self.start_wrap_up(
                now,
                CallEnd::MaxDuration,
                "[The call has reached its maximum length. Tell the caller politely, say goodbye \
                 and call end_call now.]"
                    .into(),
            );
        } else if let Some(t) = self.settings.silence_timeout {
            let agent_busy = self.playout.is_busy(now);
            if agent_busy {
                self.last_activity = now;
            } else if self.phase == Phase::Live
                && self.tools.action.is_none()
                && self.tools.awaiting.is_none()
                && now >= self.last_activity + t
            {
                self.start_wrap_up(
                    now,
                    CallEnd::SilenceTimeout,
                    format!(
                        "[The caller has said nothing for {} seconds. Ask whether they are still \
                         there; if they do not answer, say goodbye and call end_call.]",
                        t.as_secs()
                    ),
                );
            }
        }

        if self.dtmf.is_due(now) {
            self.flush_dtmf();
        }
    }

    /// Queues ready-made μ-law audio (the filler) as its own turn, with marks.
    pub(super) fn start_wrap_up(&mut self, now: Instant, reason: CallEnd, text: String) {
        let why = if reason == CallEnd::MaxDuration {
            "max_duration"
        } else {
            "silence"
        };
        tracing::info!(reason = why, "asking the agent to wrap up");
        self.outputs
            .push_back(Output::Event(CallEvent::WrapUp { reason: why }));
        self.send_to_model(ModelOut::Text(text));
        self.wrap_up = Some(WrapUp {
            deadline: now + self.settings.wrap_up_grace,
            reason,
            extended: false,
        });
    }
}
