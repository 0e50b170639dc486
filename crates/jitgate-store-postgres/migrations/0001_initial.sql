-- Schema version 1 of the PostgreSQL store: the tables of the SQLite store's version 5, in
-- PostgreSQL's types. Times are Unix nanoseconds (BIGINT); keys are lower-cased ARM ids; every
-- integer is BIGINT and every flag BOOLEAN. Grant statuses are never written here: indexes
-- lead with the status column instead of naming a word in a partial index, so they serve a
-- bound status as well as any other. Keys compare and sort byte by byte (COLLATE "C"), whatever
-- the database's locale, so pages of a list follow one order on every replica.
CREATE TABLE principals (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    created      BIGINT NOT NULL,
    issuer       TEXT,
    subject      TEXT,
    display_name TEXT
);
-- Names compare case-insensitively.
CREATE UNIQUE INDEX principals_name ON principals (lower(name));
CREATE UNIQUE INDEX principals_oidc ON principals (issuer, subject) WHERE issuer IS NOT NULL;
CREATE TABLE tokens (
    id           BIGSERIAL PRIMARY KEY,
    principal_id BIGINT NOT NULL REFERENCES principals(id),
    hash         TEXT NOT NULL UNIQUE,
    created      BIGINT NOT NULL,
    expires      BIGINT,
    revoked      BIGINT,
    origin       TEXT,
    parent_id    BIGINT REFERENCES tokens(id)
);
CREATE INDEX tokens_principal ON tokens (principal_id);
CREATE INDEX tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE vms (
    key       TEXT COLLATE "C" PRIMARY KEY,
    id        TEXT NOT NULL,
    os_type   TEXT NOT NULL,
    location  TEXT NOT NULL,
    address   TEXT,
    gateway   TEXT,              -- name of the gateway agent in front of the VM (gateway mode)
    classic   BOOLEAN NOT NULL DEFAULT FALSE,
    agent_id  TEXT,              -- the host-mode agent running on the VM
    created   BIGINT NOT NULL,
    updated   BIGINT NOT NULL
);
CREATE INDEX vms_agent ON vms (agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX vms_gateway ON vms (lower(gateway)) WHERE gateway IS NOT NULL;
CREATE TABLE policies (
    pid            BIGSERIAL PRIMARY KEY,
    key            TEXT COLLATE "C" NOT NULL UNIQUE,
    subscription   TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location       TEXT NOT NULL,
    name           TEXT NOT NULL,
    sub_key        TEXT COLLATE "C" NOT NULL,
    rg_key         TEXT COLLATE "C" NOT NULL,
    loc_key        TEXT COLLATE "C" NOT NULL,
    kind           TEXT NOT NULL,
    created        BIGINT NOT NULL,
    updated        BIGINT NOT NULL
);
CREATE INDEX policies_scope ON policies (sub_key, key);
CREATE TABLE policy_vms (
    pid       BIGINT NOT NULL REFERENCES policies(pid),
    ord       BIGINT NOT NULL,
    vm_key    TEXT NOT NULL,
    vm_id     TEXT NOT NULL,
    public_ip TEXT,
    PRIMARY KEY (pid, ord)
);
-- A VM is protected by one policy at a time.
CREATE UNIQUE INDEX policy_vms_vm ON policy_vms (vm_key);
CREATE TABLE policy_ports (
    pid              BIGINT NOT NULL REFERENCES policies(pid),
    vm_ord           BIGINT NOT NULL,
    ord              BIGINT NOT NULL,
    number           BIGINT NOT NULL,
    protocol         TEXT NOT NULL,
    source_form      TEXT NOT NULL,
    sources          TEXT NOT NULL,
    max_duration     TEXT NOT NULL,
    cut_sessions     BOOLEAN NOT NULL DEFAULT FALSE,
    mapped_port      BIGINT,
    require_approval BOOLEAN NOT NULL DEFAULT FALSE,
    approval_timeout TEXT,
    PRIMARY KEY (pid, vm_ord, ord)
);
CREATE TABLE requests (
    rid               BIGSERIAL PRIMARY KEY,
    pid               BIGINT NOT NULL,
    policy_id         TEXT NOT NULL,
    requestor         TEXT NOT NULL,
    principal         TEXT NOT NULL,
    start_time        BIGINT NOT NULL,
    justification     TEXT,
    client_request_id TEXT,
    ext_end           BIGINT,   -- an extension waiting for an approver: the end it asks for
    ext_by            TEXT      -- and who asked
);
CREATE INDEX requests_pid ON requests (pid, rid);
CREATE INDEX requests_principal ON requests (lower(principal));
CREATE UNIQUE INDEX requests_client_id ON requests (pid, principal, client_request_id) WHERE client_request_id IS NOT NULL;
CREATE TABLE grants (
    gid           BIGSERIAL PRIMARY KEY,
    rid           BIGINT NOT NULL REFERENCES requests(rid),
    pid           BIGINT NOT NULL,
    ord           BIGINT NOT NULL,
    policy_id     TEXT NOT NULL,
    vm_id         TEXT NOT NULL,
    vm_key        TEXT NOT NULL,
    number        BIGINT NOT NULL,
    protocol      TEXT NOT NULL,
    source_form   TEXT NOT NULL,
    sources       TEXT NOT NULL,
    supersede_key TEXT NOT NULL,
    end_time      BIGINT NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    mapped_port   BIGINT,
    public_ip     TEXT,
    revoked_by    TEXT,
    window_ns     BIGINT,       -- a pending grant's requested window, which starts when approved
    opens_at      BIGINT,       -- a scheduled grant opens then
    warned        BOOLEAN NOT NULL DEFAULT FALSE,  -- the "expiring soon" event was queued
    decided_by    TEXT
);
CREATE INDEX grants_status_end ON grants (status, end_time);
CREATE INDEX grants_status_opens ON grants (status, opens_at);
CREATE INDEX grants_vm_status ON grants (vm_key, status);
CREATE INDEX grants_rid ON grants (rid, ord);
CREATE INDEX grants_key_status ON grants (pid, supersede_key, status);
CREATE TABLE audit (
    seq            BIGINT PRIMARY KEY,
    time           BIGINT NOT NULL,
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
CREATE INDEX audit_caller ON audit (caller, seq);
CREATE INDEX audit_resource ON audit ((lower(resource_id)) text_pattern_ops, seq);
CREATE INDEX audit_operation ON audit (lower(operation), seq);
-- The head of the audit chain: one row, locked by every transaction that appends, so that
-- writers on any number of replicas extend one line.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64));
-- Where the live chain starts when older records were moved to a sealed archive.
CREATE TABLE audit_archive (
    through_seq BIGINT PRIMARY KEY,
    last_hash   TEXT NOT NULL,
    file        TEXT NOT NULL,
    archived    BIGINT NOT NULL
);
CREATE TABLE security_policies (
    scope_key   TEXT COLLATE "C" PRIMARY KEY,
    scope       TEXT NOT NULL,
    jit_enabled BOOLEAN NOT NULL,
    updated     BIGINT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', 1);
CREATE TABLE join_tokens (
    hash           TEXT PRIMARY KEY,
    subscription   TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location       TEXT NOT NULL,
    mode           TEXT NOT NULL,
    created        BIGINT NOT NULL,
    expires        BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    used           BIGINT,
    vm             TEXT           -- host mode: the one VM name the token may join as
);
CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    mode               TEXT NOT NULL,
    subscription       TEXT NOT NULL,
    resource_group     TEXT NOT NULL,
    location           TEXT NOT NULL,
    vm_key             TEXT,
    vm_id              TEXT,
    credential_hash    TEXT NOT NULL UNIQUE,
    os_type            TEXT NOT NULL,
    addresses          TEXT NOT NULL,
    public_address     TEXT,
    hostname           TEXT NOT NULL,
    joined             BIGINT NOT NULL,
    last_seen          BIGINT,
    applied_revision   BIGINT NOT NULL DEFAULT 0,
    delivered_revision BIGINT NOT NULL DEFAULT 0,
    nft_usable         BOOLEAN,
    nft_error          TEXT
);
CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(subscription), lower(name)) WHERE mode = 'gateway';
CREATE INDEX agents_vm ON agents (vm_key) WHERE vm_key IS NOT NULL;
CREATE TABLE role_definitions (
    key               TEXT COLLATE "C" PRIMARY KEY,     -- lower-cased name
    name              TEXT NOT NULL,
    id                TEXT NOT NULL UNIQUE,
    description       TEXT NOT NULL,
    actions           TEXT NOT NULL,        -- one per line
    not_actions       TEXT NOT NULL,
    assignable_scopes TEXT NOT NULL,
    created           BIGINT NOT NULL,
    updated           BIGINT NOT NULL
);
CREATE TABLE role_assignments (
    id           TEXT PRIMARY KEY,
    principal_id BIGINT NOT NULL REFERENCES principals(id),
    role_key     TEXT NOT NULL,
    role_name    TEXT NOT NULL,
    scope        TEXT NOT NULL,
    created      BIGINT NOT NULL,
    created_by   TEXT NOT NULL
);
CREATE INDEX role_assignments_principal ON role_assignments (principal_id);
CREATE UNIQUE INDEX role_assignments_unique ON role_assignments (principal_id, role_key, lower(scope));
CREATE TABLE webhooks (
    id           TEXT PRIMARY KEY,
    subscription TEXT,          -- every request in this subscription (administrators)
    principal    TEXT,          -- or: this principal's own requests (requesters)
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL,
    secret_key   TEXT,          -- the id of the secrets key that seals `secret`
    events       TEXT NOT NULL, -- space-separated, empty: all
    created      BIGINT NOT NULL
);
-- Delivery ids come from a sequence: never reused, not even after their webhook is deleted.
CREATE TABLE deliveries (
    id           BIGSERIAL PRIMARY KEY,
    webhook_id   TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,  -- Pending, Delivered, Failed
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    last_error   TEXT,
    created      BIGINT NOT NULL,
    delivered    BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt) WHERE state = 'Pending';
CREATE INDEX deliveries_hook ON deliveries (webhook_id, id);
