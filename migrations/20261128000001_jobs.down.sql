DROP TABLE IF EXISTS account_exports;
DROP TABLE IF EXISTS job_schedules;
DROP TABLE IF EXISTS jobs;
DROP FUNCTION IF EXISTS stoa_jobs_announce();
