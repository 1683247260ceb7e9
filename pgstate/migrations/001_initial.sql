-- pgstate schema 1: what several ftpd instances share (docs/CLUSTER.md explains each table).

-- Users, as the users file has them; the verifier and the keys in the file's own text forms.
CREATE TABLE users (
    name         text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    verifier     text,
    keys         text[] NOT NULL DEFAULT '{}',
    home         text NOT NULL,
    read_only    boolean NOT NULL DEFAULT false,
    rate_up      bigint CHECK (rate_up > 0),
    rate_down    bigint CHECK (rate_down > 0),
    quota        bigint CHECK (quota >= 0),
    max_files    bigint CHECK (max_files >= 0),
    max_sessions integer CHECK (max_sessions > 0)
);

-- One row: bumped by every change of users, so an instance that missed a notification sees
-- the change at its next poll.
CREATE TABLE users_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO users_version VALUES (true, 0);

-- The login-failure throttle: recent failures by key (an address range, a hashed user name).
CREATE TABLE login_failures (
    key   text PRIMARY KEY,
    count integer NOT NULL,
    last  timestamptz NOT NULL,
    until timestamptz NOT NULL
);
CREATE INDEX login_failures_last ON login_failures (last);

-- Where each user name logged in from lately: that range is exempt from the name's penalty.
CREATE TABLE login_trust (
    range text NOT NULL,
    name  text NOT NULL,
    at    timestamptz NOT NULL,
    PRIMARY KEY (range, name)
);
CREATE INDEX login_trust_at ON login_trust (at);

-- The registry of resumable uploads. Lease tokens come from one sequence, so a token names one
-- lease of one upload, ever: never reused after a finish and a new start of the same key.
CREATE SEQUENCE upload_lease_token;
CREATE TABLE uploads (
    key          text PRIMARY KEY,
    upload_id    text NOT NULL,
    part_size    bigint NOT NULL CHECK (part_size > 0),
    digest_kind  text NOT NULL,
    digest_state text NOT NULL,
    lease_holder text NOT NULL,
    lease_token  bigint NOT NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    updated      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE upload_parts (
    key          text NOT NULL REFERENCES uploads (key) ON DELETE CASCADE,
    number       integer NOT NULL CHECK (number BETWEEN 1 AND 10000),
    etag         text NOT NULL,
    size         bigint NOT NULL CHECK (size >= 0),
    digest_state text NOT NULL,
    lease_token  bigint NOT NULL,
    PRIMARY KEY (key, number)
);

-- Sessions open across the service, each kept alive by its instance's heartbeat.
CREATE TABLE sessions (
    id        bigserial PRIMARY KEY,
    user_name text NOT NULL,
    instance  text NOT NULL,
    expires   timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);
CREATE INDEX sessions_instance ON sessions (instance);

-- A token bucket per user and direction; instances lease bytes of it.
CREATE TABLE rate_buckets (
    user_name  text NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('up', 'down')),
    tokens     double precision NOT NULL,
    updated    timestamptz NOT NULL,
    last_grant double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (user_name, direction)
);

-- Bytes and files under each home, kept up to date by every instance.
CREATE TABLE usage (
    home  text PRIMARY KEY,
    bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    files bigint NOT NULL DEFAULT 0 CHECK (files >= 0)
);
