"""Each ``bfl-receiver`` command deploy/ names exists, takes the flags it is given, and starts.

The invocations are read from every file under deploy/ (``tests.deploy_commands``), so a
renamed command or flag fails here rather than in someone's cluster. The roles the deploy
artefacts are built on (``ROLES``) are checked too, whatever deploy/ holds. Each one really
starts, as the installed ``bfl-receiver`` script, against a store of its own: ``migrate``
creates it, ``drain`` runs on it and exits, ``work`` runs until SIGTERM, ``serve`` answers
``/healthz`` on a loopback socket, then stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest

from receiver.cli import main
from tests.deploy_commands import Invocation, in_dockerfile, in_text, in_yaml, invocations
from tests.servers import base_url, loopback_socket, wait_until
from tests.support import SECRET

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BFL_RECEIVER = Path(sys.executable).parent / "bfl-receiver"

#: How deploy/ runs the receiver (issue 12): one image, the role chosen by command.
ROLES = (
    Invocation("role", ("serve",)),
    Invocation("role", ("serve", "--no-worker")),
    Invocation("role", ("work",)),
    Invocation("role", ("drain", "--budget", "60")),
    Invocation("role", ("migrate",)),
)
#: serve's options that say where to listen: the test replaces them with a loopback socket.
LISTEN_OPTIONS = {"--host", "--port", "--fd"}
#: What bfl-receiver itself takes, before any command.
GROUP_OPTIONS = {"--version", "--help", "-h"}

NAMED = invocations(DEPLOY)
CHECKED = [*ROLES, *NAMED]


def test_deploy_names_the_receiver_at_least_in_the_dockerfile() -> None:
    # The search itself can fail: the Dockerfile's CMD must be among what it found.
    assert Invocation("deploy/Dockerfile CMD", ("serve",)) in NAMED


def test_invocations_are_found_in_each_way_deploy_writes_them(tmp_path: Path) -> None:
    unit = tmp_path / "bfl-receiver-drain.service"
    text = (
        "[Service]\n# bfl-receiver is prose in a comment\n"
        "ExecStart=/opt/bfl-hooks/bin/bfl-receiver drain \\\n    --budget 240\n"
        "Requires=bfl-receiver.service\n"
    )
    assert [i.args for i in in_text(unit, text, "unit")] == [("drain", "--budget", "240")]
    readme = tmp_path / "README.md"
    prose = (
        "Run `bfl-receiver migrate` once; bfl-receiver is the command.\n"
        "```\n# bfl-receiver is a shell comment here\nbfl-receiver work\n```\n"
    )
    found = list(in_text(readme, prose, "md"))
    assert [i.args for i in found] == [("migrate",), ("work",)]
    assert all(i.documented for i in found)
    compose = (
        "services:\n"
        "  receiver:\n    image: bfl-hooks:local\n    command: [serve, --no-worker]\n"
        "  migrate:\n    build: {context: .., dockerfile: deploy/Dockerfile}\n"
        "    command: migrate\n"
        "  postgres:\n    image: postgres:16\n    command: postgres -c fsync=off\n"
    )
    assert sorted(i.args for i in in_yaml(compose, "compose")) == [
        ("migrate",),
        ("serve", "--no-worker"),
    ]
    k8s = (
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - name: worker\n          image: bfl-hooks:1\n          args: [work]\n"
        "---\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - name: migrate\n          image: bfl-hooks:1\n"
        '          command: ["bfl-receiver", "migrate"]\n'
    )
    assert sorted(i.args for i in in_yaml(k8s, "k8s")) == [("migrate",), ("work",)]
    dockerfile = 'FROM x\nENTRYPOINT ["bfl-receiver"]\nCMD ["serve", \\\n "--no-worker"]\n'
    assert [i.args for i in in_dockerfile(dockerfile, "d")] == [("serve", "--no-worker")]


def _command(invocation: Invocation) -> click.Command:
    name, *rest = invocation.args
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"{invocation}: bfl-receiver has no command {name!r}"
    if invocation.documented:
        flags = {opt for param in command.params for opt in param.opts}
        for arg in rest:
            flag = arg.split("=")[0]
            assert not flag.startswith("--") or flag in flags, f"{invocation}: no flag {flag}"
        return command
    # Click's own parser, as the real run would: unknown flags and bad values fail here.
    try:
        command.make_context(name, list(rest), parent=click.Context(main))
    except click.ClickException as exc:
        pytest.fail(f"{invocation}: {exc.format_message()}")
    return command


def test_a_renamed_command_or_flag_or_a_bad_value_fails_the_check() -> None:
    with pytest.raises(AssertionError, match="no command 'serv'"):
        _command(Invocation("x", ("serv",)))
    with pytest.raises(pytest.fail.Exception, match="No such option '--budgte'"):
        _command(Invocation("x", ("drain", "--budgte", "60")))
    with pytest.raises(pytest.fail.Exception, match="budget"):
        _command(Invocation("x", ("drain", "--budget", "soon")))
    with pytest.raises(pytest.fail.Exception, match="No such option '--workers'"):
        _command(Invocation("x", ("serve", "--workers", "4")))
    # In prose a value may be a placeholder, a flag may not be wrong.
    _command(Invocation("x", ("drain", "--budget", "SECONDS"), documented=True))
    with pytest.raises(AssertionError, match="no flag --budgte"):
        _command(Invocation("x", ("drain", "--budgte", "SECONDS"), documented=True))


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a run: a store and images of its own, no RECEIVER_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "BFL_"))}
    env.update(
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
        RECEIVER_STORAGE_URL=f"file://{tmp_path}/samples",
        RECEIVER_WEBHOOK_SECRET=SECRET,
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BFL_RECEIVER), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def started(store_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed at the end if a failure left them running."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("invocation", CHECKED, ids=str)
def test_named_command_exists_takes_its_flags_and_starts(
    invocation: Invocation,
    store_env: dict[str, str],
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    name, *rest = invocation.args
    if name in GROUP_OPTIONS:  # bfl-receiver --version (the image's build checks with it)
        ran = _run(list(invocation.args), store_env, tmp_path)
        assert ran.returncode == 0, ran.stderr
        return
    command = _command(invocation)
    helped = _run([name, "--help"], store_env, tmp_path)
    assert helped.returncode == 0, helped.stderr
    for flag in (arg.split("=")[0] for arg in rest if arg.startswith("--")):
        assert flag in helped.stdout, f"{invocation}: --help does not name {flag}"

    if invocation.documented:
        return  # a placeholder may stand for a value: the roles above really start
    if name == "migrate":
        ran = _run(list(invocation.args), store_env, tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert "is up to date" in ran.stdout
        assert (tmp_path / "receiver.db").exists()
    elif name == "drain":
        assert _run(["migrate"], store_env, tmp_path).returncode == 0  # as deploy runs it first
        ran = _run(list(invocation.args), store_env, tmp_path)
        assert ran.returncode == 0, ran.stderr  # nothing due: done at once, whatever the budget
    elif name == "work":
        log = tmp_path / "work.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BFL_RECEIVER), *invocation.args],
                env=store_env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        wait_until(lambda: "working on" in log.read_text(), timeout=60, interval=0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    elif name == "serve":
        _serve_then_stop(invocation, store_env, tmp_path, started)
    else:
        # Another command deploy/ names (events, replay, prune...): it parsed, and --help ran.
        assert command.name == name


def _serve_then_stop(
    invocation: Invocation,
    env: dict[str, str],
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    # Where deploy/ binds (0.0.0.0, port 8000, systemd's descriptor) is replaced by a loopback
    # socket the kernel picked: the other flags are kept as written.
    kept: list[str] = []
    args = iter(invocation.args)
    for arg in args:
        option = arg.split("=")[0]
        if option in LISTEN_OPTIONS:
            if "=" not in arg:
                next(args, None)
            continue
        kept.append(arg)
    sock = loopback_socket()
    url = base_url(sock)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BFL_RECEIVER), *kept, "--fd", str(sock.fileno())],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    started.append(process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"{invocation} exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{invocation}: no /healthz\n{log.read_text()}"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then raises the signal it caught again: killed by SIGTERM,
        # after a clean shutdown.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        sock.close()
