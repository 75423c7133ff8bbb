-- The hash chain beside the log instead of in it: an event row, once inserted, never changes.
--
-- The chainer used to write each event's link into `events.hash`; every such UPDATE put a new
-- version of the row on another page and into all three of the table's indexes, and left a
-- dead row for vacuum. A row here is one narrow insert. `global_position` is the event's; there
-- is no foreign key, so that deleting an event (tampering) stays possible for verification to
-- find. Links already written move here.
CREATE TABLE event_hashes
(
    global_position bigint PRIMARY KEY,
    hash            text NOT NULL
);

INSERT INTO event_hashes (global_position, hash)
SELECT global_position, hash FROM events WHERE hash IS NOT NULL;

ALTER TABLE events DROP COLUMN hash;
