//! The emitter client (placeholder until implemented).
