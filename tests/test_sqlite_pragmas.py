"""SQLite's connection settings, which correctness and concurrency rely on."""

from __future__ import annotations

from pathlib import Path

from meter.db.engine import make_engine


def test_every_sqlite_connection_gets_meters_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with engine.connect() as conn:
            values = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys")
            }
    finally:
        engine.dispose()
    # WAL (readers never wait for the writer); NORMAL (1); foreign keys on.
    assert values == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1}
