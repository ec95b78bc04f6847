"""`python -m lmtailor.cli`."""

import sys

from lmtailor.cli.main import main

sys.exit(main())
