-- Rows loaded per second and operation, counted as each insert arrives. The table of
-- 002_table.sql cannot tell this afterwards: ReplacingMergeTree merges superseded versions
-- away, so counting its rows undercounts older loads. A materialized view sees every
-- inserted block before any merge, and SummingMergeTree adds the counts of one second
-- together. A redelivered message counts again, as cdcflow_rows_loaded_total does.
CREATE TABLE IF NOT EXISTS {database}.{table}_loads
(
    second DateTime('UTC'),
    op     LowCardinality(String),
    rows   UInt64
)
ENGINE = SummingMergeTree(rows)
ORDER BY (second, op);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{table}_loads_mv
TO {database}.{table}_loads
AS SELECT toDateTime(loaded_at, 'UTC') AS second, op, count() AS rows
FROM {database}.{table}
GROUP BY second, op
