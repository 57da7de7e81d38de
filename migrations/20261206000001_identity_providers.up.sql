-- Expand: sign-in with identity providers (api-server/src/oauth/).
--
-- An account that signs in only with a provider has no password: its `password_hash` is
-- the empty string, never NULL, so the previous release (which reads the column as NOT
-- NULL text) still answers such an account's password login with a plain 401: the empty
-- string is not a hash and never verifies.

-- A provider's account, linked to one Stoa account. `subject` is the provider's stable id
-- (OIDC `sub`, GitHub's numeric user id); the email is what the provider last said, and is
-- used for nothing but display.
CREATE TABLE user_identities (
    provider       text NOT NULL,
    subject        text NOT NULL,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email          text,
    email_verified boolean NOT NULL DEFAULT false,
    linked_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);
-- One identity per provider per account: a second one is an unlink away.
CREATE UNIQUE INDEX user_identities_user_provider_key ON user_identities (user_id, provider);

-- An authorization request in flight: found by its `state` (hashed), bound to the browser
-- that started it (a hash of its cookie), single use, short-lived.
CREATE TABLE oauth_flows (
    state_hash    bytea PRIMARY KEY,
    browser_hash  bytea NOT NULL,
    provider      text NOT NULL,
    nonce         text NOT NULL,
    pkce_verifier text NOT NULL,
    return_to     text NOT NULL,
    -- Set when a signed-in user links the provider to their account.
    link_user_id  uuid REFERENCES users (id) ON DELETE CASCADE,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX oauth_flows_expires_idx ON oauth_flows (expires_at);

-- The end of a provider flow, handed to the front end as a one-time code.
-- `sign_in`: exchanged for tokens; `pending_identity` is set when the provider's verified
-- email matches an account the identity is not linked to (the exchange then needs that
-- account's password). `link`: the identity to link, made only when the account that
-- started the link confirms it with its own token.
CREATE TABLE oauth_handoffs (
    code_hash        bytea PRIMARY KEY,
    purpose          text NOT NULL CHECK (purpose IN ('sign_in', 'link')),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider         text NOT NULL,
    pending_identity jsonb,
    expires_at       timestamptz NOT NULL,
    CHECK (purpose = 'sign_in' OR pending_identity IS NOT NULL)
);
CREATE INDEX oauth_handoffs_expires_idx ON oauth_handoffs (expires_at);

-- A signed-in user's permission to start a linking flow in a browser navigation (which
-- carries no bearer token): single use, short-lived.
CREATE TABLE oauth_link_tickets (
    ticket_hash bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider    text NOT NULL,
    expires_at  timestamptz NOT NULL
);
