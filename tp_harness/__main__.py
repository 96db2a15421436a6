"""``python -m tp_harness`` runs the ``tp-harness`` command line."""

import sys

from tp_harness.entrypoints.cli import main

sys.exit(main())
