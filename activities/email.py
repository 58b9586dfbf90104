"""The send activity: render, re-check reality, claim, send once, record the outcome.

At-most-once per (lead, enrollment, step) rests on the `email` row keyed by send id:
  claimed  -> the row exists, nothing has left the machine yet
  sending  -> written (and committed) just before the provider call
  sent     -> the provider accepted it (or the outbox file is written)
  failed   -> the provider refused it for good (4xx other than 429), with the reason
  unknown  -> an attempt died between `sending` and the answer (crash, timeout): it may
              or may not have gone out, and it is NOT sent again (see README).
A retry that finds `claimed` sends; one that finds `sending` marks `unknown` unless it
can prove the outcome (the outbox file exists).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import time
import urllib.error
from dataclasses import dataclass, field, replace
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, From, Header, Mail, ReplyTo, To
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture import crud, outbox, security
from nurture.addresses import fold_stored
from nurture.config import Settings
from nurture.db import session_scope
from nurture.compose import compose
from nurture.emails import Rendered, TemplateError
from nurture.models import Email, utcnow

# How long a send accepted by the provider keeps trying to record it (the activity's
# start-to-close timeout is two minutes; past this, the retry records `unknown`).
RECORD_SENT_FOR = 90.0
FINAL_STATUSES = ("sent", "failed", "unknown", "delivered", "opened", "clicked", "bounced", "dropped", "spamreport")


@dataclass
class SendEmailInput:
    send_id: str
    lead_key: str
    to: str
    template: str
    profile: dict[str, Any]
    sender: str  # "Name <address>"
    reply_to: str | None = None
    campaign: str | None = None
    step: str | None = None
    subject: str | None = None  # an A/B subject variant, itself a template
    variant: int | None = None
    marketing: bool = True  # transactional mail (to sales owners) has no unsubscribe
    owner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more template context, e.g. handoff
    sender_address: str | None = None  # the campaign's postal address; None: funnel.yaml's
    proof: bool = False  # a test send (`nurture email test-send`): names no lead, campaign or step


@dataclass
class SendEmailResult:
    status: str  # sent | unknown | failed | suppressed | held (campaign paused or stopped)
    subject: str = ""
    provider: str = ""
    message_id: str | None = None
    error: str | None = None
    control: str | None = None  # held: the campaign's state (paused | stopped) and its seq
    control_seq: int = 0


def _record_latency(provider: str, outcome: str, seconds: float) -> None:
    """`nurture_email_send` (seconds per provider call) on the worker's SDK metrics."""
    if not activity.in_activity():
        return  # a test send (`nurture email test-send`) runs outside any worker
    histogram = activity.metric_meter().create_histogram_float(
        "nurture_email_send", "Time the email provider took to take an email", "s")
    histogram.with_additional_attributes({"provider": provider, "outcome": outcome}).record(seconds)


class _Refused(Exception):
    """The provider answered and did not take the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProofNotSent(Exception):
    """A test send that did not go out; `str()` says why in one line."""


class EmailActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn
    def send_email(self, inp: SendEmailInput) -> SendEmailResult:
        # Sent to, and checked against the suppression list as, the canonical address
        # (a journey started before migration 0003 may hold an older spelling).
        to = fold_stored(inp.to)
        if to is None:
            return SendEmailResult(status="suppressed", error=f"not a plain address: {inp.to!r}")
        inp = dataclasses.replace(inp, to=to)
        row = self._check_and_claim(inp)
        if isinstance(row, SendEmailResult):
            return row  # suppressed, or the outcome of an earlier attempt
        try:
            rendered = self._render(inp)
        except TemplateError as error:
            self._finish(inp.send_id, "failed", error=str(error))
            raise ApplicationError(str(error), type="TemplateError", non_retryable=True) from error
        self._mark_sending(row, rendered)
        return self._deliver(inp, rendered)

    # ------------------------------------------------------------ steps

    def _suppressed(self, session: Session, inp: SendEmailInput) -> str | None:
        """Re-check reality at the moment of sending: the workflow may not know yet."""
        reason = crud.is_suppressed(session=session, email_hash=security.email_hash(inp.to))
        if reason:
            return f"address suppressed ({reason})"
        status = crud.lead_status(session=session, key=inp.lead_key)
        if inp.marketing and status is None:
            # The lead row is gone: folded into the lead of the same mailbox by
            # migration 0003 (that lead's own journey mails it).
            return "no such lead in the store"
        if inp.marketing and status != "subscribed":
            return f"status {status}"
        return None

    def _check_and_claim(self, inp: SendEmailInput) -> Email | SendEmailResult:
        """Suppression and the campaign's pause or stop re-checked and the send claimed, in
        one transaction."""
        with session_scope(self.settings.db_url) as session:
            control = crud.campaign_control(session=session, campaign=inp.campaign) if inp.campaign else None
            if inp.marketing and control is not None and control.state != "active":
                # The lead may not have heard yet (it was signalled before it enrolled, or
                # the signal is on its way): nothing leaves a paused or stopped campaign.
                return SendEmailResult(status="held", error=f"campaign {control.state}", control=control.state,
                                       control_seq=control.seq)
            blocked = self._suppressed(session, inp)
            if blocked:
                return SendEmailResult(status="suppressed", error=blocked)
            row = crud.claim_email(session=session, email=Email(
                send_id=inp.send_id, lead_key=inp.lead_key, to=inp.to, campaign=inp.campaign, step=inp.step,
                template=inp.template, variant=inp.variant, marketing=inp.marketing,
                provider="sendgrid" if self.settings.sendgrid_api_key else "outbox",
            ))
            if row.status in FINAL_STATUSES:
                return _result_of(row)
            if row.status == "sending":
                if row.provider == "outbox" and self._outbox_path(inp.send_id).exists():
                    crud.set_email_status(session=session, send_id=inp.send_id, status="sent", sent_at=utcnow())
                    row.status = "sent"
                    return _result_of(row)
                # The previous attempt may have reached the provider: never send twice.
                crud.set_email_status(session=session, send_id=inp.send_id, status="unknown",
                                      error="attempt interrupted after the send started; not retried")
                row.status = "unknown"
                return _result_of(row)
            return row

    def _render(self, inp: SendEmailInput) -> Rendered:
        return compose(self.settings, inp)  # the one rendering previews and test sends use too

    def _mark_sending(self, row: Email, rendered: Rendered) -> None:
        with session_scope(self.settings.db_url) as session:
            taken = crud.take_for_sending(session=session, send_id=row.send_id, attempts=row.attempts,
                                          subject=rendered.subject[:500])
        if not taken:
            # Another attempt of this send (this one was timed out while blocked) got
            # there first: it alone may send. Retrying re-reads the row's outcome.
            raise ApplicationError(f"send {row.send_id} was taken by another attempt", type="SendTaken")

    def _deliver(self, inp: SendEmailInput, rendered: Rendered) -> SendEmailResult:
        started = time.monotonic()
        provider = "sendgrid" if self.settings.sendgrid_api_key else "outbox"
        try:
            if provider == "sendgrid":
                message_id = _heartbeating(self._send_sendgrid, inp, rendered)
            else:
                message_id = self._write_outbox(inp, rendered)
            _record_latency(provider, "accepted", time.monotonic() - started)
        except _Refused as refused:
            _record_latency(provider, f"http_{refused.status}", time.monotonic() - started)
            return self._refused(inp, refused)
        except (ConnectionRefusedError, urllib.error.URLError) as error:
            if isinstance(getattr(error, "reason", error), (ConnectionRefusedError, socket.gaierror)):
                # Nothing reached the provider: safe to send again on the next attempt.
                self._finish(inp.send_id, "claimed", error=f"cannot reach provider: {error}")
            raise
        self._record_sent(inp.send_id, message_id)
        return SendEmailResult(status="sent", subject=rendered.subject, provider=provider, message_id=message_id)

    def _refused(self, inp: SendEmailInput, refused: _Refused) -> SendEmailResult:
        if refused.status == 429 or refused.status >= 500:
            # Definitely not accepted: back to claimed so the retry (with backoff) sends.
            self._finish(inp.send_id, "claimed", error=f"HTTP {refused.status}: {refused}")
            raise ApplicationError(f"provider busy (HTTP {refused.status}), will retry", type="ProviderBusy")
        self._finish(inp.send_id, "failed", error=f"HTTP {refused.status}: {refused}")
        raise ApplicationError(f"provider refused the email (HTTP {refused.status}): {refused}",
                               type="ProviderRefused", non_retryable=True)

    def _record_sent(self, send_id: str, message_id: str | None) -> None:
        """The provider has the message: keep trying to say so, heartbeating meanwhile
        (a write blocked on a locked or absent database must not look like a dead
        worker). Giving up early would let the retry find `sending` and record
        `unknown` for an email we know went out."""
        delay, deadline = 0.5, time.monotonic() + RECORD_SENT_FOR
        while True:
            try:
                _heartbeating(self._finish, send_id, "sent", provider_message_id=message_id,
                              sent_at=utcnow(), error=None)
                return
            except DBAPIError as error:
                if time.monotonic() > deadline:
                    raise
                activity.logger.warning("cannot record send %s as sent yet: %s", send_id, error)
                activity.heartbeat()
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _finish(self, send_id: str, status: str, **fields: Any) -> None:
        with session_scope(self.settings.db_url) as session:
            crud.set_email_status(session=session, send_id=send_id, status=status, **fields)

    def send_proof(self, inp: SendEmailInput) -> tuple[str, str | None]:
        """A test send (`nurture email test-send`), outside any workflow: rendered as the
        send renders, `[TEST] ` before its subject, handed to the same provider code, with
        no claim and no email row: it is recorded on no lead and counted in no stats.
        Returns (provider, message id); ProofNotSent when it did not go."""
        rendered = self._render(inp)
        rendered = replace(rendered, subject=f"[TEST] {rendered.subject}")
        try:
            if self.settings.sendgrid_api_key:
                return "sendgrid", self._send_sendgrid(inp, rendered)
            return "outbox", self._write_outbox(inp, rendered)
        except _Refused as refused:
            raise ProofNotSent(f"the provider refused the test send (HTTP {refused.status}): {refused}") from refused
        except (OSError, urllib.error.URLError) as error:
            raise ProofNotSent(f"cannot reach the provider: {error}") from error

    # ------------------------------------------------------------ providers

    def _send_sendgrid(self, inp: SendEmailInput, rendered: Rendered) -> str | None:
        client = SendGridAPIClient(self.settings.sendgrid_api_key, host=self.settings.sendgrid_api_host)
        client.client.timeout = self.settings.sendgrid_timeout
        try:
            response = client.send(self._sendgrid_mail(inp, rendered))
        except HTTPError as error:
            body = error.body.decode("utf-8", "replace") if isinstance(error.body, bytes) else str(error.body)
            raise _Refused(int(error.status_code), body[:500]) from error
        headers = getattr(response, "headers", None) or {}
        return headers.get("X-Message-Id") if hasattr(headers, "get") else None

    def _sendgrid_mail(self, inp: SendEmailInput, rendered: Rendered) -> Any:
        name, address = parseaddr(inp.sender)
        mail = Mail(from_email=From(address, name or None), to_emails=To(inp.to), subject=rendered.subject,
                    plain_text_content=rendered.text, html_content=rendered.html)
        if inp.reply_to:
            reply_name, reply_address = parseaddr(inp.reply_to)
            mail.reply_to = ReplyTo(reply_address, reply_name or None)
        for key, value in self._custom_args(inp).items():
            mail.custom_arg = CustomArg(key, value)
        if inp.campaign and not inp.proof:
            mail.category = Category(inp.campaign)
        for key, value in self._list_headers(inp).items():
            mail.header = Header(key, value)
        return mail

    def _custom_args(self, inp: SendEmailInput) -> dict[str, str]:
        """What the Event Webhook echoes back, so each event finds its lead and step."""
        # Mail to a sales owner names no lead: the owner's opens and clicks are not the lead's.
        lead = inp.lead_key if inp.marketing else None
        args = {"lead": lead, "send_id": inp.send_id, "campaign": inp.campaign, "step": inp.step,
                "kind": None if inp.marketing else "sales"}
        if inp.proof:  # a tester's opens and clicks are no lead's, no campaign's and no step's
            args = {"send_id": inp.send_id, "kind": "test"}
        return {key: value for key, value in args.items() if value}

    def _list_headers(self, inp: SendEmailInput) -> dict[str, str]:
        if not inp.marketing or inp.proof:
            return {}  # RFC 8058 one-click belongs on marketing mail only, and never unsubscribes a tester
        url = security.unsubscribe_url(self.settings.public_url, self.settings.signing_secret(), inp.lead_key)
        return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}

    def _outbox_path(self, send_id: str) -> Path:
        return self.settings.outbox_dir / f"{send_id}.eml"

    def _write_outbox(self, inp: SendEmailInput, rendered: Rendered) -> str:
        """Local-outbox mode: a real RFC 5322 file, written atomically."""
        message_id = make_msgid(domain="nurture.local")
        tracking = {f"X-Nurture-{k.title()}": v for k, v in self._custom_args(inp).items()}
        data = outbox.build_message(sender=inp.sender, to=inp.to, reply_to=inp.reply_to, subject=rendered.subject,
                                    date=utcnow(), message_id=message_id,
                                    headers={**self._list_headers(inp), **tracking},
                                    text=rendered.text, html=rendered.html)
        path = self._outbox_path(inp.send_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return message_id


def _heartbeating(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run the provider call in a helper thread, heartbeating meanwhile: if this worker
    dies, the server notices within the heartbeat timeout and retries elsewhere (and
    the retry finds the send `sending`, so it is not sent twice)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sendgrid") as pool:
        call = pool.submit(func, *args, **kwargs)
        # wait() rather than result(timeout=): in 3.11 a socket timeout raised by the call
        # is the same class as the future's TimeoutError and would be taken for "not yet".
        while not concurrent.futures.wait([call], timeout=2).done:
            activity.heartbeat()
        return call.result()


def _result_of(row: Email) -> SendEmailResult:
    status = "sent" if row.status not in ("failed", "unknown") else row.status
    return SendEmailResult(status=status, subject=row.subject, provider=row.provider,
                           message_id=row.provider_message_id, error=row.error)
