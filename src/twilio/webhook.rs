//! The voice webhook (telephony spec §1.1, §2): TwiML that connects a call to our media
//! stream, the webhook's form body, and `X-Twilio-Signature`.
//!
//! Owns: writing `<Connect><Stream>` TwiML in the same shape as twilio-python 9.13.0,
//! XML escaping, a plausibility check for operator-configured fallback TwiML, decoding
//! `application/x-www-form-urlencoded` bodies. Request signatures live in
//! [`super::signature`]; `compute_signature` / `validate_signature` are re-exported here.
//!
//! Does not own: HTTP routing or deciding whether to accept a call (`server`), the Media
//! Streams messages (`twilio::wire`), or REST call control.

pub use super::signature::{compute_signature, validate_signature};

/// What goes into the `<Connect><Stream>` document.
#[derive(Debug, Clone, Copy)]
pub struct StreamTwiml<'a> {
    /// `wss://…/twilio/media` — must have no query string (Twilio error 31920); put data in
    /// `parameters` instead.
    pub stream_url: &'a str,
    /// `<Parameter name value>` pairs, delivered as `start.customParameters`.
    pub parameters: &'a [(String, String)],
    /// Optional `<Stream statusCallback>` URL (method defaults to POST on Twilio's side).
    pub status_callback: Option<&'a str>,
    /// Raw TwiML verbs placed after `</Connect>`: Twilio runs them when *we* close the
    /// stream (e.g. `<Say>…</Say><Hangup/>`). Check it once at config time with
    /// [`validate_fallback_fragment`]; it is inserted verbatim.
    pub fallback: Option<&'a str>,
}

/// Why a form body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// `%` not followed by two hex digits.
    #[error("form body has a bad percent-escape at byte {position}: {excerpt:?}")]
    BadPercent {
        /// Byte offset of the `%` in the body.
        position: usize,
        /// Up to three bytes starting at the `%`.
        excerpt: String,
    },
    /// The decoded bytes of a name or value are not UTF-8.
    #[error("form body field {field:?} does not decode to utf-8")]
    NotUtf8 {
        /// The raw (still encoded) name or value, truncated.
        field: String,
    },
}

/// Render the TwiML document that hands the call to our media stream.
///
/// Output is one line, like twilio-python's `VoiceResponse().connect().stream(...)`:
/// attributes in alphabetical order, empty elements as `<X … />`, all values escaped.
pub fn connect_stream_twiml(t: &StreamTwiml<'_>) -> String {
    let mut out = String::with_capacity(256 + t.fallback.map_or(0, str::len));
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream"#);
    // Alphabetical: statusCallback < url.
    if let Some(cb) = t.status_callback {
        push_attr(&mut out, "statusCallback", cb);
    }
    push_attr(&mut out, "url", t.stream_url);
    if t.parameters.is_empty() {
        out.push_str(" />");
    } else {
        out.push('>');
        for (name, value) in t.parameters {
            out.push_str("<Parameter");
            push_attr(&mut out, "name", name);
            push_attr(&mut out, "value", value);
            out.push_str(" />");
        }
        out.push_str("</Stream>");
    }
    out.push_str("</Connect>");
    if let Some(fallback) = t.fallback {
        out.push_str(fallback.trim());
    }
    out.push_str("</Response>");
    out
}

/// `<Play digits>` into the call, then a fresh `<Connect><Stream>` back to the bridge (the
/// REST update that carries this ends the current stream; telephony.md §3.4).
pub fn play_digits_then_stream_twiml(digits: &str, t: &StreamTwiml<'_>) -> String {
    let stream = connect_stream_twiml(t);
    let mut play = String::from("<Play");
    push_attr(&mut play, "digits", digits);
    play.push_str(" />");
    stream.replacen("<Response>", &format!("<Response>{play}"), 1)
}

/// Inputs of a transfer's `<Dial>`.
pub struct DialTwiml<'a> {
    /// E.164 number or `sip:` URI.
    pub target: &'a str,
    /// `callerId` attribute.
    pub caller_id: Option<&'a str>,
    /// Seconds to ring.
    pub timeout_secs: u32,
    /// TwiML URL played to the answering party before connecting (`<Number url>`).
    pub whisper_url: Option<&'a str>,
    /// Verbs after `</Dial>` (run when the dialled party does not answer).
    pub fallback: Option<&'a str>,
}

/// `<Response><Dial callerId=… timeout=…><Number url=…>+1…</Number></Dial>…</Response>`
/// (`<Sip>` for SIP URIs), attributes alphabetical as twilio-python writes them.
pub fn dial_twiml(d: &DialTwiml<'_>) -> String {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial"#);
    if let Some(c) = d.caller_id {
        push_attr(&mut out, "callerId", c);
    }
    push_attr(&mut out, "timeout", &d.timeout_secs.to_string());
    out.push('>');
    let noun = if d.target.starts_with("sip:") {
        "Sip"
    } else {
        "Number"
    };
    out.push('<');
    out.push_str(noun);
    if let Some(u) = d.whisper_url {
        push_attr(&mut out, "url", u);
    }
    out.push('>');
    out.push_str(&xml_escape(d.target));
    out.push_str("</");
    out.push_str(noun);
    out.push_str("></Dial>");
    if let Some(f) = d.fallback {
        out.push_str(f.trim());
    }
    out.push_str("</Response>");
    out
}

/// `<Response><Say>text</Say></Response>` (the whisper played to a transfer's callee).
pub fn say_twiml(text: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>{}</Say></Response>"#,
        xml_escape(text)
    )
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(&xml_escape(value));
    out.push('"');
}

/// Escape text for an XML attribute value or element text, as Python's ElementTree does for
/// attributes (`& < > "` and tab/CR/LF as character references so they survive attribute
/// normalisation). Characters XML 1.0 cannot carry at all (other C0 controls) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#09;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Check that a configured fallback fragment is plausible TwiML verbs: well-formed tags,
/// balanced, top-level elements only (verb names start with an uppercase letter), no
/// `<Response>` or XML declaration (it is spliced inside ours), no stray text or bare `&`.
/// An empty or all-whitespace fragment is fine (nothing follows; the call ends).
pub fn validate_fallback_fragment(s: &str) -> Result<(), String> {
    let bytes = s.as_bytes();
    let mut stack: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                if s[i..].starts_with("<!--") {
                    let end = s[i + 4..]
                        .find("-->")
                        .ok_or_else(|| format!("unterminated comment at byte {i}"))?;
                    i += 4 + end + 3;
                    continue;
                }
                if s[i..].starts_with("<?") || s[i..].starts_with("<!") {
                    return Err(format!(
                        "fallback twiml must be verbs only, found a declaration at byte {i}"
                    ));
                }
                let end = find_tag_end(s, i).ok_or_else(|| {
                    format!("unterminated tag at byte {i}: {:?}", excerpt(&s[i..]))
                })?;
                let inner = &s[i + 1..end];
                let (closing, body) = match inner.strip_prefix('/') {
                    Some(rest) => (true, rest),
                    None => (false, inner),
                };
                let self_closing = !closing && body.ends_with('/');
                let body = body.strip_suffix('/').unwrap_or(body);
                let name_len = body.find(|c: char| c.is_whitespace()).unwrap_or(body.len());
                let name = &body[..name_len];
                if !is_xml_name(name) {
                    return Err(format!("bad tag name {:?} at byte {i}", excerpt(name)));
                }
                if name.eq_ignore_ascii_case("response") {
                    return Err(
                        "fallback twiml must not contain <Response>: it is placed inside ours"
                            .to_string(),
                    );
                }
                if closing {
                    if body[name_len..].trim() != "" {
                        return Err(format!("closing tag </{name}> has attributes"));
                    }
                    match stack.pop() {
                        Some(open) if open == name => {}
                        Some(open) => return Err(format!("</{name}> closes <{open}> at byte {i}")),
                        None => return Err(format!("</{name}> at byte {i} has no opening tag")),
                    }
                } else {
                    check_attributes(&body[name_len..], name)?;
                    if stack.is_empty() && !name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        return Err(format!(
                            "<{name}> is not a twiml verb (verbs are capitalised)"
                        ));
                    }
                    if !self_closing {
                        stack.push(name);
                    }
                }
                i = end + 1;
            }
            b'&' => {
                let semi = s[i..]
                    .find(';')
                    .ok_or_else(|| format!("bare '&' at byte {i}; write &amp;"))?;
                check_entity(&s[i + 1..i + semi]).map_err(|e| format!("{e} at byte {i}"))?;
                i += semi + 1;
            }
            b if stack.is_empty() && !b.is_ascii_whitespace() => {
                return Err(format!(
                    "text outside any verb at byte {i}: {:?}",
                    excerpt(&s[i..])
                ));
            }
            _ => i += 1,
        }
    }
    match stack.last() {
        Some(open) => Err(format!("<{open}> is never closed")),
        None => Ok(()),
    }
}

/// Index of the `>` closing the tag that starts at `start`, skipping quoted attribute values.
fn find_tag_end(s: &str, start: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (off, &b) in s.as_bytes()[start + 1..].iter().enumerate() {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'<') => return None,
            (None, b'>') => return Some(start + 1 + off),
            _ => {}
        }
    }
    None
}

fn check_attributes(mut rest: &str, tag: &str) -> Result<(), String> {
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(());
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("attribute without value in <{tag}>: {:?}", excerpt(rest)))?;
        let name = rest[..eq].trim_end();
        if !is_xml_name(name) {
            return Err(format!("bad attribute name {:?} in <{tag}>", excerpt(name)));
        }
        let after = rest[eq + 1..].trim_start();
        let q = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let q = q.ok_or_else(|| format!("attribute {name} in <{tag}> is not quoted"))?;
        let close = after[1..]
            .find(q)
            .ok_or_else(|| format!("attribute {name} in <{tag}> is not terminated"))?;
        let value = &after[1..1 + close];
        if value.contains('<') {
            return Err(format!("attribute {name} in <{tag}> contains '<'"));
        }
        let mut v = value;
        while let Some(amp) = v.find('&') {
            let semi = v[amp..]
                .find(';')
                .ok_or_else(|| format!("bare '&' in attribute {name} of <{tag}>; write &amp;"))?;
            check_entity(&v[amp + 1..amp + semi])?;
            v = &v[amp + semi + 1..];
        }
        rest = &after[1 + close + 1..];
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return Err(format!("attributes in <{tag}> must be separated by spaces"));
        }
    }
}

fn check_entity(name: &str) -> Result<(), String> {
    let ok = match name {
        "amp" | "lt" | "gt" | "quot" | "apos" => true,
        n if n.starts_with("#x") => n.len() > 2 && n[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        n if n.starts_with('#') => n.len() > 1 && n[1..].bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("unknown entity &{};", excerpt(name)))
    }
}

fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Decode an `application/x-www-form-urlencoded` body into `(name, value)` pairs, in order.
/// `+` is a space; `%XX` is a byte; a pair without `=` has an empty value; empty segments
/// (`a=1&&b=2`) are skipped. Repeated names are kept (they matter for signatures).
pub fn parse_form(body: &str) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    let mut offset = 0;
    for segment in body.split('&') {
        let seg_start = offset;
        offset += segment.len() + 1;
        if segment.is_empty() {
            continue;
        }
        let (name, value, value_start) = match segment.find('=') {
            Some(eq) => (&segment[..eq], &segment[eq + 1..], seg_start + eq + 1),
            None => (segment, "", seg_start + segment.len()),
        };
        out.push((
            form_decode(name, seg_start)?,
            form_decode(value, value_start)?,
        ));
    }
    Ok(out)
}

fn form_decode(s: &str, base: usize) -> Result<String, FormError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        return Err(FormError::BadPercent {
                            position: base + i,
                            excerpt: String::from_utf8_lossy(&bytes[i..(i + 3).min(bytes.len())])
                                .into_owned(),
                        })
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8 { field: excerpt(s) })
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
    fn twiml_matches_twilio_python_shape() {
        let params = pairs(&[("tenant", "acme"), ("callerId", "+14155550123")]);
        let xml = connect_stream_twiml(&StreamTwiml {
            stream_url: "wss://bridge.example.com/twilio/media",
            parameters: &params,
            status_callback: Some("https://bridge.example.com/twilio/stream-status"),
            fallback: None,
        });
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream statusCallback="https://bridge.example.com/twilio/stream-status" url="wss://bridge.example.com/twilio/media"><Parameter name="tenant" value="acme" /><Parameter name="callerId" value="+14155550123" /></Stream></Connect></Response>"#
        );
    }

    #[test]
    fn twiml_without_parameters_uses_empty_element_and_fallback_follows_connect() {
        let xml = connect_stream_twiml(&StreamTwiml {
            stream_url: "wss://h/twilio/media",
            parameters: &[],
            status_callback: None,
            fallback: Some("<Say>Sorry, goodbye.</Say><Hangup />"),
        });
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/twilio/media" /></Connect><Say>Sorry, goodbye.</Say><Hangup /></Response>"#
        );
    }

    #[test]
    fn twiml_values_are_escaped() {
        let params = pairs(&[("a\"<b>", "x&y\nz")]);
        let xml = connect_stream_twiml(&StreamTwiml {
            stream_url: "wss://h/m?x=1&y=2",
            parameters: &params,
            status_callback: None,
            fallback: None,
        });
        assert!(xml.contains(r#"url="wss://h/m?x=1&amp;y=2""#), "{xml}");
        assert!(
            xml.contains(r#"<Parameter name="a&quot;&lt;b&gt;" value="x&amp;y&#10;z" />"#),
            "{xml}"
        );
    }

    #[test]
    fn xml_escape_cases() {
        assert_eq!(xml_escape("plain +1 (415)"), "plain +1 (415)");
        assert_eq!(xml_escape("<&>\"'"), "&lt;&amp;&gt;&quot;'");
        assert_eq!(xml_escape("a\tb\rc\u{1}"), "a&#09;b&#13;c\u{FFFD}");
        assert_eq!(xml_escape("héllo ☎"), "héllo ☎");
    }

    #[test]
    fn fallback_fragments_accepted() {
        for ok in [
            "",
            "  ",
            "<Hangup/>",
            "<Hangup />",
            "<Say voice=\"alice\">We&apos;re sorry &amp; goodbye.</Say>\n<Hangup/>",
            "<Redirect method='POST'>https://x.example/next?a=1&amp;b=2</Redirect>",
            "<Dial><Number>+14155550199</Number></Dial>",
            "<!-- keep the caller --><Pause length=\"1\"/><Hangup/>",
        ] {
            assert_eq!(validate_fallback_fragment(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn fallback_fragments_rejected_with_reason() {
        let cases = [
            ("<Response><Hangup/></Response>", "<Response>"),
            ("<?xml version=\"1.0\"?><Hangup/>", "declaration"),
            ("<Say>hi", "never closed"),
            ("<Say>hi</Play>", "closes <Say>"),
            ("</Say>", "no opening tag"),
            ("<>", "bad tag name"),
            ("< Say>x</Say>", "bad tag name"),
            ("Goodbye", "text outside"),
            ("<Say>a & b</Say>", "bare '&'"),
            ("<Say>a &nbsp; b</Say>", "unknown entity"),
            ("<Say voice=alice>x</Say>", "not quoted"),
            ("<Say voice=\"alice>x</Say>", "unterminated"),
            ("<hangup/>", "not a twiml verb"),
            ("<Say", "unterminated tag"),
        ];
        for (bad, why) in cases {
            let err = validate_fallback_fragment(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err:?} should mention {why:?}");
        }
    }

    #[test]
    fn form_decoding() {
        let got = parse_form(
            "Called=%2B15005550006&CalledCity=&CallerCity=SAN+FRANCISCO&Flag&&Timestamp=Tue%2C+01+Sep",
        )
        .unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("Called", "+15005550006"),
                ("CalledCity", ""),
                ("CallerCity", "SAN FRANCISCO"),
                ("Flag", ""),
                ("Timestamp", "Tue, 01 Sep"),
            ])
        );
        assert_eq!(parse_form("").unwrap(), vec![]);
        assert_eq!(
            parse_form("a=%C3%A9&a=2").unwrap(),
            pairs(&[("a", "é"), ("a", "2")])
        );
    }

    #[test]
    fn form_decoding_errors() {
        assert_eq!(
            parse_form("a=1&b=%zz"),
            Err(FormError::BadPercent {
                position: 6,
                excerpt: "%zz".into()
            })
        );
        assert!(matches!(
            parse_form("a=%4"),
            Err(FormError::BadPercent { position: 2, .. })
        ));
        assert!(matches!(
            parse_form("x%"),
            Err(FormError::BadPercent { .. })
        ));
        assert!(matches!(
            parse_form("a=%ff%fe"),
            Err(FormError::NotUtf8 { .. })
        ));
    }
}
