"""Where settings come from: the ``.env`` found upward, and relative paths resolved against it.

One rule for every settings class (receiver, submitter, sandbox), so a bot in a subfolder of
the project uses the receiver's own store instead of silently creating another one:

- ``.env`` is looked up in the current folder, then in each parent (the first found wins, as
  git finds ``.git``);
- a relative ``sqlite:///`` path, ``file://`` storage path or data folder is resolved against
  the folder of that ``.env``, or the current folder when none was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
)

ENV_FILE_NAME = ".env"

#: The .env the settings being built read (None: none), set while they are validated.
_building: ContextVar[Path | None] = ContextVar("bfl_hooks_env_file", default=None)


def find_env_file(start: Path | None = None) -> Path | None:
    """The first ``.env`` in ``start`` (default: the current folder) or one of its parents."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / ENV_FILE_NAME
        if path.is_file():
            return path
    return None


def resolve_relative(url: str, base: Path) -> str:
    """``url`` with a relative local path made absolute against ``base``; others unchanged.

    ``sqlite:///data/x.db`` and ``sqlite:///./data/x.db`` are relative (``sqlite:////x.db`` is
    absolute), so are ``file://./samples`` and plain paths; ``:memory:``, PostgreSQL and S3 URLs
    are left alone.
    """
    for scheme in ("sqlite:///", "file://"):
        if url.startswith(scheme):
            path = url.removeprefix(scheme)
            if not path or path == ":memory:" or Path(path).is_absolute():
                return url
            return scheme + str((base / path).resolve())
    if "://" in url or url == "" or Path(url).is_absolute():
        return url
    return str((base / url).resolve())


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for ``:memory:`` and other engines)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def base_folder() -> Path:
    """The folder relative paths are resolved against, for the settings being validated."""
    env_file = _building.get()
    return env_file.parent if env_file is not None else Path.cwd()


def default_public_url(data: Any, url_keys: tuple[str, ...], port_keys: tuple[str, ...]) -> Any:
    """Fill in ``http://127.0.0.1:<port>`` when no public URL was given (``mode="before"``).

    The keys are a field's name and its alias: sources name a field either way.
    """
    if not isinstance(data, Mapping) or any(data.get(key) for key in url_keys):
        return data
    port = next((data[key] for key in port_keys if data.get(key) not in (None, "")), 8000)
    try:
        number = int(port)
    except (TypeError, ValueError):
        return data  # the port's own validation says what is wrong with it
    return {**data, url_keys[0]: f"http://127.0.0.1:{number or 8000}"}


class UpwardEnvSettings(BaseSettings):
    """A settings class that finds its ``.env`` upward (see the module's rule).

    ``_env_file=None`` (as tests pass) reads no file and resolves against the current folder;
    an explicit ``_env_file`` is read as given and resolves against its folder.
    """

    _env_file_read: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, with the default ``.env`` replaced by the one found upward."""
        found: Path | None = None
        if isinstance(dotenv_settings, DotEnvSettingsSource):
            configured = dotenv_settings.env_file
            if configured == settings_cls.model_config.get("env_file") == ENV_FILE_NAME:
                found = find_env_file()
                dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=found)
            elif isinstance(configured, str | Path) and Path(configured).is_file():
                found = Path(configured).resolve()
        _building.set(found)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _remember_env_file(self) -> UpwardEnvSettings:
        self._env_file_read = _building.get()
        return self

    @property
    def env_file(self) -> Path | None:
        """The ``.env`` these settings read (absolute), or None when none was found or read."""
        return self._env_file_read


def store_note(env_file: Path | None, database_path: Path | None) -> str | None:
    """A line naming the SQLite store used, when the ``.env`` found is in a parent folder (so
    relative paths point somewhere other than the current folder); else None."""
    if env_file is None or database_path is None or env_file.parent == Path.cwd().resolve():
        return None
    return (
        f"store {database_path} (relative paths are resolved against {env_file.parent}, "
        f"the folder of {env_file})"
    )


def env_file_lookup() -> str:
    """Where a ``.env`` was looked for, for messages: the one found, or the folders searched."""
    found = find_env_file()
    if found is not None:
        return f"read {found}"
    return f"no {ENV_FILE_NAME} in {Path.cwd()} or any folder above it"
