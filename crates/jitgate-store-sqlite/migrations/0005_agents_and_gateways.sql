-- Schema version 5: join tokens made for one VM; the revision last delivered to each agent;
-- gateway names unique per subscription instead of globally (VMs attach to a gateway of their
-- own subscription).
-- vm: host mode, the one VM name the token may join as.
ALTER TABLE join_tokens ADD COLUMN vm TEXT;
-- delivered_revision: the latest revision a state answer carried to the agent.
ALTER TABLE agents ADD COLUMN delivered_revision INTEGER NOT NULL DEFAULT 0;
DROP INDEX agents_gateway_name;
CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(subscription), lower(name)) WHERE mode = 'gateway';
