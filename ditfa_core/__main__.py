"""``python -m ditfa_core``: see ``ditfa_core.cli``."""

import sys

from .cli import main

sys.exit(main())
