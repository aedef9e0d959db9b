"""``python -m gateway.cli``: how the supervisor starts its archiver child with this interpreter."""

import sys

from gateway.cli import main

sys.exit(main())
