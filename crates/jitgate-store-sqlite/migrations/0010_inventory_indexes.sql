-- Schema version 10: the grants of a VM by request, newest last, so that the inventory reads the
-- access facts of a page of VMs (approved requests since a time, the last access) from the
-- index, without scanning every grant.
CREATE INDEX grants_vm_rid ON grants (vm_key, rid);
