"""``python -m tp_harness`` runs the ``tp-harness`` command line."""

import sys

from .cli import main

sys.exit(main())
