-- Read models: one table per projection. Each row is an aggregate state (body, JSON text) with
-- its version and the columns the API filters and sorts on. Timestamps are fixed-width RFC 3339
-- text, so text order is time order on both backends.

CREATE TABLE tasks (
    id          text PRIMARY KEY,
    version     bigint NOT NULL,
    body        text NOT NULL,
    user_id     text NOT NULL,
    project_id  text,
    status      text NOT NULL,
    skill_name  text,
    created_at  text,
    updated_at  text,
    next_run_at text
);
CREATE INDEX tasks_owner_created ON tasks (user_id, created_at);
CREATE INDEX tasks_project ON tasks (project_id);
CREATE INDEX tasks_due ON tasks (next_run_at) WHERE status IN ('pending', 'running');

CREATE TABLE projects (
    id              text PRIMARY KEY,
    version         bigint NOT NULL,
    body            text NOT NULL,
    user_id         text NOT NULL,
    status          text NOT NULL,
    name_key        text,
    description_key text,
    created_at      text,
    updated_at      text
);
CREATE INDEX projects_owner_created ON projects (user_id, created_at);

CREATE TABLE executions (
    id         text PRIMARY KEY,
    version    bigint NOT NULL,
    body       text NOT NULL,
    task_id    text NOT NULL,
    user_id    text NOT NULL,
    agent_id   text,
    status     text NOT NULL,
    started_at text
);
CREATE INDEX executions_task_started ON executions (task_id, started_at);
CREATE INDEX executions_agent_started ON executions (agent_id, started_at);

CREATE TABLE agents (
    id               text PRIMARY KEY,
    version          bigint NOT NULL,
    body             text NOT NULL,
    name_key         text,
    agent_type       text NOT NULL,
    status           text NOT NULL,
    registered       bigint NOT NULL,
    capabilities_key text NOT NULL,
    last_active_at   text,
    created_at       text
);
CREATE INDEX agents_activity ON agents (last_active_at);

CREATE TABLE users (
    id           text PRIMARY KEY,
    version      bigint NOT NULL,
    body         text NOT NULL,
    username_key text,
    email_key    text,
    role         text NOT NULL,
    is_active    bigint NOT NULL
);
CREATE INDEX users_username ON users (username_key);
