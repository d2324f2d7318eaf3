//! TODO(twilio helper)
