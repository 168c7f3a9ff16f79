-- After a snapshot: every live document whose newest row is older than the snapshot
-- was not read by it, so it is gone at the source. Write its tombstone at the sweep
-- version (just below the snapshot's own rows, above every earlier event), which
-- also makes this statement safe to repeat.
INSERT INTO {database}.{table} (doc_id, op, version, is_deleted, captured_at, loaded_at)
SELECT doc_id, 'sweep', {sweep_version}, 1, now64(6), now64(6)
FROM {database}.{table} FINAL
WHERE is_deleted = 0 AND version < {sweep_version}
