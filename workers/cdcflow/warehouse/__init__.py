"""The warehouse: DDL applied once, one client for chdb and ClickHouse servers."""
