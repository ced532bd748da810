"""`python -m allowly receipt|bundle ...`: the offline verifier (see `allowly.verify`)."""

import sys

from .verify import main

sys.exit(main(sys.argv[1:]))
