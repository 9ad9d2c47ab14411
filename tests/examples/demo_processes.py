"""Which processes a demo left behind: those whose command line names its work directory."""

import os
from pathlib import Path


def processes_under(workdir: Path) -> list[str]:
    """Command lines of running processes with a path inside ``workdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"{workdir}{os.sep}" in cmdline:  # the separator: var/demo is not var/demo-bank
            found.append(cmdline)
    return found
