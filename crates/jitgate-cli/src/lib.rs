//! jitgate-cli
