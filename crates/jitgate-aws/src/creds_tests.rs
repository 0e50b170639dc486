use super::*;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> Env {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Arc::new(move |name| map.get(name).cloned())
}

#[test]
fn environment_keys_and_token() {
    let c = from_env(&env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")])).unwrap();
    assert_eq!((c.access_key_id.as_str(), c.secret_access_key(), c.session_token()), ("AKID", "s3cr3t", None));
    let t =
        from_env(&env(&[("AWS_ACCESS_KEY_ID", "ASIA"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_SESSION_TOKEN", "tok")]))
            .unwrap();
    assert_eq!(t.session_token(), Some("tok"));
    assert!(from_env(&env(&[])).unwrap_err().contains("not set"));
    let half = from_env(&env(&[("AWS_ACCESS_KEY_ID", "AKID")])).unwrap_err();
    assert!(half.contains("AWS_SECRET_ACCESS_KEY is not"), "{half}");
    assert!(from_env(&env(&[("AWS_ACCESS_KEY_ID", " "), ("AWS_SECRET_ACCESS_KEY", "s")])).is_err());
}

#[test]
fn ini_as_the_aws_tools_write_it() {
    let text = "# comment\n[default]\naws_access_key_id = A1\nAWS_Secret_Access_Key=S1 \n; other\n\n\
                [profile dev]\nregion = eu-west-1\ns3 =\n  max_concurrent_requests = 20\nkey with = sign = inside\n";
    let s = ini_sections(text);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0, "default");
    assert_eq!(
        s[0].1,
        [("aws_access_key_id".to_owned(), "A1".to_owned()), ("aws_secret_access_key".into(), "S1".into())]
    );
    assert_eq!(s[1].0, "profile dev");
    assert_eq!(s[1].1.len(), 3);
    assert_eq!(s[1].1[2], ("key with".to_owned(), "sign = inside".to_owned()));
    assert!(ini_sections("key = before any section\n[x\n").is_empty());
}

#[test]
fn profile_given_then_aws_profile_then_default() {
    assert_eq!(profile_name(&env(&[]), None), ("default".into(), false));
    assert_eq!(profile_name(&env(&[("AWS_PROFILE", "ops")]), None), ("ops".into(), true));
    assert_eq!(profile_name(&env(&[("AWS_PROFILE", "ops")]), Some("dev")), ("dev".into(), true));
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(credentials: Option<&str>, config: Option<&str>) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        if let Some(c) = credentials {
            std::fs::write(dir.path().join(".aws/credentials"), c).unwrap();
        }
        if let Some(c) = config {
            std::fs::write(dir.path().join(".aws/config"), c).unwrap();
        }
        Files { dir }
    }

    fn home(&self) -> String {
        self.dir.path().display().to_string()
    }
}

#[test]
fn shared_credentials_file_then_config_file() {
    let f = Files::new(
        Some("[default]\naws_access_key_id=CRED\naws_secret_access_key=credsecret\n"),
        Some("[default]\naws_access_key_id=CONF\naws_secret_access_key=x\n[profile dev]\naws_access_key_id=DEV\naws_secret_access_key=devsecret\naws_session_token=devtoken\n"),
    );
    let e = env(&[("HOME", &f.home())]);
    assert_eq!(from_files(&e, "default", false).unwrap().access_key_id, "CRED");
    let dev = from_files(&e, "dev", true).unwrap();
    assert_eq!((dev.access_key_id.as_str(), dev.session_token()), ("DEV", Some("devtoken")));
    // `[dev]` in the config file is not `[profile dev]`.
    let g = Files::new(None, Some("[dev]\naws_access_key_id=X\naws_secret_access_key=y\n"));
    let (why, stop) = from_files(&env(&[("HOME", &g.home())]), "dev", true).unwrap_err();
    assert!(stop);
    assert!(why.contains("credentials: no such file") && why.contains("no profile \"dev\""), "{why}");
}

#[test]
fn file_locations_from_the_environment() {
    let f = Files::new(None, None);
    let creds = f.dir.path().join("elsewhere-creds");
    let conf = f.dir.path().join("elsewhere-conf");
    std::fs::write(&creds, "[ops]\naws_access_key_id=OPS\naws_secret_access_key=o\n").unwrap();
    std::fs::write(&conf, "[profile cfg]\naws_access_key_id=CFG\naws_secret_access_key=c\n").unwrap();
    let e = env(&[
        ("HOME", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ("AWS_CONFIG_FILE", conf.to_str().unwrap()),
    ]);
    assert_eq!(from_files(&e, "ops", true).unwrap().access_key_id, "OPS");
    assert_eq!(from_files(&e, "cfg", true).unwrap().access_key_id, "CFG");
}

#[test]
fn profiles_without_keys_say_why() {
    let f = Files::new(None, Some("[profile sso]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n"));
    let (why, stop) = from_files(&env(&[("HOME", &f.home())]), "sso", true).unwrap_err();
    assert!(stop && why.contains("role_arn") && why.contains("does not read"), "{why}");
    // The default profile missing: the chain goes on to the instance role.
    let (_, stop) = from_files(&env(&[("HOME", &f.home())]), "default", false).unwrap_err();
    assert!(!stop);
    let (why, _) = from_files(&env(&[]), "default", false).unwrap_err();
    assert!(why.contains("HOME is not set"), "{why}");
}

#[test]
fn oversized_files_are_refused() {
    let big = "#".repeat(MAX_FILE_BYTES as usize + 10);
    let f = Files::new(Some(&big), None);
    let (why, stop) = from_files(&env(&[("HOME", &f.home())]), "default", false).unwrap_err();
    assert!(stop && why.contains("larger than"), "{why}");
}

#[test]
fn freshness_and_redaction() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let long = Credentials::new("A", "secret-value");
    assert!(long.fresh_at(now));
    let soon = Credentials::new("A", "s").temporary("token-value", Some(now + Duration::from_secs(60)));
    assert!(!soon.fresh_at(now) && soon.usable_at(now));
    let later = Credentials::new("A", "s").temporary("t", Some(now + Duration::from_secs(3600)));
    assert!(later.fresh_at(now));
    let shown = format!("{long:?} {soon:?}");
    assert!(!shown.contains("secret-value") && !shown.contains("token-value"), "{shown}");
}
