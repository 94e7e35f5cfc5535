"""Create LiteLLM's own virtualenv under bench/.cache/ (it must never share meter's).

LiteLLM imports for seconds and pulls in a large tree, so the client-overhead benchmark runs it
in a subprocess of this venv. Pinned: 1.107.0 was a compromised release (yanked), never take a
range that could resolve to it.

    python3 bench/setup_litellm.py        # idempotent; prints the venv's python
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

LITELLM = "litellm==1.110.2"
CACHE = Path(__file__).resolve().parent / ".cache"
VENV = CACHE / "litellm-venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"


def ensure() -> Path:
    """The venv's python, creating and installing it on first use."""
    if STAMP.exists() and STAMP.read_text().strip() == LITELLM:
        return PYTHON
    CACHE.mkdir(parents=True, exist_ok=True)
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", LITELLM],
        check=True,
    )
    STAMP.write_text(LITELLM + "\n")
    return PYTHON


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
