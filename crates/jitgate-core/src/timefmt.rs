//! How a time is written in messages, audit records and webhook payloads: RFC 3339 with as many
//! fraction digits as the time has (`2026-11-25T16:45:14Z`, `…14.5Z`). The API's own wire form
//! (always seven digits, as Azure writes it) is `jitgate_api_types::datetime::format`.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `t` in RFC 3339. A time RFC 3339 cannot express (a year outside 0–9999, an offset with
/// seconds) is written in `time`'s own form rather than lost.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3339_and_keeps_what_it_cannot_express() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_625_114).expect("time");
        assert_eq!(rfc3339(t), "2026-11-25T16:45:14Z");
        assert_eq!(rfc3339(t + time::Duration::milliseconds(500)), "2026-11-25T16:45:14.5Z");
        let odd = t.to_offset(time::UtcOffset::from_hms(0, 0, 30).expect("offset"));
        assert!(rfc3339(odd).starts_with("2026-11-25 16:45:44"), "{}", rfc3339(odd));
    }
}
