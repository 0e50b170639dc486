//! The end-to-end world shared by the enforcement and portal tests: `jitgate serve` in
//! namespace C (which also holds the clients: source A = 10.9.0.1, source B = 10.9.0.3) and
//! `jitgate agent` in namespace V, the VM (10.9.0.2), with echo listeners on the protected
//! ports; or, in gateway mode, the agent on a gateway G in front of the VM. Namespaces, veth
//! pairs and processes are removed when the world drops, also when the test fails.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub use jitgate_netns::{veth, KillOnDrop, Netns};
pub use jitgate_testkit::{vm_id, LocalServer, SUB};

pub const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
pub const A: &str = "10.9.0.1";
pub const B: &str = "10.9.0.3";
pub const VM: &str = "10.9.0.2";

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[macro_export]
macro_rules! skip_unless_netns {
    ($name:expr) => {
        if let Some(why) = jitgate_netns::unavailable() {
            jitgate_netns::skip($name, &why);
            return;
        }
    };
}

/// A control plane in C and an agent in V (host mode), or in G in front of V (gateway mode).
pub struct World {
    _tmp: tempfile::TempDir,
    pub c: Netns,
    /// Where the agent runs: the VM itself (host mode) or the gateway.
    pub v: Netns,
    /// Gateway mode: the VM behind the gateway.
    _inner: Option<Netns>,
    pub server: LocalServer,
    pub agent: Option<KillOnDrop>,
    _listener: KillOnDrop,
    pub state_dir: std::path::PathBuf,
    pub gateway: bool,
    /// Added to the agent's environment (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME`).
    pub agent_env: Vec<(String, String)>,
    /// Trust the server by its public key's fingerprint (`--server-fingerprint`), not `--ca-cert`.
    pub agent_pin: bool,
}

/// Gateway mode addresses: the gateway's public side is VM (10.9.0.2), the VM behind it INNER.
pub const INNER: &str = "10.8.0.2";
/// A dual-stack gateway world adds IPv6: clients A6 and B6 in C, the gateway's public side GW6,
/// and INNER6 on the VM behind it.
pub const A6: &str = "fd09::1";
pub const B6: &str = "fd09::3";
pub const GW6: &str = "fd09::2";
pub const INNER6: &str = "fd08::2";

impl World {
    pub fn new(ports: &[u16]) -> World {
        Self::build(ports, false)
    }

    pub fn new_gateway(ports: &[u16]) -> World {
        Self::build(ports, true)
    }

    /// A gateway world with IPv6 beside IPv4: the VM behind the gateway listens on INNER6 too.
    pub fn new_gateway_dual_stack(ports: &[u16]) -> World {
        Self::build_with(ports, true, true)
    }

    pub fn build(ports: &[u16], gateway: bool) -> World {
        Self::build_with(ports, gateway, false)
    }

    /// A host world whose agent has `env` added to its environment; with `pin`, it trusts the
    /// server by its key's fingerprint instead of `--ca-cert`.
    pub fn new_with_agent(ports: &[u16], env: &[(&str, &str)], pin: bool) -> World {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::build_full(ports, false, false, env, pin)
    }

    fn build_with(ports: &[u16], gateway: bool, ipv6: bool) -> World {
        Self::build_full(ports, gateway, ipv6, Vec::new(), false)
    }

    fn build_full(
        ports: &[u16],
        gateway: bool,
        ipv6: bool,
        agent_env: Vec<(String, String)>,
        agent_pin: bool,
    ) -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Netns::new("c").expect("netns c");
        let v = Netns::new(if gateway { "g" } else { "v" }).expect("netns v");
        let (cif, vif) = veth(&c, "10.9.0.1/24", &v, "10.9.0.2/24").expect("veth");
        c.ip(&["addr", "add", "10.9.0.3/24", "dev", &cif]).expect("second client address");
        let inner = if gateway {
            let inner = Netns::new("i").expect("netns inner");
            let (gif, iif) = veth(&v, "10.8.0.1/24", &inner, "10.8.0.2/24").expect("inner veth");
            v.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
            c.ip(&["route", "add", "10.8.0.0/24", "via", VM]).expect("route to the inner network");
            inner.ip(&["route", "add", "default", "via", "10.8.0.1"]).expect("default route");
            if ipv6 {
                for (ns, dev, a) in [
                    (&c, &cif, "fd09::1/64"),
                    (&c, &cif, "fd09::3/64"),
                    (&v, &vif, "fd09::2/64"),
                    (&v, &gif, "fd08::1/64"),
                ] {
                    ns.addr(dev, a).expect("IPv6 address");
                }
                inner.addr(&iif, "fd08::2/64").expect("IPv6 address");
                v.sysctl("net.ipv6.conf.all.forwarding", "1").expect("IPv6 forwarding");
                c.ip(&["-6", "route", "add", "fd08::/64", "via", GW6]).expect("IPv6 route to the inner network");
                inner.ip(&["-6", "route", "add", "default", "via", "fd08::1"]).expect("IPv6 default route");
            }
            Some(inner)
        } else {
            None
        };
        let mut listen = inner.as_ref().unwrap_or(&v).cmd(BIN);
        listen.args(["probe", "listen"]);
        for p in ports {
            listen.args(["--tcp", &format!("0.0.0.0:{p}"), "--udp", &format!("0.0.0.0:{p}")]);
            if ipv6 {
                listen.args(["--tcp", &format!("[{INNER6}]:{p}")]);
            }
        }
        let mut listener = KillOnDrop::spawn(listen).expect("listener");
        listener.wait_for_line("listening").expect("listener ready");
        let server = LocalServer::start_with(
            &c.prefix(),
            Path::new(BIN),
            &tmp.path().join("server"),
            &format!("{A}:0"),
            &["--tls-san", A],
        )
        .expect("server in C");
        let state_dir = tmp.path().join("agent");
        let mut w = World {
            _tmp: tmp,
            c,
            v,
            _inner: inner,
            server,
            agent: None,
            _listener: listener,
            state_dir,
            gateway,
            agent_env,
            agent_pin,
        };
        let mode = if gateway { "gateway" } else { "host" };
        let token = w.join_token(mode);
        assert!(token.starts_with("jgj_"), "join token printed alone: {token:?}");
        w.start_agent(Some(&token));
        if gateway {
            w.wait_for(|w| w.api("GET", "/api/v1/agents", None).1["value"][0]["lastSeen"].is_string());
            let vm = json!({"id": vm_id("rg", "vm1"), "osType": "Linux", "location": "westeurope", "address": INNER, "gateway": "gw1"});
            let (status, b) = w.api("PUT", "/api/v1/vms", Some(&vm));
            assert_eq!(status, 201, "attach the VM behind the gateway: {b}");
        }
        w.wait_for(|w| {
            let agent = if w.gateway { "gw1" } else { "vm1" };
            w.api("GET", &format!("/api/v1/vms?id={}", vm_id("rg", "vm1")), None).1["enforcement"]["agent"] == agent
        });
        w
    }

    pub fn start_agent(&mut self, token: Option<&str>) {
        let mut cmd = self.v.cmd(BIN);
        cmd.envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        cmd.args(["agent", "--server", &self.server.url, "--state-dir"])
            .arg(&self.state_dir)
            .args(["--poll-seconds", "5"]);
        if self.gateway {
            cmd.args(["--mode", "gateway", "--vm-name", "gw1", "--public-address", VM]);
        } else {
            cmd.args(["--vm-name", "vm1"]);
        }
        if self.agent_pin {
            cmd.args(["--server-fingerprint", &self.server_key()]);
        } else {
            cmd.arg("--ca-cert").arg(&self.server.ca_cert);
        }
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        cmd.env("JITGATE_LOG", "warn");
        self.agent = Some(KillOnDrop::spawn(cmd).expect("agent"));
    }

    /// Stops the server — SIGKILL, or SIGTERM and a clean exit — and starts it again on the same
    /// data directory and address, where the agent keeps looking for it.
    pub fn restart_server(&mut self, kill9: bool) {
        let listen = self.server.url.trim_start_matches("https://").to_owned();
        let data = self.server.data_dir.clone();
        if kill9 {
            self.server.kill().expect("server killed");
        } else {
            assert!(self.server.stop().expect("the server stops within 20 s"), "SIGTERM: a clean exit");
        }
        self.server = LocalServer::start_with(&self.c.prefix(), Path::new(BIN), &data, &listen, &["--tls-san", A])
            .expect("server restarted on the same address");
    }

    /// Cuts the agent off from the server: the agent's side drops every packet to and from the
    /// server's port (a table of the test's own, beside jitgate's), until [`World::heal`].
    pub fn partition(&self) {
        let port = self.server.url.rsplit(':').next().unwrap_or("0").trim_end_matches('/').to_owned();
        let script = format!(
            "table inet faults {{\n chain out {{\n type filter hook output priority 0;\n ip daddr {A} tcp dport {port} drop\n }}\n \
             chain in {{\n type filter hook input priority 0;\n ip saddr {A} tcp sport {port} drop\n }}\n}}\n"
        );
        let out = self.v.cmd("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(script.as_bytes())).transpose()?;
            c.wait_with_output()
        });
        assert!(out.is_ok_and(|o| o.status.success()), "partition installed");
    }

    /// Ends [`World::partition`].
    pub fn heal(&self) {
        let out = self.v.cmd("nft").args(["delete", "table", "inet", "faults"]).output().expect("nft runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether the agent process is still running.
    pub fn agent_alive(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|a| matches!(a.0.try_wait(), Ok(None)))
    }

    /// The SHA-256 fingerprint of the server's public key, as `jitgate serve` printed it.
    pub fn server_key(&self) -> String {
        self.server
            .stdout()
            .lines()
            .find_map(|l| {
                l.strip_prefix("TLS public key: SHA-256 ").and_then(|r| r.split_whitespace().next()).map(str::to_owned)
            })
            .expect("the server prints its public key's fingerprint")
    }

    /// A join token for resource group `rg`, made with the CLI inside C.
    pub fn join_token(&self, mode: &str) -> String {
        self.server.create_join_token(self.c.cmd(BIN), SUB, "rg", "westeurope", &["--mode", mode]).expect("join token")
    }

    /// Runs the jitgate CLI inside C with the admin connection settings; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.server.client_env(self.c.cmd(BIN).args(args)).output().expect("cli runs");
        assert!(out.status.success(), "jitgate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls the API with curl inside C; returns the status and the JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = self.c.cmd("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert"]).arg(&self.server.ca_cert);
        cmd.args([
            "-H",
            &format!("Authorization: Bearer {}", self.server.token),
            "-H",
            "Content-Type: application/json",
        ]);
        if let Some(b) = body {
            cmd.args(["-d", &b.to_string()]);
        }
        cmd.arg(format!("{}{path}", self.server.url));
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
    }

    pub fn policy_path(&self) -> String {
        format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default?api-version=2020-01-01")
    }

    pub fn put_policy(&self, ports: Value) {
        let body = json!({"properties": {"virtualMachines": [{"id": vm_id("rg", "vm1"), "ports": ports}]}});
        let (status, b) = self.api("PUT", &self.policy_path(), Some(&body));
        assert_eq!(status, 200, "{b}");
    }

    /// Initiates for `source` on `port`, waiting until the agent applied it. Returns the answer.
    pub fn initiate(&self, source: &str, port: u16, duration: &str) -> Value {
        self.initiate_with(source, port, duration, "&wait=applied")
    }

    /// Initiates for `source` on `port` with `query` (e.g. `&wait=applied&timeout=60`, or empty:
    /// no waiting). Returns the answer.
    pub fn initiate_with(&self, source: &str, port: u16, duration: &str, query: &str) -> Value {
        let body = json!({"virtualMachines": [{"id": vm_id("rg", "vm1"), "ports": [
            {"number": port, "allowedSourceAddressPrefix": source, "duration": duration}]}]});
        let path = self.policy_path().replace("?api-version", "/initiate?api-version") + query;
        let (status, b) = self.api("POST", &path, Some(&body));
        assert_eq!(status, 202, "{b}");
        b
    }

    /// Probes a TCP connect from `from` to VM:`port` inside C.
    pub fn probe(&self, from: &str, port: u16, expect: &str, within_ms: u64) -> Value {
        self.probe_to(from, VM, port, expect, within_ms)
    }

    pub fn probe_to(&self, from: &str, to: &str, port: u16, expect: &str, within_ms: u64) -> Value {
        let to = if to.contains(':') { format!("[{to}]:{port}") } else { format!("{to}:{port}") };
        let out = self
            .c
            .cmd(BIN)
            .args(["probe", "connect", "--from", from, "--to", &to, "--expect", expect])
            .args(["--within-ms", &within_ms.to_string(), "--attempt-ms", "150"])
            .output()
            .expect("probe runs");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn is_open(&self, from: &str, port: u16) -> bool {
        self.probe(from, port, "open", 0)["open"] == true
    }

    /// The element of `source`'s TCP grant to `port` in the agent's table, as the kernel has it
    /// now (`nft list set`, to the millisecond); `None` when there is none (or no table).
    pub fn element(&self, source: &str, port: u16) -> Option<Element> {
        let out = self.v.cmd("nft").args(["list", "set", "inet", "jitgate", "allow4"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find(&format!("{source} . tcp . {port} "))?;
        let elem = text[at..].split([',', '}']).next()?;
        let after = |word: &str| elem.split(word).nth(1)?.split_whitespace().next().and_then(nft_duration_ms);
        Some(Element { timeout_ms: after(" timeout ")?, expires_ms: after(" expires ")? })
    }

    pub fn wait_for(&self, check: impl Fn(&World) -> bool) {
        for _ in 0..200 {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("condition not reached within 10 s");
    }
}

/// A grant's element in the kernel: the timeout it was given and the time it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    pub timeout_ms: u64,
    pub expires_ms: u64,
}

/// An nft duration (`9m59s996ms`, `1d2h`, `600s`) in milliseconds.
pub fn nft_duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        total += n * match &rest[..unit] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            _ => return None,
        };
        rest = &rest[unit..];
    }
    Some(total)
}

pub fn end_ms(answer: &Value) -> u64 {
    let text = answer["virtualMachines"][0]["ports"][0]["endTimeUtc"].as_str().unwrap_or("");
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("end time");
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

pub fn ssh_like(port: u16) -> Value {
    json!({"number": port, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"})
}
