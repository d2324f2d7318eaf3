//! The machine's tool calls and call actions: the model's `end_call`, `transfer_call`,
//! `send_dtmf` and operator webhook tools, the operator's own commands, the exactly-one-response
//! rule, and actions that wait until the caller has heard the agent's last words.

use super::*;

/// A call action waiting for the agent's last words to be heard.
#[derive(Debug)]
pub(super) enum AfterHeard {
    /// `end_call`: answered already; hang up once the goodbye is heard.
    HangUp,
    /// `transfer_call`: answered after the provider's API acted.
    Transfer {
        id: String,
        destination: String,
        target: String,
        whisper: bool,
    },
    /// `send_dtmf`: answered after the provider's API acted.
    Dtmf { id: String, digits: String },
    /// Close the stream (Twilio then runs the fallback verbs) once the agent's sentence is
    /// heard: a polite end at shutdown.
    CloseStream(CallEnd),
}

#[derive(Debug)]
pub(super) struct PendingAction {
    pub(super) action: AfterHeard,
    pub(super) deadline: Instant,
    /// Wait for the model's `turnComplete` too (`end_call`: the goodbye may follow the answer).
    pub(super) wait_turn_complete: bool,
    /// The model finished its turn since the action was armed.
    pub(super) model_done: bool,
}

/// A call action handed to the driver, waiting for [`Input::ActionDone`] (or, after a
/// successful `send_dtmf`, for the old stream's `stop`).
#[derive(Debug)]
pub(super) struct AwaitingAction {
    pub(super) id: String,
    pub(super) name: &'static str,
    /// For `send_dtmf`: the continuation token the next stream will present.
    pub(super) token: Option<String>,
}

/// Tool calls and call actions: answered ids, the action waiting to be heard, the one handed to the driver, webhook tools in flight.
#[derive(Default)]
pub(super) struct ToolState {
    pub(super) answered: HashSet<String>,
    pub(super) action: Option<PendingAction>,
    pub(super) awaiting: Option<AwaitingAction>,
    /// Operator webhook tools in flight: id → name.
    pub(super) running: HashMap<String, String>,
    /// After a successful transfer, the coming `stop` ends the call as transferred.
    pub(super) transferred: bool,
    /// Continuation tokens issued by this call.
    pub(super) tokens_issued: u32,
}

impl Call {
    /// A call action's wait for the agent's last words, and the quiet that ends a turn opened
    /// only by a tool call.
    pub(super) fn tools_deadline(&self) -> Option<Instant> {
        let action = self.tools.action.as_ref().map(|h| h.deadline);
        let quiet = self
            .tools
            .action
            .as_ref()
            .filter(|_| !self.turn.in_progress)
            .and(self.turn.tool_opened)
            .map(|t| t + TOOL_TURN_QUIET);
        [action, quiet].into_iter().flatten().min()
    }

    pub(super) fn on_tool_call(&mut self, call: FunctionCall, now: Instant) {
        self.session.tools.insert(call.id.clone());
        // BLOCKING models always go on after the answer; only a NON_BLOCKING one may have
        // nothing more to say.
        if !self.turn.open && self.settings.call_control_async {
            self.turn.tool_opened = Some(now);
        }
        self.turn.open = true;
        self.turn.had_tool_call = true;
        if !self.tools.answered.insert(call.id.clone()) {
            tracing::warn!(
                id = call.id,
                "duplicate tool call id ignored (already answered)"
            );
            return;
        }
        self.outputs.push_back(Output::Event(CallEvent::ToolCall {
            id: call.id.clone(),
            name: call.name.clone(),
            args: call.args.clone(),
        }));
        let busy = self.tools.action.is_some() || self.tools.awaiting.is_some();
        let arg = |k: &str| {
            call.args
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let transfers = !self.settings.transfer_destinations.is_empty()
            || self.settings.transfer_allow.is_some();
        match call.name.as_str() {
            "end_call" => {
                if self.tools.awaiting.is_some() {
                    let e = "a transfer or key press is in progress; the call cannot be ended now";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                self.tools.action = Some(PendingAction {
                    action: AfterHeard::HangUp,
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete: true,
                    model_done: self.model_already_done(),
                });
                let ok = json!({"result": "ok", "note": "The call ends once the caller has heard your goodbye."});
                self.respond(call.id, call.name, Ok(ok));
            }
            "transfer_call" if transfers => {
                if busy {
                    let e = "another call action is in progress";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                let dest = arg("destination");
                let target = match self.settings.transfer_destinations.get(&dest) {
                    Some(d) => Some((d.target.clone(), !d.whisper.is_empty())),
                    None => self
                        .settings
                        .transfer_allow
                        .as_ref()
                        .filter(|re| crate::config::is_e164(&dest) && re.is_match(&dest))
                        .map(|_| (dest.clone(), false)),
                };
                let Some((target, whisper)) = target else {
                    let names: Vec<&str> = self
                        .settings
                        .transfer_destinations
                        .keys()
                        .map(String::as_str)
                        .collect();
                    let e =
                        format!(
                        "cannot transfer to {dest:?}: not a configured destination or an allowed \
                         number; destinations: {}",
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    );
                    return self.respond(call.id, call.name, Err(e));
                };
                // BLOCKING: the hand-off sentence came before the call (the model now waits
                // for the answer), so play it out first. NON_BLOCKING: the model keeps talking
                // around the call; act once its turn is over and heard.
                let wait_turn_complete = self.settings.call_control_async;
                if !wait_turn_complete {
                    self.playout.finish_generation();
                }
                self.tools.action = Some(PendingAction {
                    action: AfterHeard::Transfer {
                        id: call.id,
                        destination: dest,
                        target,
                        whisper,
                    },
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete,
                    model_done: self.model_already_done(),
                });
            }
            "send_dtmf" if self.settings.send_dtmf => {
                if busy {
                    let e = "another call action is in progress";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                let digits = arg("digits");
                let valid = !digits.is_empty()
                    && digits.len() <= 32
                    && digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'w' | 'W'));
                if !valid {
                    let e = format!(
                        "invalid digits {digits:?}: use 0-9, *, # and w (pause), at most 32"
                    );
                    return self.respond(call.id, call.name, Err(e));
                }
                let wait_turn_complete = self.settings.call_control_async;
                if !wait_turn_complete {
                    self.playout.finish_generation();
                }
                self.tools.action = Some(PendingAction {
                    action: AfterHeard::Dtmf {
                        id: call.id,
                        digits: digits.to_ascii_lowercase(),
                    },
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete,
                    model_done: self.model_already_done(),
                });
            }
            name if self.settings.webhook_tools.contains(name) => {
                self.tools
                    .running
                    .insert(call.id.clone(), call.name.clone());
                self.outputs.push_back(Output::Control(CallAction::RunTool {
                    id: call.id,
                    name: call.name,
                    args: call.args,
                }));
            }
            other => {
                tracing::warn!(
                    name = %crate::redact::bounded(other, 64),
                    "model called a tool that was never declared; answered with an error"
                );
                let e = format!("unknown tool {other:?}; no such function is available");
                self.respond(call.id, call.name, Err(e));
            }
        }
    }

    /// Sends the one response for a tool call id, with the scheduling its call needs.
    pub(super) fn respond(
        &mut self,
        id: String,
        name: String,
        result: Result<serde_json::Value, String>,
    ) {
        let scheduling = self.scheduling_for(&name, result.is_ok());
        self.respond_with(id, name, result, scheduling);
    }

    /// `scheduling` for a response (None: the call was BLOCKING).
    /// - call control on NON_BLOCKING models: `SILENT` on success (the goodbye or hand-off was
    ///   said around the call; a second turn about the result would keep the caller on the
    ///   line), `WHEN_IDLE` on failure (the model must tell the caller);
    /// - operator webhook tools: as configured (`tools.webhooks[].scheduling`);
    /// - undeclared tools: the model's default behaviour (`WHEN_IDLE` where NON_BLOCKING).
    pub(super) fn scheduling_for(&self, name: &str, ok: bool) -> Option<Scheduling> {
        match name {
            "end_call" | "transfer_call" | "send_dtmf" => {
                self.settings.call_control_async.then_some(if ok {
                    Scheduling::Silent
                } else {
                    Scheduling::WhenIdle
                })
            }
            _ => match self.settings.webhook_scheduling.get(name) {
                Some(s) => *s,
                None => (self.settings.profile.default_tool_behavior == ToolBehavior::NonBlocking)
                    .then_some(Scheduling::WhenIdle),
            },
        }
    }

    /// Whether the model's turn is already over when a NON_BLOCKING call action is armed (it
    /// called the tool after its turn ended). A BLOCKING model always goes on after the answer.
    pub(super) fn model_already_done(&self) -> bool {
        self.settings.call_control_async && !self.turn.open && !self.turn.in_progress
    }

    pub(super) fn respond_with(
        &mut self,
        id: String,
        name: String,
        result: Result<serde_json::Value, String>,
        scheduling: Option<Scheduling>,
    ) {
        let ok = result.is_ok();
        let body = match result {
            Ok(v) => json!({ "output": v }),
            Err(e) => json!({ "error": e }),
        };
        // A handover is under way: the id belongs to the session being replaced, and the
        // next one resumes from a handle issued before the call (handles are not resumable
        // while tools run), so it would not know the id.
        let replacing = self.session.closing.is_some()
            || self.session.standby.is_some()
            || self.session.reconnect.is_some();
        if !self.session.tools.contains(&id) || replacing {
            // Issued by an earlier model session (before a handover): the new session does
            // not know the id, so the result goes in as context instead of being dropped.
            let note = format!("[Result of your earlier {name} call: {body}]");
            let note = self.note(note);
            self.send_to_model(note);
            self.outputs
                .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
            return;
        }
        if !self.model_writable() {
            self.session
                .deferred
                .push(ModelOut::ToolResponse(vec![FunctionResponse {
                    id: id.clone(),
                    name: name.clone(),
                    response: body,
                    scheduling,
                }]));
            self.outputs
                .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
            return;
        }
        self.outputs
            .push_back(Output::ToModel(ModelOut::ToolResponse(vec![
                FunctionResponse {
                    id: id.clone(),
                    name: name.clone(),
                    response: body,
                    scheduling,
                },
            ])));
        self.outputs
            .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
    }

    /// A response the model need not speak about (`SILENT` where NON_BLOCKING): the caller is
    /// talking and the model answers them anyway.
    pub(super) fn respond_silently(
        &mut self,
        id: String,
        name: String,
        result: Result<serde_json::Value, String>,
    ) {
        let scheduling = self.scheduling_for(&name, true);
        self.respond_with(id, name, result, scheduling);
    }

    /// Context the model must keep but not answer at once, in the form its profile accepts
    /// (`gemini::profile::NoteForm`).
    pub(super) fn note(&self, text: String) -> ModelOut {
        match self.settings.profile.notes {
            NoteForm::IncompleteClientContent => ModelOut::Context(vec![Turn {
                role: Role::User,
                text,
            }]),
            NoteForm::RealtimeText => ModelOut::Text(text),
        }
    }

    /// The model withdrew a tool call: no response is sent for it.
    pub(super) fn on_tool_cancelled(&mut self, id: String) {
        if self.tools.running.remove(&id).is_some() {
            tracing::info!(id, "tool call cancelled by the model; request aborted");
            self.outputs
                .push_back(Output::Control(CallAction::CancelTool { id }));
            return;
        }
        let pending = self.tools.action.as_ref().is_some_and(|a| match &a.action {
            AfterHeard::Transfer { id: x, .. } | AfterHeard::Dtmf { id: x, .. } => *x == id,
            AfterHeard::HangUp | AfterHeard::CloseStream(_) => false,
        });
        if pending {
            tracing::info!(id, "call action cancelled by the model before it ran");
            self.tools.action = None;
        } else {
            tracing::debug!(id, "cancellation for a tool call already answered");
        }
    }

    /// The caller cut the agent off before a call action ran: do not act on it. The hand-off
    /// sentence (or goodbye) was not heard to its end, so the caller never confirmed it.
    pub(super) fn withdraw_action_on_barge_in(&mut self, now: Instant) {
        match self.tools.action.take().map(|a| a.action) {
            Some(AfterHeard::Transfer { id, .. }) => self.respond_silently(
                id,
                "transfer_call".into(),
                Err(
                    "not transferred: the caller interrupted before hearing the hand-off. Ask \
                     whether they still want to be transferred and call transfer_call again if so."
                        .into(),
                ),
            ),
            Some(AfterHeard::Dtmf { id, .. }) => self.respond_silently(
                id,
                "send_dtmf".into(),
                Err(
                    "keys not sent: the caller interrupted. Call send_dtmf again if still needed."
                        .into(),
                ),
            ),
            Some(AfterHeard::CloseStream(why)) => {
                // Shutting down regardless; wait for the agent's next sentence instead.
                self.tools.action = Some(PendingAction {
                    action: AfterHeard::CloseStream(why),
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete: false,
                    model_done: false,
                });
            }
            Some(AfterHeard::HangUp) => {
                self.send_to_model(ModelOut::Text(
                    "[The caller interrupted your goodbye, so the call is still connected. If they \
                     need more help, help them; otherwise say goodbye and call end_call again.]"
                        .into(),
                ));
            }
            None => {}
        }
    }

    /// An operator acts on the call: hang-up is immediate; a transfer goes to the provider
    /// at once (the operator chose the moment), cancelling any action the agent had armed.
    pub(super) fn on_operator(&mut self, cmd: OperatorCommand) {
        if self.phase == Phase::Ended {
            if let OperatorCommand::Transfer { id, destination } = cmd {
                self.operator_result(id, destination, Err("the call has ended".into()));
            }
            return;
        }
        match cmd {
            OperatorCommand::HangUp => {
                tracing::info!("operator hung up the call");
                self.hang_up(CallEnd::OperatorHungUp);
            }
            OperatorCommand::Transfer { id, destination } => {
                let Some(call_sid) = self.start.as_ref().map(|s| s.call_sid.clone()) else {
                    let e = "the call's stream has not started".to_string();
                    return self.operator_result(id, destination, Err(e));
                };
                if self.phase == Phase::Parked || self.tools.awaiting.is_some() {
                    let e = "another call action is in progress".to_string();
                    return self.operator_result(id, destination, Err(e));
                }
                let target = match self.settings.transfer_destinations.get(&destination) {
                    Some(d) => Some((d.target.clone(), !d.whisper.is_empty())),
                    None if crate::config::is_e164(&destination)
                        || destination.starts_with("sip:") =>
                    {
                        Some((destination.clone(), false))
                    }
                    None => None,
                };
                let Some((target, whisper)) = target else {
                    let e = "not a configured destination, an E.164 number or a sip: URI";
                    return self.operator_result(id, destination, Err(e.into()));
                };
                tracing::info!("operator transfer requested");
                self.tools.action = None;
                self.tools.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "operator_transfer",
                    token: None,
                });
                self.outputs
                    .push_back(Output::Control(CallAction::Transfer {
                        id,
                        call_sid,
                        destination,
                        target,
                        whisper,
                    }));
            }
        }
    }

    pub(super) fn operator_result(
        &mut self,
        id: String,
        destination: String,
        result: Result<(), String>,
    ) {
        self.outputs.push_back(Output::Event(CallEvent::Operator {
            id,
            action: "transfer",
            destination,
            result,
        }));
    }

    pub(super) fn on_action_done(&mut self, id: String, result: Result<(), String>) {
        let Some(awaiting) = self.tools.awaiting.take_if(|a| a.id == id) else {
            tracing::debug!(id, "result for an action no longer awaited");
            return;
        };
        if awaiting.name == "operator_transfer" {
            if result.is_ok() {
                self.tools.transferred = true;
            }
            return self.operator_result(id, String::new(), result);
        }
        match (awaiting.name, result) {
            ("transfer_call", Ok(())) => {
                self.tools.transferred = true;
                let ok = json!({"result": "transferring"});
                self.respond(id, "transfer_call".into(), Ok(ok));
            }
            ("send_dtmf", Ok(())) => {
                // The stream is being replaced; the model session stays. Keep the token
                // until the old stream's `stop` parks the call.
                self.tools.awaiting = Some(AwaitingAction {
                    id: String::new(),
                    name: "continuation",
                    token: awaiting.token,
                });
                let ok = json!({"result": "keys sent; the line stays connected"});
                self.respond(id, "send_dtmf".into(), Ok(ok));
            }
            (name, Err(e)) => {
                let e = format!("the phone system refused: {e}. Tell the caller it did not work.");
                self.respond(id, name.into(), Err(e));
            }
            (name, Ok(())) => tracing::debug!(name, "unexpected action result"),
        }
    }

    pub(super) fn awaiting_continuation(&self) -> Option<String> {
        self.tools.awaiting.as_ref().and_then(|a| a.token.clone())
    }

    /// Runs a pending call action once the caller heard everything queued before it (and,
    /// for `end_call`, the model finished its turn), or at the deadline.
    pub(super) fn check_action(&mut self, now: Instant) {
        if let (Some(at), Some(a)) = (self.turn.tool_opened, self.tools.action.as_mut()) {
            if now >= at + TOOL_TURN_QUIET && !self.turn.in_progress {
                // Nothing came after the tool call: the model said what it had to say.
                self.turn.tool_opened = None;
                self.turn.open = false;
                a.model_done = true;
            }
        }
        let Some(a) = &self.tools.action else { return };
        let heard_all = (!a.wait_turn_complete || a.model_done) && self.playout.all_heard();
        if !heard_all && now < a.deadline {
            return;
        }
        if !heard_all {
            tracing::info!("agent's last words not heard within the grace; acting anyway");
        }
        let Some(a) = self.tools.action.take() else {
            return;
        };
        let call_sid = self
            .start
            .as_ref()
            .map(|s| s.call_sid.clone())
            .unwrap_or_default();
        match a.action {
            AfterHeard::HangUp => self.hang_up(CallEnd::AgentHungUp),
            AfterHeard::CloseStream(why) => self.end(why),
            AfterHeard::Transfer {
                id,
                destination,
                target,
                whisper,
            } => {
                self.tools.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "transfer_call",
                    token: None,
                });
                self.outputs
                    .push_back(Output::Control(CallAction::Transfer {
                        id,
                        call_sid,
                        destination,
                        target,
                        whisper,
                    }));
            }
            AfterHeard::Dtmf { id, digits } => {
                self.tools.tokens_issued += 1;
                let token = format!(
                    "{:016x}{:04x}",
                    rand::random::<u64>(),
                    self.tools.tokens_issued
                );
                self.tools.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "send_dtmf",
                    token: Some(token.clone()),
                });
                self.outputs
                    .push_back(Output::Control(CallAction::SendDtmf {
                        id,
                        call_sid,
                        digits,
                        token,
                    }));
            }
        }
    }

    /// Hangs up through the provider (when the stream is known) and ends the call.
    pub(super) fn hang_up(&mut self, why: CallEnd) {
        if let Some(start) = &self.start {
            self.outputs.push_back(Output::Control(CallAction::HangUp {
                call_sid: start.call_sid.clone(),
            }));
        }
        self.end(why);
    }
}
