//! One look at a server, for `jitgate doctor`: does `GET /healthz` answer, how long it took,
//! the server's clock (its `Date` header) and the certificate it presented.

use std::time::{Duration, Instant, SystemTime};

use crate::{ClientError, Settings};

/// What one `GET /healthz` found.
#[derive(Debug, Clone)]
pub struct Health {
    /// The base URL asked.
    pub url: String,
    pub status: u16,
    /// The server's `Date` header (whole seconds), when it sent one.
    pub date: Option<SystemTime>,
    /// The local clock halfway through the call: what `date` is compared with.
    pub local_midpoint: SystemTime,
    /// The call's round trip.
    pub elapsed: Duration,
    /// The certificate the server presented (DER), over TLS.
    pub peer_certificate: Option<Vec<u8>>,
}

impl Health {
    /// How far the server's clock is ahead of ours (negative: behind), in seconds; `None`
    /// without a `Date` header. The header has whole seconds, so anything within a second (plus
    /// half the round trip) is no difference.
    pub fn clock_offset(&self) -> Option<f64> {
        let date = self.date?;
        Some(match date.duration_since(self.local_midpoint) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        })
    }
}

/// `GET {url}/healthz` with the trust and timeouts of `settings` (its URLs are not used: `url`
/// is the one server asked, without failover or retries). With `verify` false any certificate
/// is accepted: for a caller that compares [`Health::peer_certificate`] itself.
pub async fn health(settings: &Settings, url: &str, verify: bool) -> Result<Health, ClientError> {
    let mut builder = settings.http_builder()?.tls_info(true);
    if !verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let http = builder.build().map_err(ClientError::Build)?;
    let base = url.trim_end_matches('/');
    let before = SystemTime::now();
    let started = Instant::now();
    let resp = http.get(format!("{base}/healthz")).send().await.map_err(ClientError::Transport)?;
    let elapsed = started.elapsed();
    let local_midpoint = before + elapsed / 2;
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let peer_certificate =
        resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).map(<[u8]>::to_vec);
    Ok(Health { url: base.to_owned(), status: resp.status().as_u16(), date, local_midpoint, elapsed, peer_certificate })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_offset_is_signed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = Health {
            url: "https://s".into(),
            status: 200,
            date: Some(now + Duration::from_secs(90)),
            local_midpoint: now,
            elapsed: Duration::from_millis(3),
            peer_certificate: None,
        };
        assert_eq!(h.clock_offset(), Some(90.0));
        h.date = Some(now - Duration::from_secs(5));
        assert_eq!(h.clock_offset(), Some(-5.0));
        h.date = None;
        assert_eq!(h.clock_offset(), None);
    }
}
