//! TODO(audio helper)
