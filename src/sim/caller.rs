//! TODO(sim helper)
