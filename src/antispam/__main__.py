"""``python -m antispam`` is the ``antispam`` command."""

import sys

from .cli import main

sys.exit(main())
