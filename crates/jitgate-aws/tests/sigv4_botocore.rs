//! Our SigV4 headers against botocore's (the signer of the AWS CLI, in moto's venv): for the
//! same request, credentials and time, the `Authorization` header is the same. Skipped
//! (failing under CI=true) without the venv.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use jitgate_aws::sign::signature_headers;
use jitgate_aws::Credentials;

const BOTOCORE: &str = r#"
import sys, datetime
import botocore.auth as auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
auth.get_current_datetime = lambda *args, **kwargs: datetime.datetime(2015, 8, 30, 12, 36, 0)
key, secret, token, url, body, region = sys.argv[1:7]
request = AWSRequest(method="POST", url=url, data=body.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
auth.SigV4Auth(Credentials(key, secret, token or None), "ec2", region).add_auth(request)
print(request.headers["Authorization"])
"#;

#[test]
fn authorization_matches_botocore() {
    let python = jitgate_aws::testing::venv().join("bin/python");
    if !python.is_file() {
        jitgate_netns::skip(
            "authorization_matches_botocore",
            &format!("{} is missing (run scripts/moto-venv.sh)", python.display()),
        );
        return;
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    let cases = [
        (
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "",
            "https://ec2.us-east-1.amazonaws.com/",
            "us-east-1",
        ),
        ("ASIAEXAMPLE", "secret/with+signs", "FwoGZXIvYXdzE//token==", "http://127.0.0.1:5000/", "eu-central-1"),
    ];
    let body = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Ajitgate%3Aresource-group&Filter.1.Value.1=rg+1";
    for (key, secret, token, url, region) in cases {
        let theirs = Command::new(&python)
            .args(["-c", BOTOCORE, key, secret, token, url, body, region])
            .output()
            .expect("running botocore");
        assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));
        let theirs = String::from_utf8(theirs.stdout).unwrap().trim().to_owned();
        let mut credentials = Credentials::new(key, secret);
        if !token.is_empty() {
            credentials = credentials.temporary(token, None);
        }
        let ours = signature_headers(
            &credentials,
            region,
            url,
            &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
            body.as_bytes(),
            at,
        )
        .unwrap();
        let authorization = ours.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str());
        assert_eq!(authorization, Some(theirs.as_str()), "{url}");
    }
}
