"""`python -m LegSegNetLib.worker ...`: the worker process (see main.py)."""

import sys

from .main import main

sys.exit(main())
