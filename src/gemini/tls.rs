//! TLS set-up shared by every outbound HTTPS/WSS client of the model leg (the Live socket,
//! OAuth2 token fetches). A leaf: imports nothing of the crate.

use std::sync::Once;

/// Installs rustls' ring crypto provider as the process default, once.
///
/// tokio-tungstenite builds its rustls `ClientConfig` with the process-default provider and
/// depends on rustls without a provider feature; whether a wss:// connect works would then
/// hinge on what other crates happen to enable (and panics if both ring and aws-lc-rs end up
/// enabled with none installed). Installing explicitly removes that coupling. If another
/// provider was installed first we keep it.
pub fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}
