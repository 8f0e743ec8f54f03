"""Every ``bfl-receiver`` invocation that a file under deploy/ names, found where it is written:

- a command line in text (systemd ``ExecStart=``, shell, Markdown code), whether the command is
  a bare name or a path (``/opt/bfl-hooks/bin/bfl-receiver drain --budget 240``), or a list
  written on one line (``["bfl-receiver", "serve", "--no-worker"]``);
- a container of the bfl-hooks image in YAML: compose ``command:`` (arguments to the image's
  ``ENTRYPOINT ["bfl-receiver"]``), Kubernetes ``args:``, or a ``command:`` that names it;
- the Dockerfile's ``CMD`` after its ``ENTRYPOINT ["bfl-receiver"]``.

Comments are prose, not invocations, and are left out (so is Markdown outside code).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: ``bfl-receiver`` as a command, not as part of a unit or service name (bfl-receiver.service,
#: bfl-receiver-drain.timer), nor of another word.
_COMMAND = re.compile(r"(?<![\w.-])(?:[\w./-]*/)?bfl-receiver(?![\w.-])")
#: Where a command line ends inside a line of text.
_LINE_END = re.compile(r"`|\s(?:&&|\|\||\||;)\s|\s#\s")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


@dataclass(frozen=True, order=True)
class Invocation:
    """``bfl-receiver`` with ``args``, as written at ``where`` (a file under deploy/, a line)."""

    where: str
    args: tuple[str, ...]
    documented: bool = False
    """Written in prose (Markdown): values may be placeholders (``--budget SECONDS``), so only
    the command and its flags' names are checked, not run."""

    def __str__(self) -> str:
        return f"{self.where}: bfl-receiver {shlex.join(self.args)}"


def _list_after(rest: str) -> tuple[str, ...] | None:
    """The strings of a one-line list that continues after ``"bfl-receiver"``, if it is one."""
    stripped = rest.lstrip()
    if not stripped.startswith(("'", '"')):
        return None
    stripped = stripped[1:].lstrip()  # the quote that closed "bfl-receiver"
    if not stripped.startswith((",", "]")):
        return None
    body = stripped.split("]", 1)[0]
    return tuple(a or b for a, b in _QUOTED.findall(body))


def _line_after(rest: str) -> tuple[str, ...]:
    cut = _LINE_END.search(rest)
    text = rest[: cut.start()] if cut else rest
    try:
        return tuple(shlex.split(text))
    except ValueError:  # an unbalanced quote: the plain words
        return tuple(text.split())


def _code_lines(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines that may hold commands: no comments; in Markdown, only code."""
    text = re.sub(r"\\\n", " ", text)  # continued lines (systemd, shell, Dockerfile) as one
    markdown = path.suffix.lower() in {".md", ".markdown"}
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if markdown:
            if stripped.startswith("```"):
                fenced = not fenced
                continue
            if fenced and not stripped.startswith("#"):
                yield number, line
            else:
                # inline code only: `bfl-receiver serve`
                for code in re.findall(r"`([^`]+)`", line):
                    yield number, code
            continue
        if stripped.startswith(("#", ";", "//")):
            continue
        yield number, line


def in_text(path: Path, text: str, where: str) -> Iterator[Invocation]:
    for number, line in _code_lines(path, text):
        for match in _COMMAND.finditer(line):
            rest = line[match.end() :]
            args = _list_after(rest)
            if args is None:
                args = _line_after(rest)
            if args:
                documented = path.suffix.lower() in {".md", ".markdown"}
                yield Invocation(f"{where}:{number}", args, documented)


def _words(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return tuple(str(item) for item in value)
    return None


def _is_our_image(mapping: dict[str, Any]) -> bool:
    """A compose service or Kubernetes container of the bfl-hooks image (by name, or built
    from the repository: compose's ``build:``)."""
    image, build = mapping.get("image"), mapping.get("build")
    if isinstance(image, str) and "bfl-hooks" in image:
        return True
    return build is not None and ("Dockerfile" in json.dumps(build) or build in (".", ".."))


def _in_yaml_node(node: Any, compose: bool, where: str) -> Iterator[Invocation]:
    if isinstance(node, list):
        for item in node:
            yield from _in_yaml_node(item, compose, where)
        return
    if not isinstance(node, dict):
        return
    if _is_our_image(node):
        command, args = _words(node.get("command")), _words(node.get("args"))
        name = str(node.get("name") or "")
        if command and Path(command[0]).name == "bfl-receiver":
            yield Invocation(f"{where} {name}".strip(), command[1:] + (args or ()))
        elif compose and command and "entrypoint" not in node:
            yield Invocation(f"{where} {name}".strip(), command)
        elif not compose and command is None and args:
            yield Invocation(f"{where} {name}".strip(), args)
    for key, value in node.items():
        yield from _in_yaml_node(value, compose, f"{where}/{key}" if compose else where)


class _AnyTagLoader(yaml.SafeLoader):
    """Safe YAML that reads a tag it does not know (CloudFormation's ``!Ref``, ``!Sub``...) as
    the plain value under it."""


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_AnyTagLoader.add_multi_constructor("!", _untagged)


def in_yaml(text: str, where: str) -> Iterator[Invocation]:
    for document in yaml.load_all(text, Loader=_AnyTagLoader):
        if isinstance(document, dict):
            compose = "services" in document
            label = where if compose else f"{where} {document.get('kind', '')}".strip()
            yield from _in_yaml_node(document, compose, label)


def in_dockerfile(text: str, where: str) -> Iterator[Invocation]:
    joined = re.sub(r"\\\n", " ", text)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    for line in joined.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            entrypoint = cmd = None  # a new stage
        elif keyword.upper() == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif keyword.upper() == "CMD":
            cmd = json.loads(rest)
    if entrypoint and Path(entrypoint[0]).name == "bfl-receiver" and cmd:
        yield Invocation(f"{where} CMD", tuple(entrypoint[1:] + cmd))


def invocations(deploy: Path) -> list[Invocation]:
    """Every invocation under ``deploy``, each (file, args) once, sorted."""
    found: set[Invocation] = set()
    for path in sorted(p for p in deploy.rglob("*") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file names no command
        where = str(path.relative_to(deploy.parent))
        found.update(in_text(path, text, where))
        if path.suffix in {".yaml", ".yml"}:
            found.update(in_yaml(text, where))
        if path.name == "Dockerfile" or path.suffix == ".Dockerfile":
            found.update(in_dockerfile(text, where))
    # The same command found twice in one file (a one-line list is text and YAML): once.
    unique: dict[tuple[str, tuple[str, ...]], Invocation] = {}
    for invocation in sorted(found):
        unique.setdefault(
            (invocation.where.split(":")[0].split(" ")[0], invocation.args), invocation
        )
    return sorted(unique.values())
