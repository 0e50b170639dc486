-- The portal's short-lived entries (signed-in sessions, SSO sign-ins in flight), found by kind
-- and a hash of the browser's secret, gone once they expire.
CREATE TABLE ephemeral (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
CREATE INDEX ephemeral_expires ON ephemeral (kind, expires);
