//! Throwaway databases for tests: each test gets its own, uniquely named, on the PostgreSQL at
//! 127.0.0.1:5432 (user `postgres`, or `JITGATE_TEST_PG` — a server URL without a database),
//! dropped when the guard is (even when the test fails), so tests run in parallel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;

/// The server tests use, without a database name.
pub fn server_url() -> String {
    std::env::var("JITGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database made for one test; dropped (with any connections still open to it) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server: String,
}

impl TestDatabase {
    /// Creates a fresh database, or says why none can be made (no server answering, say).
    pub async fn create() -> Result<Self, String> {
        Self::create_on(&server_url()).await
    }

    /// Creates a fresh database on the server at `server` (a URL without a database).
    pub async fn create_on(server: &str) -> Result<Self, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let server = server.trim_end_matches('/').to_owned();
        let nonce = time::OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000;
        let name = format!("jitgate_test_{}_{}_{nonce}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        admin(&server, &format!("CREATE DATABASE {name}")).await?;
        let url = format!("{server}/{name}");
        Ok(TestDatabase { name, url, server })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A test's runtime may be the one running this drop: the database is dropped on a thread
        // of its own, with a runtime of its own.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let server = self.server.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(admin(&server, &sql))
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("dropping test database {}: {e}", self.name);
        }
    }
}

/// Runs one statement on the `postgres` database of `server`.
async fn admin(server: &str, sql: &str) -> Result<(), String> {
    let url = format!("{server}/postgres?connect_timeout=3");
    let connect = tokio_postgres::connect(&url, NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| format!("no PostgreSQL answered at {server} within 5 s"))?
        .map_err(|e| format!("no PostgreSQL at {server}: {}", crate::describe(&e)))?;
    let task = tokio::spawn(conn);
    let out = client.batch_execute(sql).await.map_err(|e| format!("{sql}: {}", crate::describe(&e)));
    drop(client);
    let _ = task.await;
    out
}
