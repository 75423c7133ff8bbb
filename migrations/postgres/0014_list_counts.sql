-- Reads that stay fast while others write. A list's `total` is summed from `list_counts`, which
-- the read models keep in the transaction that writes their rows: one cell per read model,
-- owner ('*': everyone's), group ('' for none; a task's project, an agent's type) and status.
-- Every filter the lists offer has an index, and a page's ids come from the index that serves
-- its filter and order before its rows are read, so a deep offset steps over index entries.
CREATE TABLE list_counts (
    read_model text   NOT NULL,
    owner      text   NOT NULL,
    grp        text   NOT NULL,
    status     text   NOT NULL,
    n          bigint NOT NULL,
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
-- counts it here on SQLite, where there are no notices; kept on Postgres for the same schema.
CREATE TABLE read_model_changes (
    id      bigint PRIMARY KEY CHECK (id = 1),
    counter bigint NOT NULL
);
INSERT INTO read_model_changes (id, counter) VALUES (1, 0);

-- Tasks: an owner's list (the filter columns included, so the page's ids come from the index
-- alone), by status, by skill; everyone's list likewise. `tasks_project` serves the project.
DROP INDEX tasks_owner_created;
CREATE INDEX tasks_owner_created ON tasks (user_id, created_at, id)
    INCLUDE (status, project_id, skill_name);
CREATE INDEX tasks_owner_status ON tasks (user_id, status, created_at, id);
CREATE INDEX tasks_owner_skill ON tasks (user_id, skill_name, created_at, id);
CREATE INDEX tasks_created ON tasks (created_at, id) INCLUDE (status, project_id, skill_name);
CREATE INDEX tasks_status ON tasks (status, created_at, id);
CREATE INDEX tasks_skill ON tasks (skill_name, created_at, id);

CREATE INDEX projects_status ON projects (status, created_at, id);
CREATE INDEX agents_type ON agents (agent_type) WHERE registered = 1;
CREATE INDEX agents_status ON agents (status) WHERE registered = 1;

-- Substring search (projects' `search`, agents' `capabilities`) through trigram indexes where
-- the role running migrations may create the extension; elsewhere those filters scan.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX projects_name_search ON projects USING gin (name_key gin_trgm_ops);
    CREATE INDEX projects_description_search ON projects USING gin (description_key gin_trgm_ops);
    CREATE INDEX agents_capabilities ON agents USING gin (capabilities_key gin_trgm_ops);
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE NOTICE 'pg_trgm is not available: project search and capability filters scan';
END
$$;
