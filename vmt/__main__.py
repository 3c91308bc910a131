"""``python -m vmt``: the ``vmt`` command line."""

import sys

from vmt.app.cli import main

sys.exit(main())
