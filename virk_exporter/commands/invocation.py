"""How to run this CLI from the user's shell, for the commands the demo and the CLI print."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def invocation() -> str:
    """How the user's shell runs this CLI, for commands we print: ``virk-exporter`` when that is
    what PATH finds, else the console script next to the interpreter (``.venv/bin/virk-exporter``
    after ``make demo``, relative to the working directory when it lies under it)."""
    script = Path(sys.executable).parent / "virk-exporter"
    if not script.exists():
        return f"{sys.executable} -m virk_exporter.cli"
    if shutil.which("virk-exporter") == str(script):
        return "virk-exporter"
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script)
