-- Schema version 6: VMs registered by cloud connectors (bound to the connector by agent_id).
-- cloud: what the cloud says of the instance (JSON, `jitgate_store::stored::encode_cloud`);
-- unsupported_reason: why JIT cannot protect it (as reported, or no longer found);
-- cloud_failure: the connector's last report of why it cannot change the VM's rules.
ALTER TABLE vms ADD COLUMN cloud TEXT;
ALTER TABLE vms ADD COLUMN unsupported_reason TEXT;
ALTER TABLE vms ADD COLUMN cloud_failure TEXT;
