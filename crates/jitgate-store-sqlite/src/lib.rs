//! jitgate-store-sqlite
