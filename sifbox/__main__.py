"""`python -m sifbox` runs the command line."""

import sys

from sifbox.cli.main import main

sys.exit(main())
