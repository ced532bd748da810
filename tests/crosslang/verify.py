#!/usr/bin/env python3
"""The independent Python verifier, run as `verify.py vectors|receipt|bundle ...`.

It lives in the Python SDK (clients/python/src/allowly/verify.py), which ships it as
`allowly.verify`; this file runs that same code from a checkout, without installing the SDK.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))

from allowly.verify import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
