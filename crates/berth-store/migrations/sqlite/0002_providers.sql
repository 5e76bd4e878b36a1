-- Providers registered through the API (built-ins come from the binary, not from here).
-- `definition` is the JSON definition without the backend's secret, which is sealed apart
-- (AAD "provider:<name>:<version>").
CREATE TABLE providers (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    definition     TEXT NOT NULL,
    sealed_secret  BLOB,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
