-- Changes to push to clients: one row per event applied to a published read model (tasks,
-- projects, executions, agents), written in the same transaction as the read-model change.
-- The relay publishes rows in log order and numbers them with `published_seq`, the ordered
-- `event_id` clients see and resume from.
CREATE TABLE outbox (
    position       bigint PRIMARY KEY,
    transaction_id bigint NOT NULL,
    kind           text NOT NULL,
    aggregate_id   text NOT NULL,
    audience       text,
    version        bigint NOT NULL,
    event_type     text NOT NULL,
    state          text NOT NULL,
    recorded_at    text NOT NULL,
    published_seq  bigint
);
CREATE UNIQUE INDEX outbox_published_seq ON outbox (published_seq);
CREATE INDEX outbox_unpublished ON outbox (transaction_id, position) WHERE published_seq IS NULL;
