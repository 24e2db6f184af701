"""The peers' virtual environments, under .saga/bench/peers/<name>-venv: created and installed on first use.

A peer's packages never enter the project's own environment or pyproject.toml. A venv is reinstalled when its
requirement list changes (the list is kept in its `.installed` stamp, written only after a successful install).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".saga" / "bench" / "peers"


def ensure_venv(name: str, requirements: tuple[str, ...]) -> Path:
    """The python of venv `name`, created with `python -m venv` and given `requirements` by pip if needed."""
    venv = PEERS_DIR / f"{name}-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(requirements) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                            check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(requirements)} into {venv} failed:\n{result.stderr[-3000:]}")
    stamp.write_text(wanted)
    return python


def installed_version(python: Path, distribution: str) -> str:
    """The version of `distribution` installed in the venv of `python`."""
    return subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
                          check=True, capture_output=True, text=True).stdout.strip()
