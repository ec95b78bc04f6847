"""The `lmtailor` command. main.py holds the top-level commands and mounts the groups of data.py (`lmtailor data`),
evaluate.py (`lmtailor eval`) and jobs.py (`lmtailor jobs`); support.py is what they share. Nothing outside this
package imports it: the CLI is the top layer (docs/ARCHITECTURE.md; the contracts: pyproject.toml, [tool.importlinter])."""

from lmtailor.cli.main import app, main

__all__ = ["app", "main"]
