use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(vars: &[(&str, &str)]) -> Env {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Arc::new(move |name| map.get(name).cloned())
}

/// A loopback IMDSv2: a token for a PUT with a TTL header, then the role and its credentials
/// for requests carrying that token; it counts the credential documents it served.
async fn fake_imds(expiration: &'static str, with_role: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let line = head.lines().next().unwrap_or("").to_owned();
                let (status, body) = if line.starts_with("put /latest/api/token ")
                    && head.contains("x-aws-ec2-metadata-token-ttl-seconds: 21600")
                {
                    ("200 OK", "the-token".to_owned())
                } else if !head.contains("x-aws-ec2-metadata-token: the-token") {
                    ("401 Unauthorized", String::new())
                } else if line.starts_with("get /latest/meta-data/iam/security-credentials/ ") {
                    if with_role {
                        ("200 OK", "jitgate-role\n".to_owned())
                    } else {
                        ("404 Not Found", String::new())
                    }
                } else if line.starts_with("get /latest/meta-data/iam/security-credentials/jitgate-role ") {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let doc = format!(
                        r#"{{"Code":"Success","LastUpdated":"2026-01-01T00:00:00Z","Type":"AWS-HMAC",
                            "AccessKeyId":"ASIAROLE{n}","SecretAccessKey":"rolesecret","Token":"roletoken",
                            "Expiration":"{expiration}"}}"#
                    );
                    ("200 OK", doc)
                } else {
                    ("404 Not Found", String::new())
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, served)
}

fn no_files() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().display().to_string();
    (dir, home)
}

#[tokio::test]
async fn instance_role_through_imdsv2_cached_while_fresh() {
    let (_dir, home) = no_files();
    let (url, served) = fake_imds("2999-01-01T00:00:00Z", true).await;
    let p = Provider::chain(None, env(&[("HOME", &home), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)])).unwrap();
    let c = p.get().await.unwrap();
    assert_eq!((c.access_key_id.as_str(), c.session_token()), ("ASIAROLE0", Some("roletoken")));
    assert!(c.expires.is_some());
    assert_eq!(p.get().await.unwrap().access_key_id, "ASIAROLE0");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn credentials_about_to_expire_are_renewed() {
    let (_dir, home) = no_files();
    // Expiring within the renewal margin: every call fetches again.
    let soon = Box::leak(
        time::OffsetDateTime::now_utc()
            .saturating_add(time::Duration::minutes(2))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
            .into_boxed_str(),
    );
    let (url, served) = fake_imds(soon, true).await;
    let p = Provider::chain(None, env(&[("HOME", &home), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)])).unwrap();
    assert_eq!(p.get().await.unwrap().access_key_id, "ASIAROLE0");
    assert_eq!(p.get().await.unwrap().access_key_id, "ASIAROLE1");
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn environment_comes_first_and_nothing_found_lists_what_was_tried() {
    let (_dir, home) = no_files();
    let (url, served) = fake_imds("2999-01-01T00:00:00Z", false).await;
    let vars = [
        ("HOME", home.as_str()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "ENVKEY"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
    ];
    let p = Provider::chain(None, env(&vars)).unwrap();
    assert_eq!(p.get().await.unwrap().access_key_id, "ENVKEY");

    let p = Provider::chain(None, env(&vars[..2])).unwrap();
    let e = p.get().await.unwrap_err().to_string();
    assert!(e.contains("environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"), "{e}");
    assert!(e.contains(".aws/credentials: no such file"), "{e}");
    assert!(e.contains("no role attached"), "{e}");
    assert!(!e.contains("envsecret"));
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_named_profile_missing_does_not_fall_back_to_the_instance_role() {
    let (_dir, home) = no_files();
    let (url, served) = fake_imds("2999-01-01T00:00:00Z", true).await;
    let p = Provider::chain(Some("ops".into()), env(&[("HOME", &home), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)]))
        .unwrap();
    let e = p.get().await.unwrap_err().to_string();
    assert!(e.contains("no such file") && !e.contains("instance role"), "{e}");
    assert_eq!(served.load(Ordering::SeqCst), 0);
    let off = Provider::chain(None, env(&[("HOME", &home), ("AWS_EC2_METADATA_DISABLED", "true")])).unwrap();
    assert!(off.get().await.unwrap_err().to_string().contains("AWS_EC2_METADATA_DISABLED"));
}

#[tokio::test]
async fn no_metadata_service_fails_quickly_with_the_reason() {
    let (_dir, home) = no_files();
    // A port nobody listens on: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let p = Provider::chain(None, env(&[("HOME", &home), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)])).unwrap();
    let e = p.get().await.unwrap_err().to_string();
    assert!(e.contains("no metadata service"), "{e}");
}

#[test]
fn role_documents() {
    let ok =
        r#"{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"2026-12-01T16:00:00Z"}"#;
    let c = role_credentials(ok).unwrap();
    assert_eq!(c.expires, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_140_800)));
    let failed = r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"","SecretAccessKey":"","Token":"","Expiration":"2026-12-01T16:00:00Z"}"#;
    assert!(role_credentials(failed).unwrap_err().contains("AssumeRoleUnauthorizedAccess"));
    assert!(role_credentials("{}").is_err());
    assert!(role_credentials(&ok.replace("2026-12-01T16:00:00Z", "tomorrow")).is_err());
}
