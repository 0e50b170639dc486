-- Schema version 3: webhook secrets at rest, delivery ids never reused.
-- secret_key: the id of the secrets key that seals `secret`. Sealing itself is not part of this
-- step: `SqliteStore::open` seals (and re-seals) secrets at every open, with the key it is given
-- (see migrate.rs).
ALTER TABLE webhooks ADD COLUMN secret_key TEXT;
-- Delivery ids become AUTOINCREMENT, so no id is ever reused after a webhook's deliveries are
-- deleted. SQLite cannot add AUTOINCREMENT in place: the table is rebuilt with the same rows and
-- indexes.
CREATE TABLE deliveries_v3 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT,
    created      INTEGER NOT NULL,
    delivered    INTEGER
);
INSERT INTO deliveries_v3 (id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered)
    SELECT id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v3 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_attempt) WHERE state = 'Pending';
CREATE INDEX deliveries_hook ON deliveries (webhook_id, id);
