//! The schema and its numbered upgrade steps, applied in one transaction at open.

use rusqlite::Connection;

use jitgate_store::StoreResult;

use crate::backend;

pub(crate) const SCHEMA_VERSION: i64 = 5;
const SCHEMA: &str = include_str!("schema.sql");

/// Schema 1 → 2: pending extensions on requests.
const UPGRADE_TO_2: &str =
    "ALTER TABLE requests ADD COLUMN ext_end INTEGER; ALTER TABLE requests ADD COLUMN ext_by TEXT;";

// ---- Schema 2 → 3: webhooks and secrets at rest (issue 9, findings 8 and 15). ----
// Webhook secrets get the id of the key that seals them (`SqliteStore::open` seals the ones
// stored in the clear), and delivery ids become AUTOINCREMENT so that no id is ever reused after
// a webhook's deliveries are deleted (SQLite cannot add AUTOINCREMENT in place: the table is
// rebuilt with the same rows and indexes).
const UPGRADE_TO_3: &str = "ALTER TABLE webhooks ADD COLUMN secret_key TEXT; \
    CREATE TABLE deliveries_v3 ( \
        id INTEGER PRIMARY KEY AUTOINCREMENT, webhook_id TEXT NOT NULL, event TEXT NOT NULL, \
        payload TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
        next_attempt INTEGER NOT NULL, last_error TEXT, created INTEGER NOT NULL, delivered INTEGER); \
    INSERT INTO deliveries_v3 (id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered) \
        SELECT id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered FROM deliveries; \
    DROP TABLE deliveries; \
    ALTER TABLE deliveries_v3 RENAME TO deliveries; \
    CREATE INDEX deliveries_due ON deliveries (next_attempt) WHERE state = 'Pending'; \
    CREATE INDEX deliveries_hook ON deliveries (webhook_id, id);";
// ---- end of schema 3 ----

// --- Identities and tokens (schema version 4) ---------------------------------------------
/// Schema 3 → 4: OIDC identities keyed by (issuer, subject) with a display name; what
/// created each token. Principals made by earlier OIDC sign-ins (named by their display claim)
/// stay what they were: local principals; the identity gets a new, derived principal.
const UPGRADE_TO_4: &str = "\
    ALTER TABLE principals ADD COLUMN issuer TEXT; \
    ALTER TABLE principals ADD COLUMN subject TEXT; \
    ALTER TABLE principals ADD COLUMN display_name TEXT; \
    CREATE UNIQUE INDEX principals_oidc ON principals (issuer, subject) WHERE issuer IS NOT NULL; \
    ALTER TABLE tokens ADD COLUMN origin TEXT; \
    ALTER TABLE tokens ADD COLUMN parent_id INTEGER REFERENCES tokens(id); \
    CREATE INDEX tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;";
// --- end of identities and tokens -----------------------------------------------------------

// --- Agents and gateways (schema version 5) -------------------------------------------------
/// Schema 4 → 5: join tokens made for one VM; the revision last delivered to each agent;
/// gateway names unique per subscription instead of globally.
const UPGRADE_TO_5: &str = "ALTER TABLE join_tokens ADD COLUMN vm TEXT; \
     ALTER TABLE agents ADD COLUMN delivered_revision INTEGER NOT NULL DEFAULT 0; \
     DROP INDEX agents_gateway_name; \
     CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(subscription), lower(name)) WHERE mode = 'gateway';";
// --- end of agents and gateways -------------------------------------------------------------

pub(crate) fn migrate(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version == 0 {
        return conn
            .execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
            .map_err(backend);
    }
    if version > SCHEMA_VERSION {
        return Err(backend(format!(
            "the database has schema version {version}, newer than this jitgate ({SCHEMA_VERSION})"
        )));
    }
    let steps: String = [(2, UPGRADE_TO_2), (3, UPGRADE_TO_3), (4, UPGRADE_TO_4), (5, UPGRADE_TO_5)]
        .iter()
        .filter(|(to, _)| version < *to)
        .map(|(_, sql)| format!("{sql} "))
        .collect();
    if steps.is_empty() {
        return Ok(());
    }
    conn.execute_batch(&format!("BEGIN; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")).map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        backend(format!("upgrading the database from schema version {version}: {e}"))
    })
}
