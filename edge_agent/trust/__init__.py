"""Trust: what the agent may install, decided before a byte is parsed as a model.

::

    assignment.py   the pure trust core: director assignment verification, TUF target matching (TargetRef)
    tuf_client.py   python-tuf ngclient bootstrapped from the pinned image root: refresh, target lookup
    download.py     resumable, length-capped target downloads and their hash verification

Imports nothing of the update or perception paths.
"""

__all__: list[str] = []
