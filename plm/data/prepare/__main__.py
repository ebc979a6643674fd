"""``python -m plm.data.prepare`` (the benchmark runs it so)."""

import sys

from plm.data.prepare.command import main

raise SystemExit(main(sys.argv[1:]))
