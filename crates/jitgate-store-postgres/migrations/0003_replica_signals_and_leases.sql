-- Schema version 3: what several replicas on one database need.
--
-- Signals: every change other replicas must hear of sends a notification on the channel
-- `jitgate` when its transaction commits (never before, never for a rolled-back change). The
-- payload is `ORIGIN|KIND`: ORIGIN is the writing replica's `jitgate.origin` setting (set for
-- its transactions, so it can ignore its own news; empty otherwise), and KIND is
--   r:N  the enforcement revision moved to N (agents' long-polls wake, the expiry sweep looks)
--   a    an agent's applied revision or nftables state changed (`?wait=applied` looks again)
--   d    webhook deliveries were queued
--   g    roles or role assignments changed (cached authorizations are dropped)
CREATE FUNCTION jitgate_signal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    origin TEXT := coalesce(current_setting('jitgate.origin', true), '');
BEGIN
    IF TG_TABLE_NAME = 'meta' THEN
        PERFORM pg_notify('jitgate', origin || '|r:' || NEW.value);
    ELSIF TG_TABLE_NAME = 'agents' THEN
        PERFORM pg_notify('jitgate', origin || '|a');
    ELSIF TG_TABLE_NAME = 'deliveries' THEN
        PERFORM pg_notify('jitgate', origin || '|d');
    ELSE
        PERFORM pg_notify('jitgate', origin || '|g');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER meta_signal AFTER UPDATE ON meta
    FOR EACH ROW WHEN (NEW.key = 'revision') EXECUTE FUNCTION jitgate_signal();
CREATE TRIGGER agents_signal AFTER UPDATE OF applied_revision, nft_usable ON agents
    FOR EACH ROW
    WHEN (NEW.applied_revision IS DISTINCT FROM OLD.applied_revision OR NEW.nft_usable IS DISTINCT FROM OLD.nft_usable)
    EXECUTE FUNCTION jitgate_signal();
CREATE TRIGGER deliveries_signal AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION jitgate_signal();
CREATE TRIGGER role_definitions_signal AFTER INSERT OR UPDATE OR DELETE ON role_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION jitgate_signal();
CREATE TRIGGER role_assignments_signal AFTER INSERT OR UPDATE OR DELETE ON role_assignments
    FOR EACH STATEMENT EXECUTE FUNCTION jitgate_signal();

-- Leases: a background task (the expiry sweep, audit retention) runs on the replica holding
-- its lease; a holder that stops renewing loses it when `expires` (Unix nanoseconds) passes.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    expires BIGINT NOT NULL
);
