"""``python -m hart_edu ...`` is the ``hart-edu`` command."""

import sys

from hart_edu.cli import main

sys.exit(main())
