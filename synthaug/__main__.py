"""``python -m synthaug``: the same as the ``synthaug`` command."""

import sys

from synthaug.cli import main

sys.exit(main())
