-- Leases for background tasks (the expiry sweep, audit retention): one holder at a time.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    expires INTEGER NOT NULL
) STRICT;
