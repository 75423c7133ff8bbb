-- The default task list (an owner's tasks, newest first, the id breaking ties) read straight
-- from an index in its order: a page costs its own rows, not a sort of all the owner's tasks.
DROP INDEX tasks_owner_created;
CREATE INDEX tasks_owner_created ON tasks (user_id, created_at, id);
