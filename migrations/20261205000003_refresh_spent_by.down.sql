ALTER TABLE refresh_tokens DROP COLUMN IF EXISTS spent_by;
