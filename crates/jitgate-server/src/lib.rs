//! jitgate-server
