//! `callbridge serve`: load and validate the configuration, bind, serve, and drain on a signal.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::server::{self, AppState};

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
    /// The server failed.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Loads the configuration (file + environment) and serves until SIGINT/SIGTERM.
pub async fn serve(path: Option<&Path>) -> Result<(), RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let config = Config::load(path, &env)?;
    if config.gemini.api_key.is_empty() {
        tracing::warn!("GEMINI_API_KEY is not set: the model will refuse every session");
    }
    if !config.tools.webhooks.is_empty() && config.tools.secret.is_empty() {
        tracing::warn!("CALLBRIDGE_TOOLS_SECRET is not set: webhook tool requests are signed with an empty key");
    }
    if config.server.public_url.is_empty() {
        tracing::warn!("server.public_url / CALLBRIDGE_PUBLIC_URL is not set: stream URLs are built from the Host header");
    }
    let addr = config.server.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let control = crate::twilio::rest::control_from_config(&config);
    let state = AppState::new(config, control);
    tracing::info!(addr = %listener.local_addr()?, model = %state.config.gemini.model, "callbridge listening");
    let st = state.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            live_calls = st.calls.len(),
            "shutting down: refusing new calls"
        );
        st.shutdown.cancel();
    });
    server::serve(state, listener).await?;
    Ok(())
}

/// Starts a bridge on an already-bound listener in the background (demo, tests, load).
pub fn spawn(config: Config, listener: tokio::net::TcpListener) -> Arc<AppState> {
    let control = crate::twilio::rest::control_from_config(&config);
    let state = AppState::new(config, control);
    let st = state.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(st, listener).await {
            tracing::error!(error = %e, "bridge server failed");
        }
    });
    state
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
