//! What the server and its clients need to know of an X.509 certificate (DER), read without a
//! certificate library: when it expires, its SHA-256 fingerprint, and the SHA-256 of its public
//! key (the `subjectPublicKeyInfo`, as `openssl x509 -pubkey | openssl pkey -pubin -outform der |
//! sha256sum` computes it). A client may pin either; the public key's survives a renewal with the
//! same key.

use sha2::{Digest, Sha256};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// The facts of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The end of its validity (`notAfter`).
    pub not_after: OffsetDateTime,
    /// SHA-256 of the whole certificate (DER).
    pub sha256: [u8; 32],
    /// SHA-256 of its `subjectPublicKeyInfo` (DER, tag and length included).
    pub spki_sha256: [u8; 32],
}

impl CertInfo {
    /// Reads a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<CertInfo> {
        let (_, cert, _, _) = element(der)?;
        let (_, tbs, _, _) = element(cert)?;
        let mut rest = tbs;
        let (tag, _, _, after_version) = element(rest)?;
        if tag == 0xA0 {
            rest = after_version; // [0] EXPLICIT version
        }
        let (_, _, _, rest) = element(rest)?; // serialNumber
        let (_, _, _, rest) = element(rest)?; // signature
        let (_, _, _, rest) = element(rest)?; // issuer
        let (tag, validity, _, rest) = element(rest)?;
        if tag != 0x30 {
            return None;
        }
        let (_, _, _, rest) = element(rest)?; // subject
        let (tag, _, spki, _) = element(rest)?;
        if tag != 0x30 {
            return None;
        }
        let (_, _, _, after_not_before) = element(validity)?;
        let (tag, text, _, _) = element(after_not_before)?;
        Some(CertInfo {
            not_after: asn1_time(tag, text)?,
            sha256: Sha256::digest(der).into(),
            spki_sha256: Sha256::digest(spki).into(),
        })
    }

    /// The certificate's fingerprint as `AB:CD:…`.
    pub fn fingerprint(&self) -> String {
        colon_hex(&self.sha256)
    }

    /// The public key's fingerprint as `AB:CD:…`.
    pub fn key_fingerprint(&self) -> String {
        colon_hex(&self.spki_sha256)
    }

    /// Whether `pin` is this certificate's fingerprint or its public key's.
    pub fn matches(&self, pin: &[u8; 32]) -> bool {
        *pin == self.sha256 || *pin == self.spki_sha256
    }
}

/// `AB:CD:…`, upper-case hex with colons.
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// A SHA-256 pin as written by a person: 64 hex digits, in either case, with or without colons
/// (as `jitgate serve` prints them), or with a `sha256:` prefix.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").or_else(|| t.strip_prefix("SHA256:")).unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    let bad = || {
        format!(
            "'{}' is not a SHA-256 fingerprint: 64 hex digits, colons allowed (jitgate serve prints the certificate's and its public key's at start)",
            text.chars().take(120).collect::<String>()
        )
    };
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// One DER element at the start of some input: its tag, its contents, the whole element (tag
/// and length included) and what follows it.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The DER element at the start of `input`.
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn asn1_time(tag: u8, text: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(text).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let num = |at: usize| rest.get(at..at + 2).and_then(|d| d.parse::<u8>().ok());
    let date = Date::from_calendar_date(year, Month::try_from(num(0)?).ok()?, num(2)?).ok()?;
    let time = Time::from_hms(num(4)?, num(6)?, num(8)?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate-shaped DER: the fields the reader walks, with `validity` and `spki`
    /// as given.
    fn der(tlv: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, content) in tlv {
            out.push(*tag);
            let len = content.len();
            if len < 0x80 {
                out.push(len as u8);
            } else {
                out.push(0x82);
                out.push((len >> 8) as u8);
                out.push(len as u8);
            }
            out.extend_from_slice(content);
        }
        out
    }

    fn cert(not_after: (u8, &str), spki: &[u8]) -> Vec<u8> {
        let validity = der(&[(0x17, b"260101000000Z".to_vec()), (not_after.0, not_after.1.as_bytes().to_vec())]);
        let tbs = der(&[
            (0xA0, der(&[(0x02, vec![2])])),
            (0x02, vec![1, 2, 3]),
            (0x30, der(&[(0x06, vec![1])])),
            (0x30, vec![]),
            (0x30, validity),
            (0x30, vec![]),
            (0x30, spki.to_vec()),
        ]);
        der(&[(0x30, der(&[(0x30, tbs), (0x30, vec![]), (0x03, vec![0])]))])
    }

    #[test]
    fn reads_the_expiry_and_the_public_key_of_a_certificate() {
        let spki = vec![7u8; 300];
        let c = cert((0x17, "280315123456Z"), &spki);
        let info = CertInfo::from_der(&c).expect("a certificate");
        assert_eq!(info.not_after, time::macros::datetime!(2028-03-15 12:34:56 UTC));
        // The pin covers the whole subjectPublicKeyInfo element, tag and length included.
        let mut whole = vec![0x30, 0x82, 0x01, 0x2C];
        whole.extend_from_slice(&spki);
        assert_eq!(info.spki_sha256, <[u8; 32]>::from(Sha256::digest(&whole)));
        assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&c)));
        let g = CertInfo::from_der(&cert((0x18, "20510101000000Z"), &spki)).expect("generalized time");
        assert_eq!(g.not_after, time::macros::datetime!(2051-01-01 0:00 UTC));
        assert_eq!(CertInfo::from_der(&cert((0x17, "491231235959Z"), &spki)).map(|i| i.not_after.year()), Some(2049));
    }

    #[test]
    fn a_two_digit_year_reads_as_rfc_5280_says_and_other_time_forms_are_refused() {
        let year = |t: &str| CertInfo::from_der(&cert((0x17, t), &[1])).map(|i| i.not_after.year());
        assert_eq!(year("500101000000Z"), Some(1950), "50 to 99 are the 1900s");
        assert_eq!(year("991231235959Z"), Some(1999));
        assert_eq!(year("000101000000Z"), Some(2000), "00 to 49 are the 2000s");
        // Only YYMMDDHHMMSSZ: no local time, no fraction, nothing after the Z.
        for bad in ["2803151234567", "280315123456.5Z", "280315123456ZZ", "280315123456+0100"] {
            assert_eq!(year(bad), None, "{bad}");
        }
        assert!(CertInfo::from_der(&cert((0x18, "20280315123456.5Z"), &[1])).is_none());
    }

    #[test]
    fn a_long_form_length_whose_bytes_end_the_input_is_read() {
        // An empty element at the very end, its length in two bytes (BER allows the long form).
        let (tag, body, whole, rest) = element(&[0x05, 0x82, 0x00, 0x00]).expect("an empty element");
        assert_eq!((tag, body.len(), whole.len(), rest.len()), (0x05, 0, 4, 0));
        assert!(element(&[0x05, 0x82, 0x00]).is_none(), "one length byte short");
    }

    #[test]
    fn the_key_fingerprint_names_the_public_key_and_survives_a_renewal() {
        let key = [7u8; 40];
        let first = CertInfo::from_der(&cert((0x17, "280315123456Z"), &key)).expect("a certificate");
        let renewed = CertInfo::from_der(&cert((0x17, "290315123456Z"), &key)).expect("renewed, same key");
        assert_eq!(first.key_fingerprint(), colon_hex(&first.spki_sha256));
        assert_eq!(first.key_fingerprint(), renewed.key_fingerprint(), "same key, same pin");
        assert_ne!(first.fingerprint(), renewed.fingerprint(), "another certificate");
        assert_eq!(parse_pin(&first.key_fingerprint()).map(|pin| renewed.matches(&pin)), Ok(true));
    }

    #[test]
    fn an_indefinite_length_is_refused_even_with_bytes_after_it() {
        let mut indefinite = vec![0x04, 0x80];
        indefinite.extend_from_slice(&[0xAA; 200]);
        assert!(element(&indefinite).is_none(), "0x80 is not a length of 128");
        let mut short = vec![0x04, 0x7F];
        short.extend_from_slice(&[0xAA; 200]);
        assert_eq!(element(&short).map(|(_, body, ..)| body.len()), Some(127), "0x7f is");
    }

    #[test]
    fn what_is_not_a_certificate_is_none() {
        assert!(CertInfo::from_der(&[]).is_none());
        assert!(CertInfo::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(CertInfo::from_der(&cert((0x17, "2803151234Z"), &[1])).is_none());
        assert!(CertInfo::from_der(&cert((0x0C, "280315123456Z"), &[1])).is_none());
        let mut c = cert((0x17, "280315123456Z"), &[1, 2, 3]);
        c.truncate(c.len() - 4);
        assert!(CertInfo::from_der(&c).is_none());
    }

    #[test]
    fn pins_are_read_as_printed() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let printed = colon_hex(&bytes);
        assert_eq!(printed.len(), 95);
        assert_eq!(parse_pin(&printed), Ok(bytes));
        assert_eq!(parse_pin(&printed.replace(':', "").to_lowercase()), Ok(bytes));
        assert_eq!(parse_pin(&format!(" sha256:{printed} ")), Ok(bytes));
        for bad in ["", "AB:CD", &"G".repeat(64), &"A".repeat(66), "sha256:"] {
            let e = parse_pin(bad).expect_err(bad);
            assert!(e.contains("64 hex digits"), "{e}");
        }
    }

    #[test]
    fn fingerprints_and_pins_name_this_certificate_only() {
        let c = cert((0x17, "280315123456Z"), &[7u8; 40]);
        let info = CertInfo::from_der(&c).expect("a certificate");
        assert_eq!(info.fingerprint(), colon_hex(&Sha256::digest(&c)));
        assert_eq!(info.fingerprint().len(), 32 * 3 - 1);
        assert!(info.matches(&info.sha256), "the certificate's own fingerprint");
        assert!(info.matches(&info.spki_sha256), "its public key's");
        assert!(!info.matches(&[0u8; 32]), "nothing else");
        let other = CertInfo::from_der(&cert((0x17, "280315123456Z"), &[8u8; 40])).expect("another");
        assert!(!info.matches(&other.sha256) && !info.matches(&other.spki_sha256));
    }

    #[test]
    fn lengths_of_one_to_four_bytes_are_read_and_longer_ones_refused() {
        // 0x84: a four-byte length (the longest read).
        let four = [0x04, 0x84, 0, 0, 0, 2, 0xAA, 0xBB];
        assert_eq!(element(&four).map(|(tag, body, ..)| (tag, body.to_vec())), Some((0x04, vec![0xAA, 0xBB])));
        let five = [0x04, 0x85, 0, 0, 0, 0, 2, 0xAA, 0xBB];
        assert!(element(&five).is_none(), "a five-byte length is refused");
        assert!(element(&[0x04, 0x80]).is_none(), "an indefinite length is refused");
        assert!(element(&[0x04, 0x03, 1, 2]).is_none(), "a length past the end is refused");
    }
}
