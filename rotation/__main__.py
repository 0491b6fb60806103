"""Entry point of ``python -m rotation``."""

import sys

from rotation.cli import main

sys.exit(main())
