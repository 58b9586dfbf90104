"""Outbox .eml files are real mail: read back by Python's `email` package (policy.default)
and by an independent parser (Node's `mailparser`, pinned in tests/mailparser/), each
header as written, subjects exactly, RFC 2047 and RFC 5322 limits kept."""

from __future__ import annotations

import email
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email import policy
from pathlib import Path
from typing import Any

import pytest

from nurture import crud, journey, outbox, security
from tests.conftest import ROOT, _stack, make_settings

MAILPARSER = ROOT / "tests" / "mailparser"
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")

Parser = Callable[[list[Path]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def mailparser() -> Parser:
    """Node's mailparser at the locked versions, installed once into a cache folder."""
    lock = (MAILPARSER / "package-lock.json").read_bytes()
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nurture-tests"
    modules = cache_root / f"mailparser-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (modules / "node_modules" / "mailparser").is_dir():
        building = cache_root / f"{modules.name}.{os.getpid()}"
        building.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(MAILPARSER / name, building / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=building,
                       check=True, capture_output=True, timeout=300)
        try:
            building.rename(modules)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(building)

    def parse(files: list[Path]) -> list[dict[str, Any]]:
        done = subprocess.run(["node", str(MAILPARSER / "parse.js"), *map(str, files)], check=True,
                              capture_output=True, timeout=60,
                              env={**os.environ, "NODE_PATH": str(modules / "node_modules")})
        return json.loads(done.stdout)

    return parse


def assert_real_mail(data: bytes) -> email.message.EmailMessage:
    """Lines CRLF and at most 998; encoded-words at most 75, their lines at most 76;
    the stdlib reads it without a defect, in the message, its parts or its headers."""
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "a line not ended by CRLF"
    assert max(map(len, lines)) <= 998
    for line in lines:
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= 75, word
        if ENCODED_WORD.search(line):
            assert len(line) <= 76, line
    message = email.message_from_bytes(data, policy=policy.default)
    for part in message.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not value.defects, (name, value.defects)
    return message


SUBJECTS = [
    "Jérôme, découvrez comment Globex a réduit ses coûts de 30 % en un trimestre grâce à l’automatisation",
    "Écoutez : « Réduire de 30 % le temps passé sur les rapports », c’est possible — et même très simple, non ?",
    "é" * 90,  # an accent at every boundary of every encoded-word
    "a" * 60 + " é" + " b" * 40,
    "A plain ASCII subject, long enough to be folded at seventy-eight columns, twice over at least",
    "ASCII that looks encoded: =?utf-8?q?nope?= must still read as written",
    "Short",
    "Emoji 🚀 and CJK 日本語 mixed with a long tail of plain words so that it spans several lines",
]
UNSUBSCRIBE = "http://127.0.0.1:8000/u/amFuZS5kb2VAZ2xvYmV4LmV4YW1wbGU.c2FtcGxlLXRva2VuLXNpZ25hdHVyZQ-long-enough"
SENDERS = ["Acme <hello@acme.example>", '"Équipe Acme, Paris" <hello@acme.example>',
           # runs of accented words become one encoded-word each (the module says why)
           "Éditions Générale de Développement Durable et Écologique <hello@acme.example>"]


def test_every_subject_sender_and_the_unsubscribe_url_read_back_in_both_parsers(tmp_path, mailparser):
    files, expected = [], []
    for index, subject in enumerate(SUBJECTS):
        sender = SENDERS[index % len(SENDERS)]
        data = outbox.build_message(
            sender=sender, to="jerome@globex.example", reply_to="sales@acme.example", subject=subject,
            date=datetime(2027, 3, 1, 9, 30, tzinfo=timezone.utc), message_id=f"<{index}@nurture.local>",
            headers={"List-Unsubscribe": f"<{UNSUBSCRIBE}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            text="Bonjour Jérôme,\n\n" + "très long " * 150 + "\n", html="<p>Bonjour Jérôme</p>")
        message = assert_real_mail(data)
        assert str(message["Subject"]) == subject
        assert str(message["List-Unsubscribe"]) == f"<{UNSUBSCRIBE}>"
        assert b"List-Unsubscribe: <http" in data  # as written: RFC 2369 forbids encoded-words there
        name = sender.rsplit(" <", 1)[0].strip('"')
        assert message["From"].addresses[0].display_name == name
        path = tmp_path / f"{index}.eml"
        path.write_bytes(data)
        files.append(path)
        expected.append((subject, name))
    for found, (subject, name) in zip(mailparser(files), expected, strict=True):
        assert found["subject"] == subject
        assert found["unsubscribe"] == UNSUBSCRIBE
        assert found["from"] == [{"address": "hello@acme.example", "name": name}]
        assert found["text"].startswith("Bonjour Jérôme,") and "très long" in found["text"]


LONG_FR = """\
name: long-fr
sender: {from: "Équipe Acme <hello@acme.example>", reply_to: sales@acme.example}
enroll: {auto_on: [created]}
steps:
  - {id: welcome, send: welcome}
  - {wait: 1d}
  - {id: long, send: case_study, subject: ["{{ lead.first_name }}, découvrez comment Globex a réduit ses coûts de 30 % en un trimestre grâce à l’automatisation de ses campagnes"]}
  - {wait: 1d}
  - {id: accents, send: demo_invite, subject: ["Élodie, Chloé, Zoë et Jérôme: ééééééééééééééééééééééééééééééééééé réservez votre démonstration"]}
"""


async def test_every_file_of_a_french_journey_is_real_mail(temporal_env, tmp_path, mailparser):
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "long-fr.yaml").write_text(LONG_FR, encoding="utf-8")
    (campaigns / "funnel.yaml").write_text((ROOT / "campaigns" / "funnel.yaml").read_text())
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        address = "jerome@globex.example"
        await stack.add(address, first_name="Jérôme", locale="fr-FR", source="web_form")
        await stack.until(address, lambda lead: lead["campaign"] is None, step=timedelta(days=1))
        with stack.session() as session:
            rows = {row.send_id: row for row in crud.emails_of(session=session, key=journey.lead_key(address))}
        url = security.unsubscribe_url(stack.settings.public_url, stack.settings.signing_secret(),
                                       journey.lead_key(address))
        files = sorted(stack.settings.outbox_dir.glob("*.eml"))
        assert len(files) == len(rows) == 3
        for path in files:
            message = assert_real_mail(path.read_bytes())
            assert str(message["Subject"]) == rows[path.stem].subject
            assert str(message["List-Unsubscribe"]) == f"<{url}>"
        subjects = {rows[path.stem].step: rows[path.stem].subject for path in files}
        assert subjects["long"].startswith("Jérôme, découvrez comment Globex a réduit ses coûts")
        for path, found in zip(files, mailparser(files), strict=True):
            assert found["subject"] == rows[path.stem].subject
            assert found["unsubscribe"] == url
            assert found["from"] == [{"address": "hello@acme.example", "name": "Équipe Acme"}]
