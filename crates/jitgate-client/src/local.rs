//! Starts `jitgate serve` as a child process in a temporary data directory on a free port, and
//! stops it (and removes the directory) when dropped — for the benchmark and the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a local server did not start or stop as asked.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    /// An operating-system call failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The child has no stdout to read its address from.
    #[error("no stdout")]
    NoStdout,
    /// The server exited before it listened.
    #[error("jitgate serve exited early with {0}")]
    ExitedEarly(std::process::ExitStatus),
    /// The server did not listen in time.
    #[error("jitgate serve did not start listening within 30 s")]
    NotListening,
    /// The server did not stop in time.
    #[error("jitgate serve did not stop within 20 s of SIGTERM")]
    DidNotStop,
    /// `jitgate agent token create` failed.
    #[error("creating a join token: {0}")]
    JoinToken(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalServerError {
    let what = what.into();
    move |source| LocalServerError::Io { what, source }
}

type LocalResult<T> = std::result::Result<T, LocalServerError>;

/// The line `jitgate serve` prints once it accepts connections.
pub const LISTENING_PREFIX: &str = "jitgate listening on ";

/// A running `jitgate serve` child.
pub struct LocalServer {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    pub url: String,
    pub token: String,
    pub ca_cert: PathBuf,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl LocalServer {
    /// Starts `binary serve` with `extra` arguments in a new temporary directory.
    pub fn start(binary: &Path, extra: &[&str]) -> LocalResult<Self> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let data_dir = dir.path().join("data");
        let mut server = Self::start_in(binary, &data_dir, extra)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts `binary serve` on `data_dir` (kept when dropped).
    pub fn start_in(binary: &Path, data_dir: &Path, extra: &[&str]) -> LocalResult<Self> {
        Self::start_with(&[], binary, data_dir, "127.0.0.1:0", extra)
    }

    /// Starts `binary serve` with `extra` arguments in a new temporary directory, logging at
    /// level `info` into the file `log` (its stderr).
    pub fn start_logging(binary: &Path, extra: &[&str], log: &Path) -> LocalResult<Self> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
        let data_dir = dir.path().join("data");
        let mut server = Self::spawn(&[], binary, &data_dir, "127.0.0.1:0", extra, Some(file))?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts `prefix… binary serve --listen listen` on `data_dir` (kept when dropped); the
    /// prefix runs it elsewhere, e.g. `ip netns exec NS`.
    pub fn start_with(
        prefix: &[&str],
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> LocalResult<Self> {
        Self::spawn(prefix, binary, data_dir, listen, extra, None)
    }

    /// Starts the server; its stderr goes to `log` (at level `info`) or is inherited.
    fn spawn(
        prefix: &[&str],
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<std::fs::File>,
    ) -> LocalResult<Self> {
        let token_file = data_dir.with_extension("admin-token");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(extra)
            .env(
                "JITGATE_LOG",
                match &log {
                    Some(_) => "info".into(),
                    None => std::env::var("JITGATE_LOG").unwrap_or_else(|_| "warn".into()),
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.map_or_else(Stdio::inherit, Stdio::from))
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        let stdout = child.stdout.take().ok_or(LocalServerError::NoStdout)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let captured = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = tx.send(url.trim().to_owned());
                }
                if let Ok(mut v) = captured.lock() {
                    v.push(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(url) = rx.recv_timeout(Duration::from_millis(50)) {
                break url;
            }
            if let Some(status) = child.try_wait().map_err(io("waiting for jitgate serve"))? {
                return Err(LocalServerError::ExitedEarly(status));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(LocalServerError::NotListening);
            }
        };
        let token = std::fs::read_to_string(&token_file).unwrap_or_default().trim().to_owned();
        Ok(LocalServer {
            child: Some(child),
            stdout: lines,
            url,
            token,
            ca_cert: data_dir.join("tls").join("cert.pem"),
            data_dir: data_dir.to_owned(),
            _dir: None,
        })
    }

    /// Gives `cmd`, a `jitgate` client command, this server's connection settings (its URL, the
    /// admin token and its certificate).
    pub fn client_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("JITGATE_URL", &self.url).env("JITGATE_TOKEN", &self.token).env("JITGATE_CA_CERT", &self.ca_cert)
    }

    /// Makes a join token with `jitgate agent token create`, run as `cmd` (the `jitgate` binary,
    /// perhaps inside a network namespace), for `resource_group` of `subscription` at `location`
    /// with `extra` flags; returns the token.
    pub fn create_join_token(
        &self,
        mut cmd: Command,
        subscription: &str,
        resource_group: &str,
        location: &str,
        extra: &[&str],
    ) -> LocalResult<String> {
        cmd.args(["agent", "token", "create", "--subscription", subscription, "--resource-group", resource_group])
            .args(["--location", location])
            .args(extra);
        let out = self.client_env(&mut cmd).output().map_err(io("running jitgate agent token create"))?;
        if !out.status.success() {
            return Err(LocalServerError::JoinToken(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would (it finishes nothing),
    /// and waits until it is gone; the data directory is kept.
    pub fn kill(&mut self) -> LocalResult<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io("killing jitgate serve"))?;
            child.wait().map_err(io("waiting for jitgate serve"))?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> LocalResult<bool> {
        let Some(mut child) = self.child.take() else { return Ok(true) };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().map_err(io("waiting for jitgate serve"))? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LocalServerError::DidNotStop);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
