-- Schema version 5: the grants of a VM by request, newest last, so that the inventory reads the
-- access facts of a page of VMs (approved requests since a time, the last access) from the
-- index, without scanning every grant of the VM's other statuses.
CREATE INDEX grants_vm_rid ON grants (vm_key, rid);
