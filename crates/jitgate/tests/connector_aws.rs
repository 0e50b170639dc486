//! The AWS connector end to end: moto's EC2 server, a real jitgate server, and `jitgate connector
//! aws` as a child process — enable, grant, revoke, expiry, disable, a connector killed with -9
//! mid-grant and started again after the grant's end, the rule limit, discovery over VPCs; and
//! `jitgate bench connector` run small.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use jitgate_aws::testing::{ipv4_rules as rules, web_instance, Moto};
use jitgate_aws::{Ec2, Ec2Client, Filter, SecurityGroup, Tag};
use jitgate_connector::desired::parse_note;
use jitgate_netns::KillOnDrop;
use jitgate_testkit::{agents, eventually, vm_id, TestServer, SUB};
use reqwest::{Method, StatusCode};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
const RG: &str = "aws";
const LOCATION: &str = "westeurope";
/// How long a change may take to reach EC2 (the connector long-polls; moto answers at once).
const SOON: Duration = Duration::from_secs(30);
/// The audit operation of a grant's rule the connector removed.
const RULE_REMOVED: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/rule/remove/action";

/// An instance in its own VPC, in a group `web` that allows SSH from anywhere, every TCP port
/// from the office, and HTTPS.
struct Aws {
    ec2: Ec2Client,
    instance: String,
    web: String,
}

impl Aws {
    async fn new(moto: &Moto) -> Aws {
        let ec2 = moto.client();
        let (instance, web) = web_instance(&ec2).await.expect("an instance in its group");
        Aws { ec2, instance, web }
    }

    async fn group(&self, id: &str) -> Option<SecurityGroup> {
        let found = self.ec2.describe_security_groups(&[Filter::new("group-id", [id])]).await.expect("describe");
        found.into_iter().next()
    }

    /// The instance's jitgate group, when there is one.
    async fn jitgate(&self) -> Option<SecurityGroup> {
        let filters = [Filter::new("tag:jitgate:instance", [self.instance.as_str()])];
        self.ec2.describe_security_groups(&filters).await.expect("describe").into_iter().next()
    }

    async fn instance_groups(&self) -> Vec<String> {
        let found = self
            .ec2
            .describe_instances(&[Filter::new("instance-id", [self.instance.as_str()])])
            .await
            .expect("describe");
        found.into_iter().flat_map(|i| i.security_groups).map(|g| g.group_id).collect()
    }
}

/// `jitgate connector aws` against moto, sweeping every second.
fn connector(s: &TestServer, moto: &Moto, token: Option<&str>, state_dir: &Path) -> KillOnDrop {
    connector_with(s, moto, token, state_dir, &[])
}

/// The same, with more flags.
fn connector_with(s: &TestServer, moto: &Moto, token: Option<&str>, state_dir: &Path, extra: &[&str]) -> KillOnDrop {
    let mut cmd = Command::new(BIN);
    cmd.args(["connector", "aws", "--server", &s.server.url, "--region", "us-east-1"])
        .arg("--ca-cert")
        .arg(&s.server.ca_cert)
        .args(["--endpoint-url", moto.url().as_str()])
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--sweep-interval", "1s", "--discovery-interval", "1s", "--poll-seconds", "2"])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(t) = token {
        cmd.args(["--join-token", t]);
    }
    KillOnDrop(cmd.spawn().expect("the connector starts"))
}

/// Protects the instance's SSH (the Linux default: port 22, any protocol and source, PT3H),
/// once the connector has registered it.
async fn protect(s: &TestServer, instance: &str) -> String {
    let vm = vm_id(RG, instance);
    let body = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}});
    let url = s.policy_url(RG, LOCATION, "default");
    let put = eventually(SOON, async || s.json(Method::PUT, &url, &body).await.status == StatusCode::OK).await;
    assert!(put, "the policy could not be put on the discovered VM");
    vm
}

async fn initiate(s: &TestServer, vm: &str, source: &str, duration: &str) -> i64 {
    let body = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "duration": duration, "allowedSourceAddressPrefix": source}]}]});
    let a = s.json(Method::POST, &s.initiate_url(RG, LOCATION, "default"), &body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    a.body["id"].as_i64().expect("request id")
}

/// Whether the jitgate group holds a rule for `source` on TCP 22 described with request `id`.
fn has_grant(g: &Option<SecurityGroup>, id: i64, source: &str) -> bool {
    let want = format!("jitgate req={id} exp=");
    g.as_ref().is_some_and(|g| {
        rules(g).iter().any(|(p, f, t, c, d)| {
            p == "tcp"
                && *f == Some(22)
                && *t == Some(22)
                && c == source
                && d.as_deref().is_some_and(|d| d.starts_with(&want))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_grant_revoke_expire_and_disable_on_ec2() {
    let Some(moto) = Moto::start("enable_grant_revoke_expire_and_disable_on_ec2") else { return };
    let s = TestServer::start(BIN, &[]);
    let aws = Aws::new(&moto).await;
    let original = rules(&aws.group(&aws.web).await.expect("web"));
    let token = agents::join_token(&s, SUB, RG, "cloud", json!({})).await;
    let dir = tempfile::tempdir().expect("dir");
    let _connector = connector(&s, &moto, Some(&token), dir.path());

    // Enable: the jitgate group is attached, SSH is taken away, the office range cut around it.
    let vm = protect(&s, &aws.instance).await;
    let enabled = eventually(SOON, async || {
        let web = aws.group(&aws.web).await.expect("web");
        aws.jitgate().await.is_some()
            && rules(&web).iter().all(|(_, f, t, ..)| !(f.unwrap_or(0) <= 22 && 22 <= t.unwrap_or(0)))
    })
    .await;
    assert!(enabled, "{:?}", aws.group(&aws.web).await);
    let jg = aws.jitgate().await.expect("jitgate group");
    assert_eq!(aws.instance_groups().await, [aws.web.clone(), jg.group_id.clone()]);
    assert_eq!(
        rules(&aws.group(&aws.web).await.expect("web")),
        [
            ("tcp".into(), Some(0), Some(21), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(23), Some(65_535), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(443), Some(443), "0.0.0.0/0".into(), None),
        ]
    );

    // Grant: the exact rule appears. Revoke: it goes.
    let revoked_id = initiate(&s, &vm, "203.0.113.7", "PT1H").await;
    let id = revoked_id;
    assert!(eventually(SOON, async || has_grant(&aws.jitgate().await, id, "203.0.113.7/32")).await);
    // The connector reports what it applied: it is seen, and an initiate may wait for it.
    let seen = eventually(SOON, async || {
        let a = s.send(Method::GET, &s.url(&format!("/api/v1/vms?id={vm}")), None).await;
        a.body["enforcement"]["lastSeen"].is_string() && a.body["enforcement"]["stale"] == json!(false)
    })
    .await;
    assert!(seen, "{:?}", s.send(Method::GET, &s.url(&format!("/api/v1/vms?id={vm}")), None).await);
    let body = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.77"}]}]});
    let url = format!("{}&wait=applied", s.initiate_url(RG, LOCATION, "default"));
    let waited = s.json(Method::POST, &url, &body).await;
    assert_eq!(waited.status, StatusCode::ACCEPTED, "{waited:?}");
    let waited_id = waited.body["id"].as_i64().expect("request id");
    assert!(has_grant(&aws.jitgate().await, waited_id, "203.0.113.77/32"), "answered before the rule was in EC2");
    let revoked = s.send(Method::POST, &s.url(&format!("/api/v1/requests/{waited_id}/revoke")), None).await;
    assert!(revoked.status.is_success(), "{revoked:?}");
    let revoked = s.send(Method::POST, &s.url(&format!("/api/v1/requests/{id}/revoke")), None).await;
    assert!(revoked.status.is_success(), "{revoked:?}");
    assert!(eventually(SOON, async || aws.jitgate().await.is_some_and(|g| g.ingress.is_empty())).await);

    // Expiry: a grant of three seconds is swept soon after its end.
    let expired_id = initiate(&s, &vm, "203.0.113.8", "PT3S").await;
    let id = expired_id;
    assert!(eventually(SOON, async || has_grant(&aws.jitgate().await, id, "203.0.113.8/32")).await);
    assert!(eventually(SOON, async || aws.jitgate().await.is_some_and(|g| g.ingress.is_empty())).await);

    // Each removal is in the audit log, with its reason.
    let audited = eventually(SOON, async || {
        let records = s.audit(&format!("operation={RULE_REMOVED}")).await;
        let reason = |id: i64| {
            records
                .iter()
                .find(|r| r["properties"]["requestId"].as_str() == Some(id.to_string().as_str()))
                .map(|r| r["properties"]["reason"].clone())
        };
        reason(revoked_id) == Some(json!("revoked")) && reason(expired_id) == Some(json!("expired"))
    })
    .await;
    assert!(audited, "{:#?}", s.audit(&format!("operation={RULE_REMOVED}")).await);

    // Disable: the policy goes, the original rules come back exactly, the group is deleted.
    let deleted = s.send(Method::DELETE, &s.policy_url(RG, LOCATION, "default"), None).await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    assert!(eventually(SOON, async || aws.jitgate().await.is_none()).await);
    assert_eq!(rules(&aws.group(&aws.web).await.expect("web")), original);
    assert_eq!(aws.instance_groups().await, std::slice::from_ref(&aws.web));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_killed_mid_grant_removes_the_stale_rule_at_its_next_start() {
    let Some(moto) = Moto::start("a_connector_killed_mid_grant_removes_the_stale_rule_at_its_next_start") else {
        return;
    };
    let s = TestServer::start(BIN, &[]);
    let aws = Aws::new(&moto).await;
    let token = agents::join_token(&s, SUB, RG, "cloud", json!({})).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut first = connector(&s, &moto, Some(&token), dir.path());
    let vm = protect(&s, &aws.instance).await;
    let stale = initiate(&s, &vm, "203.0.113.9", "PT3S").await;
    assert!(eventually(SOON, async || has_grant(&aws.jitgate().await, stale, "203.0.113.9/32")).await);
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reaped");
    // The grant ends while no connector runs: its rule stays in EC2.
    let ended = eventually(SOON, async || {
        let p = s.send(Method::GET, &s.policy_url(RG, LOCATION, "default"), None).await;
        p.body["properties"]["requests"][0]["virtualMachines"][0]["ports"][0]["statusReason"] == "Expired"
    })
    .await;
    assert!(ended, "the server did not mark the grant expired");
    // …and the rule's own end (its description's, rounded up to a second) has passed too.
    let rule_end = aws
        .jitgate()
        .await
        .and_then(|g| rules(&g).into_iter().find_map(|r| r.4.as_deref().and_then(parse_note)))
        .expect("the rule's end")
        .end;
    let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!(eventually(SOON, async || unix() >= rule_end).await);
    assert!(has_grant(&aws.jitgate().await, stale, "203.0.113.9/32"), "nobody swept it");
    let fresh = initiate(&s, &vm, "198.51.100.1", "PT1H").await;
    // Started again (with its stored credential): the stale rule goes, the new grant comes.
    let _second = connector(&s, &moto, None, dir.path());
    assert!(eventually(SOON, async || has_grant(&aws.jitgate().await, fresh, "198.51.100.1/32")).await);
    assert!(!has_grant(&aws.jitgate().await, stale, "203.0.113.9/32"));
    // Reported as stale, and written to the audit log.
    let removed = eventually(SOON, async || {
        let records = s.audit(&format!("operation={RULE_REMOVED}")).await;
        records.iter().any(|r| {
            r["properties"]["reason"] == "stale"
                && r["properties"]["requestId"].as_str() == Some(stale.to_string().as_str())
        })
    })
    .await;
    assert!(removed, "{:#?}", s.audit(&format!("operation={RULE_REMOVED}")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_rules_stop_at_the_security_group_limit() {
    let Some(moto) = Moto::start("grant_rules_stop_at_the_security_group_limit") else { return };
    let s = TestServer::start(BIN, &[]);
    let aws = Aws::new(&moto).await;
    let token = agents::join_token(&s, SUB, RG, "cloud", json!({})).await;
    let dir = tempfile::tempdir().expect("dir");
    let _connector = connector(&s, &moto, Some(&token), dir.path());
    let vm = protect(&s, &aws.instance).await;
    let sources: Vec<String> = (1..=60).map(|n| format!("203.0.113.{n}")).collect();
    let body = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "duration": "PT1H", "allowedSourceAddressPrefixes": sources}]}]});
    let a = s.json(Method::POST, &s.initiate_url(RG, LOCATION, "default"), &body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert!(eventually(SOON, async || aws.jitgate().await.is_some_and(|g| rules(&g).len() == 60)).await);
    // One more source would be a 61st rule: refused, and nothing changes in EC2.
    let one_more = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "198.51.100.61"}]}]});
    let refused = s.json(Method::POST, &s.initiate_url(RG, LOCATION, "default"), &one_more).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert!(refused.body["error"]["message"].as_str().is_some_and(|m| m.contains("60")), "{refused:?}");
    assert_eq!(aws.jitgate().await.map(|g| rules(&g).len()), Some(60));
}

/// One instance in its own group in `vpc`, tagged.
async fn instance_in(ec2: &Ec2Client, vpc: &str, cidr: &str, name: &str, tags: &[Tag]) -> (String, String) {
    let subnet = ec2.create_subnet(vpc, cidr).await.expect("subnet");
    let group = ec2.create_security_group(name, name, vpc, &[]).await.expect("group");
    let mut all = vec![Tag::new("Name", name)];
    all.extend_from_slice(tags);
    let id = ec2.run_instances(&subnet, 1, &all).await.expect("instance").remove(0);
    ec2.set_instance_groups(&id, std::slice::from_ref(&group)).await.expect("groups");
    let found = ec2.describe_instances(&[Filter::new("instance-id", [id.as_str()])]).await.expect("describe");
    let address = found.first().and_then(|i| i.private_ip).expect("a private address").to_string();
    (id, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_two_managed_vpcs_are_registered_by_tag_and_vpc_and_a_third_vpc_is_unsupported() {
    let Some(moto) = Moto::start("instances_of_two_managed_vpcs_are_registered_by_tag_and_vpc") else { return };
    let s = TestServer::start(BIN, &[]);
    let ec2 = moto.client();
    let (vpc_a, vpc_b, vpc_c) = (
        ec2.create_vpc("10.1.0.0/16").await.expect("vpc a"),
        ec2.create_vpc("10.2.0.0/16").await.expect("vpc b"),
        ec2.create_vpc("10.3.0.0/16").await.expect("vpc c"),
    );
    let tagged = [Tag::new("jitgate:resource-group", "payments")];
    let (a1, a1_address) = instance_in(&ec2, &vpc_a, "10.1.1.0/24", "a1", &tagged).await;
    let (a2, _) = instance_in(&ec2, &vpc_a, "10.1.2.0/24", "a2", &[]).await;
    let (b1, _) = instance_in(&ec2, &vpc_b, "10.2.1.0/24", "b1", &[]).await;
    let (c1, _) = instance_in(&ec2, &vpc_c, "10.3.1.0/24", "c1", &[]).await;
    let token = agents::join_token(&s, SUB, RG, "cloud", json!({})).await;
    let dir = tempfile::tempdir().expect("dir");
    let (map_a, map_b) = (format!("{vpc_a}=team-a"), format!("{vpc_b}=team-b"));
    let _connector = connector_with(&s, &moto, Some(&token), dir.path(), &["--vpc", &map_a, "--vpc", &map_b]);

    let vm = |rg: &str, name: &str| vm_id(rg, name);
    let get = async |id: &str| {
        let a = s.send(Method::GET, &s.url(&format!("/api/v1/vms?id={id}")), None).await;
        (a.status == StatusCode::OK).then_some(a.body)
    };
    // The tag wins over the VPC's mapping; an untagged instance goes to its VPC's group.
    let expected = [vm("payments", &a1), vm("team-a", &a2), vm("team-b", &b1), vm(RG, &c1)];
    let registered = eventually(SOON, async || {
        for id in &expected {
            if get(id).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        registered,
        "not every instance was registered: {:?}",
        s.send(Method::GET, &s.url("/api/v1/vms"), None).await
    );
    let first = get(&expected[0]).await.expect("a1");
    assert_eq!(first["address"], json!(a1_address), "{first:#}");
    assert_eq!(first["enforcement"]["mode"], json!("cloud"), "{first:#}");
    assert!(first.get("unsupportedReason").is_none(), "{first:#}");
    for id in &expected[1..3] {
        let vm = get(id).await.expect("registered");
        assert!(vm.get("unsupportedReason").is_none(), "{vm:#}");
    }
    // The third VPC is not the connector's: registered, in the token's group, and Unsupported.
    let third = get(&expected[3]).await.expect("c1");
    let reason = third["unsupportedReason"].as_str().unwrap_or_default();
    assert!(reason.contains(&vpc_c) && reason.contains("does not manage"), "{third:#}");
    let unsupported = s.send(Method::GET, &s.url("/api/v1/vms?view=unsupported"), None).await;
    let listed = unsupported.body["value"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|v| v["name"] == json!(c1)), "{unsupported:?}");
    assert!(!listed.iter().any(|v| v["name"] == json!(a1)), "{unsupported:?}");
}

/// `jitgate bench connector`, small: it prints each of its figures and exits 0.
#[test]
fn the_connector_benchmark_prints_its_figures() {
    let venv = jitgate_aws::testing::venv();
    if !venv.join("bin/moto_server").is_file() {
        let why = format!("{} has no moto_server (run scripts/moto-venv.sh)", venv.display());
        jitgate_netns::skip("the_connector_benchmark_prints_its_figures", &why);
        return;
    }
    let out = Command::new(BIN)
        .args(["bench", "connector", "--grants", "5", "--expired", "20", "--calls", "10"])
        .env("JITGATE_MOTO_VENV", &venv)
        .output()
        .expect("running jitgate bench connector");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the benchmark failed:\n{stdout}\n{stderr}");
    for start in
        ["machine: ", "grants through the connector: ", "grant latency ms ", "restart: ", "yardstick: ", "ratios: "]
    {
        assert!(stdout.lines().any(|l| l.starts_with(start)), "no `{start}` line:\n{stdout}");
    }
    assert!(stdout.contains("5 rules visible in EC2"), "{stdout}");
    assert!(stdout.contains("last of 20 expired rules gone"), "{stdout}");
    assert!(stdout.contains("grants/s") && stdout.contains("rules/s") && stdout.contains("calls/s"), "{stdout}");
}
