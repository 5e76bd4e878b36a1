-- Backups of services whose backend takes them (CONTRACTS.md §2 backup calls).
CREATE TABLE backups (
    id            TEXT PRIMARY KEY,
    service_id    TEXT NOT NULL,
    scheduled_at  TEXT NOT NULL,
    initiated_at  TEXT,
    confirmed_at  TEXT,
    error         TEXT
);
CREATE INDEX backups_service ON backups (service_id, scheduled_at);
