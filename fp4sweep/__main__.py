"""`python -m fp4sweep` is the `fp4sweep` command."""

import sys

from fp4sweep.cli import main

sys.exit(main())
