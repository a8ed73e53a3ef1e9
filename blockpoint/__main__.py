"""``python -m blockpoint``: the ``blockpoint`` command (e.g. as a ``ray job submit``
entrypoint, where the uploaded working dir is imported instead of an installed copy)."""

import sys

from .cli import main

sys.exit(main())
