"""``python -m ota_server`` is ``ota-server``."""

import sys

from ota_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
