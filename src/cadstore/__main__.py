"""``python3 -m cadstore``: run the command line."""

from __future__ import annotations

import sys

from cadstore.cli import main

sys.exit(main())
