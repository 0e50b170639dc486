//! Who a principal is, and how long the tokens it makes may live.
//!
//! - **Local principals** (created through the API) have names in a strict ASCII set: letters,
//!   digits, `.`, `_`, `-`, `@`, starting with a letter or digit, at most 64 characters. No two
//!   of them can look alike beyond case (names compare case-insensitively), and none can take the
//!   reserved OIDC form, which needs a `:`.
//! - **OIDC identities** are keyed by (issuer, `sub`) and named `oidc:` followed by 32 hex digits
//!   of SHA-256 over the issuer and the subject: a name the user cannot choose, that no local name
//!   can equal, and that differs between issuers for the same subject.
//! - An ID token's **display claim** (`preferred_username`, `email`, …) is only shown, never used
//!   to find a principal. It is cleaned: NFKC-normalised, control, format and bidirectional
//!   characters (U+202E …) removed, whitespace collapsed, at most 64 characters; one that mixes
//!   scripts (Latin with Cyrillic, …) is refused as a display name.
//! - **Token lifetimes**: a new token expires no later than the server-wide maximum and no later
//!   than the credential that asks for it.

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory, Script};
use icu_properties::{CodePointMapData, CodePointSetData, PropertyNamesLong};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::invalid::Invalid;
use crate::timefmt::rfc3339;

pub mod checks;

/// The longest local principal name.
pub const MAX_LOCAL_NAME: usize = 64;
/// What every OIDC principal's name starts with (and no local name can contain).
pub const OIDC_PREFIX: &str = "oidc:";
/// The longest display name kept, in characters.
pub const MAX_DISPLAY_NAME: usize = 64;
/// The longest OIDC subject accepted (OpenID Connect Core: at most 255 ASCII characters).
pub const MAX_SUBJECT: usize = 255;

/// The error code of a refused principal name.
pub const INVALID_PRINCIPAL: &str = "InvalidPrincipal";
/// The error code of a token lifetime the server does not allow.
pub const TOKEN_LIFETIME_TOO_LONG: &str = "TokenLifetimeTooLong";

/// A name from outside, safe to echo in a message: ASCII only (everything else escaped), bounded.
/// Not [`crate::ids::shown`]: that one leaves printable non-ASCII as it is, which would show a
/// look-alike of a principal name (Cyrillic `о` for `o`) as the name itself.
pub fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_LOCAL_NAME + 16).flat_map(char::escape_default).collect();
    if text.chars().count() > MAX_LOCAL_NAME + 16 {
        out.push_str("...");
    }
    out
}

/// Checks the name of a local principal (`POST /api/v1/principals`).
pub fn validate_local_name(name: &str) -> Result<(), Invalid> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() <= MAX_LOCAL_NAME && starts_well && name.chars().all(allowed) {
        return Ok(());
    }
    let why = if name.to_ascii_lowercase().starts_with(OIDC_PREFIX) {
        " (names of the form oidc:... belong to OIDC sign-ins)"
    } else {
        ""
    };
    Err(Invalid::input(
        INVALID_PRINCIPAL,
        Some("name".to_string()),
        format!(
            "'{}' is not a principal name: 1 to {MAX_LOCAL_NAME} ASCII letters, digits, '.', '_', '-' or '@', \
             starting with a letter or digit{why}",
            shown(name)
        ),
    ))
}

/// The issuer as identities are keyed by it (without a trailing `/`, so that both spellings of
/// one issuer are one namespace).
pub fn issuer_key(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

/// Checks an ID token's `sub`: 1 to 255 printable ASCII characters.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT || !subject.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the ID token's subject '{}' is not 1 to {MAX_SUBJECT} printable ASCII characters",
            shown(subject)
        ));
    }
    Ok(())
}

/// The principal name of the OIDC identity (issuer, subject): `oidc:` and 32 hex digits.
pub fn oidc_name(issuer: &str, subject: &str) -> String {
    let issuer = issuer_key(issuer);
    let mut h = Sha256::new();
    for part in [issuer, subject] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut name = String::from(OIDC_PREFIX);
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Whether `name` has the reserved form of an OIDC principal's name.
pub fn is_oidc_name(name: &str) -> bool {
    name.get(..OIDC_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(OIDC_PREFIX))
}

/// Script combinations a single name may use (UTS #39 "highly restrictive"): one script, or
/// Latin with the scripts written together in Japanese, Chinese or Korean.
const ALLOWED_MIXES: [&[Script]; 3] = [
    &[Script::Latin, Script::Han, Script::Hiragana, Script::Katakana],
    &[Script::Latin, Script::Han, Script::Bopomofo],
    &[Script::Latin, Script::Han, Script::Hangul],
];

/// Cleans an ID token's display claim for showing: NFKC, without control, format, bidirectional,
/// private-use or unassigned characters, whitespace collapsed to single spaces, at most
/// [`MAX_DISPLAY_NAME`] characters. Refused (with the reason) when nothing is left or when it
/// mixes scripts the way look-alike names do.
pub fn display_name(raw: &str) -> Result<String, String> {
    let categories = CodePointMapData::<GeneralCategory>::new();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let invisible = |c: char| {
        matches!(
            categories.get(c),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
                | GeneralCategory::Unassigned
        ) || ignorable.contains(c)
    };
    // Bound the work before normalising: a claim is at most a few kB, a display name 64 characters.
    // Invisible characters go before normalising: between two combining marks one would keep them
    // out of canonical order, and the name would change when cleaned again.
    let bounded: String = raw.chars().take(4 * MAX_DISPLAY_NAME).filter(|c| !invisible(*c)).collect();
    let normalised = ComposingNormalizerBorrowed::new_nfkc().normalize(&bounded);
    let mut out = String::new();
    let mut count = 0;
    let mut pending_space = false;
    for c in normalised.chars() {
        let category = categories.get(c);
        if invisible(c) {
            continue;
        }
        if c.is_whitespace()
            || matches!(
                category,
                GeneralCategory::SpaceSeparator | GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
            )
        {
            pending_space = !out.is_empty();
            continue;
        }
        if count == MAX_DISPLAY_NAME {
            break;
        }
        if pending_space {
            if count + 1 == MAX_DISPLAY_NAME {
                // Room for the space alone: end with the word before it rather than join two.
                break;
            }
            out.push(' ');
            count += 1;
        }
        pending_space = false;
        out.push(c);
        count += 1;
    }
    if out.is_empty() {
        return Err("it is empty once control and formatting characters are removed".into());
    }
    let scripts = CodePointMapData::<Script>::new();
    let mut used: Vec<Script> = Vec::new();
    for c in out.chars() {
        let s = scripts.get(c);
        if !matches!(s, Script::Common | Script::Inherited | Script::Unknown) && !used.contains(&s) {
            used.push(s);
        }
    }
    if used.len() > 1 && !ALLOWED_MIXES.iter().any(|mix| used.iter().all(|s| mix.contains(s))) {
        let names = PropertyNamesLong::<Script>::new();
        let list: Vec<&str> = used.iter().map(|s| names.get(*s).unwrap_or("?")).collect();
        return Err(format!("it mixes scripts ({}), as look-alike names do", list.join(", ")));
    }
    Ok(out)
}

/// What bounds the life of a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// The server-wide maximum lifetime; `None`: the operator allows tokens that never expire.
    pub max: Option<Duration>,
    /// When the credential asking for the token stops being valid (`None`: never).
    pub parent_expires: Option<OffsetDateTime>,
}

/// A duration as ISO-8601, in days when it is whole days.
fn iso(d: Duration) -> String {
    if d.whole_seconds() > 0 && d.whole_seconds() % 86_400 == 0 {
        format!("P{}D", d.whole_days())
    } else {
        crate::duration::format_iso8601(d)
    }
}

/// When a new token expires (`None`: never), or why it may not be made.
///
/// An explicit lifetime (`requested`) must be positive, within `limits.max` and end no later
/// than the asking credential; otherwise it is refused, not shortened. Without one, the token
/// lives as long as both limits allow: the maximum, and the asking credential's remaining life.
pub fn token_expiry(
    requested: Option<Duration>,
    now: OffsetDateTime,
    limits: TokenLimits,
) -> Result<Option<OffsetDateTime>, Invalid> {
    let refuse = |code: &'static str, m: String| Invalid::input(code, Some("expiresIn".to_string()), m);
    if let Some(parent) = limits.parent_expires {
        if parent <= now {
            return Err(refuse(TOKEN_LIFETIME_TOO_LONG, "the credential asking for a token has expired".into()));
        }
    }
    let expires = match requested {
        Some(d) if d <= Duration::ZERO => return Err(refuse("InvalidToken", "expiresIn must be positive".into())),
        Some(d) => {
            if let Some(max) = limits.max.filter(|max| d > *max) {
                return Err(refuse(
                    TOKEN_LIFETIME_TOO_LONG,
                    format!(
                        "expiresIn {} is longer than this server allows for a token ({}, --max-token-lifetime)",
                        iso(d),
                        iso(max)
                    ),
                ));
            }
            let end = now.checked_add(d).ok_or_else(|| refuse("InvalidToken", "expiresIn is out of range".into()))?;
            if let Some(parent) = limits.parent_expires.filter(|p| end > *p) {
                return Err(refuse(
                    TOKEN_LIFETIME_TOO_LONG,
                    format!(
                        "a token cannot outlive the credential that creates it, which expires at {} (in {}); \
                         ask for at most that, or leave expiresIn out",
                        rfc3339(parent),
                        iso(parent - now)
                    ),
                ));
            }
            Some(end)
        }
        None => {
            let by_max = limits.max.and_then(|m| now.checked_add(m));
            match (by_max, limits.parent_expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
    };
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_use_a_strict_set() {
        for ok in ["owner", "alice", "Bob", "ci-deploy_2", "ops.team", "svc@example.com", "a", &"a".repeat(64)] {
            assert!(validate_local_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "oidc:0123456789abcdef0123456789abcdef",
            "OIDC:x",
            "o\u{202E}wner",
            "оwner", // Cyrillic о
            "ｏｗｎｅｒ",
            "own er",
            "owner\n",
            "-owner",
            ".hidden",
            "a#b",
            "a/b",
            "a%2Fb",
            &"a".repeat(65),
        ] {
            let e = validate_local_name(bad).expect_err(bad);
            assert_eq!((e.code, e.target.as_deref()), (INVALID_PRINCIPAL, Some("name")));
            assert!(e.message.is_ascii(), "the message echoes the name escaped: {}", e.message);
        }
        assert!(validate_local_name("oidc:x").expect_err("reserved").message.contains("OIDC"));
    }

    #[test]
    fn oidc_names_are_derived_from_issuer_and_subject_only() {
        let a = oidc_name("https://idp.example/realms/a", "u-1");
        assert!(a.starts_with("oidc:") && a.len() == 5 + 32, "{a}");
        assert!(is_oidc_name(&a) && is_oidc_name("OIDC:x") && !is_oidc_name("owner"));
        assert!(validate_local_name(&a).is_err(), "no local name can equal it");
        assert_eq!(a, oidc_name("https://idp.example/realms/a/", "u-1"), "a trailing / is the same issuer");
        assert_ne!(a, oidc_name("https://idp.example/realms/b", "u-1"), "same subject, other issuer");
        assert_ne!(a, oidc_name("https://idp.example/realms/a", "u-2"));
        // Moving bytes between issuer and subject gives another name.
        assert_ne!(oidc_name("https://x/a", "b"), oidc_name("https://x/", "ab"));
    }

    #[test]
    fn subjects_are_printable_ascii_and_bounded() {
        assert!(validate_subject("248289761001").is_ok());
        assert!(validate_subject("f8c3de3d-1fea-4d7c-a8b0-29f63c4c3454").is_ok());
        for bad in ["", "a b", "a\u{202E}b", "ü", "x\n"] {
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
        assert!(validate_subject(&"s".repeat(256)).is_err());
    }

    #[test]
    fn display_names_are_cleaned_bounded_and_single_script() {
        // Found by the jwt fuzz target: a format character between two combining marks kept
        // them out of canonical order, so cleaning the name again changed it.
        let once = display_name("s \u{30B}\u{200B}\u{302E}").expect("clean");
        assert_eq!(once, "s \u{302E}\u{30B}");
        assert_eq!(display_name(&once).as_ref(), Ok(&once), "a fixed point");
        assert_eq!(display_name("erin").as_deref(), Ok("erin"));
        assert_eq!(display_name("o\u{202E}wner").as_deref(), Ok("owner"), "bidi override removed");
        assert_eq!(display_name("a\u{200B}b\u{2066}c\u{2069}\u{FEFF}").as_deref(), Ok("abc"), "zero-width, isolates");
        assert_eq!(display_name("ｏｗｎｅｒ").as_deref(), Ok("owner"), "fullwidth folds by NFKC");
        assert_eq!(display_name("  Erin \t\n Smith  ").as_deref(), Ok("Erin Smith"));
        assert_eq!(display_name("bell\u{7}\u{1b}[31m").as_deref(), Ok("bell[31m"));
        assert_eq!(display_name("Jürgen Groß").as_deref(), Ok("Jürgen Groß"));
        assert_eq!(display_name("山田太郎").as_deref(), Ok("山田太郎"));
        assert_eq!(display_name("やまだ タロウ 山田 taro").as_deref(), Ok("やまだ タロウ 山田 taro"), "Japanese mix");
        assert_eq!(display_name("Ольга").as_deref(), Ok("Ольга"), "one script");
        assert_eq!(display_name(&"x".repeat(500)).map(|s| s.chars().count()), Ok(MAX_DISPLAY_NAME));
        let mixed = display_name("оwner").expect_err("Cyrillic о in a Latin name");
        assert!(mixed.contains("Cyrillic") && mixed.contains("Latin"), "{mixed}");
        assert!(display_name("pαypal").is_err(), "Greek alpha");
        assert!(display_name("\u{202E}\u{200B}").is_err(), "nothing left");
        assert!(display_name("").is_err());
    }

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000 + s).expect("time")
    }

    #[test]
    fn tokens_live_no_longer_than_the_maximum_nor_their_parent() {
        let now = t(0);
        let day = Duration::days(1);
        let max = Some(Duration::days(90));
        let free = TokenLimits { max, parent_expires: None };
        assert_eq!(token_expiry(Some(day), now, free), Ok(Some(now + day)));
        assert_eq!(token_expiry(None, now, free), Ok(Some(now + Duration::days(90))), "default: the maximum");
        let e = token_expiry(Some(Duration::days(36_500)), now, free).expect_err("above the maximum");
        assert_eq!((e.code, e.target.as_deref()), (TOKEN_LIFETIME_TOO_LONG, Some("expiresIn")));
        assert!(e.message.contains("P36500D") && e.message.contains("P90D"), "{}", e.message);
        assert!(token_expiry(Some(Duration::ZERO), now, free).is_err());
        assert!(token_expiry(Some(-day), now, free).is_err());

        // A PT5M parent.
        let child = TokenLimits { max, parent_expires: Some(now + Duration::minutes(5)) };
        let e = token_expiry(Some(Duration::days(36_500)), now, child).expect_err("outlives its parent");
        assert_eq!(e.code, TOKEN_LIFETIME_TOO_LONG);
        let e = token_expiry(Some(Duration::minutes(6)), now, child).expect_err("outlives its parent");
        assert!(e.message.contains("PT5M"), "{}", e.message);
        assert_eq!(token_expiry(None, now, child), Ok(Some(now + Duration::minutes(5))), "default: the parent's end");
        assert_eq!(token_expiry(Some(Duration::minutes(5)), now, child), Ok(Some(now + Duration::minutes(5))));
        let gone = TokenLimits { max, parent_expires: Some(now) };
        assert!(token_expiry(None, now, gone).is_err());

        // Unlimited only when the operator allows it and the parent never expires.
        let unlimited = TokenLimits { max: None, parent_expires: None };
        assert_eq!(token_expiry(None, now, unlimited), Ok(None));
        assert_eq!(token_expiry(Some(Duration::days(36_500)), now, unlimited), Ok(Some(now + Duration::days(36_500))));
        let bounded = TokenLimits { max: None, parent_expires: Some(now + day) };
        assert_eq!(token_expiry(None, now, bounded), Ok(Some(now + day)));
    }

    #[test]
    fn shown_names_are_escaped_and_cut_after_eighty_characters() {
        assert_eq!(shown("alice"), "alice");
        assert_eq!(shown("o\u{202E}wner\n"), "o\\u{202e}wner\\n");
        let at_limit = "a".repeat(MAX_LOCAL_NAME + 16);
        assert_eq!(shown(&at_limit), at_limit, "80 characters are shown whole");
        assert_eq!(shown(&"a".repeat(MAX_LOCAL_NAME + 17)), format!("{at_limit}..."));
        assert_eq!(shown(&"a".repeat(5000)), format!("{at_limit}..."));
    }

    #[test]
    fn a_display_name_cut_at_its_bound_keeps_words_apart() {
        // The second word fits exactly.
        let fits = format!("{} y", "x".repeat(MAX_DISPLAY_NAME - 3));
        assert_eq!(display_name(&fits).as_deref(), Ok(fits.as_str()));
        // Room for the space alone: the name ends with the first word, never "xx…xy".
        let first = "x".repeat(MAX_DISPLAY_NAME - 1);
        assert_eq!(display_name(&format!("{first} yes")).as_deref(), Ok(first.as_str()));
        assert_eq!(display_name(&format!("{first} \u{200B} yes")).as_deref(), Ok(first.as_str()));
        // Many short words: spaces count like any other character.
        let words = display_name(&"ab ".repeat(40)).expect("words");
        assert_eq!(words, "ab ".repeat(22)[..MAX_DISPLAY_NAME]);
        // No room at all.
        let full = "x".repeat(MAX_DISPLAY_NAME);
        assert_eq!(display_name(&format!("{full} yes")).as_deref(), Ok(full.as_str()));
    }
}
