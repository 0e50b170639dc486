-- Schema version 4: the portal's short-lived entries (signed-in sessions, SSO sign-ins in
-- flight), found by kind and a hash of the browser's secret, gone once they expire; shared by
-- every replica, so any of them serves a signed-in browser.
CREATE TABLE ephemeral (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX ephemeral_expires ON ephemeral (kind, expires);
