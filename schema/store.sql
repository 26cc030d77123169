-- store.sql - schema version 1 of the proxyd store (SPEC §5).
--
-- proxyctl applies this to a new store inside one transaction and then sets
-- PRAGMA user_version = 1; later versions add numbered migrations next to it.
-- Every change made by proxyctl is one transaction that also writes an
-- `events` row, so a crash at any point leaves the previous state intact.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,           -- 'global_yaml', 'global_source'
    value TEXT NOT NULL
);

CREATE TABLE sites (
    name    TEXT PRIMARY KEY CHECK (name GLOB '[a-z0-9-]*' AND length(name) > 0),
    yaml    TEXT NOT NULL,            -- the source exactly as given
    source  TEXT NOT NULL,            -- file it came from, for diagnostics
    digest  TEXT NOT NULL,            -- SHA-256 of yaml, hex
    updated INTEGER NOT NULL          -- unix seconds
);

CREATE TABLE generations (
    id          INTEGER PRIMARY KEY,
    created     INTEGER NOT NULL,
    digest      TEXT NOT NULL,        -- SHA-256 of blob, hex
    blob        BLOB NOT NULL,        -- the rule table
    comment     TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    global_yaml TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX generations_one_active ON generations (active) WHERE active = 1;

-- The site sources each generation was compiled from, so rollback restores them.
CREATE TABLE generation_sites (
    generation INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    yaml       TEXT NOT NULL,
    source     TEXT NOT NULL,
    PRIMARY KEY (generation, name)
);

CREATE TABLE certificates (
    site       TEXT PRIMARY KEY,
    hosts      TEXT NOT NULL,         -- space-separated, as covered by the certificate
    cert_pem   TEXT NOT NULL,
    chain_pem  TEXT NOT NULL DEFAULT '',
    key_pem    TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('files', 'self-signed', 'acme', 'temporary')),
    issuer     TEXT NOT NULL DEFAULT '',
    updated    INTEGER NOT NULL
);

CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    email     TEXT NOT NULL DEFAULT '',
    key_pem   TEXT NOT NULL,
    kid       TEXT NOT NULL DEFAULT '',
    created   INTEGER NOT NULL
);

CREATE TABLE acme_challenges (
    token             TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    expires           INTEGER NOT NULL
);

CREATE TABLE ticket_keys (
    id      INTEGER PRIMARY KEY,
    name    BLOB NOT NULL,            -- 16 bytes
    keys    BLOB NOT NULL,            -- 32 bytes HMAC + 32 bytes AES
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    command    TEXT NOT NULL,         -- e.g. 'add-site shop'
    what       TEXT NOT NULL,         -- human-readable summary of the change
    generation INTEGER                -- generation made active by the change, if any
);
