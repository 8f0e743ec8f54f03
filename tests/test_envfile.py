"""One rule for ``.env`` and relative paths, whatever folder a command runs from.

``.env`` is the first found in the current folder or a parent; relative store and storage
paths are resolved against its folder (else the current folder).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import submitter
from receiver import Settings
from receiver.envfile import find_env_file, resolve_relative
from receiver.store import Submission, opened_store
from sandbox import SandboxSettings

PROJECT_ENV = "RECEIVER_WEBHOOK_SECRET=s-project\nRECEIVER_PORT=9123\nSANDBOX_PORT=9124\n"

#: Variables the tests below read from .env files: the caller's environment must not win.
VARIABLES = (
    "RECEIVER_WEBHOOK_SECRET",
    "RECEIVER_PORT",
    "RECEIVER_PUBLIC_URL",
    "RECEIVER_DATABASE_URL",
    "RECEIVER_STORAGE_URL",
    "SANDBOX_PORT",
    "BFL_SUBMIT_DATA_DIR",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a .env and a nested subfolder (a bot living inside it)."""
    if find_env_file(tmp_path) is not None:
        pytest.skip(f"a .env above {tmp_path} would be found first")
    root = tmp_path / "project"
    (root / "bots" / "chat").mkdir(parents=True)
    (root / ".env").write_text(PROJECT_ENV)
    return root


def test_a_subfolder_uses_the_project_env_and_its_store(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "bots" / "chat")
    receiver = Settings()
    bot = submitter.Settings()
    assert receiver.env_file == bot.env_file == project / ".env"
    assert [s.get_secret_value() for s in bot.webhook_secret] == ["s-project"]
    expected = project.resolve() / "data" / "receiver.db"
    assert receiver.database_url == bot.database_url == f"sqlite:///{expected}"
    assert receiver.database_path == bot.database_path == expected
    assert receiver.storage_url == f"file://{project.resolve() / 'data' / 'samples'}"
    assert bot.data_dir == project.resolve() / "data"
    assert SandboxSettings().port == 9124  # the sandbox finds the same file
    # What serve can log: the store is not where a relative path in this folder points.
    assert receiver.store_note == (
        f"store {expected} (relative paths are resolved against {project.resolve()}, "
        f"the folder of {project.resolve() / '.env'})"
    )
    monkeypatch.chdir(project)
    assert Settings().store_note is None  # from the .env's own folder: nothing surprising


def test_what_a_bot_in_a_subfolder_records_the_receiver_at_the_root_reads(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same store for real: written from the subfolder, read from the project's root."""
    monkeypatch.chdir(project / "bots" / "chat")
    bot_url = submitter.Settings().database_url

    async def record() -> None:
        async with opened_store(bot_url) as store:
            await store.prepare_submission("ref-1", "flux-dev", {"chat_id": 42})

    anyio.run(record)
    assert not (project / "bots" / "chat" / "data").exists()  # no second store appeared
    monkeypatch.chdir(project)
    receiver_url = Settings().database_url

    async def read() -> Submission | None:
        async with opened_store(receiver_url) as store:
            return await store.get_submission(ref="ref-1")

    found = anyio.run(read)
    assert found is not None
    assert found.metadata == {"chat_id": 42}


def test_a_relative_url_in_the_environment_resolves_against_the_env_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "bots")
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "sqlite:///state/hooks.db")
    monkeypatch.setenv("RECEIVER_STORAGE_URL", "file://./images")
    expected = project.resolve() / "state" / "hooks.db"
    assert Settings().database_url == f"sqlite:///{expected}"
    assert submitter.Settings().database_url == f"sqlite:///{expected}"
    assert Settings().storage_url == f"file://{project.resolve() / 'images'}"


def test_an_unrelated_folder_resolves_against_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if find_env_file(elsewhere) is not None:
        pytest.skip(f"a .env above {elsewhere} would be found first")
    monkeypatch.chdir(elsewhere)
    settings = submitter.Settings()
    assert settings.env_file is None
    assert settings.database_path == elsewhere.resolve() / "data" / "receiver.db"
    assert Settings().database_path == elsewhere.resolve() / "data" / "receiver.db"


def test_no_env_file_means_the_current_folder_and_an_explicit_one_its_own(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "bots")
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    assert bare.env_file is None
    assert bare.webhook_secret == ()
    assert bare.database_path == (project / "bots").resolve() / "data" / "receiver.db"
    other = project / "bots" / "chat" / "other.env"
    other.write_text("RECEIVER_DATABASE_URL=sqlite:///here.db\n")
    chosen = Settings(_env_file=other)  # type: ignore[call-arg]
    assert chosen.env_file == other.resolve()
    assert chosen.database_path == other.parent.resolve() / "here.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./data/x.db", "sqlite:////base/data/x.db"),
        ("sqlite:///data/x.db", "sqlite:////base/data/x.db"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://u:p@db/x", "postgresql://u:p@db/x"),
        ("file://./samples", "file:///base/samples"),
        ("file:///abs/samples", "file:///abs/samples"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("samples", "/base/samples"),
    ],
)
def test_resolve_relative(url: str, expected: str) -> None:
    assert resolve_relative(url, Path("/base")) == expected


def test_find_env_file_takes_the_nearest(project: Path) -> None:
    nearer = project / "bots" / ".env"
    nearer.write_text("RECEIVER_PORT=1\n")
    assert find_env_file(project / "bots" / "chat") == nearer
    assert find_env_file(project) == project / ".env"
