-- The memories read model: every entry of the agents' memory (the fallback of the Memory MCP
-- server, always complete because every store is an event). `search_text` is what full-text
-- search reads (the content and the intent), indexed by the FTS5 table `memories_fts`, which
-- holds no copy of the text (external content) and follows the table through triggers, also
-- when a rebuild replaces every row. `synced` is 1 once the Memory MCP server holds the entry.
CREATE TABLE memories (
    id          text PRIMARY KEY,
    version     integer NOT NULL,
    body        text NOT NULL,
    user_id     text,
    agent_id    text,
    task_id     text,
    project_id  text,
    intent      text,
    created_at  text,
    synced      integer NOT NULL,
    search_text text NOT NULL
);
CREATE INDEX memories_owner_created ON memories (user_id, created_at);
CREATE INDEX memories_task ON memories (task_id);
CREATE INDEX memories_project ON memories (project_id);
CREATE INDEX memories_pending ON memories (synced) WHERE synced = 0;

CREATE VIRTUAL TABLE memories_fts USING fts5(search_text, content = 'memories', content_rowid = 'rowid');
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, search_text) VALUES (new.rowid, new.search_text);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF search_text ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
    INSERT INTO memories_fts (rowid, search_text) VALUES (new.rowid, new.search_text);
END;
