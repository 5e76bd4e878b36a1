-- Desired state: one row per service; `spec` is the JSON of berth_types::ServiceSpec.
CREATE TABLE services (
    id          TEXT PRIMARY KEY,
    team_id     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    deleted_at  TEXT
);
-- A name is unique within a team among the services that are not deleted.
CREATE UNIQUE INDEX services_team_name ON services (team_id, name) WHERE deleted_at IS NULL;

-- Secrets, sealed with the master key (XChaCha20-Poly1305, the service id as associated data).
CREATE TABLE service_secrets (
    service_id  TEXT PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    sealed      BLOB NOT NULL
);

-- Observed state, written only by the reconciler.
CREATE TABLE service_status (
    service_id           TEXT PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    state                TEXT NOT NULL,
    reason               TEXT,
    observed_generation  INTEGER NOT NULL,
    details              TEXT NOT NULL,
    since                TEXT NOT NULL
);

-- The events log; `event` is the JSON of berth_types::Event.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id  TEXT NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX events_service ON events (service_id, seq);
