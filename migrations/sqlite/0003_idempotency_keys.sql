-- First answers of creating POSTs sent with an `Idempotency-Key`, per user, kept 24 hours.
-- A row with status 0 is a request still in progress (it reserves the key).
CREATE TABLE idempotency_keys (
    user_id    text NOT NULL,
    key        text NOT NULL,
    status     integer NOT NULL,
    body       text,
    created_at text NOT NULL,
    PRIMARY KEY (user_id, key)
);
