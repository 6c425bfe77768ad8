"""The OTA server (``ota-server``): TUF image repository, director, releases, rollouts, fleet API.

::

    rules/        pure rules, no I/O: rollout arithmetic and request schema, the report schema, gate evidence
    fleet/        fleet logic applied to the store: director, rollout service, report ingest, publish, coverage
    trust/        the TUF image repository, Ed25519 keys and signed envelopes, the artifact store
    storage/      the SQL schema and its versioned migrations, the engine, every query (the store)
    serving/      serving requests: gunicorn worker, unchanged-poll fast path, metrics, authentication
    api/          the HTTP blueprints, one per resource, and their request helpers
    client/       the typed API client and ``ota-ctl``; imports nothing of the server
    app.py        create_app: blueprints, error answers, request metrics
    services.py   the services one worker holds (store, repository, director, auth, metrics)
    config.py     ServerConfig, the one configuration dataclass, and the data directory layout
    settings.py   server.json: the settings init chose, read back by serve
    provision.py  init a data directory (keys, TUF metadata, schema, first tokens), create tokens
    cli.py        the ``ota-server`` command line (init, token, enroll-token, serve)
    cli_trust.py  its key commands: root resign, keys rotate, targets (the offline targets key)
    local.py      run a real server on this machine (init + serve as children): tests, benchmarks, demo
    errors.py     the error tree, drawn in its docstring
    templates/    the dashboard's page and its sign-in form; openapi.yaml describes every route

Layer order: ``rules``, ``storage`` and ``trust`` import none of the other sub-packages and no
Flask (``rules`` no SQLAlchemy either); ``fleet`` builds on those three; ``serving`` and ``api``
sit on top. ``tests/ota_server/test_layers.py`` checks this, and that no import cycle exists.
This package imports ``models`` only, never another stage.
"""

__all__: list[str] = []
