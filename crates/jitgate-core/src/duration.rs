//! ISO-8601 durations as Azure uses them (`PT3H`, `PT30M`, `P1D`, `PT1H30M`, `PT90M`).
//!
//! Calendar units (years, months) are refused: their length depends on a date, and a window of
//! access must have one exact length. Weeks and days are fixed (7 × 24 h, 24 h).

use std::fmt;

use time::Duration;

/// A parsed duration together with the text it came from (echoed back unchanged on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDuration {
    text: String,
    duration: Duration,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AccessDuration {
    /// Parses `P[nW][nD][T[nH][nM][n[.f]S]]`.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let duration = parse_iso8601(text)?;
        Ok(AccessDuration { text: text.to_owned(), duration })
    }

    /// Builds a value from a whole number of seconds, written in the canonical `PT…` form.
    pub fn from_seconds(secs: i64) -> Self {
        let duration = Duration::seconds(secs);
        AccessDuration { text: format_iso8601(duration), duration }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl fmt::Display for AccessDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_iso8601(text: &str) -> Result<Duration, DurationError> {
    let bad = |why: &str| {
        let shown = crate::ids::shown(text);
        DurationError(format!("'{shown}' is not an ISO-8601 duration such as PT3H or PT30M: {why}"))
    };
    let upper = text.trim().to_ascii_uppercase();
    let rest = upper.strip_prefix('P').ok_or_else(|| bad("it must start with 'P'"))?;
    if rest.is_empty() {
        return Err(bad("it names no amount"));
    }
    let (date_part, time_part) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return Err(bad("nothing follows 'T'"));
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut total_nanos: i128 = 0;
    let mut add = |amount: f64, unit_secs: i128| -> Result<(), DurationError> {
        let nanos = amount * (unit_secs as f64) * 1e9;
        if !nanos.is_finite() || nanos > 1e20 {
            return Err(bad("the amount is too large"));
        }
        total_nanos += nanos.round() as i128;
        Ok(())
    };
    let mut seen_any = false;
    for (amount, unit) in components(date_part).map_err(|e| bad(&e))? {
        seen_any = true;
        match unit {
            'W' => add(amount, 7 * 86_400)?,
            'D' => add(amount, 86_400)?,
            'Y' | 'M' => return Err(bad("years and months have no fixed length; use days or hours")),
            other => return Err(bad(&format!("unknown unit '{other}' before 'T'"))),
        }
    }
    if let Some(t) = time_part {
        let mut order = 0;
        for (amount, unit) in components(t).map_err(|e| bad(&e))? {
            seen_any = true;
            let (rank, secs) = match unit {
                'H' => (1, 3600),
                'M' => (2, 60),
                'S' => (3, 1),
                other => return Err(bad(&format!("unknown unit '{other}' after 'T'"))),
            };
            if rank <= order {
                return Err(bad("units must appear once each, in the order H, M, S"));
            }
            order = rank;
            add(amount, secs)?;
        }
    }
    if !seen_any {
        return Err(bad("it names no amount"));
    }
    let nanos = i64::try_from(total_nanos).map_err(|_| bad("the amount is too large"))?;
    Ok(Duration::nanoseconds(nanos))
}

/// Splits `3H30M` into `[(3.0,'H'), (30.0,'M')]`.
fn components(s: &str) -> Result<Vec<(f64, char)>, String> {
    let mut out = Vec::new();
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' || c == ',' {
            number.push(if c == ',' { '.' } else { c });
        } else if c.is_ascii_alphabetic() {
            if number.is_empty() {
                return Err(format!("unit '{c}' has no number before it"));
            }
            let amount: f64 =
                number.parse().map_err(|_| format!("'{}' is not a number", crate::ids::shown(&number)))?;
            out.push((amount, c));
            number.clear();
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    if !number.is_empty() {
        return Err(format!("'{}' has no unit after it", crate::ids::shown(&number)));
    }
    Ok(out)
}

/// Writes a duration as `PT#H#M#S`, leaving out zero parts (`PT0S` for zero).
pub fn format_iso8601(d: Duration) -> String {
    let total = d.whole_seconds().max(0);
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || total == 0 {
        out.push_str(&format!("{s}S"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> i64 {
        AccessDuration::parse(text).map(|d| d.duration().whole_seconds()).unwrap_or(-1)
    }

    #[test]
    fn accepts_the_forms_azure_clients_send() {
        assert_eq!(secs("PT3H"), 3 * 3600);
        assert_eq!(secs("PT5M"), 300);
        assert_eq!(secs("PT24H"), 86_400);
        assert_eq!(secs("P1D"), 86_400);
        assert_eq!(secs("PT1H30M"), 5400);
        assert_eq!(secs("PT90M"), 5400);
        assert_eq!(secs("PT45S"), 45);
        assert_eq!(secs("PT0.5S"), 0);
        assert_eq!(secs("P1DT1H"), 90_000);
        assert_eq!(secs("P1W"), 7 * 86_400);
        assert_eq!(secs("pt2h"), 7200);
        assert_eq!(AccessDuration::parse("PT1.5H").map(|d| d.duration()), Ok(Duration::minutes(90)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in
            ["", "P", "PT", "3H", "three hours", "PT3", "PTH", "P1Y", "P2M", "PT3M2H", "PT1H1H", "PT-1H", "PT1X", "P1H"]
        {
            assert!(AccessDuration::parse(bad).is_err(), "{bad:?} should be refused");
        }
        // Found by the duration fuzz target: the message quoted all of a long input.
        for long in [format!("PT{}Q", "1".repeat(2000)), format!("PT{}", "1.".repeat(2000))] {
            assert!(AccessDuration::parse(&long).expect_err("long").0.len() < 400);
        }
    }

    #[test]
    fn keeps_the_text_it_was_given_and_formats_canonically() {
        let d = AccessDuration::parse("P1D").expect("valid");
        assert_eq!(d.text(), "P1D");
        assert_eq!(format_iso8601(Duration::minutes(90)), "PT1H30M");
        assert_eq!(format_iso8601(Duration::ZERO), "PT0S");
        assert_eq!(AccessDuration::from_seconds(3 * 3600).text(), "PT3H");
    }

    #[test]
    fn a_refusal_reads_as_its_reason() {
        let e = AccessDuration::parse("P1Y").expect_err("years");
        assert_eq!(e.to_string(), e.0);
        assert!(e.to_string().contains("'P1Y' is not an ISO-8601 duration"), "{e}");
        assert!(e.to_string().contains("years and months have no fixed length"), "{e}");
    }

    #[test]
    fn amounts_past_any_counter_are_refused_however_many_there_are() {
        let huge = "9".repeat(290);
        for text in [format!("P{huge}D"), format!("P{huge}DT{huge}H"), format!("P{huge}W{huge}DT{huge}H{huge}M{huge}S")]
        {
            let e = AccessDuration::parse(&text).expect_err("too large");
            assert!(e.0.ends_with("the amount is too large"), "{e}");
        }
        assert!(AccessDuration::parse(&format!("PT{}S", "9".repeat(400))).is_err(), "past f64");
    }
}
