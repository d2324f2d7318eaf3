//! Redaction for logs: phone numbers and caller identities never reach a log line in full.
//!
//! The rule (issue 5, privacy): numbers are logged with only their last 2 digits visible,
//! transcripts only at debug level, secrets never. This module holds the helpers for the
//! first part; log sites call them on anything that may carry a caller's or a destination's
//! number (From/To, transfer targets, caller IDs, error texts from Twilio or an operator).
//!
//! - [`redact_number`]: one address — `+14155550123` → `+*********23`,
//!   `sip:alice@pbx.example.com` → `sip:***ce@pbx.example.com`, `client:bob` → `client:*ob`.
//! - [`redact_destination`]: a transfer destination, which is either a configured name (kept:
//!   it is the operator's label, not personal data) or an address (redacted).
//! - [`redact_text`]: free text (error messages) with every phone-number-like run masked.

/// Characters kept visible at the end of a redacted number or identifier.
const KEEP: usize = 2;

/// URI schemes whose user part identifies a person.
const SCHEMES: [&str; 4] = ["sips:", "sip:", "tel:", "client:"];

/// Redacts one phone number or caller identity, keeping its shape and its last 2 digits.
///
/// - Plain numbers: a leading `+` and any separators stay, every digit except the last 2 is
///   masked: `+14155550123` → `+*********23`, `(415) 555-0123` → `(***) ***-**23`. Letters in
///   a plain identifier are masked like digits (`anonymous` → `*******us`).
/// - `sip:`/`sips:` URIs: the user part (before `@`) is masked except its last 2 characters;
///   the host and parameters stay: `sip:+14155550123@pbx.example.com` →
///   `sip:+*********23@pbx.example.com`.
/// - `tel:` URIs are masked as plain numbers, `client:` identifiers like SIP users.
/// - The empty string stays empty.
pub fn redact_number(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    for scheme in SCHEMES {
        if s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let (head, rest) = s.split_at(scheme.len());
            let (user, host) = match rest.find(['@', ';', '?']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            return format!("{head}{}{host}", mask_plain(user));
        }
    }
    mask_plain(s)
}

/// Masks every alphanumeric character of `s` except the last [`KEEP`] ones; other characters
/// (`+`, separators) stay. A string of at most [`KEEP`] alphanumerics is masked entirely, so a
/// one- or two-digit value is never shown whole as if it were a suffix.
fn mask_plain(s: &str) -> String {
    let total = s.chars().filter(|c| c.is_alphanumeric()).count();
    let keep_from = if total > KEEP {
        total - KEEP
    } else {
        usize::MAX
    };
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen > keep_from {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// A transfer destination for the log: an address (a number, a SIP/tel/client URI, anything
/// with a digit run or an `@`) is redacted with [`redact_number`]; a configured destination
/// name such as `billing` is kept.
pub fn redact_destination(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let address = s.starts_with('+')
        || s.contains('@')
        || SCHEMES.iter().any(|sch| lower.starts_with(sch))
        || longest_digit_run(s) >= 3;
    if address {
        redact_number(s)
    } else {
        s.to_string()
    }
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')')
}

fn longest_digit_run(s: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// Digits a run needs to count as a phone number in free text. Shorter runs (Twilio error
/// codes like 21220, HTTP statuses, durations, ports) stay readable.
const MIN_NUMBER_DIGITS: usize = 7;

/// Free text (an error message, a response body excerpt) with every phone-number-like run
/// masked by [`redact_number`]: an optional `+` or `(`, then digits possibly split by spaces,
/// `-`, `.`, `(` or `)` (at most two in a row), holding at least 7 digits, not glued to letters or digits on either
/// side (so hex ids such as CallSids are left alone).
pub fn redact_text(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let glued_before = i > 0 && chars[i - 1].is_alphanumeric();
        let starts = !glued_before
            && (chars[i].is_ascii_digit()
                || (matches!(chars[i], '+' | '(')
                    && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())));
        if starts {
            // Extend over digits and separators that are followed by more digits.
            let mut end = i + 1;
            let mut last_digit_end = if chars[i].is_ascii_digit() { i + 1 } else { i };
            let mut digits = usize::from(chars[i].is_ascii_digit());
            while end < chars.len() {
                let c = chars[end];
                if c.is_ascii_digit() {
                    digits += 1;
                    end += 1;
                    last_digit_end = end;
                } else if is_separator(c) {
                    // At most two separators in a row (`) `), and a digit after them.
                    let gap = if chars.get(end + 1).is_some_and(|n| is_separator(*n)) {
                        2
                    } else {
                        1
                    };
                    if chars.get(end + gap).is_some_and(|n| n.is_ascii_digit()) {
                        end += gap;
                    } else {
                        break;
                    }
                } else {
                    break;
                }
            }
            let glued_after = chars
                .get(last_digit_end)
                .is_some_and(|c| c.is_alphanumeric());
            if digits >= MIN_NUMBER_DIGITS && !glued_after {
                let run: String = chars[i..last_digit_end].iter().collect();
                out.push_str(&redact_number(&run));
                i = last_digit_end;
                continue;
            }
            // Not a number: copy up to the end of the digit run as is.
            let upto = last_digit_end.max(i + 1);
            out.extend(&chars[i..upto]);
            i = upto;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// A peer-supplied string made safe for a log line: control characters and non-ASCII escaped
/// (`escape_debug`, so no newline or ANSI escape reaches the log) and cut to `max` characters
/// (`…` marks a cut).
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// Removes the secret from text we did not write (server bodies, library errors).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    let encoded = urlencoding::encode(secret);
    text.replace(secret, "REDACTED")
        .replace(encoded.as_ref(), "REDACTED")
}

/// At most `max` bytes of `text` (cut on a character boundary, then `…`).
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_keep_plus_and_last_two_digits() {
        assert_eq!(redact_number("+14155550123"), "+*********23");
        assert_eq!(redact_number("+442071838750"), "+**********50");
        assert_eq!(redact_number("4155550123"), "********23");
        assert_eq!(redact_number("(415) 555-0123"), "(***) ***-**23");
    }

    #[test]
    fn empty_and_tiny_values() {
        assert_eq!(redact_number(""), "");
        assert_eq!(redact_number("7"), "*");
        assert_eq!(redact_number("42"), "**");
        assert_eq!(redact_number("+"), "+");
        assert_eq!(redact_number("123"), "*23");
    }

    #[test]
    fn sip_and_client_identities_mask_the_user_part() {
        assert_eq!(
            redact_number("sip:alice@pbx.example.com"),
            "sip:***ce@pbx.example.com"
        );
        assert_eq!(
            redact_number("sip:+14155550123@pbx.example.com;transport=tls"),
            "sip:+*********23@pbx.example.com;transport=tls"
        );
        assert_eq!(
            redact_number("SIPS:bob.smith@example.org"),
            "SIPS:***.***th@example.org"
        );
        assert_eq!(redact_number("client:bob"), "client:*ob");
        assert_eq!(redact_number("tel:+14155550123"), "tel:+*********23");
        assert_eq!(redact_number("sip:"), "sip:");
    }

    #[test]
    fn plain_identifiers_are_masked_too() {
        assert_eq!(redact_number("anonymous"), "*******us");
    }

    #[test]
    fn destinations_keep_names_and_redact_addresses() {
        assert_eq!(redact_destination("billing"), "billing");
        assert_eq!(redact_destination("sales-2"), "sales-2");
        assert_eq!(redact_destination("+14155550100"), "+*********00");
        assert_eq!(
            redact_destination("sip:desk@pbx.example.com"),
            "sip:**sk@pbx.example.com"
        );
        assert_eq!(redact_destination(""), "");
    }

    #[test]
    fn text_masks_number_runs_only() {
        assert_eq!(
            redact_text("The 'To' number +14155550123 is not a valid phone number."),
            "The 'To' number +*********23 is not a valid phone number."
        );
        assert_eq!(
            redact_text("twilio answered http 400 (code 21220): Call is not in-progress"),
            "twilio answered http 400 (code 21220): Call is not in-progress"
        );
        assert_eq!(
            redact_text("dial 415-555-0123 or (020) 7183 8750"),
            "dial ***-***-**23 or (***) **** **50"
        );
        // Hex ids and digits glued to letters are not numbers.
        let sid = "CA00000000000000000000000000000201";
        assert_eq!(redact_text(sid), sid);
        assert_eq!(redact_text("id 12345678abc"), "id 12345678abc");
        assert_eq!(redact_text("sip:+442071838750@x"), "sip:+**********50@x");
        assert_eq!(redact_text(""), "");
        assert_eq!(redact_text("héllo 1234567 wörld"), "héllo *****67 wörld");
    }

    #[test]
    fn bounded_escapes_control_characters_and_cuts() {
        assert_eq!(bounded("a\nb\u{1b}[31m", 64), "a\\nb\\u{1b}[31m");
        assert_eq!(bounded("abcdef", 3), "abc…");
    }
}
