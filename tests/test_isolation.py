"""The suite does not depend on what else is installed: a user's handler package, installed into
the venv as the README recommends, leaves every handler count the suite checks unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.events import Status
from receiver.handlers import load_handlers

ROOT = Path(__file__).resolve().parent.parent

USER_HANDLER = """
import receiver

@receiver.on("*")
async def notify(event: receiver.Event) -> None:
    raise RuntimeError("a user's handler, configured for their own bot, fails here")
"""


def install_user_package(site: Path) -> None:
    """A real installed distribution: a package and its .dist-info with an entry point."""
    (site / "userhooks").mkdir(parents=True)
    (site / "userhooks" / "__init__.py").write_text(USER_HANDLER)
    dist = site / "userhooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userhooks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bfl_hooks.handlers]\nnotify = userhooks:notify\n")


def test_the_fake_package_is_seen_as_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proof below is only worth something if the package really loads as a handler."""
    install_user_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "userhooks:notify" in load_handlers([]).names_for(Status.READY)


@pytest.mark.slow
def test_handler_counting_tests_pass_with_a_user_handler_installed(tmp_path: Path) -> None:
    """Every test that starts a receiver and counts its jobs, run with the package installed.

    The kill -9 test counts every job of 200 tasks; the rules test lists loaded handlers; the
    CLI tests start ``serve``; the webhook tests count handler runs.
    """
    install_user_package(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    tests = ["tests/test_crash.py", "tests/test_rules.py", "tests/test_cli.py"]
    tests += ["tests/test_webhooks.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
