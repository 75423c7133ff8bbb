-- Per-user quotas: every create counts the caller's live tasks or projects, or the agents they
-- registered that are still registered. Partial indexes hold exactly the rows counted, so a
-- count reads only the user's own live rows (and stops at the cap), never their deleted ones.
ALTER TABLE agents ADD COLUMN registered_by text;
CREATE INDEX tasks_owner_live ON tasks (user_id) WHERE status <> 'deleted';
CREATE INDEX projects_owner_live ON projects (user_id) WHERE status <> 'deleted';
CREATE INDEX agents_registrar_live ON agents (registered_by) WHERE registered = 1;
