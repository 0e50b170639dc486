//! jitgate-store
