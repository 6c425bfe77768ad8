"""``python -m ota_server`` is ``ota-server``."""

import sys

from ota_server.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
