-- The event log, snapshots and consumer checkpoints (same logical schema as
-- migrations/postgres/0001_event_log.sql).
--
-- `events` and `snapshots` keep exactly the columns sqlite-es 0.5 reads and writes. The primary
-- key must stay a PRIMARY KEY: sqlite-es recognises an optimistic-concurrency conflict by the
-- SQLITE_CONSTRAINT_PRIMARYKEY error code (1555). Added columns:
--   global_position  assigned by the trigger below as max + 1. SQLite has a single writer, so
--                    the numbers are gap-free and in commit order (rowid is not used: VACUUM may
--                    renumber it);
--   recorded_at      RFC 3339 UTC timestamp with milliseconds;
--   hash             sha256 chain link, NULL until the chainer reaches the row.
-- There is no transaction id on SQLite: checkpoints store 0.

CREATE TABLE events
(
    aggregate_type  text                          NOT NULL,
    aggregate_id    text                          NOT NULL,
    sequence        integer CHECK (sequence >= 0) NOT NULL,
    event_type      text                          NOT NULL,
    event_version   text                          NOT NULL,
    payload         text                          NOT NULL,
    metadata        text                          NOT NULL,
    global_position integer,
    recorded_at     text                          NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    hash            text,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_global_position ON events (global_position);

CREATE TRIGGER events_assign_global_position
    AFTER INSERT ON events
BEGIN
    UPDATE events
       SET global_position = (SELECT coalesce(max(global_position), 0) + 1 FROM events)
     WHERE aggregate_type = NEW.aggregate_type
       AND aggregate_id = NEW.aggregate_id
       AND sequence = NEW.sequence;
END;

-- Aggregate snapshots, as sqlite-es expects them (used by snapshot stores).
CREATE TABLE snapshots
(
    aggregate_type   text                                  NOT NULL,
    aggregate_id     text                                  NOT NULL,
    last_sequence    integer CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
    payload          text                                  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
) STRICT;

-- How far each consumer of the log has read (transaction_id is always 0 on SQLite).
CREATE TABLE checkpoints
(
    name           text PRIMARY KEY,
    transaction_id integer NOT NULL DEFAULT 0,
    position       integer NOT NULL,
    updated_at     text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
