"""SQLite's connection settings, which correctness and the read path's speed rely on."""

from __future__ import annotations

from pathlib import Path

from meter.db.engine import make_engine


def test_every_sqlite_connection_gets_meters_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with engine.connect() as conn:
            values = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "temp_store")
            }
    finally:
        engine.dispose()
    # WAL; NORMAL (1); foreign keys on; temporary B-trees of sorts and GROUP BYs in memory (2).
    assert values == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "temp_store": 2}
