-- Every process reads the devices revoked lately (tokens are verified
-- offline, so each keeps the revoked devices to refuse their tokens).
CREATE INDEX devices_by_revocation ON devices (revoked_at) WHERE revoked_at IS NOT NULL;
