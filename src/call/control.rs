//! Call control through the telephony provider, as the call needs it: the [`CallControl`]
//! interface (owned here, by its consumer), the settings call actions build TwiML from, and
//! the Twilio implementation, which calls *down* into [`crate::twilio::rest`] — so `twilio/`
//! never imports `call`, and each provider added later implements this trait beside it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::twilio::rest::TwilioRest;

/// Carries out [`CallAction`](super::event::CallAction)s through the telephony provider's API.
pub trait CallControl: Send + Sync {
    /// Ends the phone call (a call that already ended counts as success).
    fn hang_up<'a>(
        &'a self,
        call_sid: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
    /// Replaces the call's TwiML (this ends the current media stream).
    fn update_twiml<'a>(
        &'a self,
        call_sid: &'a str,
        twiml: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// What call actions need to build TwiML, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ControlSettings {
    /// `wss://…/twilio/media`, for the continued stream after `send_dtmf`.
    pub stream_url: Option<String>,
    /// Public `https://…` base, for whisper URLs.
    pub public_url: Option<String>,
    /// Verbs after `</Connect>`.
    pub fallback: String,
    /// `<Dial callerId>`.
    pub caller_id: String,
    /// `<Dial timeout>`.
    pub dial_timeout_secs: u32,
    /// How long a parked call waits for its continued stream.
    pub continuation_ttl: Duration,
}

impl CallControl for TwilioRest {
    fn hang_up<'a>(
        &'a self,
        call_sid: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            TwilioRest::hang_up(self, call_sid)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn update_twiml<'a>(
        &'a self,
        call_sid: &'a str,
        twiml: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.update_call(call_sid, &[("Twiml", twiml)])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The REST client when the account SID and auth token are configured.
pub fn control_from_config(cfg: &Config) -> Option<Arc<dyn CallControl>> {
    let t = &cfg.twilio;
    if t.account_sid.is_empty() {
        return None;
    }
    // An API key (SK…) with its secret is preferred over the account's auth token.
    let (user, secret) = if !t.api_key_sid.is_empty() && !t.api_secret.is_empty() {
        (t.api_key_sid.as_str(), t.api_secret.clone())
    } else if !t.auth_token.is_empty() {
        (t.account_sid.as_str(), t.auth_token.clone())
    } else {
        return None;
    };
    Some(Arc::new(TwilioRest::new(
        &t.api_base,
        &t.account_sid,
        user,
        secret,
    )))
}
