"""Trust: the TUF image repository and the keys behind it and the director.

::

    repository.py  the TUF repository (python-tuf metadata): targets added, snapshot and timestamp re-signed
    offline.py     the offline targets key: staged targets, signing them (on the server or air-gapped), rotations
    keys.py        Ed25519 key files (0600), TUF signers, the director's signed envelopes
    artifacts.py   the content-addressed artifact store the targets point at

Knows no releases, rollouts or database: :mod:`ota_server.fleet.publish` drives it.
"""

__all__: list[str] = []
