-- Schema version 4: OIDC identities keyed by (issuer, subject) with a display name; what created
-- each token. Principals made by earlier OIDC sign-ins (named by their display claim) stay what
-- they were: local principals; the identity gets a new, derived principal.
-- issuer, subject: an OIDC identity is found by these only (NULL: a local principal, found by
-- name); its name is derived from them. display_name: the cleaned display claim, shown only.
ALTER TABLE principals ADD COLUMN issuer TEXT;
ALTER TABLE principals ADD COLUMN subject TEXT;
ALTER TABLE principals ADD COLUMN display_name TEXT;
CREATE UNIQUE INDEX principals_oidc ON principals (issuer, subject) WHERE issuer IS NOT NULL;
-- origin: what created the token (server, token, idToken; NULL: not recorded); parent_id: the
-- token that created it, which it never outlives and is revoked with.
ALTER TABLE tokens ADD COLUMN origin TEXT;
ALTER TABLE tokens ADD COLUMN parent_id INTEGER REFERENCES tokens(id);
CREATE INDEX tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;
