//! What the benchmarks measure beside jitgate, in the same run on the same machine: the machine
//! itself, one fsync in the temporary directory, and a bare HTTPS server on jitgate's own stack
//! (the server's rustls configuration, listener and HTTP serving, axum) whose one handler answers
//! 202 with a small JSON body and does nothing else. (SQLite's commit rate is
//! `jitgate_store_sqlite::yardstick`.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;

use jitgate_cli::bench::{drive_with, Measured};
use jitgate_client::{Client, Settings};
use jitgate_server::tls::{ensure_self_signed, server_config, ConnLimit, ServerListener};

/// The machine a benchmark ran on, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Machine::from_proc(&cpuinfo, kernel.trim(), time::OffsetDateTime::now_utc())
    }

    fn from_proc(cpuinfo: &str, kernel: &str, now: time::OffsetDateTime) -> Self {
        let value = |key: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.split_whitespace().collect::<Vec<_>>().join(" "))
            })
        };
        let cores = cpuinfo.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
        let cores = if cores > 0 { cores } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
        Machine {
            cpu: value("model name").or_else(|| value("Hardware")).unwrap_or_else(|| "unknown CPU".to_owned()),
            cores,
            kernel: if kernel.is_empty() { "unknown".to_owned() } else { kernel.to_owned() },
            date: format!(
                "{}-{:02}-{:02} {:02}:{:02} UTC",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute()
            ),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {}, {} cores, Linux {}; {}; {}",
            self.cpu,
            self.cores,
            self.kernel,
            self.date,
            if cfg!(debug_assertions) { "debug build: figures are not representative" } else { "release build" }
        )
    }
}

/// Sorted latencies, and their quantiles.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Samples(v)
    }

    /// The `p` quantile (0..=1); zero when there are none.
    pub fn pct(&self, p: f64) -> Duration {
        let n = self.0.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.0[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }
}

/// `samples` times: write 512 bytes at the start of a file in `dir` and `fdatasync` it. Blocking.
pub fn fsync_latencies(dir: &Path, samples: usize) -> std::io::Result<Samples> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(format!("yardstick-fsync-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let block = [0x5au8; 512];
    let mut out = Vec::with_capacity(samples);
    let result = (|| {
        for _ in 0..samples {
            let t = Instant::now();
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&block)?;
            file.sync_data()?;
            out.push(t.elapsed());
        }
        Ok(())
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result.map(|()| Samples::new(out))
}

/// The path the bare server answers on.
pub const BARE_PATH: &str = "/bare";
/// What it answers with (202).
pub const BARE_BODY: &str = r#"{"status":"Accepted"}"#;

/// A bare HTTPS server on 127.0.0.1 with jitgate's TLS and HTTP stack, on a runtime of its own
/// (as the real server runs in a process of its own); stopped when dropped.
pub struct BareHttps {
    pub url: String,
    /// The self-signed certificate (PEM) to trust.
    pub ca_cert: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl BareHttps {
    /// Starts it, its certificate made in a new directory under `dir`. Blocking (it waits for
    /// the listener).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir_in(dir).context("a directory for the bare server's certificate")?;
        let files = ensure_self_signed(&tmp.path().join("tls"), &[])?;
        let tls = server_config(&files.cert, &files.key)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("jitgate-bare-https")
            .build()
            .context("the bare server's runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, listening) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("jitgate-bare-https".into()).spawn(move || {
            runtime.block_on(async move {
                let bound = async {
                    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    ServerListener::new(tcp, Some(tls), ConnLimit::default())
                };
                let listener = match bound.await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(listener.local_addr()));
                let timeouts =
                    jitgate_server::conn::Timeouts { header: Duration::from_secs(10), body: Duration::from_secs(30) };
                jitgate_server::conn::serve(listener, router(), timeouts, async move {
                    let _ = stopped.await;
                })
                .await;
            });
        })?;
        let addr = listening
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the bare HTTPS server did not start"))?
            .context("binding the bare HTTPS server")?;
        Ok(BareHttps {
            url: format!("https://{addr}"),
            ca_cert: files.cert,
            stop: Some(stop),
            thread: Some(thread),
            _dir: tmp,
        })
    }

    /// A client for it with `settings` (the benchmark's), its URL and certificate swapped in.
    pub fn client(&self, settings: &Settings) -> anyhow::Result<Client> {
        let mut settings = settings.clone().ca_cert_path(Some(&self.ca_cert));
        settings.urls = vec![self.url.clone()];
        Ok(Client::new(settings)?)
    }
}

impl Drop for BareHttps {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router() -> Router {
    Router::new().route(
        BARE_PATH,
        post(|_body: Bytes| async { (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], BARE_BODY) }),
    )
}

/// `concurrency` clients POSTing an initiate's body to the bare server as fast as they can, as
/// the initiate benchmark drives jitgate.
pub async fn https_rate(
    client: &Client,
    vm_id: &str,
    concurrency: u64,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Measured> {
    let vm_id = std::sync::Arc::new(vm_id.to_owned());
    let call = move |client: Client, n: u64| {
        let body = jitgate_cli::bench::initiate_body(&vm_id, n);
        async move { client.post_json::<serde_json::Value>(BARE_PATH, &body).await.is_ok() }
    };
    let m = drive_with(std::slice::from_ref(client), concurrency, warmup, measure, call).await?;
    if m.latencies.is_empty() {
        return Err(anyhow!("no request to the bare HTTPS server succeeded ({} failed)", m.errors));
    }
    Ok(m)
}

/// `samples` round trips to the bare server, one after the other, after one to connect.
pub async fn round_trips(client: &Client, samples: usize) -> anyhow::Result<Samples> {
    let body = jitgate_cli::bench::initiate_body("/subscriptions/x/virtualMachines/rtt", 0);
    client.post_json::<serde_json::Value>(BARE_PATH, &body).await.context("the bare HTTPS server")?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        client.post_json::<serde_json::Value>(BARE_PATH, &body).await.context("the bare HTTPS server")?;
        out.push(t.elapsed());
    }
    Ok(Samples::new(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const CPUINFO: &str =
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  CPU @ 2.20GHz\n\n\
                           processor\t: 1\nmodel name\t: Intel(R) Xeon(R)  CPU @ 2.20GHz\n";

    #[test]
    fn the_machine_is_read_from_proc() {
        let now = time::macros::datetime!(2026-12-01 05:07:09 UTC);
        let m = Machine::from_proc(CPUINFO, "6.1.0-13-amd64", now);
        assert_eq!(m.cpu, "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert_eq!(m.cores, 2);
        assert_eq!(m.kernel, "6.1.0-13-amd64");
        assert_eq!(m.date, "2026-12-01 05:07 UTC");
        assert!(m.to_string().starts_with(
            "machine: Intel(R) Xeon(R) CPU @ 2.20GHz, 2 cores, Linux 6.1.0-13-amd64; 2026-12-01 05:07 UTC;"
        ));
        let bare = Machine::from_proc("", "", now);
        assert_eq!((bare.cpu.as_str(), bare.kernel.as_str()), ("unknown CPU", "unknown"));
        assert!(bare.cores >= 1);
    }

    #[test]
    fn fsync_latencies_are_positive_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = fsync_latencies(dir.path(), 20).unwrap();
        assert_eq!(s.0.len(), 20);
        assert!(s.pct(0.5) > Duration::ZERO && s.pct(0.5) <= s.pct(0.99));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn quantiles_of_samples() {
        let s = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(
            (s.pct(0.5), s.pct(0.99), s.pct(1.0)),
            (Duration::from_millis(50), Duration::from_millis(99), Duration::from_millis(100))
        );
        assert_eq!(Samples::default().pct(0.5), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bare_server_answers_202_and_gives_a_positive_finite_rate() {
        let dir = tempfile::tempdir().unwrap();
        let server = tokio::task::block_in_place(|| BareHttps::start(dir.path())).unwrap();
        let client = server.client(&Settings::new("https://unused").token("t")).unwrap();
        let resp = client.http().post(format!("{}{BARE_PATH}", server.url)).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.text().await.unwrap(), BARE_BODY);
        let m = https_rate(&client, "/vm", 4, Duration::from_millis(50), Duration::from_millis(200)).await.unwrap();
        assert!(!m.latencies.is_empty() && m.errors == 0, "{} ok, {} failed", m.latencies.len(), m.errors);
        assert!(m.rate().is_finite() && m.rate() > 0.0);
        let rtt = round_trips(&client, 10).await.unwrap();
        assert_eq!(rtt.0.len(), 10);
        assert!(rtt.pct(0.5) > Duration::ZERO);
        drop(client);
        tokio::task::block_in_place(|| drop(server));
    }
}
