"""``python -m acclimate.cli``: the ``acclimate`` command."""

import sys

from acclimate.cli import main

sys.exit(main())
