"""Entry point of ``python -m rotation``."""

import sys

from rotation.cli.main import main

sys.exit(main())
