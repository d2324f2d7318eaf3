//! Authenticating Twilio's requests (telephony spec §2.3, §1.2): `X-Twilio-Signature` on the
//! voice webhook and on the Media Streams WebSocket upgrade, and the single-use stream tokens
//! the webhook hands out so a media stream can be tied to the webhook that started it.
//!
//! Owns: the exact string-to-sign (URL + sorted decoded params), HMAC-SHA1 with the auth token
//! and HMAC-SHA256/SHA1 with a Webhooks SharedKey (header
//! `X-Twilio-Webhooks-Signature-Settings: key=<KeySid>,algorithm=HMAC_SHA256`), the
//! explicit-default-port variants Twilio's own validators accept, the `bodySHA256` check for
//! JSON bodies, constant-time comparison, and [`StreamTokens`].
//!
//! Does not own: deciding which URL a request was signed over (`server` rebuilds it from
//! `server.public_url`, never from the request, because a TLS-terminating proxy changes scheme
//! and host), HTTP status codes, or the media stream's life (`call::driver` asks a guard).

use std::time::{Duration, Instant};

use base64::Engine as _;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::config::Secret;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// Header naming the SharedKey and algorithm (Webhooks SharedKeys, public beta 2026).
pub const SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";
/// Query parameter Twilio adds for JSON bodies: lowercase hex SHA-256 of the raw body.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";
/// The `<Parameter>` that carries the stream token.
pub const STREAM_TOKEN_PARAM: &str = "token";

/// The MAC used for a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `HMAC_SHA1` — the auth-token scheme, and the default.
    HmacSha1,
    /// `HMAC_SHA256` — SharedKey signing.
    HmacSha256,
}

impl Algorithm {
    /// Parses the `algorithm=` value of the settings header.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HMAC_SHA1" => Some(Algorithm::HmacSha1),
            "HMAC_SHA256" => Some(Algorithm::HmacSha256),
            _ => None,
        }
    }
}

/// `X-Twilio-Signature` with the auth token (HMAC-SHA1): base64(HMAC-SHA1(token, URL + for
/// each param name in byte order, for each of its values sorted: name + value)). `params` are
/// the *decoded* form fields; pass none for GETs, JSON bodies and WebSocket upgrades.
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    compute_signature_with(Algorithm::HmacSha1, auth_token, url, params)
}

/// [`compute_signature`] with a chosen algorithm (the string to sign is the same).
pub fn compute_signature_with(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    params: &[(String, String)],
) -> String {
    signature_over(algorithm, key, url, &sorted_pairs(params))
}

/// The params in signing order: by name, then value, each distinct pair once (as
/// twilio-python signs them). Sorted once per request, however many URLs and keys are tried.
fn sorted_pairs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

fn signature_over(algorithm: Algorithm, key: &str, url: &str, pairs: &[(&str, &str)]) -> String {
    let bytes = match algorithm {
        Algorithm::HmacSha1 => mac_over::<Hmac<Sha1>>(key, url, pairs),
        Algorithm::HmacSha256 => mac_over::<Hmac<Sha256>>(key, url, pairs),
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether `signature` matches over `url` (either default-port form) and sorted `pairs`.
fn matches_sorted(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    pairs: &[(&str, &str)],
    signature: &str,
) -> bool {
    let mut ok = false;
    for candidate in url_port_variants(url) {
        let expected = signature_over(algorithm, key, &candidate, pairs);
        ok |= constant_time_eq(expected.as_bytes(), signature.trim().as_bytes());
    }
    ok
}

fn mac_over<M: Mac + hmac::digest::KeyInit>(
    key: &str,
    url: &str,
    pairs: &[(&str, &str)],
) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key.as_bytes())
        .expect("hmac accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in pairs {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

/// Checks an auth-token (HMAC-SHA1) signature in constant time, accepting the URL with or
/// without an explicit default port (`:443` for https/wss, `:80` for http/ws) like Twilio's
/// own validators.
pub fn validate_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    validate_signature_with(Algorithm::HmacSha1, auth_token, url, params, signature)
}

/// [`validate_signature`] with a chosen algorithm.
pub fn validate_signature_with(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    matches_sorted(algorithm, key, url, &sorted_pairs(params), signature)
}

/// The URL as given plus the same URL with its default port toggled (added or removed).
pub fn url_port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return out,
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let host_end = authority
        .rfind(':')
        .filter(|&c| !authority[c..].contains(']'));
    let toggled = match host_end {
        Some(c) if &authority[c + 1..] == port => authority[..c].to_string(),
        Some(_) => return out,
        None => format!("{authority}:{port}"),
    };
    out.push(format!("{scheme}://{toggled}{tail}"));
    out
}

/// Equality that takes the same time wherever the inputs differ (length is not hidden).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lowercase hex SHA-256 of a raw body (the `bodySHA256` value).
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The raw (still percent-encoded) value of the first `name=` in the URL's query string.
pub fn query_value<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// The parsed `X-Twilio-Webhooks-Signature-Settings` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSettings {
    /// `key=` — the SharedKey SID.
    pub key_sid: String,
    /// `algorithm=` (HMAC_SHA1 when absent).
    pub algorithm: Algorithm,
}

/// Parses `key=<KeySid>,algorithm=HMAC_SHA256` (order and spaces free, names
/// case-insensitive); the reason on failure never contains a secret.
pub fn parse_settings_header(header: &str) -> Result<SignatureSettings, String> {
    let mut key = None;
    let mut algorithm = Algorithm::HmacSha1;
    for part in header.split([',', ';']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("expected name=value, got {:?}", short(part)))?;
        match name.trim().to_ascii_lowercase().as_str() {
            "key" => key = Some(value.trim().to_string()),
            "algorithm" => {
                algorithm = Algorithm::parse(value)
                    .ok_or_else(|| format!("unknown algorithm {:?}", short(value)))?
            }
            _ => {}
        }
    }
    match key {
        Some(k) if !k.is_empty() => Ok(SignatureSettings {
            key_sid: k,
            algorithm,
        }),
        _ => Err("no key=".into()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A Webhooks SharedKey: its SID (`KS…`) and secret.
#[derive(Debug, Clone)]
pub struct SharedKey {
    /// The key SID named by the settings header.
    pub sid: String,
    /// The signing secret.
    pub secret: Secret,
}

/// Why a request was refused. Messages name what was wrong, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `X-Twilio-Signature` header (or an empty one).
    #[error("no X-Twilio-Signature header")]
    MissingSignature,
    /// Neither an auth token nor a shared key is configured.
    #[error("signature validation is on but neither TWILIO_AUTH_TOKEN nor a shared key (TWILIO_SHARED_KEY_SID/TWILIO_SHARED_KEY_SECRET) is set")]
    NoKey,
    /// The settings header is malformed.
    #[error("bad X-Twilio-Webhooks-Signature-Settings header: {0}")]
    BadSettings(String),
    /// The settings header names a key we do not have, and the auth token did not match.
    #[error("signed with shared key {0}, which is not configured")]
    UnknownSharedKey(String),
    /// No key produced the signature over this URL and these params.
    #[error("signature does not match {url} and the request's parameters")]
    Mismatch {
        /// The URL the signature was checked against.
        url: String,
    },
    /// `bodySHA256` in the URL is not the SHA-256 of the body.
    #[error("bodySHA256 in the URL does not match the request body")]
    BodyHashMismatch,
}

/// What to check: the public URL the request was signed over and what was signed with it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The full public URL (scheme, host, path, query string exactly as sent).
    pub url: &'a str,
    /// Decoded form params (empty for GETs, upgrades and JSON bodies).
    pub params: &'a [(String, String)],
    /// `X-Twilio-Signature`.
    pub signature: Option<&'a str>,
    /// `X-Twilio-Webhooks-Signature-Settings`.
    pub settings: Option<&'a str>,
    /// The raw body; checked against `bodySHA256` when the URL carries one.
    pub body: &'a [u8],
}

/// Checks signatures with the configured keys.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    auth_token: Secret,
    shared_key: Option<SharedKey>,
}

impl Verifier {
    /// A verifier with the auth token (may be empty) and an optional shared key.
    pub fn new(auth_token: Secret, shared_key: Option<SharedKey>) -> Verifier {
        Verifier {
            auth_token,
            shared_key,
        }
    }

    /// True when there is at least one key to check with.
    pub fn has_key(&self) -> bool {
        !self.auth_token.is_empty() || self.shared_key.is_some()
    }

    /// Accepts the request when the auth token (HMAC-SHA1) or, when the settings header names
    /// our shared key, that key with the header's algorithm produced the signature over the
    /// URL (with or without an explicit default port) and params; and, when the URL carries
    /// `bodySHA256`, the body hashes to it.
    pub fn verify(&self, req: &SignedRequest<'_>) -> Result<(), Rejection> {
        self.verify_any(std::slice::from_ref(&req.url), req)
    }

    /// [`Verifier::verify`] against any of `urls` (`req.url` is ignored), the params sorted
    /// once for all of them; the error is the first URL's.
    pub fn verify_any<U: AsRef<str>>(
        &self,
        urls: &[U],
        req: &SignedRequest<'_>,
    ) -> Result<(), Rejection> {
        let pairs = sorted_pairs(req.params);
        let mut first = None;
        for url in urls {
            match self.verify_sorted(url.as_ref(), &pairs, req) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(Rejection::MissingSignature))
    }

    fn verify_sorted(
        &self,
        url: &str,
        pairs: &[(&str, &str)],
        req: &SignedRequest<'_>,
    ) -> Result<(), Rejection> {
        if !self.has_key() {
            return Err(Rejection::NoKey);
        }
        let signature = req
            .signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::MissingSignature)?;
        let settings = req.settings.map(parse_settings_header);
        let mut ok = false;
        if !self.auth_token.is_empty() {
            ok |= matches_sorted(
                Algorithm::HmacSha1,
                self.auth_token.expose(),
                url,
                pairs,
                signature,
            );
        }
        let mut unknown_key = None;
        if let Some(Ok(s)) = &settings {
            match &self.shared_key {
                Some(k) if constant_time_eq(k.sid.as_bytes(), s.key_sid.as_bytes()) => {
                    ok |= matches_sorted(s.algorithm, k.secret.expose(), url, pairs, signature);
                }
                _ => unknown_key = Some(s.key_sid.clone()),
            }
        }
        if !ok {
            return Err(match (settings, unknown_key) {
                (Some(Err(e)), _) => Rejection::BadSettings(e),
                (_, Some(sid)) => Rejection::UnknownSharedKey(short(&sid)),
                _ => Rejection::Mismatch {
                    url: url.to_string(),
                },
            });
        }
        if let Some(expected) = query_value(url, BODY_SHA256_PARAM) {
            let actual = body_sha256_hex(req.body);
            if !constant_time_eq(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                return Err(Rejection::BodyHashMismatch);
            }
        }
        Ok(())
    }
}

/// Why a stream token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// `start.customParameters.token` is absent or empty.
    #[error("no stream token in the start message")]
    Missing,
    /// Not issued for this CallSid, or already used.
    #[error("stream token unknown for this CallSid (never issued for it, or already used)")]
    Unknown,
    /// Issued for this CallSid but older than the configured lifetime.
    #[error("stream token expired")]
    Expired,
}

/// Most tokens outstanding for one CallSid (webhook retries, redirects); the oldest goes first.
const TOKENS_PER_CALL: usize = 8;

/// Short-lived, single-use tokens the voice webhook issues per CallSid and the media stream's
/// `start` must present. Expired tokens are swept whenever a new one is issued, so the map
/// holds at most the tokens issued during the last lifetime.
#[derive(Debug)]
pub struct StreamTokens {
    ttl: Duration,
    tokens: DashMap<String, Vec<(String, Instant)>>,
}

impl StreamTokens {
    /// Tokens that live for `ttl`.
    pub fn new(ttl: Duration) -> StreamTokens {
        StreamTokens {
            ttl,
            tokens: DashMap::new(),
        }
    }

    /// A fresh token for `call_sid` (256 random bits, hex).
    pub fn issue(&self, call_sid: &str) -> String {
        let now = Instant::now();
        self.sweep(now);
        let mut rng = rand::rng();
        let token = format!("{:032x}{:032x}", rng.random::<u128>(), rng.random::<u128>());
        let mut entry = self.tokens.entry(call_sid.to_string()).or_default();
        if entry.len() >= TOKENS_PER_CALL {
            entry.remove(0);
        }
        entry.push((token.clone(), now + self.ttl));
        token
    }

    /// Uses up `token` for `call_sid`.
    pub fn redeem(&self, call_sid: &str, token: Option<&str>) -> Result<(), TokenRejection> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(TokenRejection::Missing)?;
        let now = Instant::now();
        let found = {
            let Some(mut entry) = self.tokens.get_mut(call_sid) else {
                return Err(TokenRejection::Unknown);
            };
            let mut at = None;
            for (i, (t, _)) in entry.iter().enumerate() {
                if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                    at = Some(i);
                }
            }
            at.map(|i| entry.remove(i))
        };
        self.tokens.remove_if(call_sid, |_, v| v.is_empty());
        match found {
            Some((_, expires)) if expires > now => Ok(()),
            Some(_) => Err(TokenRejection::Expired),
            None => Err(TokenRejection::Unknown),
        }
    }

    /// Tokens outstanding (expired ones included until the next sweep).
    pub fn outstanding(&self) -> usize {
        self.tokens.iter().map(|e| e.value().len()).sum()
    }

    fn sweep(&self, now: Instant) {
        self.tokens.retain(|_, v| {
            v.retain(|(_, expires)| *expires > now);
            !v.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn port_variants() {
        assert_eq!(
            url_port_variants("wss://h.example/twilio/media"),
            [
                "wss://h.example/twilio/media",
                "wss://h.example:443/twilio/media"
            ]
        );
        assert_eq!(
            url_port_variants("http://h:80?x"),
            ["http://h:80?x", "http://h?x"]
        );
        assert_eq!(url_port_variants("https://h:8443/x"), ["https://h:8443/x"]);
        assert_eq!(url_port_variants("https://[::1]/x").len(), 2);
    }

    #[test]
    fn settings_header() {
        assert_eq!(
            parse_settings_header("key=KS123,algorithm=HMAC_SHA256"),
            Ok(SignatureSettings {
                key_sid: "KS123".into(),
                algorithm: Algorithm::HmacSha256
            })
        );
        assert_eq!(
            parse_settings_header(" algorithm=hmac_sha1 , key=KSx ")
                .unwrap()
                .algorithm,
            Algorithm::HmacSha1
        );
        assert!(parse_settings_header("algorithm=HMAC_SHA256").is_err());
        assert!(parse_settings_header("key=KS1,algorithm=MD5").is_err());
        assert!(parse_settings_header("garbage").is_err());
    }

    #[test]
    fn query_values() {
        assert_eq!(
            query_value("https://h/x?a=1&bodySHA256=ab", "bodySHA256"),
            Some("ab")
        );
        assert_eq!(query_value("https://h/x?a=1", "bodySHA256"), None);
        assert_eq!(query_value("https://h/x", "a"), None);
    }

    #[test]
    fn verifier_reasons() {
        let params = pairs(&[("CallSid", "CA1")]);
        let url = "https://h.example/twilio/voice";
        let sig = compute_signature("tok", url, &params);
        let v = Verifier::new(Secret::new("tok"), None);
        let req = |signature: Option<&'static str>| SignedRequest {
            url,
            params: &[],
            signature,
            settings: None,
            body: b"",
        };
        assert_eq!(
            Verifier::default().verify(&req(Some("x"))),
            Err(Rejection::NoKey)
        );
        assert_eq!(v.verify(&req(None)), Err(Rejection::MissingSignature));
        assert_eq!(v.verify(&req(Some(" "))), Err(Rejection::MissingSignature));
        let good = SignedRequest {
            url,
            params: &params,
            signature: Some(&sig),
            settings: None,
            body: b"",
        };
        assert_eq!(v.verify(&good), Ok(()));
        let unknown = SignedRequest {
            signature: Some("AAAA"),
            settings: Some("key=KSother,algorithm=HMAC_SHA256"),
            ..good
        };
        assert_eq!(
            v.verify(&unknown),
            Err(Rejection::UnknownSharedKey("KSother".into()))
        );
        // A settings header cannot stop a good auth-token signature from validating.
        let with_header = SignedRequest {
            settings: Some("key=KSother,algorithm=HMAC_SHA256"),
            ..good
        };
        assert_eq!(v.verify(&with_header), Ok(()));
        let msg = v.verify(&req(Some("AAAA"))).unwrap_err().to_string();
        assert!(!msg.contains("tok"), "{msg}");
    }

    #[test]
    fn stream_tokens_are_single_use_per_call_and_expire() {
        let t = StreamTokens::new(Duration::from_secs(60));
        let a = t.issue("CA1");
        let b = t.issue("CA1");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(t.redeem("CA2", Some(&a)), Err(TokenRejection::Unknown));
        assert_eq!(t.redeem("CA1", None), Err(TokenRejection::Missing));
        assert_eq!(t.redeem("CA1", Some("")), Err(TokenRejection::Missing));
        assert_eq!(t.redeem("CA1", Some(&a)), Ok(()));
        assert_eq!(t.redeem("CA1", Some(&a)), Err(TokenRejection::Unknown));
        assert_eq!(t.redeem("CA1", Some(&b)), Ok(()));
        assert_eq!(t.outstanding(), 0);

        let short = StreamTokens::new(Duration::from_millis(1));
        let c = short.issue("CA3");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.redeem("CA3", Some(&c)), Err(TokenRejection::Expired));
        // Issuing sweeps what has expired.
        let _ = short.issue("CA4");
        std::thread::sleep(Duration::from_millis(5));
        let _ = short.issue("CA5");
        assert_eq!(short.outstanding(), 1);
    }

    #[test]
    fn tokens_per_call_are_bounded() {
        let t = StreamTokens::new(Duration::from_secs(60));
        let first = t.issue("CA1");
        for _ in 0..TOKENS_PER_CALL {
            t.issue("CA1");
        }
        assert_eq!(t.outstanding(), TOKENS_PER_CALL);
        assert_eq!(t.redeem("CA1", Some(&first)), Err(TokenRejection::Unknown));
    }
}
