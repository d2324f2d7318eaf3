//! The sentences the bridge says to the model (never to the caller): one place, so the call
//! machine holds no prose and a reviewer sees every instruction the model gets.

/// After a turn ended with no usable reply (refused, malformed, empty after the caller spoke).
pub const RETRY_REPLY: &str = "[Your last reply did not reach the caller. Answer what the \
    caller just said again, briefly.]";

/// After a reconnection while nothing was cut off, for a fresh session seeded with the
/// transcript.
pub const FRESH_SESSION: &str = "[The phone call is still going on; the line was \
    reconnected. Continue the conversation above where it left off; do not greet again.]";

/// After a reconnection, on models where context cannot be added without an answer: the
/// fresh session's history ends with this turn, which the model answers.
pub const FRESH_SESSION_PROMPTED: &str = "[The phone call is still going on; the line was \
    reconnected. Do not greet again. If the caller was waiting for an answer, give it; \
    otherwise say only that you are still there.]";

/// After the model connection died in the middle of a reply: finish it. `heard` is what the
/// caller heard of it (everything generated before the fault is played out).
pub fn finish_cut_reply(heard: &str) -> String {
    if heard.is_empty() {
        "[The line dropped while you were answering. Give your answer again, briefly, without \
         greeting.]"
            .to_string()
    } else {
        format!(
            "[The line dropped while you were answering. The caller heard you up to: \
             \"{heard}\". Continue your answer from exactly there, without repeating it and \
             without greeting.]"
        )
    }
}
