//! The only per-call async code: moves bytes, time and cancellation between the two sockets
//! and the sans-IO [`Call`](super::machine::Call).
//!
//! One task per call. It waits on whichever comes first — a caller frame, a model frame, the
//! model connection finishing, the machine's next timer, or shutdown — turns it into an
//! [`Input`], then carries out every [`Output`] in order. Wire codecs run here, at the edge.
//! Nothing in here decides anything about the call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message as ModelMessage;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::{CallSlot, PendingSlot};
use super::event::{
    CallAction, CallEnd, CallEvent, CallerOut, Input, ModelOut, OperatorCommand, Output,
};
use super::machine::Call;
use super::settings::CallSettings;
use super::webhook_tools::{ToolCallContext, ToolExecutor};
use crate::config::WebhookToolConfig;
use crate::gemini::connect::{self, ConnectError, Credential, ModelSocket};
use crate::gemini::{setup, wire as gwire};
use crate::ops::{CallId, CallSource, CommandBoard, Observers, OperatorRequest};
use crate::redact::{redact_destination, redact_number, redact_text};
use crate::twilio::wire as twire;
use crate::twilio::wire::CallerEvent;

pub use super::control::{CallControl, ControlSettings};

/// A call whose stream ended after `send_dtmf`, waiting for the continued stream.
pub struct Parked {
    call: Call,
    model: Option<ModelSocket>,
    call_sid: String,
    id: CallId,
}

/// Parked calls by continuation token. A plain mutex: the call's resamplers are `Send` but
/// not `Sync`, and parking happens once per `send_dtmf`.
#[derive(Clone, Default)]
pub struct ParkedCalls(Arc<std::sync::Mutex<std::collections::HashMap<String, Parked>>>);

impl ParkedCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Parked>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Parks a call under its token.
    pub fn insert(&self, token: String, call: Parked) {
        self.lock().insert(token, call);
    }
    /// Takes a parked call.
    pub fn remove(&self, token: &str) -> Option<Parked> {
        self.lock().remove(token)
    }
    /// How many calls are parked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// Whether no call is parked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A timeline event of one call, as broadcast to observers (the demo, later the dashboard).
#[derive(Debug, Clone)]
pub struct CallNote {
    /// The bridge's connection id for the call.
    pub conn: u64,
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub event: CallEvent,
}

/// Everything a call task needs besides its socket.
pub struct CallContext {
    /// The bridge's id for this connection (logs, registry).
    pub conn: u64,
    /// Shared per-call settings.
    pub settings: Arc<CallSettings>,
    /// The Live WebSocket URL.
    pub gemini_url: Arc<str>,
    /// The model credential.
    pub credential: Arc<Credential>,
    /// Time allowed for the model's WebSocket handshake.
    pub connect_timeout: Duration,
    /// Observers of call events.
    pub notes: Option<broadcast::Sender<CallNote>>,
    /// Call control (REST); `None` ends calls by closing the stream.
    pub control: Option<Arc<dyn CallControl>>,
    /// TwiML inputs for call actions.
    pub control_settings: Arc<ControlSettings>,
    /// Calls parked between streams.
    pub parked: ParkedCalls,
    /// Runs operator webhook tools.
    pub tools: Option<Arc<dyn ToolExecutor>>,
    /// The configured webhook tools.
    pub tool_configs: Arc<Vec<WebhookToolConfig>>,
    /// Fires when the bridge shuts down.
    pub shutdown: CancellationToken,
    /// Checked on the first `start` of a stream that is not a continuation (the webhook's
    /// single-use stream token); `false` closes the stream before any model session opens.
    #[allow(clippy::type_complexity)]
    pub stream_guard: Option<Arc<dyn Fn(&twire::StreamStart) -> bool + Send + Sync>>,
    /// Bridge-wide latency histograms (edge to edge, per leg).
    pub stats: Arc<crate::stats::BridgeStats>,
    /// The call's id for observers and the operator API (a continued stream adopts the
    /// parked call's id).
    pub call_id: CallId,
    /// Phone (provider stream) or browser phone.
    pub source: CallSource,
    /// Metrics, records, recordings.
    pub observers: Observers,
    /// Operator commands to live calls.
    pub commands: CommandBoard,
    /// The socket's pending-stream slot: turned into a call slot ([`CallContext::slot`]) on
    /// the first `start` that passes the stream guard, or the stream is closed (1013) when
    /// every call slot is taken. `None`: admission is not managed by this caller.
    pub pending: Option<PendingSlot>,
    /// The call slot, once admitted; released when the call ends.
    pub slot: Option<CallSlot>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<ModelSocket, ConnectError>> + Send>>;

/// Runs one call on an upgraded caller WebSocket until it ends; returns why it ended, or
/// `None` when the call was parked for a continued stream (after `send_dtmf`).
pub async fn run_call<S, E>(caller: S, ctx: CallContext) -> Option<CallEnd>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    ctx.observers
        .call_opened(&ctx.call_id, ctx.conn, ctx.source);
    let mut commands = ctx.commands.register(&ctx.call_id);
    let mut guard = CallGuard { ctx, done: false };
    let end = run_call_inner(caller, &mut guard.ctx, &mut commands).await;
    guard.done = true;
    if end.is_some() {
        guard.ctx.commands.unregister(&guard.ctx.call_id);
    }
    end
}

/// Tells the observers a call failed when its task unwinds (a panic) or is dropped before
/// the call ended or was parked, under the id the call has by then (a continued stream has
/// adopted its parked call's id).
struct CallGuard {
    ctx: CallContext,
    done: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            self.ctx.commands.unregister(&self.ctx.call_id);
            self.ctx.observers.call_failed(&self.ctx.call_id);
        }
    }
}

async fn run_call_inner<S, E>(
    mut caller: S,
    ctx: &mut CallContext,
    commands: &mut tokio::sync::mpsc::Receiver<OperatorRequest>,
) -> Option<CallEnd>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    let settings = ctx.settings.clone();
    let mut call = match Call::new(settings, Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the audio pipeline");
            let _ = caller.close().await;
            let why = CallEnd::ModelUnavailable(format!("audio pipeline: {e}"));
            note(ctx, CallEvent::Ended(why.clone()));
            return Some(why);
        }
    };
    let (tool_tx, mut tool_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, Result<serde_json::Value, String>)>();
    let mut running: std::collections::HashMap<String, tokio::task::AbortHandle> =
        std::collections::HashMap::new();
    let mut model: Option<ModelSocket> = None;
    let mut connecting: Option<ConnectFuture> = None;
    // Overlapping handover: the next model socket, opened while `model` is still live.
    let mut standby: Option<ModelSocket> = None;
    let mut standby_connecting: Option<ConnectFuture> = None;
    // goAway handover: our close frame went out on `model`, which is still read (its last
    // messages and the close reply go to the machine); nothing more is sent on it.
    let mut model_draining = false;
    let mut shutdown_seen = false;
    let mut warned_binary = false;
    // A peer that stops reading: one write waits at most this long, then the call ends as
    // `caller_unresponsive` and nothing more is written to it.
    let write_timeout = ctx.settings.caller_write_timeout;
    let mut caller_stalled = false;
    // When the input that produced this round's outputs was taken off its socket (or, for a
    // timer, when it was due): the start of the bridge-added latency of the frames it yields.
    let mut origin: Option<Instant> = None;
    // Operator transfers waiting for the provider, by request id.
    let mut operator_replies: std::collections::HashMap<
        String,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    > = std::collections::HashMap::new();
    let mut operator_seq = 0u32;

    loop {
        // Carry out every effect the machine has queued, in order.
        let mut caller_dirty = false;
        let mut frames_to_caller = 0u64;
        let mut park: Option<String> = None;
        while let Some(out) = call.poll_output() {
            match out {
                Output::ToCaller(cmd) => {
                    let Some(start) = call.stream() else { continue };
                    let json = match &cmd {
                        CallerOut::Media(frame) => {
                            ctx.observers.agent_audio(&ctx.call_id, frame);
                            twire::to_json(&twire::CallerCommand::Media(frame), &start.stream_sid)
                        }
                        CallerOut::Mark(name) => {
                            twire::to_json(&twire::CallerCommand::Mark(name), &start.stream_sid)
                        }
                        CallerOut::Clear => {
                            ctx.observers.agent_clear(&ctx.call_id);
                            twire::to_json(&twire::CallerCommand::Clear, &start.stream_sid)
                        }
                    };
                    if caller_stalled {
                        continue;
                    }
                    match bounded_write(write_timeout, caller.feed(Message::Text(json.into())))
                        .await
                    {
                        Ok(()) => {}
                        Err(fail) => {
                            caller_stalled |= fail == WriteFail::Stalled;
                            call.handle_input(fail.input(), Instant::now());
                        }
                    }
                    if matches!(cmd, CallerOut::Media(_)) {
                        frames_to_caller += 1;
                    }
                    caller_dirty = true;
                }
                Output::ToModel(cmd) => {
                    let Some(sock) = model.as_mut() else {
                        tracing::warn!("model message dropped: no model connection");
                        continue;
                    };
                    if model_draining {
                        // The machine holds messages while the old connection closes; a frame
                        // after our close frame would be a protocol error.
                        tracing::warn!("model message dropped: the connection is closing");
                        continue;
                    }
                    let json = model_json(&cmd);
                    let sent = sock.send(ModelMessage::Text(json.into())).await;
                    if let (Ok(()), ModelOut::Audio(_), Some(t0)) = (&sent, &cmd, origin) {
                        ctx.stats.uplink.record(t0.elapsed());
                        ctx.stats.frames_to_model.fetch_add(1, Relaxed);
                    }
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "model send failed");
                        model = None;
                        call.handle_input(
                            Input::ModelClosed {
                                code: 1006,
                                reason: e.to_string(),
                            },
                            Instant::now(),
                        );
                    }
                }
                Output::CloseModel => {
                    if let Some(old) = model.take() {
                        // Nothing of it reaches the machine any more; its close handshake is
                        // finished in the background (bounded).
                        tokio::spawn(close_model(old, MODEL_CLOSE_LIMIT));
                    }
                    model_draining = false;
                    connecting = None;
                }
                Output::DrainModel => {
                    let Some(sock) = model.as_mut() else {
                        call.handle_input(
                            Input::ModelClosed {
                                code: 1006,
                                reason: "no model connection to close".into(),
                            },
                            Instant::now(),
                        );
                        continue;
                    };
                    if model_draining {
                        continue;
                    }
                    model_draining = true;
                    // Close frame 1000 (Normal); the reply arrives through the read below,
                    // after whatever the server sent before it saw our close.
                    let sent =
                        tokio::time::timeout(CLOSE_FRAME_LIMIT, sock.close(Some(normal_close())))
                            .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        tracing::warn!("model close frame not sent; dropping the connection");
                        model = None;
                        model_draining = false;
                        call.handle_input(
                            Input::ModelClosed {
                                code: 1006,
                                reason: "close frame not sent".into(),
                            },
                            Instant::now(),
                        );
                    }
                }
                Output::ConnectStandby => {
                    let url = ctx.gemini_url.clone();
                    let cred = ctx.credential.clone();
                    let timeout = ctx.connect_timeout;
                    standby_connecting = Some(Box::pin(async move {
                        connect::connect(&url, &cred, timeout).await
                    }));
                }
                Output::ToStandby(cmd) => {
                    let Some(sock) = standby.as_mut() else {
                        continue;
                    };
                    if let Err(e) = sock.send(ModelMessage::Text(model_json(&cmd).into())).await {
                        standby = None;
                        call.handle_input(Input::StandbyFailed(e.to_string()), Instant::now());
                    }
                }
                Output::PromoteStandby => {
                    if let Some(new) = standby.take() {
                        if let Some(old) = model.replace(new) {
                            tokio::spawn(close_model(old, MODEL_CLOSE_LIMIT));
                        }
                        model_draining = false;
                    }
                }
                Output::ConnectModel => {
                    let url = ctx.gemini_url.clone();
                    let cred = ctx.credential.clone();
                    let timeout = ctx.connect_timeout;
                    connecting = Some(Box::pin(async move {
                        connect::connect(&url, &cred, timeout).await
                    }));
                }
                Output::Control(CallAction::RunTool { id, name, args }) => {
                    let Some(handle) =
                        spawn_tool(ctx, &call, id.clone(), name, args, tool_tx.clone())
                    else {
                        continue;
                    };
                    running.insert(id, handle);
                }
                Output::Control(CallAction::CancelTool { id }) => {
                    if let Some(h) = running.remove(&id) {
                        h.abort();
                    }
                }
                Output::Control(action) => {
                    if let Some((id, result)) = execute(ctx, action).await {
                        call.handle_input(Input::ActionDone { id, result }, Instant::now());
                    }
                }
                Output::Park { token } => {
                    park = Some(token);
                    break;
                }
                Output::Event(event) => {
                    if let CallEvent::Operator { id, result, .. } = &event {
                        if let Some(reply) = operator_replies.remove(id) {
                            let _ = reply.send(result.clone());
                        }
                    }
                    note(ctx, event)
                }
                Output::End(why) => {
                    if caller_dirty && !caller_stalled {
                        let _ = bounded_write(write_timeout, caller.flush()).await;
                    }
                    for (_, h) in running.drain() {
                        h.abort();
                    }
                    if let Some(s) = standby.take() {
                        close_model(s, Duration::from_secs(1)).await;
                    }
                    for (_, reply) in operator_replies.drain() {
                        let _ = reply.send(Err("the call ended first".into()));
                    }
                    return Some(finish(caller, model, why).await);
                }
            }
        }
        if let Some(token) = park {
            let _ = bounded_write(write_timeout, caller.flush()).await;
            let call_sid = call
                .stream()
                .map(|s| s.call_sid.clone())
                .unwrap_or_default();
            tracing::info!("stream replaced after send_dtmf; call parked for its continued stream");
            ctx.commands.unregister(&ctx.call_id);
            ctx.parked.insert(
                token.clone(),
                Parked {
                    call,
                    model,
                    call_sid,
                    id: ctx.call_id.clone(),
                },
            );
            let parked = ctx.parked.clone();
            let ttl = ctx.control_settings.continuation_ttl;
            let observers = ctx.observers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                if let Some(mut p) = parked.remove(&token) {
                    tracing::warn!("continued stream never arrived; ending the parked call");
                    p.call.handle_input(Input::CallerClosed, Instant::now());
                    while let Some(out) = p.call.poll_output() {
                        if let Output::Event(e) = out {
                            observers.event(&p.id, std::time::SystemTime::now(), &e);
                        }
                    }
                    if let Some(m) = p.model.take() {
                        close_model(m, MODEL_CLOSE_LIMIT).await;
                    }
                }
            });
            for (_, h) in running.drain() {
                h.abort();
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), caller.close()).await;
            return None;
        }
        if caller_dirty && !caller_stalled {
            if let Err(fail) = bounded_write(write_timeout, caller.flush()).await {
                caller_stalled |= fail == WriteFail::Stalled;
                call.handle_input(fail.input(), Instant::now());
                continue;
            }
        }
        if let (true, Some(t0)) = (frames_to_caller > 0, origin) {
            let d = t0.elapsed();
            for _ in 0..frames_to_caller {
                ctx.stats.downlink.record(d);
            }
            ctx.stats
                .frames_to_caller
                .fetch_add(frames_to_caller, Relaxed);
        }

        let deadline = call.poll_timeout();
        let sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let mut read_at: Option<Instant> = None;
        let input: Vec<Input> = tokio::select! {
            _ = ctx.shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                vec![Input::Shutdown]
            }
            res = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok(sock) => {
                        model = Some(sock);
                        model_draining = false;
                        vec![Input::ModelConnected]
                    }
                    Err(e) => vec![Input::ModelConnectFailed(e.to_string())],
                }
            }
            msg = async { model.as_mut().expect("guarded").next().await }, if model.is_some() => {
                read_at = Some(Instant::now());
                match model_input(msg) {
                    ModelRead::Events(evs) => evs,
                    ModelRead::Nothing => Vec::new(),
                    ModelRead::Closed { code, reason } => {
                        model = None;
                        model_draining = false;
                        vec![Input::ModelClosed { code, reason }]
                    }
                }
            }
                                    res = async { standby_connecting.as_mut().expect("guarded").await }, if standby_connecting.is_some() => {
                standby_connecting = None;
                match res {
                    Ok(sock) => {
                        standby = Some(sock);
                        vec![Input::StandbyConnected]
                    }
                    Err(e) => vec![Input::StandbyFailed(e.to_string())],
                }
            }
            msg = async { standby.as_mut().expect("guarded").next().await }, if standby.is_some() => {
                match model_input(msg) {
                    ModelRead::Events(evs) => evs
                        .into_iter()
                        .map(|i| match i {
                            Input::Model(ev) => Input::Standby(ev),
                            other => other,
                        })
                        .collect(),
                    ModelRead::Nothing => Vec::new(),
                    ModelRead::Closed { code, reason } => {
                        standby = None;
                        vec![Input::StandbyFailed(format!("closed: code {code} {reason:?}"))]
                    }
                }
            }
            msg = caller.next() => {
                read_at = Some(Instant::now());
                caller_input(msg, &mut warned_binary)
            }
            Some((id, result)) = tool_rx.recv() => {
                running.remove(&id);
                vec![Input::ToolDone { id, result }]
            }
            Some(req) = commands.recv() => {
                match req.command {
                    OperatorCommand::HangUp => {
                        let _ = req.reply.send(Ok(()));
                        vec![Input::Operator(OperatorCommand::HangUp)]
                    }
                    OperatorCommand::Transfer { destination, .. } => {
                        operator_seq += 1;
                        let id = format!("operator-{operator_seq}");
                        operator_replies.insert(id.clone(), req.reply);
                        vec![Input::Operator(OperatorCommand::Transfer { id, destination })]
                    }
                }
            }
            _ = sleep => {
                read_at = deadline;
                vec![Input::Tick]
            }
        };
        let now = Instant::now();
        origin = Some(read_at.map_or(now, |t| t.min(now)));
        for i in input {
            // Admission: the first `start` turns the socket's pending slot into a call slot,
            // after the stream guard (a refused token must not hold a call slot).
            if let (Input::Caller(CallerEvent::Start(start)), Some(_)) = (&i, &ctx.pending) {
                let continuation = start.custom_parameters.contains_key(CONTINUATION_PARAM);
                let guarded = !continuation && ctx.stream_guard.is_some();
                if guarded {
                    let guard = ctx.stream_guard.take().expect("checked");
                    if !guard(start) {
                        ctx.pending = None;
                        refuse_stream(&mut caller, 1008, "stream token missing, reused or expired")
                            .await;
                        tracing::warn!("stream token missing, reused or expired; stream closed before any model session");
                        call.handle_input(Input::CallerClosed, now);
                        break;
                    }
                }
                match ctx.pending.take().expect("checked").admit() {
                    Some(slot) => ctx.slot = Some(slot),
                    None => {
                        tracing::warn!("stream refused on start: at the concurrent call limit");
                        refuse_stream(&mut caller, 1013, "at capacity").await;
                        call.handle_input(Input::CallerClosed, now);
                        break;
                    }
                }
            }
            // A continued stream (after send_dtmf) takes over its parked call and model session.
            if let Input::Caller(CallerEvent::Start(start)) = &i {
                if let Some(token) = start.custom_parameters.get(CONTINUATION_PARAM) {
                    match ctx.parked.remove(token) {
                        Some(p) if p.call_sid == start.call_sid => {
                            call = p.call;
                            model = p.model;
                            connecting = None;
                            // This stream continues the parked call: adopt its id.
                            ctx.observers.call_discarded(&ctx.call_id);
                            ctx.commands.unregister(&ctx.call_id);
                            ctx.call_id = p.id;
                            *commands = ctx.commands.register(&ctx.call_id);
                            call.handle_input(Input::Resumed(start.clone()), now);
                            continue;
                        }
                        Some(p) => {
                            tracing::warn!("continuation token presented by another call; ignored");
                            ctx.parked.insert(token.clone(), p);
                        }
                        None => tracing::warn!(
                            "unknown or expired continuation; starting a fresh session"
                        ),
                    }
                }
            }
            if let (Input::Caller(CallerEvent::Start(start)), Some(guard)) = (&i, &ctx.stream_guard)
            {
                if call.stream().is_none() && !guard(start) {
                    tracing::warn!("stream token missing, reused or expired; stream closed before any model session");
                    ctx.slot = None;
                    refuse_stream(&mut caller, 1008, "stream token missing, reused or expired")
                        .await;
                    call.handle_input(Input::CallerClosed, now);
                    break;
                }
            }
            if let Input::Caller(CallerEvent::Media(f)) = &i {
                ctx.observers
                    .caller_audio(&ctx.call_id, f.timestamp_ms, &f.payload);
            }
            call.handle_input(i, now);
        }
    }
}

/// Longest wait for a model socket's close handshake outside a handover.
const MODEL_CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Longest wait for our close frame to be written (a peer that stopped reading).
const CLOSE_FRAME_LIMIT: Duration = Duration::from_millis(500);

/// Close frame 1000 (Normal closure) for the model connection.
fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

/// Closes a model socket with 1000 (Normal) and completes the close handshake: reads (and
/// discards) until the server's close reply, at most `limit` in all. A socket already
/// closing (after [`Output::DrainModel`]) is not sent a second close frame.
async fn close_model(mut sock: ModelSocket, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        if sock.close(Some(normal_close())).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = sock.next().await {}
    })
    .await;
}

/// Closes a stream that may not become a call, with `code` and `reason` (bounded: a peer that
/// does not read cannot hold the task).
async fn refuse_stream<S: Sink<Message> + Unpin>(caller: &mut S, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        caller.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Why a write to the caller failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFail {
    /// The socket is closed or broken.
    Closed,
    /// The write did not complete in time: the peer stopped reading.
    Stalled,
}

impl WriteFail {
    fn input(self) -> Input {
        match self {
            WriteFail::Closed => Input::CallerClosed,
            WriteFail::Stalled => {
                tracing::warn!("caller socket stopped taking writes; ending the call");
                Input::CallerUnresponsive
            }
        }
    }
}

/// One write (feed or flush) to the caller, bounded by `limit`.
async fn bounded_write<F, E>(limit: Duration, write: F) -> Result<(), WriteFail>
where
    F: Future<Output = Result<(), E>>,
{
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFail::Closed),
        Err(_) => Err(WriteFail::Stalled),
    }
}

fn model_json(cmd: &ModelOut) -> String {
    match cmd {
        ModelOut::Setup(params) => setup::setup_message(params),
        ModelOut::Audio(pcm) => gwire::to_json(&gwire::ModelCommand::Audio(pcm)),
        ModelOut::Text(t) => gwire::to_json(&gwire::ModelCommand::Text(t)),
        ModelOut::ClientContent(turns) => gwire::to_json(&gwire::ModelCommand::ClientContent {
            turns,
            turn_complete: true,
        }),
        ModelOut::Context(turns) => gwire::to_json(&gwire::ModelCommand::ClientContent {
            turns,
            turn_complete: false,
        }),
        ModelOut::ToolResponse(r) => gwire::to_json(&gwire::ModelCommand::ToolResponse(r)),
    }
}

enum ModelRead {
    Events(Vec<Input>),
    Nothing,
    Closed { code: u16, reason: String },
}

fn model_input(
    msg: Option<Result<ModelMessage, tokio_tungstenite::tungstenite::Error>>,
) -> ModelRead {
    let bytes = match msg {
        None => {
            return ModelRead::Closed {
                code: 1006,
                reason: "connection ended without a close frame".into(),
            }
        }
        Some(Err(e)) => {
            return ModelRead::Closed {
                code: 1006,
                reason: e.to_string(),
            }
        }
        Some(Ok(ModelMessage::Binary(b))) => b,
        Some(Ok(ModelMessage::Text(t))) => t.as_bytes().to_vec().into(),
        Some(Ok(ModelMessage::Close(frame))) => {
            let (code, reason) = frame
                .map(|f| (u16::from(f.code), f.reason.to_string()))
                .unwrap_or((1005, String::new()));
            tracing::info!(code, reason = %reason, "model closed the connection");
            return ModelRead::Closed { code, reason };
        }
        Some(Ok(_)) => return ModelRead::Nothing,
    };
    match gwire::decompose(&bytes) {
        Ok(events) => ModelRead::Events(events.into_iter().map(Input::Model).collect()),
        Err(e) => {
            tracing::warn!(error = %e, bytes = bytes.len(), "bad message from the model ignored");
            ModelRead::Nothing
        }
    }
}

fn caller_input<E: std::fmt::Display>(
    msg: Option<Result<Message, E>>,
    warned_binary: &mut bool,
) -> Vec<Input> {
    match msg {
        None => vec![Input::CallerClosed],
        Some(Err(e)) => {
            tracing::warn!(error = %e, "caller socket error");
            vec![Input::CallerClosed]
        }
        Some(Ok(Message::Text(text))) => match twire::parse(text.as_str()) {
            Ok(ev) => vec![Input::Caller(ev)],
            Err(e) => {
                tracing::warn!(error = %redact_text(&e.to_string()), bytes = text.len(), "bad message from the caller leg ignored");
                Vec::new()
            }
        },
        Some(Ok(Message::Binary(b))) => {
            if !*warned_binary {
                *warned_binary = true;
                tracing::warn!(
                    bytes = b.len(),
                    "binary frame on the caller leg ignored (Twilio sends text)"
                );
            }
            Vec::new()
        }
        Some(Ok(Message::Close(_))) => vec![Input::CallerClosed],
        Some(Ok(_)) => Vec::new(),
    }
}

/// The `<Parameter>` that carries a continuation token on a continued stream.
pub const CONTINUATION_PARAM: &str = "continuation";

/// Carries out a call action through the provider's API. Transfers and DTMF report back with
/// the tool call id and the outcome.
async fn execute(ctx: &CallContext, action: CallAction) -> Option<(String, Result<(), String>)> {
    let cs = &ctx.control_settings;
    match action {
        CallAction::HangUp { call_sid } => {
            match &ctx.control {
                Some(control) => match control.hang_up(&call_sid).await {
                    Ok(()) => tracing::info!("call hung up through the provider's API"),
                    Err(e) => {
                        tracing::warn!(error = %redact_text(&e), "hang-up through the provider's API failed; closing the stream")
                    }
                },
                None => tracing::info!("no call control configured; ending the stream to hang up"),
            }
            None
        }
        CallAction::Transfer {
            id,
            call_sid,
            destination,
            target,
            whisper,
        } => {
            let Some(control) = &ctx.control else {
                return Some((
                    id,
                    Err("call control is not configured on this line".into()),
                ));
            };
            let whisper_url = match (&cs.public_url, whisper) {
                (Some(base), true) => Some(format!(
                    "{}/twilio/whisper/{}",
                    base.trim_end_matches('/'),
                    urlencoding::encode(&destination)
                )),
                _ => None,
            };
            let twiml = crate::twilio::webhook::dial_twiml(&crate::twilio::webhook::DialTwiml {
                target: &target,
                caller_id: (!cs.caller_id.is_empty()).then_some(cs.caller_id.as_str()),
                timeout_secs: cs.dial_timeout_secs,
                whisper_url: whisper_url.as_deref(),
                fallback: (!cs.fallback.is_empty()).then_some(cs.fallback.as_str()),
            });
            let result = control.update_twiml(&call_sid, &twiml).await;
            match &result {
                // Destinations may be numbers or SIP URIs: only their redacted forms are logged.
                Ok(()) => tracing::info!(
                    destination = %redact_destination(&destination),
                    target = %redact_number(&target),
                    "call transferred"
                ),
                Err(e) => tracing::warn!(
                    error = %redact_text(e),
                    destination = %redact_destination(&destination),
                    target = %redact_number(&target),
                    "transfer failed"
                ),
            }
            Some((id, result))
        }
        CallAction::SendDtmf {
            id,
            call_sid,
            digits,
            token,
        } => {
            let Some(control) = &ctx.control else {
                return Some((
                    id,
                    Err("call control is not configured on this line".into()),
                ));
            };
            let Some(stream_url) = &cs.stream_url else {
                return Some((
                    id,
                    Err("the bridge has no public URL to reconnect the call to".into()),
                ));
            };
            let params = vec![(CONTINUATION_PARAM.to_string(), token)];
            let twiml = crate::twilio::webhook::play_digits_then_stream_twiml(
                &digits,
                &crate::twilio::webhook::StreamTwiml {
                    stream_url,
                    parameters: &params,
                    status_callback: None,
                    fallback: (!cs.fallback.is_empty()).then_some(cs.fallback.as_str()),
                },
            );
            let result = control.update_twiml(&call_sid, &twiml).await;
            match &result {
                Ok(()) => {
                    tracing::info!(digits = digits.len(), "digits sent; stream will reconnect")
                }
                // Never the digits themselves: they may be a card or account number.
                Err(e) => tracing::warn!(
                    error = %redact_text(e),
                    digits = digits.len(),
                    "sending digits failed"
                ),
            }
            Some((id, result))
        }
        CallAction::RunTool { .. } | CallAction::CancelTool { .. } => None,
    }
}

/// Starts an operator webhook tool; its result comes back on `tx`.
fn spawn_tool(
    ctx: &CallContext,
    call: &Call,
    id: String,
    name: String,
    args: serde_json::Value,
    tx: tokio::sync::mpsc::UnboundedSender<(String, Result<serde_json::Value, String>)>,
) -> Option<tokio::task::AbortHandle> {
    let tool = ctx.tool_configs.iter().find(|t| t.name == name).cloned();
    let (Some(exec), Some(tool)) = (ctx.tools.clone(), tool) else {
        let _ = tx.send((id, Err(format!("tool {name:?} is not available"))));
        return None;
    };
    let start = call.stream();
    let tool_ctx = ToolCallContext {
        call_sid: start.map(|s| s.call_sid.clone()).unwrap_or_default(),
        stream_sid: start.map(|s| s.stream_sid.clone()).unwrap_or_default(),
        account_sid: start.map(|s| s.account_sid.clone()).unwrap_or_default(),
        from: start.and_then(|s| s.custom_parameters.get("from").cloned()),
        to: start.and_then(|s| s.custom_parameters.get("to").cloned()),
    };
    let span = tracing::Span::current();
    let task = tokio::spawn(
        async move {
            let started = Instant::now();
            let result = exec.execute(&tool, &id, &args, &tool_ctx).await;
            let ms = started.elapsed().as_millis() as u64;
            let result = match result {
                Ok(v) => {
                    tracing::info!(tool = %tool.name, ms, "webhook tool answered");
                    Ok(v)
                }
                Err(e) => {
                    tracing::warn!(tool = %tool.name, ms, error = %redact_text(&e.to_string()), "webhook tool failed");
                    Err(e.for_model())
                }
            };
            let _ = tx.send((id, result));
        }
        .instrument(span),
    );
    Some(task.abort_handle())
}

fn note(ctx: &CallContext, event: CallEvent) {
    match &event {
        CallEvent::CallerTranscript(t) => tracing::debug!(text = %t, "caller said"),
        CallEvent::AgentTranscript(t) => tracing::debug!(text = %t, "agent said"),
        CallEvent::Started {
            call_sid,
            stream_sid,
            ..
        } => {
            let span = tracing::Span::current();
            span.record("call_sid", call_sid.as_str());
            span.record("stream_sid", stream_sid.as_str());
            tracing::info!("stream started");
        }
        CallEvent::ModelReady { setup_ms } => tracing::info!(setup_ms, "model session ready"),
        CallEvent::Interrupted {
            turn,
            heard_ms,
            sent_ms,
        } => tracing::info!(turn, heard_ms, sent_ms, "caller barged in"),
        CallEvent::ToolCall { name, id, .. } => tracing::info!(tool = %name, id = %id, "tool call"),
        CallEvent::ToolResult { name, ok, .. } => tracing::info!(tool = %name, ok, "tool answered"),
        CallEvent::GoAway { time_left_ms } => tracing::info!(?time_left_ms, "model goAway"),
        CallEvent::Reconnected {
            reason,
            resumed,
            gap_ms,
        } => {
            tracing::info!(reason, resumed, gap_ms, "model connection replaced")
        }
        CallEvent::Ended(why) => tracing::info!(reason = why.as_str(), detail = ?why, "call ended"),
        CallEvent::Operator { action, result, .. } => match result {
            Ok(()) => tracing::info!(action, "operator request done"),
            Err(e) => tracing::warn!(action, error = %redact_text(e), "operator request failed"),
        },
        _ => tracing::trace!(?event, "call event"),
    }
    ctx.observers
        .event(&ctx.call_id, std::time::SystemTime::now(), &event);
    if let Some(tx) = &ctx.notes {
        let _ = tx.send(CallNote {
            conn: ctx.conn,
            at: Instant::now(),
            event,
        });
    }
}

async fn finish<S>(mut caller: S, model: Option<ModelSocket>, why: CallEnd) -> CallEnd
where
    S: Sink<Message> + Unpin,
{
    if let Some(m) = model {
        close_model(m, MODEL_CLOSE_LIMIT).await;
    }
    if why.caller_still_connected() {
        // Closing the stream makes Twilio run the TwiML after </Connect> (the fallback).
        let frame = CloseFrame {
            code: 1000,
            reason: why.as_str().into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            caller.send(Message::Close(Some(frame))),
        )
        .await;
    }
    if why != CallEnd::CallerUnresponsive {
        // A peer that stopped reading would only hold the task: it is dropped (RST) instead.
        let _ = tokio::time::timeout(Duration::from_secs(2), caller.close()).await;
    }
    why
}
