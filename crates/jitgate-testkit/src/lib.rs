//! jitgate-testkit
