"""``python -m bench``: the same as ``blockpoint bench`` (options: ``--quick``, ``--json``,
``--only NAME``)."""

from __future__ import annotations

import sys

from blockpoint.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
