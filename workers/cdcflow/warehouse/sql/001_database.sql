-- The warehouse database. Statements in this folder run in file order, on chdb and
-- on a ClickHouse server alike; each one is idempotent. Placeholders in braces are
-- identifiers filled from the settings (validated names, never user data).
CREATE DATABASE IF NOT EXISTS {database}
