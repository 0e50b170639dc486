//! jitgate-api-types
