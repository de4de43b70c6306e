"""`python -m models.train`: see models/train/cli.py."""

import sys

from .cli import main

sys.exit(main())
