-- The outbox relay's own state, and the index replay reads by.
--
-- `published_seq`: every outbox row numbered up to here has been acknowledged by the change bus
-- (the relay numbers rows in one transaction, publishes them, then moves this forward: rows
-- numbered but not yet acknowledged are published again after a crash, with the same event id).
-- `pruned_seq`: rows up to here were deleted because they were older than the retention period;
-- a client resuming from an older event id must reload over REST.
CREATE TABLE outbox_relay (
    name          text PRIMARY KEY,
    published_seq bigint      NOT NULL,
    pruned_seq    bigint      NOT NULL,
    updated_at    text        NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- A user's changes in event order (replay on reconnect reads `audience = $user OR audience IS NULL`).
CREATE INDEX outbox_audience_published_seq ON outbox (audience, published_seq);
