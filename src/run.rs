//! `callbridge serve`: load and validate the configuration, open the call record store, bind,
//! serve, and drain on a signal (live calls first, then the records they left queued).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::call::settings::CallSettings;
use crate::config::{Config, ConfigError};
use crate::gemini::connect::Credential;
use crate::gemini::preflight::{self, ModelHealth, PreflightOutcome, PreflightTarget};
use crate::gemini::setup::SetupParams;
use crate::ops::journal::CallRecord;
use crate::ops::store::{self, Store, StoreError, StoreWriter};
use crate::ops::RecordStore;
use crate::server::{self, AppState};

/// How long shutdown waits for queued call records to be written (after the calls ended).
pub const RECORDS_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A store's read side and the channel its writer takes records from, as
/// [`AppState::with_store`] wants them.
pub type StoreHandles = (Arc<dyn RecordStore>, mpsc::Sender<CallRecord>);

/// Why the bridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid (nothing was bound).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The call record store could not be opened (nothing was bound).
    #[error("call records: {0} (set records.enabled = false to run without them)")]
    Store(#[from] StoreError),
    /// The server failed.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Opens the store `config.records` names and starts its writer; `None` when records are off.
pub async fn open_records(
    config: &Config,
) -> Result<Option<(Store, StoreHandles, StoreWriter)>, StoreError> {
    if !config.records.enabled {
        return Ok(None);
    }
    let store = store::open(&config.records).await?;
    let (tx, rx) = store::channel();
    let writer = store::spawn_writer(store.clone(), rx);
    let read: Arc<dyn RecordStore> = Arc::new(store.clone());
    Ok(Some((store, (read, tx), writer)))
}

/// Writes what is still queued (bounded by [`RECORDS_DRAIN_GRACE`]), logs the totals and
/// closes the store. Call after the calls have ended.
pub async fn close_records(store: Store, writer: StoreWriter) {
    let report = writer.finish(RECORDS_DRAIN_GRACE).await;
    tracing::info!(
        store = %store.location(),
        written = report.written,
        refused = report.failed,
        unwritten = report.unwritten,
        "call records flushed"
    );
    store.close().await;
}

/// Says which behaviour profile the configured model gets; an id the table does not know is
/// a warning (it runs with the default profile unless `gemini.profile` pins one).
pub fn log_model_profile(config: &Config) {
    use crate::gemini::profile::{Match, Status};
    let (p, how) = config.model_profile();
    let model = crate::redact::bounded(&config.gemini.model, 128);
    match how {
        Match::Fallback => tracing::warn!(
            model = %model,
            profile = p.name,
            "gemini.model is not in the model table; using the {} profile (pin another with gemini.profile)",
            p.name
        ),
        Match::Pinned => {
            tracing::info!(model = %model, profile = p.name, "model profile pinned by gemini.profile")
        }
        Match::Known if p.status != Status::Stable => tracing::warn!(
            model = %model,
            status = p.status.as_str(),
            "gemini.model is a {} model: Google may shut it down at short notice (callbridge check-model tells)",
            p.status.as_str()
        ),
        Match::Known => tracing::info!(model = %model, profile = p.name, "model profile"),
    }
}

/// Loads the configuration (file + environment) and serves until SIGINT/SIGTERM.
pub async fn serve(path: Option<&Path>) -> Result<(), RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let config = Config::load(path, &env)?;
    if config.gemini.backend == crate::config::Backend::Vertex {
        // No API key: OAuth2 access tokens (gemini::auth), fetched at the first model session.
        let source = crate::gemini::auth::Source::from_process_env();
        tracing::info!("gemini.backend = vertex: access tokens from {source}");
    } else if config.gemini.api_key.is_empty() {
        tracing::warn!("GEMINI_API_KEY is not set: the model will refuse every session");
    }
    log_model_profile(&config);
    if config.server.public_url.is_empty() {
        tracing::warn!("server.public_url / CALLBRIDGE_PUBLIC_URL is not set: stream URLs are built from the Host header");
    }
    // The store first: a bridge that cannot keep records says so before it takes calls.
    let records = open_records(&config).await?;
    match &records {
        Some((store, _, _)) => {
            tracing::info!(store = %store.location(), "call records are stored")
        }
        None => tracing::info!("call records are off (records.enabled = false)"),
    }
    let addr = config.server.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let control = crate::call::control::control_from_config(&config);
    let (records, handles) = match records {
        Some((store, handles, writer)) => (Some((store, writer)), Some(handles)),
        None => (None, None),
    };
    let state = AppState::with_store(config, control, handles);
    tracing::info!(addr = %listener.local_addr()?, model = %state.config.gemini.model, "callbridge listening");
    // In the background: binding and serving never wait for the model's verdict.
    let _preflight = spawn_preflight(&state);
    let st = state.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            live_calls = st.admission.live(),
            "shutting down: refusing new calls"
        );
        st.shutdown.cancel();
    });
    let served = server::serve(state, listener).await;
    // The calls have ended (or the bound passed): their records are queued; write them.
    if let Some((store, writer)) = records {
        close_records(store, writer).await;
    }
    served?;
    Ok(())
}

/// Starts a bridge on an already-bound listener in the background (demo, tests, load).
/// Records then live only in the journal's in-memory recent list.
pub fn spawn(config: Config, listener: tokio::net::TcpListener) -> Arc<AppState> {
    spawn_with_store(config, listener, None)
}

/// [`spawn`] with a record store (see [`open_records`]).
pub fn spawn_with_store(
    config: Config,
    listener: tokio::net::TcpListener,
    store: Option<StoreHandles>,
) -> Arc<AppState> {
    let control = crate::call::control::control_from_config(&config);
    let state = AppState::with_store(config, control, store);
    let st = state.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(st, listener).await {
            tracing::error!(error = %e, "bridge server failed");
        }
    });
    state
}

/// The session a call would open, for a preflight: the same URL, credential and `setup`
/// (`CallSettings::from_config(config).setup`, as [`AppState::settings`] holds it).
pub fn preflight_target(
    config: &Config,
    credential: Credential,
    setup: &SetupParams,
) -> PreflightTarget {
    PreflightTarget {
        model: config.gemini.model.clone(),
        url: config.gemini.url.clone(),
        credential,
        setup: crate::gemini::setup::setup_message(setup),
        connect_timeout: Duration::from_millis(config.gemini.connect_timeout_ms),
        setup_timeout: Duration::from_millis(config.gemini.setup_timeout_ms),
    }
}

/// `callbridge check-model`: loads the configuration as `serve` does and runs one preflight.
pub async fn check_model(path: Option<&Path>) -> Result<PreflightOutcome, RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let config = Config::load(path, &env)?;
    let settings = CallSettings::from_config(&config);
    let target = preflight_target(&config, server::model_credential(&config), &settings.setup);
    Ok(preflight::check(&target).await)
}

/// Starts `serve`'s model preflight when `gemini.preflight` is on: one check now, then every
/// `gemini.preflight_interval_secs` (0: only now), each kept in [`AppState::model_status`]
/// and `/metrics`; a refusal is logged as an error naming `gemini.model`. Never delays or
/// stops the bridge (a refused model still gets callers the fallback TwiML), and stops at
/// shutdown without waiting for a check in flight. Not started by [`spawn`] (tests and the demo count sessions).
pub fn spawn_preflight(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let g = &state.config.gemini;
    if !g.preflight {
        tracing::info!("model preflight is off (gemini.preflight = false)");
        return None;
    }
    let target = preflight_target(
        &state.config,
        (*state.credential).clone(),
        &state.settings.setup,
    );
    let interval = Duration::from_secs(g.preflight_interval_secs);
    let st = state.clone();
    Some(tokio::spawn(async move {
        let shutdown = st.shutdown.clone();
        loop {
            let outcome = tokio::select! {
                o = preflight::check(&target) => o,
                _ = shutdown.cancelled() => return,
            };
            record_preflight(&st, &outcome);
            if interval.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }))
}

/// Keeps a preflight's outcome (status, metrics) and logs it.
fn record_preflight(state: &AppState, outcome: &PreflightOutcome) {
    let before = state.model_status.set(outcome);
    if let Some(m) = &state.metrics {
        m.preflight(outcome);
    }
    let line = outcome.one_line();
    let model = outcome.model();
    match outcome {
        PreflightOutcome::Refused { code, .. } => tracing::error!(
            model,
            code,
            "model preflight (gemini.model = {model}): {line}; calls get the fallback TwiML \
             while this lasts"
        ),
        PreflightOutcome::Unreachable { .. } => {
            tracing::warn!(model, "model preflight: {line}")
        }
        PreflightOutcome::Accepted { .. } if before != ModelHealth::Ok => {
            tracing::info!(model, "model preflight: {line}")
        }
        PreflightOutcome::Accepted { .. } => tracing::debug!(model, "model preflight: {line}"),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
