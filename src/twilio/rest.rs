//! Twilio REST call control (telephony.md §3): update a live call (hang up, new TwiML).
//!
//! `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`, form-encoded, HTTP
//! Basic auth. Both error shapes (legacy `{code, message, more_info, status}` and RFC 9457
//! `{type, title, status, code, detail}`) are parsed. Transient failures (5xx, 429, transport)
//! are retried with bounded exponential backoff. Note that any update ends the current media
//! stream: Twilio sends `stop` on the socket.

use std::time::Duration;

use crate::secret::Secret;

/// Twilio's "call is not in-progress" error: the call already ended.
pub const CALL_NOT_IN_PROGRESS: u32 = 21220;

/// A failed REST request.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// Twilio answered with an error status.
    #[error("twilio answered http {status}{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// Twilio error code, when given.
        code: Option<u32>,
        /// Twilio's message (or the body's start).
        message: String,
    },
    /// The request did not complete.
    #[error("request to twilio failed: {0}")]
    Transport(String),
}

impl RestError {
    /// Twilio's error code, if any.
    pub fn code(&self) -> Option<u32> {
        match self {
            RestError::Api { code, .. } => *code,
            RestError::Transport(_) => None,
        }
    }

    fn transient(&self) -> bool {
        match self {
            RestError::Api { status, .. } => *status == 429 || *status >= 500,
            RestError::Transport(_) => true,
        }
    }
}

/// A Twilio REST client for one account.
pub struct TwilioRest {
    client: reqwest::Client,
    base: String,
    account_sid: String,
    username: String,
    password: Secret,
    retries: u32,
    backoff: Duration,
}

impl TwilioRest {
    /// `username`/`password` are the account SID and auth token, or an API key SID and secret.
    pub fn new(api_base: &str, account_sid: &str, username: &str, password: Secret) -> TwilioRest {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        TwilioRest {
            client,
            base: api_base.trim_end_matches('/').to_string(),
            account_sid: account_sid.to_string(),
            username: username.to_string(),
            password,
            retries: 3,
            backoff: Duration::from_millis(200),
        }
    }

    /// Sets the retry policy for transient failures (tests use a short backoff).
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> TwilioRest {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// Updates a live call with the given form fields; returns the Call JSON.
    pub async fn update_call(
        &self,
        call_sid: &str,
        fields: &[(&str, &str)],
    ) -> Result<serde_json::Value, RestError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{}.json",
            self.base,
            urlencoding::encode(&self.account_sid),
            urlencoding::encode(call_sid)
        );
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut attempt = 0;
        loop {
            let result = self.once(&url, body.clone()).await;
            match result {
                Err(e) if e.transient() && attempt < self.retries => {
                    let wait = self.backoff * 2u32.pow(attempt);
                    tracing::warn!(error = %crate::redact::redact_text(&e.to_string()), attempt, wait_ms = wait.as_millis() as u64, "twilio request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, url: &str, body: String) -> Result<serde_json::Value, RestError> {
        let resp = self
            .client
            .post(url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| RestError::Transport(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| RestError::Transport(e.without_url().to_string()))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| RestError::Api {
                status,
                code: None,
                message: format!("response is not JSON: {e}"),
            });
        }
        Err(parse_error(status, &text))
    }

    /// Hangs up (`Status=completed`); a call that already ended counts as success.
    pub async fn hang_up(&self, call_sid: &str) -> Result<(), RestError> {
        match self.update_call(call_sid, &[("Status", "completed")]).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(CALL_NOT_IN_PROGRESS) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Parses either error shape; falls back to the status and the body's start.
pub fn parse_error(status: u16, body: &str) -> RestError {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let code = v.get("code").and_then(|c| {
        c.as_u64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            .map(|c| c as u32)
    });
    let message = v
        .get("message")
        .or_else(|| v.get("detail"))
        .or_else(|| v.get("title"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(200).collect());
    RestError::Api {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_error_shapes() {
        let legacy = r#"{"code":21220,"message":"Call is not in-progress. Cannot redirect.","more_info":"https://www.twilio.com/docs/errors/21220","status":400}"#;
        let e = parse_error(400, legacy);
        assert_eq!(e.code(), Some(21220));
        assert!(e.to_string().contains("Cannot redirect"));
        let rfc = r#"{"type":"https://www.twilio.com/docs/errors/20404","title":"Not Found","status":404,"code":20404,"detail":"The requested resource was not found","instance":"/x"}"#;
        let e = parse_error(404, rfc);
        assert_eq!(e.code(), Some(20404));
        assert!(e.to_string().contains("requested resource"));
        let e = parse_error(502, "<html>bad gateway</html>");
        assert_eq!(e.code(), None);
        assert!(e.transient());
    }
}
