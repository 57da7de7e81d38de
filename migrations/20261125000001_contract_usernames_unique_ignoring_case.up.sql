-- Contract step: usernames are unique ignoring case, like emails ("Jake" and "jake" are
-- one name to readers of /api/profiles). It tightens a constraint, so it runs only after
-- every pod of the release that knows the new constraint name serves (see README.md).
-- It fails if such duplicates already exist: rename them first, then the operator's retry
-- (or `stoa-api migrate`) applies it.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
