-- The expiry sweep's reads, by index: grants whose end time the sweep watches (live and pending,
-- in that order of words, as the statements write them), and live grants not yet warned of
-- their end. A partial index answers a statement whose condition holds the same words.
CREATE INDEX grants_expiring_end ON grants (end_time) WHERE status IN ('Initiated', 'Pending');
CREATE INDEX grants_unwarned_end ON grants (end_time) WHERE status = 'Initiated' AND warned = 0;
