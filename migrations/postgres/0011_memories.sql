-- The memories read model: every entry of the agents' memory (the fallback of the Memory MCP
-- server, always complete because every store is an event). `search_text` is what full-text
-- search reads (the content and the intent); its `tsvector` is an expression index rather than a
-- stored column, so a rebuild's `INSERT INTO memories SELECT * FROM memories_rebuild` copies
-- plain columns only. `synced` is 1 once the Memory MCP server holds the entry.
CREATE TABLE memories (
    id          text PRIMARY KEY,
    version     bigint NOT NULL,
    body        text NOT NULL,
    user_id     text,
    agent_id    text,
    task_id     text,
    project_id  text,
    intent      text,
    created_at  text,
    synced      bigint NOT NULL,
    search_text text NOT NULL
);
CREATE INDEX memories_owner_created ON memories (user_id, created_at);
CREATE INDEX memories_task ON memories (task_id);
CREATE INDEX memories_project ON memories (project_id);
CREATE INDEX memories_pending ON memories (synced) WHERE synced = 0;
CREATE INDEX memories_search ON memories USING gin (to_tsvector('english', search_text));
