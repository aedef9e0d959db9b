#!/usr/bin/env python3
"""The mypyc build's command line: ``status`` (default), ``build``, ``clean``, ``fresh``.

A script rather than ``python -m gateway.native`` because ``gateway``'s
``__init__`` imports that module (the stale-build guard), and runpy warns
about running a module that is already imported. See gateway/native.py.
"""

import sys

from gateway.native import main

if __name__ == "__main__":
    sys.exit(main())
