-- Events a consumer of the log could not apply, parked for that consumer alone (a dead-letter
-- table). A row is written in the transaction that moves the consumer's checkpoint past the
-- event; later events of the same stream are parked behind it for that consumer, so a retry
-- applies the stream in order. `sparc projections retry` applies them again and deletes the rows.
CREATE TABLE parked_events (
    consumer        text    NOT NULL,
    global_position bigint  NOT NULL,
    transaction_id  bigint  NOT NULL,
    aggregate_type  text    NOT NULL,
    aggregate_id    text    NOT NULL,
    sequence        bigint  NOT NULL,
    event_type      text    NOT NULL,
    error           text    NOT NULL,
    first_seen      text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen       text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (consumer, global_position)
);

CREATE INDEX parked_events_stream ON parked_events (consumer, aggregate_type, aggregate_id);
