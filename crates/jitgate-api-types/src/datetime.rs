//! Date-times on the wire: RFC 3339 with 0 to 9 fractional digits in, always 7 digits and `Z` out
//! (the form Azure's own responses use, e.g. `2018-05-17T08:06:45.5691611Z`).

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Parses `2026-11-25T16:45:14Z`, `…14.1234567Z`, `…14+01:00`, and a zone-less `…14.000`, which
/// is read as UTC, as Azure reads it (answers always carry the `Z`). The date and the time must be
/// separated by `T`: `2026-12-01 10:00:00` is refused rather than guessed at.
pub fn parse(s: &str) -> Result<OffsetDateTime, String> {
    let t = s.trim();
    let shown = || jitgate_core::ids::shown(s);
    if t.len() > 40 {
        return Err(format!("'{}' is not an RFC 3339 date-time such as 2026-11-25T16:45:14.000Z", shown()));
    }
    if t.as_bytes().get(10).is_some_and(|b| *b != b'T') {
        return Err(format!(
            "'{}': separate the date and the time with 'T', e.g. 2026-11-25T16:45:14Z (times without an offset are UTC)",
            shown()
        ));
    }
    if let Ok(dt) = OffsetDateTime::parse(t, &Rfc3339) {
        // An offset can move a time of the year 0000 or 9999 out of the years RFC 3339 (and
        // the wire form) can write in UTC.
        return dt
            .checked_to_offset(UtcOffset::UTC)
            .filter(|u| (0..=9999).contains(&u.year()))
            .ok_or_else(|| format!("'{}' is outside the years 0000 to 9999 once in UTC", shown()));
    }
    let zoneless = t.len() > 10 && !t[10..].contains(['Z', 'z', '+', '-']);
    if zoneless {
        if let Ok(dt) = OffsetDateTime::parse(&format!("{t}Z"), &Rfc3339) {
            return Ok(dt);
        }
    }
    Err(format!("'{}' is not an RFC 3339 date-time such as 2026-11-25T16:45:14.000Z", shown()))
}

/// Writes `YYYY-MM-DDTHH:MM:SS.fffffffZ` in UTC.
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zero_to_seven_fraction_digits_and_offsets() {
        let base = parse("2026-11-25T16:45:14Z").expect("0 digits");
        assert_eq!(base.unix_timestamp(), 1_795_625_114);
        for (text, nanos) in [
            ("2026-11-25T16:45:14.5Z", 500_000_000),
            ("2026-11-25T16:45:14.000Z", 0),
            ("2026-11-25T16:45:14.123456Z", 123_456_000),
            ("2026-11-25T16:45:14.5691611Z", 569_161_100),
            ("2026-11-25T16:45:14.5691611", 569_161_100),
        ] {
            let t = parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.unix_timestamp(), base.unix_timestamp(), "{text}");
            assert_eq!(t.nanosecond(), nanos, "{text}");
        }
        assert_eq!(parse("2026-11-25T17:45:14+01:00").map(|t| t.unix_timestamp()), Ok(base.unix_timestamp()));
    }

    #[test]
    fn refuses_what_is_not_a_date_time() {
        for bad in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-13-25T16:45:14Z",
            "16:45:14",
            "2026-11-25T16:45:14ZZ",
            "2026-12-01 10:00:00",
            "2026-12-01 10:00:00Z",
            "2026-12-01t10:00:00Z",
            "2026-12-01T10:00:00+01:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_time_without_an_offset_is_utc_and_a_space_is_refused_clearly() {
        let zoneless = parse("2026-12-01T10:00:00").expect("read as UTC");
        assert_eq!(format(zoneless), "2026-12-01T10:00:00.0000000Z");
        let e = parse("2026-12-01 10:00:00").expect_err("space");
        assert!(e.contains("'T'"), "{e}");
        assert!(parse(&"2026-12-01T10:00:00".repeat(5000)).expect_err("long").len() < 300);
    }

    #[test]
    fn an_offset_cannot_move_a_time_out_of_the_years_it_can_be_written_in() {
        // Found by the datetime fuzz target: the first panicked (out of `time`'s range), the
        // second was accepted and written as the year -001, which nothing reads back.
        for edge in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            let e = parse(edge).expect_err("out of range in UTC");
            assert!(e.contains("0000 to 9999"), "{e}");
        }
        let last = parse("9999-12-31T23:59:59.9999999+00:00").expect("the last time");
        assert_eq!(format(last), "9999-12-31T23:59:59.9999999Z");
        assert_eq!(parse("0000-01-01T00:30:00-00:30").map(format), Ok("0000-01-01T01:00:00.0000000Z".into()));
    }

    #[test]
    fn formats_with_seven_digits_and_round_trips() {
        let t = parse("2026-11-25T16:45:14.5691611Z").expect("valid");
        assert_eq!(format(t), "2026-11-25T16:45:14.5691611Z");
        assert_eq!(format(parse("2026-11-25T16:45:14Z").expect("valid")), "2026-11-25T16:45:14.0000000Z");
        assert_eq!(parse(&format(t)), Ok(t));
    }
}
