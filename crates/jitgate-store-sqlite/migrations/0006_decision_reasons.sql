-- Schema version 6: the reason an approver gave for approving or denying a request (or its
-- extension), shown with the request and in the approved/denied webhooks.
ALTER TABLE requests ADD COLUMN decision_reason TEXT;
