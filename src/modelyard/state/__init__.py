"""State behind small interfaces: live counters (memory | Redis) and the store (SQLite | PostgreSQL)."""
