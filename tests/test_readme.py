"""The README's quickstart works as written: each command of its block, in a shell with the venv activated."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    """The commands of the README's quickstart block (between its markers), comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart.*?-->\n```bash\n(.*?)```\n<!-- /quickstart -->", text, re.S)
    assert block, "README.md has no quickstart block"
    return [line.split("#", 1)[0].strip() for line in block[1].splitlines() if line.split("#", 1)[0].strip()]


def test_the_quickstart_starts_by_installing_and_activating():
    commands = quickstart()
    assert commands[:2] == ["make install", "source .venv/bin/activate"]


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path):
    """Every command after `make install` (which `make test` has run), in a copy of the repository's files."""
    for name in ("experiments",):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    for command in quickstart()[1:]:
        script = f"set -e\nsource .venv/bin/activate\n{command}\n"
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert (tmp_path / "mine" / "REPORT.md").is_file() and list((tmp_path / "mine" / "figures").glob("*.png"))


def test_the_readme_starts_small():
    """Issue 24's README: under ~250 lines and no line over 400 characters (the generated headline included: its
    table rows leave the source to the claim's section, its prose is broken into lines)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert max(len(line) for line in lines) <= 400, max(lines, key=len)[:120]
