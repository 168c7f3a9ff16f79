-- One row per document state. ReplacingMergeTree keeps, per doc_id, the row with the
-- highest version (source order, see cdcflow/events.py); is_deleted = 1 on that row
-- means the document is deleted. The sorting key is doc_id alone, because a delete
-- from MongoDB carries nothing else. Rows only collapse within one partition, so any
-- partition key would have to come from doc_id too; there is none: an insert writes
-- one part per partition it touches, and a hash partition into 16 made every
-- 1,000-row batch ~10x slower to load (measured on chdb). For retention by age on a
-- very large server table, a coarse key such as cityHash64(doc_id) % 4 is the most
-- that keeps deletes meeting their rows.
CREATE TABLE IF NOT EXISTS {database}.{table}
(
    doc_id           String,
    video_id         String,
    user_id          String,
    device           LowCardinality(String),
    country          LowCardinality(String),
    started_at       Nullable(DateTime64(3, 'UTC')),
    updated_at       Nullable(DateTime64(3, 'UTC')),
    watched_time     Float64,
    total_video_time Float64,
    completion_rate  Float64,
    op               LowCardinality(String),
    version          UInt128,
    is_deleted       UInt8,
    cluster_time     Nullable(DateTime64(6, 'UTC')),
    captured_at      DateTime64(6, 'UTC'),
    loaded_at        DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY doc_id
