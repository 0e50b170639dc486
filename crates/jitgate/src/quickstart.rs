//! `jitgate quickstart`: the whole path on one machine, in network namespaces it makes and
//! removes — a server on a "workstation", an agent on a "VM" with an SSH-like listener, and a
//! second client elsewhere — showing each command it runs: the port closed, a request, the port
//! open from my address only, expiry, closed again. Nothing is left behind, Ctrl-C included:
//! every namespace, process and file is held by a guard that removes it when dropped.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use jitgate_api_types::agent::AgentOut;
use jitgate_api_types::native::ListOut;
use jitgate_cli::QuickstartArgs;
use jitgate_client::local::LocalServer;
use jitgate_netns::{KillOnDrop, Netns};

/// The subscription the quickstart uses: any GUID will do.
const SUBSCRIPTION: &str = "00000000-0000-4000-8000-00000000c0de";
const WORKSTATION: &str = "10.77.0.1";
const VM: &str = "10.77.0.2";
const ELSEWHERE: &str = "10.77.1.1";
const VM_FROM_ELSEWHERE: &str = "10.77.1.2";

/// Runs the quickstart; on SIGINT (Ctrl-C) stops at the next step, removes everything and
/// fails.
pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    if let Some(why) = jitgate_netns::unavailable() {
        bail!("the quickstart {why}: run it as root on Linux with iproute2 and nftables installed (sudo jitgate quickstart)");
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let worker = tokio::task::spawn_blocking({
        let cancelled = cancelled.clone();
        move || Quickstart::new(args, cancelled).and_then(|mut q| q.steps())
    });
    tokio::pin!(worker);
    let done = tokio::select! {
        r = &mut worker => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\njitgate quickstart: interrupted; removing the namespaces, processes and files it made…");
            cancelled.store(true, Ordering::SeqCst);
            worker.await
        }
    };
    let result = done.map_err(|e| anyhow!("the quickstart stopped: {e}"))?;
    if cancelled.load(Ordering::SeqCst) {
        eprintln!("jitgate quickstart: removed everything it made");
        bail!("interrupted");
    }
    result
}

/// Everything the quickstart made; dropped in reverse order of declaration needs: processes
/// first, then namespaces, then files.
struct Quickstart {
    args: QuickstartArgs,
    cancelled: Arc<AtomicBool>,
    bin: PathBuf,
    // Declared (and so dropped) before the namespaces they run in and the files they use.
    agent: Option<KillOnDrop>,
    listener: Option<KillOnDrop>,
    server: Option<LocalServer>,
    workstation: Netns,
    vm: Netns,
    elsewhere: Netns,
    dir: tempfile::TempDir,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // Processes before their namespaces (the fields' order does the rest).
        self.agent.take();
        self.listener.take();
        self.server.take();
    }
}

impl Quickstart {
    fn new(args: QuickstartArgs, cancelled: Arc<AtomicBool>) -> anyhow::Result<Self> {
        let bin = std::env::current_exe().context("finding the jitgate binary")?;
        let dir =
            tempfile::Builder::new().prefix("jitgate-quickstart-").tempdir().context("making a work directory")?;
        let workstation = Netns::new("qsw").context("making the workstation namespace")?;
        let vm = Netns::new("qsv").context("making the VM namespace")?;
        let elsewhere = Netns::new("qso").context("making the second client's namespace")?;
        jitgate_netns::veth(&workstation, &format!("{WORKSTATION}/24"), &vm, &format!("{VM}/24"))
            .context("joining the workstation and the VM")?;
        jitgate_netns::veth(&elsewhere, &format!("{ELSEWHERE}/24"), &vm, &format!("{VM_FROM_ELSEWHERE}/24"))
            .context("joining the second client and the VM")?;
        Ok(Quickstart {
            args,
            cancelled,
            bin,
            agent: None,
            listener: None,
            server: None,
            workstation,
            vm,
            elsewhere,
            dir,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.cancelled.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn step(&self, n: u32, text: &str) -> anyhow::Result<()> {
        self.check()?;
        println!("\n== {n}. {text}");
        Ok(())
    }

    /// A `jitgate` command in `ns`, with the quickstart's connection settings.
    fn jitgate(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut c = ns.cmd(&self.bin);
        c.args(args).env("JITGATE_CONFIG", self.dir.path().join("profile")).env("JITGATE_SUBSCRIPTION", SUBSCRIPTION);
        if let Some(s) = &self.server {
            s.client_env(&mut c);
        }
        c.env("JITGATE_LOG", "warn").env("NO_COLOR", "1");
        c
    }

    /// Shows `$ jitgate ARGS` (as run on `host`), runs it, shows its output indented.
    fn show(&self, host: &str, ns: &Netns, args: &[&str]) -> anyhow::Result<Output> {
        println!("[{host}] $ jitgate {}", args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
        let out = self.wait(self.jitgate(ns, args))?;
        for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
            println!("    {line}");
        }
        Ok(out)
    }

    /// Runs `cmd` to its end, or kills it when the quickstart is interrupted.
    fn wait(&self, mut cmd: Command) -> anyhow::Result<Output> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?);
            }
            if self.cancelled.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `jitgate probe connect` from `ns` to the VM's SSH port: whether it is open.
    fn probe(&self, host: &str, ns: &Netns, to: &str, expect: &str, within: Duration) -> anyhow::Result<bool> {
        let target = format!("{to}:22");
        let ms = within.as_millis().to_string();
        let args = ["probe", "connect", "--to", target.as_str(), "--expect", expect, "--within-ms", ms.as_str()];
        println!("[{host}] $ jitgate {}", args.join(" "));
        let out = self.wait(self.jitgate(ns, &args))?;
        let met = out.status.success();
        let open = if expect == "open" { met } else { !met };
        println!("    port 22 of the VM is {} from {host}", if open { "OPEN" } else { "closed" });
        Ok(open)
    }

    fn steps(&mut self) -> anyhow::Result<()> {
        let (ws, vm, other) = ("workstation", "vm", "elsewhere");
        println!("jitgate quickstart: one machine, three network namespaces it removes at the end:");
        println!(
            "  {} (you, {WORKSTATION}, runs the server), {} (the VM, {VM}), {} (another client, {ELSEWHERE})",
            self.workstation.name, self.vm.name, self.elsewhere.name
        );
        println!("  work directory {}", self.dir.path().display());

        self.step(1, "Start the server on the workstation")?;
        let data = self.dir.path().join("data");
        println!("[{ws}] $ jitgate serve --data-dir {} --listen {WORKSTATION}:0", data.display());
        let server =
            LocalServer::start_with(&self.workstation.prefix(), &self.bin, &data, &format!("{WORKSTATION}:0"), &[])
                .context("starting jitgate serve")?;
        println!("    listening on {} (self-signed certificate {})", server.url, server.ca_cert.display());
        self.server = Some(server);

        self.step(2, "On the VM: something listening on port 22 (an SSH stand-in), open to all")?;
        println!("[{vm}] $ jitgate probe listen --tcp 0.0.0.0:22");
        let mut listener = KillOnDrop::spawn(self.jitgate(&self.vm, &["probe", "listen", "--tcp", "0.0.0.0:22"]))?;
        listener.wait_for_line("listening")?;
        self.listener = Some(listener);
        self.probe(ws, &self.workstation, VM, "open", Duration::ZERO)?;

        self.step(3, "Make a join token for the VM web1 and start the agent on the VM")?;
        let token_args = [
            "agent",
            "token",
            "create",
            "--subscription",
            SUBSCRIPTION,
            "--resource-group",
            "quickstart",
            "--location",
            "local",
            "--vm",
            "web1",
            "--ttl",
            "10m",
        ];
        println!("[{ws}] $ TOKEN=$(jitgate {})", token_args.join(" "));
        let out = self.wait(self.jitgate(&self.workstation, &token_args))?;
        if !out.status.success() {
            bail!("making a join token: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (url, ca) = match &self.server {
            Some(s) => (s.url.clone(), s.ca_cert.clone()),
            None => bail!("no server"),
        };
        let state = self.dir.path().join("agent");
        println!(
            "[{vm}] $ jitgate agent --server {url} --join-token \"$TOKEN\" --ca-cert {} --state-dir {}",
            ca.display(),
            state.display()
        );
        let mut agent = self.vm.cmd(&self.bin);
        agent
            .args(["agent", "--server", &url, "--join-token", &token, "--ca-cert"])
            .arg(&ca)
            .arg("--state-dir")
            .arg(&state)
            .env("JITGATE_LOG", "warn")
            .env("NO_COLOR", "1");
        self.agent = Some(KillOnDrop::spawn(agent)?);
        self.wait_for_agent()?;
        self.show(ws, &self.workstation, &["agent", "list"])?;

        self.step(4, "Enable JIT on web1 for SSH: the agent closes port 22")?;
        self.show(
            ws,
            &self.workstation,
            &["policy", "set", "-g", "quickstart", "-l", "local", "--vm", "web1", "--port", "22,max=PT1H"],
        )?;
        if !self.probe(ws, &self.workstation, VM, "closed", Duration::from_secs(5)).map(|open| !open)? {
            bail!("port 22 did not close");
        }
        self.probe(other, &self.elsewhere, VM_FROM_ELSEWHERE, "open", Duration::ZERO)?;

        self.step(5, "Request access from my address for a short while, and wait until it is open")?;
        let duration = format!("{}s", self.args.seconds);
        let out = self.show(
            ws,
            &self.workstation,
            &[
                "access",
                "request",
                "--vm",
                "web1",
                "--port",
                "22",
                "--for",
                &duration,
                "--wait",
                "--justification",
                "quickstart",
            ],
        )?;
        if !out.status.success() {
            bail!("the request failed");
        }
        let opened = Instant::now();

        self.step(6, "Port 22 is open from my address only")?;
        if !self.probe(ws, &self.workstation, VM, "open", Duration::from_secs(2))? {
            bail!("port 22 did not open for the workstation");
        }
        if self.probe(other, &self.elsewhere, VM_FROM_ELSEWHERE, "open", Duration::ZERO)? {
            bail!("port 22 opened for another address too");
        }

        self.step(7, "At the end time the kernel closes it again (no jitgate process needed)")?;
        let within = Duration::from_secs(self.args.seconds + 10);
        if self.probe(ws, &self.workstation, VM, "closed", within)? {
            bail!("port 22 did not close at its end time");
        }
        println!("    closed {:.1} s after it opened", opened.elapsed().as_secs_f64());
        self.show(ws, &self.workstation, &["access", "list"])?;

        self.check()?;
        println!("\nDone. Next: the README's walkthroughs, and `jitgate agent` on a real VM.");
        println!(
            "Removing the namespaces {}, {}, {} and {}.",
            self.workstation.name,
            self.vm.name,
            self.elsewhere.name,
            self.dir.path().display()
        );
        Ok(())
    }

    /// Waits until the agent has joined and reported (or fails after a few seconds).
    fn wait_for_agent(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.check()?;
            let out = self.wait(self.jitgate(&self.workstation, &["agent", "list", "-o", "json"]))?;
            let agents: Option<ListOut<AgentOut>> = serde_json::from_slice(&out.stdout).ok();
            if agents.is_some_and(|l| l.value.iter().any(|a| a.name == "web1" && a.last_seen.is_some())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not join and report within 15 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn quote(a: &str) -> String {
    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("{a:?}")
    } else {
        a.to_owned()
    }
}
