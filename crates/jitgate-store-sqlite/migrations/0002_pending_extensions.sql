-- Schema version 2: pending extensions on requests.
-- ext_end, ext_by: an extension waiting for an approver (the end it asks for, who asked).
ALTER TABLE requests ADD COLUMN ext_end INTEGER;
ALTER TABLE requests ADD COLUMN ext_by TEXT;
