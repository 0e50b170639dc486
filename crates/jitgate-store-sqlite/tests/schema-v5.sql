-- The schema of version 5 as `schema.sql` created it for a new database (before migrations were
-- numbered files), for the test that the numbered migrations build the same schema.
-- Times are Unix nanoseconds (INTEGER); keys are lower-cased ARM ids.
-- issuer, subject: an OIDC identity is found by these only (NULL: a local principal, found by name);
-- its name is derived from them. display_name: the cleaned display claim, shown only.
CREATE TABLE principals (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    kind         TEXT NOT NULL,
    created      INTEGER NOT NULL,
    issuer       TEXT,
    subject      TEXT,
    display_name TEXT
);
CREATE UNIQUE INDEX principals_oidc ON principals (issuer, subject) WHERE issuer IS NOT NULL;
-- origin: what created the token (server, token, idToken; NULL: not recorded); parent_id: the
-- token that created it, which it never outlives and is revoked with.
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    principal_id INTEGER NOT NULL REFERENCES principals(id),
    hash         TEXT NOT NULL UNIQUE,
    created      INTEGER NOT NULL,
    expires      INTEGER,
    revoked      INTEGER,
    origin       TEXT,
    parent_id    INTEGER REFERENCES tokens(id)
);
CREATE INDEX tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE vms (
    key       TEXT PRIMARY KEY,
    id        TEXT NOT NULL,
    os_type   TEXT NOT NULL,
    location  TEXT NOT NULL,
    address   TEXT,
    gateway   TEXT,              -- name of the gateway agent in front of the VM (gateway mode)
    classic   INTEGER NOT NULL DEFAULT 0,
    agent_id  TEXT,              -- the host-mode agent running on the VM
    created   INTEGER NOT NULL,
    updated   INTEGER NOT NULL
);
CREATE TABLE policies (
    pid            INTEGER PRIMARY KEY AUTOINCREMENT,
    key            TEXT NOT NULL UNIQUE,
    subscription   TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location       TEXT NOT NULL,
    name           TEXT NOT NULL,
    sub_key        TEXT NOT NULL,
    rg_key         TEXT NOT NULL,
    loc_key        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    created        INTEGER NOT NULL,
    updated        INTEGER NOT NULL
);
CREATE INDEX policies_scope ON policies (sub_key, key);
CREATE TABLE policy_vms (
    pid       INTEGER NOT NULL REFERENCES policies(pid),
    ord       INTEGER NOT NULL,
    vm_key    TEXT NOT NULL,
    vm_id     TEXT NOT NULL,
    public_ip TEXT,
    PRIMARY KEY (pid, ord)
);
CREATE UNIQUE INDEX policy_vms_vm ON policy_vms (vm_key);
CREATE TABLE policy_ports (
    pid          INTEGER NOT NULL REFERENCES policies(pid),
    vm_ord       INTEGER NOT NULL,
    ord          INTEGER NOT NULL,
    number       INTEGER NOT NULL,
    protocol     TEXT NOT NULL,
    source_form  TEXT NOT NULL,
    sources      TEXT NOT NULL,
    max_duration TEXT NOT NULL,
    cut_sessions INTEGER NOT NULL DEFAULT 0,
    mapped_port  INTEGER,
    require_approval INTEGER NOT NULL DEFAULT 0,
    approval_timeout TEXT,
    PRIMARY KEY (pid, vm_ord, ord)
);
-- ext_end, ext_by: an extension waiting for an approver (the end it asks for, who asked).
CREATE TABLE requests (
    rid               INTEGER PRIMARY KEY,
    pid               INTEGER NOT NULL,
    policy_id         TEXT NOT NULL,
    requestor         TEXT NOT NULL,
    principal         TEXT NOT NULL,
    start_time        INTEGER NOT NULL,
    justification     TEXT,
    client_request_id TEXT,
    ext_end           INTEGER,
    ext_by            TEXT
);
CREATE INDEX requests_pid ON requests (pid, rid);
CREATE UNIQUE INDEX requests_client_id ON requests (pid, principal, client_request_id) WHERE client_request_id IS NOT NULL;
CREATE TABLE grants (
    gid           INTEGER PRIMARY KEY,
    rid           INTEGER NOT NULL REFERENCES requests(rid),
    pid           INTEGER NOT NULL,
    ord           INTEGER NOT NULL,
    policy_id     TEXT NOT NULL,
    vm_id         TEXT NOT NULL,
    vm_key        TEXT NOT NULL,
    number        INTEGER NOT NULL,
    protocol      TEXT NOT NULL,
    source_form   TEXT NOT NULL,
    sources       TEXT NOT NULL,
    supersede_key TEXT NOT NULL,
    end_time      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    mapped_port   INTEGER,
    public_ip     TEXT,
    revoked_by    TEXT,
    window_ns     INTEGER,      -- a pending grant's requested window, which starts when approved
    opens_at      INTEGER,      -- a scheduled grant opens then
    warned        INTEGER NOT NULL DEFAULT 0,  -- the "expiring soon" event was queued
    decided_by    TEXT
);
CREATE INDEX grants_pending_end ON grants (end_time) WHERE status = 'Pending';
CREATE INDEX grants_scheduled ON grants (opens_at) WHERE status = 'Scheduled';
CREATE INDEX grants_live_vm ON grants (vm_key) WHERE status = 'Initiated';
CREATE INDEX grants_rid ON grants (rid, ord);
CREATE INDEX grants_live_key ON grants (pid, supersede_key) WHERE status = 'Initiated';
CREATE INDEX grants_live_end ON grants (end_time) WHERE status = 'Initiated';
CREATE TABLE audit (
    seq            INTEGER PRIMARY KEY,
    time           INTEGER NOT NULL,
    operation      TEXT NOT NULL,
    status         TEXT NOT NULL,
    caller         TEXT NOT NULL,
    caller_ip      TEXT,
    resource_id    TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    properties     TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_caller ON audit (caller, time);
CREATE INDEX audit_resource ON audit (resource_id COLLATE NOCASE, time);
CREATE INDEX audit_operation ON audit (operation, time);
-- Where the live chain starts when older records were moved to a sealed archive.
CREATE TABLE audit_archive (
    through_seq INTEGER PRIMARY KEY,
    last_hash   TEXT NOT NULL,
    file        TEXT NOT NULL,
    archived    INTEGER NOT NULL
);
CREATE TABLE security_policies (
    scope_key   TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,
    jit_enabled INTEGER NOT NULL,
    updated     INTEGER NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', 1);
CREATE TABLE join_tokens (
    hash           TEXT PRIMARY KEY,
    subscription   TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location       TEXT NOT NULL,
    mode           TEXT NOT NULL,
    created        INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    used           INTEGER,
    vm             TEXT              -- host mode: the one VM name the token may join as
);
CREATE TABLE agents (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    mode             TEXT NOT NULL,
    subscription     TEXT NOT NULL,
    resource_group   TEXT NOT NULL,
    location         TEXT NOT NULL,
    vm_key           TEXT,
    vm_id            TEXT,
    credential_hash  TEXT NOT NULL UNIQUE,
    os_type          TEXT NOT NULL,
    addresses        TEXT NOT NULL,
    public_address   TEXT,
    hostname         TEXT NOT NULL,
    joined           INTEGER NOT NULL,
    last_seen        INTEGER,
    applied_revision INTEGER NOT NULL DEFAULT 0,
    nft_usable       INTEGER,
    nft_error        TEXT,
    delivered_revision INTEGER NOT NULL DEFAULT 0  -- the latest revision a state answer carried
);
-- Gateway names are unique within a subscription (VMs attach to a gateway of their own subscription).
CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(subscription), lower(name)) WHERE mode = 'gateway';
CREATE TABLE role_definitions (
    key               TEXT PRIMARY KEY,     -- lower-cased name
    name              TEXT NOT NULL,
    id                TEXT NOT NULL UNIQUE,
    description       TEXT NOT NULL,
    actions           TEXT NOT NULL,        -- one per line
    not_actions       TEXT NOT NULL,
    assignable_scopes TEXT NOT NULL,
    created           INTEGER NOT NULL,
    updated           INTEGER NOT NULL
);
CREATE TABLE role_assignments (
    id           TEXT PRIMARY KEY,
    principal_id INTEGER NOT NULL REFERENCES principals(id),
    role_key     TEXT NOT NULL,
    role_name    TEXT NOT NULL,
    scope        TEXT NOT NULL,
    created      INTEGER NOT NULL,
    created_by   TEXT NOT NULL
);
CREATE INDEX role_assignments_principal ON role_assignments (principal_id);
CREATE UNIQUE INDEX role_assignments_unique ON role_assignments (principal_id, role_key, lower(scope));
CREATE TABLE webhooks (
    id           TEXT PRIMARY KEY,
    subscription TEXT,          -- every request in this subscription (administrators)
    principal    TEXT,          -- or: this principal's own requests (requesters)
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL, -- sealed (base64 nonce ‖ ciphertext ‖ tag) under the key secret_key
    events       TEXT NOT NULL, -- space-separated, empty: all
    created      INTEGER NOT NULL,
    secret_key   TEXT           -- id of the secrets key that sealed `secret`
);
-- AUTOINCREMENT: a delivery id is never reused, not even after its webhook's rows are deleted.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,  -- Pending, Delivered, Failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT,
    created      INTEGER NOT NULL,
    delivered    INTEGER
);
CREATE INDEX deliveries_due ON deliveries (next_attempt) WHERE state = 'Pending';
CREATE INDEX deliveries_hook ON deliveries (webhook_id, id);
