"""Allows `python -m pmxcfs.admin` before the console script is installed."""

import sys

from .cli import main

sys.exit(main())
