"""A local fake of SendGrid's v3 `POST /v3/mail/send`, over real HTTP on 127.0.0.1.

For tests and benchmarks: the code under test talks to it exactly as to SendGrid
(`SendGridAPIClient(api_key, host=fake.url)` or `NURTURE_SENDGRID_API_HOST=fake.url`).

    with FakeSendGrid() as fake:          # or fake = FakeSendGrid().start(); ...; fake.stop()
        send_something(host=fake.url, api_key=fake.api_key)
        assert fake.sent_to("jane@globex.example")

What it checks, like SendGrid does:
- `Authorization: Bearer <api_key>`, else 401;
- the JSON body against SendGrid's own OpenAPI description
  (`shared/specs/sendgrid-mail-v3.openapi.json`, beside the repository, or the file
  named by `NURTURE_SENDGRID_SPEC`), JSON Schema 2020-12 with format checking, with
  the one documented quirk fixed (top-level `custom_args` is an object of strings);
- plus the API rules the schema leaves out: at least one personalization, each with at
  least one `to`; a subject (global or in every personalization) and a non-empty
  `content`, unless a `template_id` is given.
Invalid: 400 with SendGrid's error JSON. Valid: 202, an `X-Message-Id` header, and the
body appended to `.messages`. Every attempt, refused or not, is in `.requests`.

Faults, for retry and duplicate-send tests:
- `fail_next(status, count=1)`: the next `count` requests are refused with `status`
  (nothing accepted), after the API key check;
- `fail_rate(rate, statuses=(429, 500), slow_seconds=None, seed=0)`: that fraction of
  valid requests is refused with one of `statuses` (NOT accepted: SendGrid's 429 and
  5xx mean the message was not taken), or, if `slow_seconds` is set, ACCEPTED and
  answered 202 only after that delay: a sender that times out first cannot tell
  whether its email left;
- `accept_then_hang(seconds, count=1)`: the next `count` valid requests are accepted,
  then the connection stays silent for `seconds` and is closed without any answer.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

SPEC_ENV = "NURTURE_SENDGRID_SPEC"
SPEC_RELATIVE = Path("shared") / "specs" / "sendgrid-mail-v3.openapi.json"
SPEC_URI = "urn:sendgrid:mail-v3-openapi"
BODY_POINTER = "/components/requestBodies/PostMailSend/content/application~1json/schema"
MAX_BODY_BYTES = 30 * 1024 * 1024  # SendGrid's limit for a whole message

_ERRORS = {
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request entity too large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
}


# ---------------------------------------------------------------- the spec


def find_spec() -> Path:
    """The SendGrid OpenAPI file: $NURTURE_SENDGRID_SPEC, else `shared/specs/` beside the repo."""
    override = os.environ.get(SPEC_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"{SPEC_ENV}={override}: no such file")
        return path
    repo = Path(__file__).resolve().parent.parent
    # shared/ beside the repository is the reference; tests/specs/ holds an unmodified
    # copy so a clone anywhere can run the tests.
    candidates = [repo.parent / SPEC_RELATIVE, repo / SPEC_RELATIVE, repo / "tests" / "specs" / SPEC_RELATIVE.name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "SendGrid mail API spec not found; looked for "
        + ", ".join(str(p) for p in candidates)
        + f". Put `shared/` beside the repository or set {SPEC_ENV}."
    )


_VALIDATORS: dict[Path, jsonschema.protocols.Validator] = {}
_VALIDATORS_LOCK = threading.Lock()


def body_validator(spec_path: Path | None = None) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator (with formats) for the mail/send body; built once per file."""
    path = (spec_path or find_spec()).resolve()
    with _VALIDATORS_LOCK:
        validator = _VALIDATORS.get(path)
        if validator is None:
            document = json.loads(path.read_text(encoding="utf-8"))  # our own copy: patched below
            schema = document["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"]
            # The documented quirk (specs/README.md): the spec says string, the API and
            # SendGrid's own library send an object of strings.
            schema["properties"]["custom_args"] = {"type": "object", "additionalProperties": {"type": "string"}}
            resource = referencing.jsonschema.DRAFT202012.create_resource(document)
            registry: referencing.Registry[Any] = referencing.Registry().with_resource(SPEC_URI, resource)
            validator = jsonschema.Draft202012Validator(
                {"$ref": f"{SPEC_URI}#{BODY_POINTER}"},
                registry=registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
            _VALIDATORS[path] = validator
    return validator


def _field(error: jsonschema.ValidationError) -> str | None:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            path.append(missing[0])
    return ".".join(path) or None


# SendGrid's own wording for the rules its JSON schema does not encode.
_NO_PERSONALIZATION = "The personalizations field is required and must have at least one personalization."
_NO_TO = (
    "The to array is required for all personalization objects, "
    "and must have at least one email object with a valid email address."
)
_NO_SUBJECT = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_NO_CONTENT = (
    "Unless a valid template_id is provided, the content parameter is required. "
    "There must be at least one defined content block."
)


def _api_rules(body: dict[str, Any]) -> list[tuple[str, str]]:
    """SendGrid's documented rules that its JSON schema does not encode: (field, message)."""
    problems = []
    personalizations = body.get("personalizations") or []
    if not personalizations:
        problems.append(("personalizations", _NO_PERSONALIZATION))
    for index, item in enumerate(personalizations):
        if isinstance(item, dict) and not item.get("to"):
            problems.append((f"personalizations.{index}.to", _NO_TO))
    if not body.get("template_id"):
        every_personalization_has_one = personalizations and all(
            isinstance(p, dict) and p.get("subject") for p in personalizations
        )
        if not body.get("subject") and not every_personalization_has_one:
            problems.append(("subject", _NO_SUBJECT))
        if not body.get("content"):
            problems.append(("content", _NO_CONTENT))
    return problems


def validate_body(body: Any, spec_path: Path | None = None) -> list[tuple[str | None, str]]:
    """All problems of a mail/send body as (field, message); [] if SendGrid would accept it."""
    return _problems(body_validator(spec_path), body)


def _problems(validator: jsonschema.protocols.Validator, body: Any) -> list[tuple[str | None, str]]:
    errors = sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    problems: list[tuple[str | None, str]] = [(_field(e), e.message) for e in errors]
    if isinstance(body, dict) and not problems:
        problems.extend(_api_rules(body))
    return problems


# ---------------------------------------------------------------- the server


@dataclass
class Attempt:
    """One request, accepted or refused."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None if it did not parse
    status: int = 0
    reason: str | None = None  # why it was refused, or which fault was injected
    message_id: str | None = None
    at: float = field(default_factory=time.time)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: benchmarks reuse connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if raw:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if raw:
            self.wfile.write(raw)

    def _error(self, status: int, message: str | None = None, field_name: str | None = None) -> None:
        text = message or _ERRORS.get(status, "error")
        self._reply(status, {"errors": [{"message": text, "field": field_name, "help": None}]})

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    do_PUT = do_PATCH = do_DELETE = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSendGrid


class FakeSendGrid:
    """SendGrid's mail/send on 127.0.0.1, with schema validation and fault injection."""

    def __init__(self, api_key: str = "SG.fake-test-key", *, spec_path: Path | None = None) -> None:
        self.api_key = api_key
        self.spec_path = spec_path or find_spec()
        self._validator = body_validator(self.spec_path)  # fail at construction if the spec is missing
        self.messages: list[dict[str, Any]] = []
        self.requests: list[Attempt] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._fail_next: list[int] = []
        self._rate = 0.0
        self._rate_statuses: tuple[int, ...] = ()
        self._rate_slow: float | None = None
        self._random = random.Random(0)
        self._hang: list[float] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeSendGrid:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-sendgrid", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes slow and hanging answers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeSendGrid is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------ faults

    def fail_next(self, status: int, count: int = 1) -> None:
        """Refuse the next `count` requests with `status` (nothing is accepted)."""
        with self._lock:
            self._fail_next.extend([status] * count)

    def fail_rate(
        self,
        rate: float,
        statuses: Sequence[int] = (429, 500),
        slow_seconds: float | None = None,
        seed: int = 0,
    ) -> None:
        """Fault a `rate` fraction of valid requests: refused with one of `statuses`
        (not accepted, as SendGrid means by 429/5xx) or, if `slow_seconds` is set,
        accepted and answered 202 only after that delay. `fail_rate(0)` turns it off.
        """
        if not 0 <= rate <= 1:
            raise ValueError("rate must be between 0 and 1")
        if rate and not statuses and slow_seconds is None:
            raise ValueError("fail_rate needs statuses or slow_seconds")
        with self._lock:
            self._rate = rate
            self._rate_statuses = tuple(statuses)
            self._rate_slow = slow_seconds
            self._random = random.Random(seed)

    def accept_then_hang(self, seconds: float, count: int = 1) -> None:
        """Accept the next `count` valid requests, stay silent `seconds`, close without answering."""
        with self._lock:
            self._hang.extend([seconds] * count)

    def reset(self) -> None:
        """Forget messages, requests and faults."""
        with self._lock:
            self.messages.clear()
            self.requests.clear()
            self._fail_next.clear()
            self._hang.clear()
            self._rate = 0.0

    # ------------------------------------------------------------ assertions

    def sent_to(self, email: str) -> list[dict[str, Any]]:
        """Accepted messages with `email` among the `to` of any personalization (case-insensitive)."""
        wanted = email.strip().lower()
        with self._lock:
            messages = list(self.messages)
        return [
            m
            for m in messages
            if any(
                str(to.get("email", "")).lower() == wanted
                for p in m.get("personalizations", [])
                for to in p.get("to", [])
            )
        ]

    def count_by_send_id(self) -> Counter[str]:
        """How many accepted messages carry each `custom_args["send_id"]` (personalization overrides global)."""
        counts: Counter[str] = Counter()
        with self._lock:
            messages = list(self.messages)
        for message in messages:
            for personalization in message.get("personalizations", []):
                args = {**(message.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
                if "send_id" in args:
                    counts[args["send_id"]] += 1
        return counts

    # ------------------------------------------------------------ handling

    def _handle(self, handler: _Handler) -> None:
        raw, too_large = self._read_body(handler)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        attempt = Attempt(handler.command, handler.path, dict(handler.headers.items()), body)
        with self._lock:
            self.requests.append(attempt)

        def refuse(status: int, reason: str, message: str | None = None, field_name: str | None = None) -> None:
            attempt.status, attempt.reason = status, reason
            handler._error(status, message, field_name)

        if handler.path.split("?")[0] != "/v3/mail/send":
            return refuse(404, "unknown path")
        if handler.command != "POST":
            return refuse(405, "method not allowed")
        if handler.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return refuse(401, "bad or missing API key")
        with self._lock:
            injected = self._fail_next.pop(0) if self._fail_next else None
        if injected is not None:
            return refuse(injected, f"fail_next {injected}")
        if too_large:
            return refuse(413, "body too large")
        if body is None:
            return refuse(400, "body is not JSON", "Bad Request: the request body must be valid JSON")
        problems = _problems(self._validator, body)
        if problems:
            attempt.status, attempt.reason = 400, "; ".join(f"{f or '(body)'}: {m}" for f, m in problems)
            handler._reply(400, {"errors": [{"message": m, "field": f, "help": None} for f, m in problems]})
            return None

        message_id = secrets.token_urlsafe(16)
        with self._lock:
            hang = self._hang.pop(0) if self._hang else None
            fault: int | str | None = None
            if hang is None and self._rate and self._random.random() < self._rate:
                choices: list[int | str] = [*self._rate_statuses, *(["slow"] if self._rate_slow is not None else [])]
                fault = self._random.choice(choices)
            if isinstance(fault, int):
                # SendGrid's 429 and 5xx mean the message was not taken: nothing is recorded.
                attempt.status, attempt.reason = fault, f"fail_rate {fault}, not accepted"
            else:
                self.messages.append(body)
                attempt.message_id = message_id
        if isinstance(fault, int):
            return refuse(fault, f"fail_rate {fault}, not accepted")
        if hang is not None:
            attempt.status, attempt.reason = 0, f"accepted, then hung {hang}s without an answer"
            self._stopping.wait(hang)
            handler.close_connection = True
            return None
        if fault == "slow":
            attempt.reason = f"accepted, answered after {self._rate_slow}s"
            self._stopping.wait(self._rate_slow)
        attempt.status = 202
        handler._reply(202, None, {"X-Message-Id": message_id})
        return None

    @staticmethod
    def _read_body(handler: _Handler) -> tuple[bytes, bool]:
        """(body, too large). Reads the whole body so a kept-alive connection stays in step."""
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            chunks, size = [], 0
            while True:
                chunk_size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if chunk_size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                size += chunk_size
                chunks.append(handler.rfile.read(chunk_size))
                handler.rfile.readline()
            return (b"", True) if size > MAX_BODY_BYTES else (b"".join(chunks), False)
        length = int(handler.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            handler.close_connection = True
            return b"", True
        return (handler.rfile.read(length) if length > 0 else b""), False
