"""``python -m launcher ...`` is ``mnist-launch ...``."""

import sys

from launcher.cli import main

sys.exit(main())
