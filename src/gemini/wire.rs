//! TODO(gemini helper)
