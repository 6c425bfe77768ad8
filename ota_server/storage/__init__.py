"""Storage: the SQL database, SQLite by default, PostgreSQL by URL.

::

    db.py          the tables (the schema's latest version) and the engine
    migrations.py  the schema version row and the numbered migrations up to it
    store.py       every query of the server; rows in and out as plain dicts

No business rules and no HTTP: a missing row is :class:`ota_server.errors.RecordNotFound`.
"""

__all__: list[str] = []
