//! [`inspect`]: a PostgreSQL store's health for `jitgate doctor`: reachable, at which schema
//! version, where the audit chain's head is, and whether the chain verifies. Reads only; does
//! not migrate, needs no secrets key.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use jitgate_store::health::StoreHealth;
use jitgate_store::{StoreError, StoreResult};

use crate::migrate::SCHEMA_VERSION;
use crate::{backend, describe, parse_url, redact, Db};

/// Connects to `url` (an error names the redacted URL and why) and reads the store's state.
pub async fn inspect(url: &str) -> StoreResult<StoreHealth> {
    let (config, _) = parse_url(url)?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(1)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .build()
        .map_err(backend)?;
    let client = pool.get().await.map_err(|e| backend(format!("connecting to {}: {}", redact(url), describe(&e))))?;
    let db = Db::new(client);
    let has_schema = db
        .one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .and_then(|r| Ok(r.try_get::<_, bool>(0)?))
        .map_err(StoreError::from)?;
    if !has_schema {
        return Err(backend(format!("{} holds no jitgate schema (no schema_version table)", redact(url))));
    }
    let schema: i64 = db
        .one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .and_then(|r| Ok(r.try_get(0)?))
        .map_err(StoreError::from)?;
    let head = db
        .one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
        .await
        .and_then(|r| Ok((r.try_get::<_, i64>(0)?, r.try_get::<_, String>(1)?)))
        .map_err(StoreError::from)?;
    let head = (head.0 > 0).then_some((head.0 as u64, head.1));
    let audit = crate::auditq::verify(&db).await.map_err(StoreError::from)?;
    Ok(StoreHealth { schema, expected: SCHEMA_VERSION, integrity: None, head, audit })
}
