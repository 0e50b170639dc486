-- Schema version 7: a VM's grants by status and end, for the agents' state reads. A VM keeps
-- every grant it ever had (the history the portal shows), while an agent needs only the live
-- ones not yet ended: with the end in the index, a round of state reads finds them from the
-- index alone, instead of walking every live grant of every VM (by status and end) to pick
-- out its own VMs'. It serves whatever `(vm_key, status)` served.
CREATE INDEX grants_vm_status_end ON grants (vm_key, status, end_time);
DROP INDEX grants_vm_status;
