"""The throwaway PostgreSQL server (tests/pgserver.py) is real: write a row, read it back."""

from __future__ import annotations


def test_postgres_server_round_trip(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES (%s)", ("héllo",))
        rows = conn.execute("SELECT id, body FROM notes").fetchall()
        assert rows == [(1, "héllo")]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
