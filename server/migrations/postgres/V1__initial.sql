-- The PostgreSQL store, version 1: everything the sled store keeps, one
-- table per sled tree (see server/src/store.rs for what each holds).
--
-- Types: ids are the 16 bytes the sled store keys by (bytea, checked to be
-- 16 long), because document ids are bs58 of 16 random bytes, not UUIDs,
-- and one representation for every id keeps binding them uniform; times
-- are timestamptz (microseconds; sled keeps event times in milliseconds);
-- counters and sequence numbers are bigint, never negative. Records the
-- server reads and writes only whole, and never queries inside, are jsonb:
-- the one-time-code state (lists of times, replaced whole under a row lock)
-- and task summaries (an API type that gains fields; a summary of an older
-- shape is skipped on read, as in sled). Everything else is columns.

-- Users and the contact key each signs in with (sled's `users` and
-- `identities` trees: the unique constraint is the identity index).
CREATE TABLE users (
    id bytea PRIMARY KEY CHECK (octet_length(id) = 16),
    contact_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    root_document_id bytea CHECK (octet_length(root_document_id) = 16)
);

-- One-time-code state per contact key: the pending code's keyed hash, the
-- send and failure history.
CREATE TABLE otp (
    contact_key text PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE sessions (
    id bytea PRIMARY KEY CHECK (octet_length(id) = 16),
    user_id bytea NOT NULL CHECK (octet_length(user_id) = 16),
    device_name text,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    generation bigint NOT NULL CHECK (generation >= 0),
    rotated_at timestamptz NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id, id);

-- Keyed hash of every refresh token a session was given → the session and
-- the token's generation; old generations stay, for reuse detection, until
-- the session is deleted with its whole chain.
CREATE TABLE refresh_tokens (
    hash bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    session_id bytea NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    generation bigint NOT NULL CHECK (generation >= 0)
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- A user's audit trail; `seq` orders it (newest last).
CREATE TABLE audit (
    user_id bytea NOT NULL CHECK (octet_length(user_id) = 16),
    seq bigint GENERATED ALWAYS AS IDENTITY,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    session_id bytea CHECK (octet_length(session_id) = 16),
    ip text,
    user_agent text,
    PRIMARY KEY (user_id, seq)
);

-- Who owns a document (the first to push it), its tombstone, the sequence
-- number its next event gets, and the bytes of its log (for quotas).
CREATE TABLE documents (
    doc bytea PRIMARY KEY CHECK (octet_length(doc) = 16),
    owner bytea NOT NULL CHECK (octet_length(owner) = 16),
    created_at timestamptz NOT NULL,
    next_seq bigint NOT NULL CHECK (next_seq >= 0),
    deleted_at timestamptz,
    bytes bigint NOT NULL CHECK (bytes >= 0)
);

-- The append-only change log. Sequence numbers are allocated from
-- `documents.next_seq` in the appending transaction, under that row's
-- lock, so they are gap-free and commit in order.
CREATE TABLE events (
    doc bytea NOT NULL REFERENCES documents (doc),
    seq bigint NOT NULL CHECK (seq >= 0),
    user_id bytea NOT NULL CHECK (octet_length(user_id) = 16),
    session_id bytea CHECK (octet_length(session_id) = 16),
    at timestamptz NOT NULL,
    change bytea NOT NULL,
    PRIMARY KEY (doc, seq)
);

-- A saved document covering the first `covers` events of the log. No
-- foreign key: as in sled, a snapshot does not require the document row.
CREATE TABLE snapshots (
    doc bytea PRIMARY KEY CHECK (octet_length(doc) = 16),
    covers bigint NOT NULL CHECK (covers >= 0),
    bytes bytea NOT NULL
);

-- The per-user feed: each of a user's documents once, at the feed sequence
-- of its last change. Feed sequences come from the per-user counter below,
-- taken in the appending transaction under the counter row's lock: a
-- global serial would commit out of order, and a reader of "changed since
-- N" could skip a row that commits after it read.
CREATE TABLE user_feed (
    user_id bytea NOT NULL CHECK (octet_length(user_id) = 16),
    feed_seq bigint NOT NULL CHECK (feed_seq > 0),
    doc bytea NOT NULL CHECK (octet_length(doc) = 16),
    PRIMARY KEY (user_id, feed_seq),
    UNIQUE (user_id, doc)
);
CREATE TABLE user_feed_counters (
    user_id bytea PRIMARY KEY CHECK (octet_length(user_id) = 16),
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);

-- What the server knows each peer storage has of each document (encoded
-- Automerge sync state).
CREATE TABLE sync_states (
    doc bytea NOT NULL CHECK (octet_length(doc) = 16),
    storage_id text NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (doc, storage_id)
);

-- A summary of every task per user, for listing without loading documents.
CREATE TABLE task_index (
    user_id bytea NOT NULL CHECK (octet_length(user_id) = 16),
    doc bytea NOT NULL CHECK (octet_length(doc) = 16),
    summary jsonb NOT NULL,
    PRIMARY KEY (user_id, doc)
);

-- Live documents and their bytes per user, for quotas; updated in the
-- transaction of the write it counts.
CREATE TABLE usage (
    user_id bytea PRIMARY KEY CHECK (octet_length(user_id) = 16),
    documents bigint NOT NULL CHECK (documents >= 0),
    bytes bigint NOT NULL CHECK (bytes >= 0)
);

-- Server-wide values (the server's storage id).
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
