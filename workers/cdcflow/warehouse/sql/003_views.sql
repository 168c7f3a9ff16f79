-- Analytics views. FINAL collapses each document to its newest version and drops
-- deleted ones (the explicit filter keeps older servers honest), so a superseded or
-- deleted state never counts.
CREATE OR REPLACE VIEW {database}.{table}_current AS
SELECT * EXCEPT (is_deleted)
FROM {database}.{table} FINAL
WHERE is_deleted = 0;

CREATE OR REPLACE VIEW {database}.{table}_by_video AS
SELECT
    video_id,
    count()                        AS views,
    round(avg(completion_rate), 2) AS avg_completion_rate,
    round(quantileExact(0.5)(completion_rate), 2) AS median_completion_rate,
    sum(watched_time)              AS watched_seconds
FROM {database}.{table}_current
GROUP BY video_id;

CREATE OR REPLACE VIEW {database}.{table}_by_day AS
SELECT
    toDate(coalesce(started_at, loaded_at)) AS day,
    count()                        AS views,
    round(avg(completion_rate), 2) AS avg_completion_rate,
    sum(watched_time)              AS watched_seconds
FROM {database}.{table}_current
GROUP BY day;

CREATE OR REPLACE VIEW {database}.{table}_by_device AS
SELECT
    device,
    count()                        AS views,
    round(avg(completion_rate), 2) AS avg_completion_rate,
    sum(watched_time)              AS watched_seconds
FROM {database}.{table}_current
GROUP BY device
