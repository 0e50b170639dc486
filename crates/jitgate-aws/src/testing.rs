//! For tests: moto's EC2 server (`moto_server`, from the venv `scripts/moto-venv.sh` makes)
//! as a child process on a free loopback port, a client configured for it, and the EC2 calls
//! tests need to set up what the connector describes (VPCs, subnets, instances) but the
//! connector never makes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers may panic on a failed set-up.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitgate_netns::KillOnDrop;
use url::Url;

use crate::query::Params;
use crate::{Backoff, Config, Credentials, Ec2, Ec2Client, Ec2Error, IpPermission, IpRange, SecurityGroup, Tag};

/// The image moto runs instances from: one of the AMIs it knows, a Linux one (Amazon Linux).
pub const IMAGE_ID: &str = "ami-760aaa0f";

/// The venv holding `moto_server`: `JITGATE_MOTO_VENV`, else `<workspace>/target/moto-venv`.
pub fn venv() -> PathBuf {
    match std::env::var_os("JITGATE_MOTO_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/moto-venv")),
    }
}

/// A running moto server, killed on drop.
pub struct Moto {
    _child: KillOnDrop,
    addr: SocketAddr,
}

impl Moto {
    /// Starts moto for `test`; `None` (after [`jitgate_netns::skip`]) when the venv is missing.
    /// Panics when moto is there but does not start: that is a failure, not a skip.
    pub fn start(test: &str) -> Option<Moto> {
        let server = venv().join("bin/moto_server");
        if !server.is_file() {
            jitgate_netns::skip(test, &format!("{} is missing (run scripts/moto-venv.sh)", server.display()));
            return None;
        }
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port");
            probe.local_addr().expect("the probe's address").port()
        };
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
        let mut child = KillOnDrop(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("moto_server on port {port} exited at start ({status})");
            }
            assert!(Instant::now() < deadline, "moto_server did not listen on {addr} within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Moto { _child: child, addr })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).expect("a loopback URL")
    }

    /// A client's settings for this server (any credentials do), or for a proxy before it at
    /// `endpoint`: region `us-east-1`, quick retries.
    pub fn config_for(endpoint: Url) -> Config {
        let mut config = Config::new("us-east-1");
        config.endpoint_url = Some(endpoint);
        config.credentials = Some(Credentials::new("testing", "testing"));
        config.retry = Backoff { base: Duration::from_millis(5), cap: Duration::from_millis(50), max_attempts: 4 };
        config
    }

    /// A client of this server.
    pub fn client(&self) -> Ec2Client {
        Ec2Client::new(Moto::config_for(self.url())).expect("a client of moto")
    }
}

/// One inbound rule of one IPv4 range: a test's shorthand.
pub fn ipv4_rule(proto: &str, from: i32, to: i32, cidr: &str, description: Option<&str>) -> IpPermission {
    IpPermission {
        protocol: proto.into(),
        from_port: Some(from),
        to_port: Some(to),
        ipv4_ranges: vec![IpRange { cidr: cidr.into(), description: description.map(Into::into) }],
        ipv6_ranges: vec![],
        source_groups: vec![],
        prefix_lists: vec![],
    }
}

/// A rule as tests compare them: (protocol, from port, to port, IPv4 range, description).
pub type RuleShape = (String, Option<i32>, Option<i32>, String, Option<String>);

/// Every IPv4 rule of a group, one per range, sorted.
pub fn ipv4_rules(g: &SecurityGroup) -> Vec<RuleShape> {
    let mut out: Vec<RuleShape> = g
        .ingress
        .iter()
        .flat_map(|p| {
            p.ipv4_ranges
                .iter()
                .map(|r| (p.protocol.clone(), p.from_port, p.to_port, r.cidr.clone(), r.description.clone()))
        })
        .collect();
    out.sort();
    out
}

/// An instance (`Name` web1) in a VPC of its own, in one group `web` that allows SSH from
/// anywhere ("ssh"), every TCP port from 10.0.0.0/8 ("office"), and HTTPS: (instance, group).
pub async fn web_instance(ec2: &Ec2Client) -> Result<(String, String), Ec2Error> {
    let vpc = ec2.create_vpc("10.0.0.0/16").await?;
    let subnet = ec2.create_subnet(&vpc, "10.0.1.0/24").await?;
    let web = ec2.create_security_group("web", "web", &vpc, &[]).await?;
    let original = [
        ipv4_rule("tcp", 22, 22, "0.0.0.0/0", Some("ssh")),
        ipv4_rule("tcp", 0, 65_535, "10.0.0.0/8", Some("office")),
        ipv4_rule("tcp", 443, 443, "0.0.0.0/0", None),
    ];
    ec2.authorize_ingress(&web, &original).await?;
    let mut launched = ec2.run_instances(&subnet, 1, &[Tag::new("Name", "web1")]).await?;
    let instance = launched.pop().ok_or_else(|| Ec2Error::Decode("RunInstances launched nothing".into()))?;
    ec2.set_instance_groups(&instance, std::slice::from_ref(&web)).await?;
    Ok((instance, web))
}

fn text(root: &crate::xml::Element, path: &[&str]) -> Result<String, Ec2Error> {
    let mut at = root;
    for name in path {
        at = at.child(name).ok_or_else(|| Ec2Error::Decode(format!("no <{}> in the answer", path.join("/"))))?;
    }
    Ok(at.text.clone())
}

/// Test-only calls: what the connector finds, made.
impl Ec2Client {
    /// `CreateVpc`; the new VPC's id.
    pub async fn create_vpc(&self, cidr: &str) -> Result<String, Ec2Error> {
        let mut p = Params::default();
        p.push("CidrBlock", cidr);
        text(&self.call("CreateVpc", &p).await?, &["vpc", "vpcId"])
    }

    /// `CreateSubnet`; the new subnet's id.
    pub async fn create_subnet(&self, vpc_id: &str, cidr: &str) -> Result<String, Ec2Error> {
        let mut p = Params::default();
        p.push("VpcId", vpc_id);
        p.push("CidrBlock", cidr);
        text(&self.call("CreateSubnet", &p).await?, &["subnet", "subnetId"])
    }

    /// `RunInstances` of `count` instances in `subnet_id`, tagged; their ids.
    pub async fn run_instances(&self, subnet_id: &str, count: u32, tags: &[Tag]) -> Result<Vec<String>, Ec2Error> {
        let mut p = Params::default();
        p.push("ImageId", IMAGE_ID);
        p.push("InstanceType", "t2.micro");
        p.push("MinCount", count.to_string());
        p.push("MaxCount", count.to_string());
        p.push("SubnetId", subnet_id);
        if !tags.is_empty() {
            p.push("TagSpecification.1.ResourceType", "instance");
            for (n, t) in tags.iter().enumerate() {
                p.push(format!("TagSpecification.1.Tag.{}.Key", n + 1), &t.key);
                p.push(format!("TagSpecification.1.Tag.{}.Value", n + 1), &t.value);
            }
        }
        let root = self.call("RunInstances", &p).await?;
        root.items("instancesSet")
            .map(|i| {
                i.text_of("instanceId")
                    .map(str::to_owned)
                    .ok_or_else(|| Ec2Error::Decode("an instance without id".into()))
            })
            .collect()
    }
}
