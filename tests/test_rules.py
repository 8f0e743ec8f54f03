"""Pure functions: verification, payload parsing, download rules, handler loading, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver import Event, Settings, Status, on
from receiver.download import host_allowed, sniff, url_deadline
from receiver.handlers import HandlerError, HandlerSet, load_handler, load_handlers
from receiver.payload import PayloadError, parse_notice
from receiver.verify import VerificationError, derive_secret, sign, verify


def test_verify_accepts_any_configured_secret() -> None:
    verify(b"{}", {"x-webhook-secret": "b"}, ["a", "b"])
    with pytest.raises(VerificationError, match="wrong"):
        verify(b"{}", {"x-webhook-secret": "c"}, ["a", "b"])


def test_verify_without_configured_secret_refuses_everything() -> None:
    with pytest.raises(VerificationError, match="no webhook secret"):
        verify(b"{}", {"x-webhook-secret": ""}, [""])


def test_signature_covers_the_exact_body() -> None:
    body = b'{"id": "x"}'
    verify(body, {"x-bfl-signature": sign(body, "k")}, ["k"])
    verify(body, {"x-bfl-signature": sign(body, "k").upper().replace("SHA256", "sha256")}, ["k"])
    with pytest.raises(VerificationError):
        verify(body + b" ", {"x-bfl-signature": sign(body, "k")}, ["k"])


def test_derived_secrets_differ_per_reference() -> None:
    assert derive_secret("m", "r1") != derive_secret("m", "r2")
    assert derive_secret("m", "r1") == derive_secret("m", "r1")
    assert "m" not in derive_secret("m", "r1")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("Ready", Status.READY),
        ("SUCCESS", Status.READY),
        ("Pending", Status.PENDING),
        ("PENDING", Status.PENDING),
        ("Error", Status.ERROR),
        ("FAILED", Status.ERROR),
        ("Request Moderated", Status.REQUEST_MODERATED),
        ("Content Moderated", Status.CONTENT_MODERATED),
        ("Task not found", Status.TASK_NOT_FOUND),
        ("Bogus", Status.UNKNOWN),
    ],
)
def test_both_status_vocabularies_normalise(raw: str, status: Status) -> None:
    notice = parse_notice(b'{"id": "t", "status": "%s"}' % raw.encode())
    assert notice.status is status
    assert notice.raw_status == raw


def test_payload_shapes_yield_the_same_notice() -> None:
    a = parse_notice(b'{"id": "t", "status": "Ready", "result": {"sample": "https://x/y"}}')
    b = parse_notice(b'{"task_id": "t", "status": "SUCCESS", "result": {"sample": "https://x/y"}}')
    assert (a.task_id, a.status, a.sample_url) == (b.task_id, b.status, b.sample_url)


@pytest.mark.parametrize("body", [b"{", b"null", b'{"status": "Ready"}', b'{"id": ["x"]}'])
def test_unusable_payloads_raise(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_notice(body)


def test_status_kinds_and_terminality() -> None:
    assert Status.TASK_NOT_FOUND.kind == "error"
    assert Status.CONTENT_MODERATED.kind == "moderated"
    assert not Status.PENDING.terminal
    assert not Status.UNKNOWN.terminal
    assert Status.READY.terminal


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://delivery-eu1.bfl.ai/a.jpg?sig=x", True),
        ("https://delivery.us1.bfl.ai/a.jpg", True),
        ("https://DELIVERY-EU1.BFL.AI/a.jpg", True),
        ("http://delivery-eu1.bfl.ai/a.jpg", False),  # wildcard hosts need https
        ("https://delivery-eu1.bfl.ai.evil.com/a.jpg", False),
        ("https://evil.com/delivery-eu1.bfl.ai", False),
        ("https://user:pw@delivery-eu1.bfl.ai/a.jpg", False),
        ("https://api.bfl.ai/a.jpg", False),
        ("ftp://delivery-eu1.bfl.ai/a.jpg", False),
        ("file:///etc/passwd", False),
        ("https://169.254.169.254/latest", False),
        ("not a url", False),
        ("https://[::1/", False),
    ],
)
def test_default_allowlist(url: str, allowed: bool) -> None:
    assert host_allowed(url, Settings(_env_file=None).sample_hosts) is allowed  # type: ignore[call-arg]


def test_exact_hosts_may_use_http_and_ports_must_match() -> None:
    assert host_allowed("http://127.0.0.1:8001/x", ["127.0.0.1:8001"])
    assert not host_allowed("http://127.0.0.1:8002/x", ["127.0.0.1:8001"])
    assert host_allowed("http://127.0.0.1:8002/x", ["127.0.0.1"])
    assert host_allowed("http://[::1]:9/x", ["[::1]:9"])


def test_an_https_prefix_requires_https() -> None:
    assert host_allowed("https://h.example/x", ["https://h.example"])
    assert not host_allowed("http://h.example/x", ["https://h.example"])
    assert host_allowed("https://h.example:8443/x", ["https://h.example:8443"])
    assert not host_allowed("https://h.example:9/x", ["https://h.example:8443"])
    assert not host_allowed("https://other.example/x", ["https://h.example"])
    assert host_allowed("http://127.0.0.1:8001/x", ["http://127.0.0.1:8001"])  # same as bare
    assert not host_allowed("http://a.h.example/x", ["https://*.h.example"])
    assert host_allowed("https://a.h.example/x", ["https://*.h.example"])


def test_deadline_comes_from_se_or_ttl() -> None:
    url = "https://d/x?se=2025-01-07T08%3A46%3A02Z&sp=r&sig=s"
    assert url_deadline(url, 0.0, 600) == 1736239562.0
    assert url_deadline("https://d/x", 100.0, 600) == 700.0
    assert url_deadline("https://d/x?se=garbage", 100.0, 600) == 700.0
    assert url_deadline("https://d/x?se=2025-01-07T08:46:02", 100.0, 600) == 700.0  # no zone


def test_sniff() -> None:
    assert sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff(b"GIF89a") is None


async def sample_handler(event: Event) -> None:
    """Loaded by name in the tests below."""


@on("ready", "moderated")
async def picky_handler(event: Event) -> None:
    """Loaded by name in the tests below."""


def not_async(event: Event) -> None:
    """Not a valid handler."""


def test_handlers_load_by_name_and_filter_by_kind() -> None:
    handlers = load_handlers(
        ["tests.test_rules:sample_handler", "tests.test_rules:picky_handler"],
        use_entry_points=False,
    )
    assert handlers.names_for(Status.READY) == [
        "tests.test_rules:picky_handler",
        "tests.test_rules:sample_handler",
    ]
    assert handlers.names_for(Status.ERROR) == ["tests.test_rules:sample_handler"]
    assert handlers.names_for(Status.PENDING) == []
    assert isinstance(handlers, HandlerSet)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:callable"),
        ("tests.nope:x", "cannot import"),
        ("tests.test_rules:missing", "has no"),
        ("tests.test_rules:not_async", "not an async function"),
        (":x", "module:callable"),
    ],
)
def test_bad_handler_specs_say_why(spec: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        load_handler(spec)


def test_on_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="takes some of"):
        on("readyy")
    with pytest.raises(ValueError, match="takes some of"):
        on()


def test_settings_split_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_WEBHOOK_SECRET", "s-one, s-two,,s-three")
    monkeypatch.setenv("RECEIVER_SAMPLE_HOSTS", "x.example,127.0.0.1:9")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [s.get_secret_value() for s in settings.webhook_secret] == ["s-one", "s-two", "s-three"]
    assert settings.sample_hosts == ("x.example", "127.0.0.1:9")
    assert "s-one" not in repr(settings)  # secrets stay out of reprs and logs


def test_handlers_load_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package's ``bfl_hooks.handlers`` entry point is enough to be run."""
    dist = tmp_path / "myhooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myhooks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[bfl_hooks.handlers]\nsample = tests.test_rules:sample_handler\n"
    )
    # Compared with what loads without it: the venv may hold a user's handler package too.
    installed = set(load_handlers([]).names_for(Status.ERROR))
    monkeypatch.syspath_prepend(str(tmp_path))
    handlers = load_handlers([])
    assert set(handlers.names_for(Status.ERROR)) - installed == {"tests.test_rules:sample_handler"}
    assert load_handlers([], use_entry_points=False).names_for(Status.ERROR) == []
