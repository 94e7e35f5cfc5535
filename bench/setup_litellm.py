"""Create LiteLLM's own virtualenv under bench/.cache/ (it must never share meter's).

LiteLLM imports for seconds and pulls in a large tree, so the client-overhead benchmark runs it
in a subprocess of this venv, and the gateway benchmark runs its proxy server (`litellm
--config`) from it. Pinned: 1.107.0 was a compromised release (yanked), never take a range that
could resolve to it.

The proxy needs `litellm[proxy]`. Where the index lacks one of that extra's exact companion
pins (`litellm-proxy`, `litellm-enterprise`, `litellm-proxy-extras` of the same release: seen on
a package mirror), the extra's other requirements are installed as the wheel states them, those
three left out or unpinned; the proxy code itself ships in the `litellm` wheel.

    python3 bench/setup_litellm.py        # idempotent; prints the venv's python
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

VERSION = "1.110.2"
LITELLM = f"litellm=={VERSION}"
CACHE = Path(__file__).resolve().parent / ".cache"
VENV = CACHE / "litellm-venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"
STAMP_TEXT = f"{LITELLM} [proxy]"

# Run by the venv's python after `litellm` is installed: the `proxy` extra's requirements, from
# the installed wheel's metadata, its release-pinned companions relaxed.
_PROXY_REQUIREMENTS = """
import importlib.metadata as md
from packaging.requirements import Requirement
for text in md.requires("litellm") or []:
    req = Requirement(text)
    if req.marker is None or "extra" not in str(req.marker):
        continue
    if not req.marker.evaluate({"extra": "proxy"}):
        continue
    if req.name == "litellm-proxy":
        continue
    if req.name in ("litellm-enterprise", "litellm-proxy-extras"):
        print(req.name)
        continue
    print(f"{req.name}{req.specifier}")
"""


def _pip(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        check=False,
    )


def ensure() -> Path:
    """The venv's python, creating and installing it on first use."""
    if STAMP.exists() and STAMP.read_text().strip() == STAMP_TEXT:
        return PYTHON
    CACHE.mkdir(parents=True, exist_ok=True)
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if _pip(f"litellm[proxy]=={VERSION}").returncode != 0:
        print("litellm[proxy] did not resolve: installing the extra's requirements one by one")
        if _pip(LITELLM).returncode != 0:
            raise SystemExit(f"could not install {LITELLM}")
        reqs = subprocess.run(
            [str(PYTHON), "-c", _PROXY_REQUIREMENTS], check=True, capture_output=True, text=True
        ).stdout.split()
        if _pip(*reqs).returncode != 0:
            raise SystemExit("could not install litellm's proxy requirements")
    STAMP.write_text(STAMP_TEXT + "\n")
    return PYTHON


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
