-- The hash chain beside the log instead of in it: an event row, once inserted, never changes
-- (see the Postgres migration of the same name). Links already written move here.
CREATE TABLE event_hashes
(
    global_position integer PRIMARY KEY,
    hash            text    NOT NULL
) STRICT;

INSERT INTO event_hashes (global_position, hash)
SELECT global_position, hash FROM events WHERE hash IS NOT NULL;

ALTER TABLE events DROP COLUMN hash;
