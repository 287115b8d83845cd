"""``python -m dualforge ...``: the ``dualforge`` command (for torchrun and hosts without the script)."""

import sys

from dualforge.cli.main import main

sys.exit(main())
