-- When each read model was last rebuilt (written in the swap transaction), for operators.
CREATE TABLE projection_rebuilds (
    name       text PRIMARY KEY,
    rebuilt_at text NOT NULL,
    events     bigint NOT NULL
);
