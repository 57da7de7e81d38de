-- Expand: the job queue `stoa-api worker` drains, its schedules, and account exports (the
-- first job the API enqueues). The previous release ignores all three tables.
--
-- A job is `queued` until a worker claims it (`running`), then `done`, or `queued` again
-- with a later `run_at` after a failed attempt, or `dead` once its attempts are spent (kept,
-- listed by `stoa-api jobs list --dead`, retried by `stoa-api jobs retry`). A running job's
-- `run_at` is the end of its lease: a worker that vanished mid-job (its transaction rolled
-- back by PostgreSQL) leaves a row that another worker claims once the lease is over, while
-- a live worker holds the row locked, so `SKIP LOCKED` passes it by however long it runs.
CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    -- At most one queued job per (kind, key): enqueueing it again while one waits adds
    -- nothing (the waiting job will see the latest state); once it runs, a new one queues.
    idempotency_key text,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at          timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    locked_by       text,
    last_error      text
);

-- The claim: the earliest due job that is queued, or running past its lease.
CREATE INDEX jobs_due_idx ON jobs (run_at, id) WHERE state IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_queued_key_idx ON jobs (kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state = 'queued';
CREATE INDEX jobs_dead_idx ON jobs (finished_at) WHERE state = 'dead';
CREATE INDEX jobs_done_idx ON jobs (finished_at) WHERE state = 'done';

-- Wakes idle workers at once (they also poll, so a lost notification only delays).
CREATE FUNCTION stoa_jobs_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stoa_jobs', NEW.kind);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_announce AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION stoa_jobs_announce();

-- When each schedule last enqueued its job: replicas agree on it under an advisory lock, so
-- a schedule runs once per interval whatever the number of workers.
CREATE TABLE job_schedules (
    name           text PRIMARY KEY,
    last_queued_at timestamptz NOT NULL
);

-- One export per account: the latest request and, once its job ran, the document.
-- `revision` counts the documents written (one per request), so a job that ran twice in
-- effect would show. A document is current when `ready_at >= requested_at`.
CREATE TABLE account_exports (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    requested_at timestamptz NOT NULL,
    ready_at     timestamptz,
    revision     integer NOT NULL DEFAULT 0,
    document     jsonb
);
