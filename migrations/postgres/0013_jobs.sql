-- Runs reach agents: a fired run waits, unclaimed, for an agent with its skill, and becomes
-- `timeout` at its deadline. The executions read model keeps both, indexed for the two
-- questions asked of them: "the oldest unclaimed runs of these skills" (GET /agents/{id}/jobs)
-- and "the running runs past their deadline" (the scheduler's sweep).
ALTER TABLE executions ADD COLUMN skill_name text;
ALTER TABLE executions ADD COLUMN deadline text;
-- Runs started before this migration: their deadline is the default hour after the start.
UPDATE executions
   SET deadline = to_char(
           ((body::jsonb ->> 'started_at')::timestamptz + interval '3600 seconds')
               AT TIME ZONE 'UTC',
           'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
 WHERE status = 'running' AND body::jsonb ->> 'started_at' IS NOT NULL;
CREATE INDEX executions_unclaimed ON executions (skill_name, started_at, id)
    WHERE agent_id IS NULL AND status = 'running';
CREATE INDEX executions_unclaimed_any ON executions (started_at, id)
    WHERE agent_id IS NULL AND status = 'running';
CREATE INDEX executions_overdue ON executions (deadline) WHERE status = 'running';
