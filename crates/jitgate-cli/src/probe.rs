//! `jitgate probe`: small network probes for checking what a firewall lets through — "is the
//! port open for me now?", "when did it close?", "did my session survive?". The end-to-end tests
//! and `jitgate bench open-latency` use them; operators can too.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub command: ProbeCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProbeCommand {
    /// Echo server: every TCP connection and UDP datagram is echoed back.
    #[command(after_help = "Example:\n  jitgate probe listen --tcp 0.0.0.0:2222 --udp 0.0.0.0:2222")]
    Listen(ListenArgs),
    /// Try TCP connects until the port is open (or closed); prints when that happened.
    #[command(after_help = "Example:\n  jitgate probe connect --to 10.0.0.4:22 --expect open --within-ms 5000")]
    Connect(ConnectArgs),
    /// Keep one TCP session alive with an echo every interval; prints when echoes stopped.
    #[command(after_help = "Example:\n  jitgate probe session --to 10.0.0.4:22 --for-ms 10000")]
    Session(SessionArgs),
    /// Send a UDP datagram and wait for the echo.
    #[command(after_help = "Example:\n  jitgate probe udp --to 10.0.0.4:53")]
    Udp(UdpArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Accept TCP connections here (repeatable).
    #[arg(long)]
    pub tcp: Vec<SocketAddr>,
    /// Echo UDP datagrams here (repeatable).
    #[arg(long)]
    pub udp: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    Open,
    Closed,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Local address to connect from.
    #[arg(long)]
    pub from: Option<std::net::IpAddr>,
    /// The address and port to connect to.
    #[arg(long)]
    pub to: SocketAddr,
    /// Succeed when the port is open, or when it is closed.
    #[arg(long, value_enum, default_value = "open")]
    pub expect: Expect,
    /// Give up after this many milliseconds (0: one attempt).
    #[arg(long, default_value_t = 0)]
    pub within_ms: u64,
    /// How long one attempt waits for the handshake, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub attempt_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Local address to connect from.
    #[arg(long)]
    pub from: Option<std::net::IpAddr>,
    /// The address and port to hold a session with.
    #[arg(long)]
    pub to: SocketAddr,
    /// How long to keep the session, in milliseconds.
    #[arg(long)]
    pub for_ms: u64,
    /// Send a byte this often, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct UdpArgs {
    /// Local address to send from.
    #[arg(long)]
    pub from: Option<std::net::IpAddr>,
    /// The address and port to send to.
    #[arg(long)]
    pub to: SocketAddr,
    /// How long to wait for the echo, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
}

/// What `probe connect` prints (fields in alphabetical order, as the JSON has always read).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectOut {
    at_unix_ms: u64,
    elapsed_ms: u64,
    open: bool,
    reached: bool,
}

/// What `probe session` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionOut {
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_fail_unix_ms: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_ok_unix_ms: Option<Option<u64>>,
}

/// What `probe udp` prints.
#[derive(Debug, Serialize)]
struct UdpOut {
    open: bool,
}

/// One line of JSON on stdout.
fn say(value: &impl Serialize) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One TCP connect attempt from `from` to `to`.
pub async fn try_connect(
    from: Option<std::net::IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Option<tokio::net::TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.ok()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).ok()?;
    }
    tokio::time::timeout(timeout, socket.connect(to)).await.ok()?.ok()
}

pub async fn run(args: ProbeArgs) -> Result<i32, crate::CliError> {
    match args.command {
        ProbeCommand::Listen(a) => {
            let mut tasks = Vec::new();
            for addr in a.tcp {
                let l = TcpListener::bind(addr).await?;
                tasks.push(tokio::spawn(async move {
                    while let Ok((mut s, _)) = l.accept().await {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = s.read(&mut buf).await {
                                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }));
            }
            for addr in a.udp {
                let u = UdpSocket::bind(addr).await?;
                tasks.push(tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, peer)) = u.recv_from(&mut buf).await {
                        let _ = u.send_to(&buf[..n], peer).await;
                    }
                }));
            }
            println!("listening");
            for t in tasks {
                let _ = t.await;
            }
            Ok(0)
        }
        ProbeCommand::Connect(a) => {
            let start = Instant::now();
            let attempt = Duration::from_millis(a.attempt_ms.max(1));
            loop {
                let at = unix_ms();
                let open = try_connect(a.from, a.to, attempt).await.is_some();
                let reached = open == (a.expect == Expect::Open);
                if reached || start.elapsed() >= Duration::from_millis(a.within_ms) {
                    let elapsed_ms = start.elapsed().as_millis() as u64;
                    say(&ConnectOut { at_unix_ms: at, elapsed_ms, open, reached });
                    return Ok(if reached { 0 } else { 5 });
                }
                if open {
                    // Waiting for it to close: space the attempts a little.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        ProbeCommand::Session(a) => {
            let Some(mut s) = try_connect(a.from, a.to, Duration::from_secs(1)).await else {
                say(&SessionOut { connected: false, first_fail_unix_ms: None, last_ok_unix_ms: None });
                return Ok(5);
            };
            let end = Instant::now() + Duration::from_millis(a.for_ms);
            let (mut last_ok, mut first_fail) = (None, None);
            let mut buf = [0u8; 1];
            while Instant::now() < end {
                let at = unix_ms();
                let ok = s.write_all(b"x").await.is_ok()
                    && matches!(
                        tokio::time::timeout(Duration::from_millis(a.interval_ms), s.read_exact(&mut buf)).await,
                        Ok(Ok(_))
                    );
                if ok {
                    last_ok = Some(at);
                    tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
                } else {
                    first_fail = Some(at);
                    break;
                }
            }
            say(&SessionOut { connected: true, first_fail_unix_ms: Some(first_fail), last_ok_unix_ms: Some(last_ok) });
            Ok(0)
        }
        ProbeCommand::Udp(a) => {
            let bind = SocketAddr::new(
                a.from.unwrap_or(if a.to.is_ipv4() {
                    [0, 0, 0, 0].into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                }),
                0,
            );
            let u = UdpSocket::bind(bind).await?;
            u.send_to(b"ping", a.to).await?;
            let mut buf = [0u8; 16];
            let got = tokio::time::timeout(Duration::from_millis(a.timeout_ms), u.recv_from(&mut buf)).await;
            let open = matches!(got, Ok(Ok(_)));
            say(&UdpOut { open });
            Ok(if open { 0 } else { 5 })
        }
    }
}
