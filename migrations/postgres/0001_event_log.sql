-- The event log, snapshots and consumer checkpoints.
--
-- `events` and `snapshots` keep exactly the columns postgres-es 0.5 reads and writes (its
-- db/init.sql); postgres-es names its columns in every statement, so the columns added here are
-- filled by their defaults:
--   global_position  order of insertion (an identity: taken at INSERT, visible at COMMIT, so it
--                    can commit out of order and has gaps where transactions rolled back);
--   transaction_id   the writing transaction; readers take only rows whose transaction is
--                    older than every running one (pg_snapshot_xmin) and order and checkpoint on
--                    (transaction_id, global_position), which never skips a late commit;
--   recorded_at      commit-side wall clock (start of the writing transaction);
--   hash             sha256 chain link, NULL until the chainer reaches the row.

CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         json                         NOT NULL,
    metadata        json                         NOT NULL,
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz                  NOT NULL DEFAULT now(),
    hash            text,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_global_position ON events (global_position);
CREATE INDEX events_transaction_id_global_position ON events (transaction_id, global_position);

-- Aggregate snapshots, as postgres-es expects them (used by snapshot stores).
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- How far each consumer of the log (projector, policy, publisher, the hash chainer) has read:
-- the (transaction_id, global_position) of the last event it has processed.
CREATE TABLE checkpoints
(
    name           text PRIMARY KEY,
    transaction_id bigint      NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
