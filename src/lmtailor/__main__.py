"""`python -m lmtailor`: the same command as `lmtailor` (where the script is not on PATH)."""

from lmtailor.cli.main import main

main()
