-- What a client's jitter buffer did over a call, reported with its other
-- figures: the delay it held at the end, and the frames that came after
-- their turn or had to be concealed.
ALTER TABLE call_reports ADD COLUMN playout_delay_ms DOUBLE PRECISION;
ALTER TABLE call_reports ADD COLUMN late_frames BIGINT;
ALTER TABLE call_reports ADD COLUMN concealed_frames BIGINT;
