-- The activity feed across agents (GET /api/v1/agents/activity): the runs an agent took up,
-- newest started first, id breaking ties, read straight from an index in that order for
-- everyone's runs (admins, auditors), one owner's, or one agent's: a page costs its own rows.
CREATE INDEX executions_activity ON executions (started_at DESC, id DESC)
    WHERE agent_id IS NOT NULL;
CREATE INDEX executions_owner_activity ON executions (user_id, started_at DESC, id DESC)
    WHERE agent_id IS NOT NULL;
DROP INDEX executions_agent_started;
CREATE INDEX executions_agent_started ON executions (agent_id, started_at DESC, id DESC);
