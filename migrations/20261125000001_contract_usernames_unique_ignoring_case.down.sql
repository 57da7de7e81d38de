DROP INDEX IF EXISTS users_username_lower_key;
