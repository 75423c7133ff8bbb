-- Reads that stay fast while others write. A list's `total` is summed from `list_counts`, which
-- the read models keep in the transaction that writes their rows: one cell per read model,
-- owner ('*': everyone's), group ('' for none; a task's project, an agent's type) and status.
-- Every filter the lists offer has an index, and a page's ids come from the index that serves
-- its filter and order before its rows are read, so a deep offset steps over index entries.
CREATE TABLE list_counts (
    read_model TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    grp        TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (read_model, owner, grp, status)
);
INSERT INTO list_counts (read_model, owner, grp, status, n)
SELECT 'tasks', user_id, COALESCE(project_id, ''), status, COUNT(*)
  FROM tasks GROUP BY user_id, COALESCE(project_id, ''), status
UNION ALL
SELECT 'tasks', '*', COALESCE(project_id, ''), status, COUNT(*)
  FROM tasks GROUP BY COALESCE(project_id, ''), status
UNION ALL
SELECT 'projects', user_id, '', status, COUNT(*) FROM projects GROUP BY user_id, status
UNION ALL
SELECT 'projects', '*', '', status, COUNT(*) FROM projects GROUP BY status
UNION ALL
SELECT 'agents', '*', agent_type, status, COUNT(*)
  FROM agents WHERE registered = 1 GROUP BY agent_type, status;

-- Another process that changes read models outside the projection loops (a rebuild, a retry)
-- counts it here; the serving process polls it and then forgets every cached list.
CREATE TABLE read_model_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    counter INTEGER NOT NULL
);
INSERT INTO read_model_changes (id, counter) VALUES (1, 0);

-- Tasks: an owner's list (the filter columns in the index, so the page's ids come from the
-- index alone), by status, by skill; everyone's list likewise. `tasks_project` serves the
-- project.
DROP INDEX tasks_owner_created;
CREATE INDEX tasks_owner_created ON tasks (user_id, created_at, id, status, project_id, skill_name);
CREATE INDEX tasks_owner_status ON tasks (user_id, status, created_at, id);
CREATE INDEX tasks_owner_skill ON tasks (user_id, skill_name, created_at, id);
CREATE INDEX tasks_created ON tasks (created_at, id, status, project_id, skill_name);
CREATE INDEX tasks_status ON tasks (status, created_at, id);
CREATE INDEX tasks_skill ON tasks (skill_name, created_at, id);

CREATE INDEX projects_status ON projects (status, created_at, id);
CREATE INDEX agents_type ON agents (agent_type) WHERE registered = 1;
CREATE INDEX agents_status ON agents (status) WHERE registered = 1;

-- Substring search (projects' `search`, agents' `capabilities`) through trigram full-text
-- tables kept by triggers (queried with GLOB, which they serve from their index).
CREATE VIRTUAL TABLE projects_search USING fts5(
    name_key, description_key, content = 'projects', tokenize = 'trigram case_sensitive 1'
);
CREATE TRIGGER projects_search_insert AFTER INSERT ON projects BEGIN
    INSERT INTO projects_search (rowid, name_key, description_key)
    VALUES (new.rowid, new.name_key, new.description_key);
END;
CREATE TRIGGER projects_search_delete AFTER DELETE ON projects BEGIN
    INSERT INTO projects_search (projects_search, rowid, name_key, description_key)
    VALUES ('delete', old.rowid, old.name_key, old.description_key);
END;
CREATE TRIGGER projects_search_update AFTER UPDATE ON projects BEGIN
    INSERT INTO projects_search (projects_search, rowid, name_key, description_key)
    VALUES ('delete', old.rowid, old.name_key, old.description_key);
    INSERT INTO projects_search (rowid, name_key, description_key)
    VALUES (new.rowid, new.name_key, new.description_key);
END;
INSERT INTO projects_search (projects_search) VALUES ('rebuild');

CREATE VIRTUAL TABLE agents_capabilities USING fts5(
    capabilities_key, content = 'agents', tokenize = 'trigram case_sensitive 1'
);
CREATE TRIGGER agents_capabilities_insert AFTER INSERT ON agents BEGIN
    INSERT INTO agents_capabilities (rowid, capabilities_key) VALUES (new.rowid, new.capabilities_key);
END;
CREATE TRIGGER agents_capabilities_delete AFTER DELETE ON agents BEGIN
    INSERT INTO agents_capabilities (agents_capabilities, rowid, capabilities_key)
    VALUES ('delete', old.rowid, old.capabilities_key);
END;
CREATE TRIGGER agents_capabilities_update AFTER UPDATE ON agents BEGIN
    INSERT INTO agents_capabilities (agents_capabilities, rowid, capabilities_key)
    VALUES ('delete', old.rowid, old.capabilities_key);
    INSERT INTO agents_capabilities (rowid, capabilities_key) VALUES (new.rowid, new.capabilities_key);
END;
INSERT INTO agents_capabilities (agents_capabilities) VALUES ('rebuild');
