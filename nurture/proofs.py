"""`nurture email preview` and `nurture email test-send` (contract section 10).

A preview is the email a lead would get, byte for byte: the input is built as the
lead's workflow builds it (`journey.step_email`: template, sender, the lead's subject
variant) and rendered by the send activity's own `compose`. The lead comes from the
store (`--email`), from a LEAD.json file (`--lead`, as `campaign test` reads it), or is
the sample lead of `campaign validate`.

A test send is that email, `[TEST] ` before its subject, handed to the configured
provider (SendGrid, else the local outbox) outside any journey: no email row, no
history, no stats, no frequency cap. It names no lead to SendGrid, and its unsubscribe
and preference links are signed for no lead (`PROOF_KEY`), so a tester who clicks them
unsubscribes nobody. Only the web app's users and NURTURE_TEST_RECIPIENTS may receive
one, at most TEST_SENDS_PER_MINUTE per installation, counted in the store so that every
CLI process shares the limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from activities.email import EmailActivities, ProofNotSent, SendEmailInput
from nurture import crud, journey
from nurture.addresses import canonical_email
from nurture.campaign import Campaign, CampaignError, UnknownCampaignError, find_campaign, load_campaigns, load_funnel
from nurture.compose import compose
from nurture.config import Settings
from nurture.db import session_scope
from nurture.emails import Rendered, sample_context
from nurture.models import utcnow
from nurture.service import NotFound, UserError

PROOF_KEY = "test-send"  # signs the links of proofs: no lead has this key (lead keys are hex digests)
TEST_SENDS_PER_MINUTE = 10


@dataclass(frozen=True)
class Recipient:
    """The lead an email is previewed for."""

    key: str
    profile: dict[str, Any]  # as the workflow passes it: LeadProfile.record()
    owner: str | None


@dataclass(frozen=True)
class Preview:
    input: SendEmailInput
    email: Rendered

    def as_json(self) -> dict[str, Any]:
        inp = self.input
        return {"template": inp.template, "locale": self.email.locale_used, "to": inp.to, "from": inp.sender,
                "reply_to": inp.reply_to, "campaign": inp.campaign, "step": inp.step, "variant": inp.variant,
                "subject": self.email.subject, "text": self.email.text, "html": self.email.html}


# ---------------------------------------------------------------- the lead


def stored_lead(settings: Settings, email: str) -> Recipient:
    """The lead as its workflow last wrote it to the store; NotFound when there is none."""
    try:
        address = canonical_email(email)
    except ValueError as error:
        raise UserError(f"--email: {error}") from error
    with session_scope(settings.db_url) as session:
        lead = crud.get_lead(session=session, email=address)
        if lead is None:
            raise NotFound(f"unknown lead {address}")
        return Recipient(lead.key, journey.LeadProfile(**crud.profile_of(lead)).record(), lead.owner)


def file_lead(path: Path) -> Recipient:
    """A LEAD.json file of lead fields, checked as `nurture campaign test` checks it (such
    a lead has no owner yet)."""
    from nurture.preview import read_lead

    data = read_lead(path)
    fields = {name: getattr(data, name) for name in journey.PROFILE_FIELDS}
    profile = journey.LeadProfile(email=data.email, attributes=dict(data.attributes or {}), **fields)
    return Recipient(journey.lead_key(data.email), profile.record(), None)


def sample_lead() -> Recipient:
    """The sample lead `campaign validate` renders with (Jane Doe at Globex)."""
    lead = sample_context()["lead"]
    fields = {name: lead[name] for name in journey.PROFILE_FIELDS}
    profile = journey.LeadProfile(email=lead["email"], attributes=lead["attributes"], **fields)
    return Recipient(journey.lead_key(lead["email"]), profile.record(), lead["owner"])


# ---------------------------------------------------------------- the email


def preview(settings: Settings, name: str, lead: Recipient, *, campaign: str | None = None,
            step: str | None = None) -> Preview:
    """The email `name` as it would go to `lead` (from `campaign`'s `step` when given or
    when only one step of all campaigns sends it). UserError for bad input."""
    inp = _send_input(settings, name, lead, campaign, step)
    try:
        return Preview(inp, compose(settings, inp))
    except Exception as error:  # a TemplateError: one line naming the file and the line
        raise UserError(str(error)) from error


def _send_input(settings: Settings, name: str, lead: Recipient, campaign: str | None, step: str | None) -> SendEmailInput:
    templates = Path(settings.templates_dir)
    if not all((templates / f"{name}{ext}").is_file() for ext in (".html", ".txt")) or "/" in name:
        raise UserError(f"unknown email template '{name}': no {name}.html and {name}.txt in {templates}")
    if step is not None and campaign is None:
        raise UserError("--step needs --campaign")
    handoff = _handoff_template(settings)
    if campaign is None and name == handoff:
        return _handoff_input(settings, name, lead)
    found = _sending_step(settings, name, campaign, step)
    if found is None:  # an email no campaign sends yet: the template's own subject, no campaign
        return SendEmailInput(send_id="preview", lead_key=lead.key, to=lead.profile["email"], template=name,
                              profile=lead.profile, sender=settings.sales_sender, owner=lead.owner)
    owner_campaign, send_step = found
    return SendEmailInput(send_id="preview", lead_key=lead.key, to=lead.profile["email"], profile=lead.profile,
                          owner=lead.owner, **journey.step_email(owner_campaign, send_step, lead.key))


def _handoff_template(settings: Settings) -> str | None:
    path = settings.funnel_file
    try:
        return load_funnel(path if path.exists() else None).handoff.notify.template
    except CampaignError as error:
        raise UserError(f"{str(error).splitlines()[0]} (run `nurture campaign validate {settings.campaigns_dir}`)") from error


def _handoff_input(settings: Settings, name: str, lead: Recipient) -> SendEmailInput:
    """The sales handoff email: to the lead's owner (the sample rep when it has none),
    about the sample handoff (a real one exists only inside the lead's journey)."""
    sample = sample_context()
    owner = lead.owner or sample["owner"]
    return SendEmailInput(send_id="preview", lead_key=lead.key, to=owner, template=name, profile=lead.profile,
                          sender=settings.sales_sender, marketing=False, owner=owner,
                          extra={"handoff": {**sample["handoff"], "kind": "new"}})


def _sending_step(settings: Settings, name: str, campaign: str | None, step: str | None) -> tuple[Campaign, Any] | None:
    """(campaign, send step) whose email `name` is previewed; None when no campaign sends it
    and none was asked for."""
    try:
        campaigns = [find_campaign(settings.campaigns_dir, campaign)] if campaign else (
            load_campaigns(settings.campaigns_dir) if settings.campaigns_dir.exists() else [])
    except UnknownCampaignError as error:
        raise UserError(str(error)) from error
    except CampaignError as error:
        raise UserError(f"{str(error).splitlines()[0]} (run `nurture campaign validate {settings.campaigns_dir}`)") from error
    sends = [(c, s) for c in campaigns for s in c.steps if s.kind == "send" and (step is None or s.id == step)]
    if step is not None and not sends:
        ids = ", ".join(s.id for s in campaigns[0].steps if s.kind == "send")
        raise UserError(f"campaign {campaign} has no send step '{step}' (its send steps: {ids})")
    matching = [(c, s) for c, s in sends if s.send == name]
    if step is not None and not matching:
        raise UserError(f"step {step} of campaign {campaign} sends '{sends[0][1].send}', not '{name}'")
    if len(matching) > 1:
        where = ", ".join(f"{c.name} step {s.id}" for c, s in matching)
        raise UserError(f"'{name}' is sent by {where}: say which with --campaign C --step S")
    if not matching and campaign is not None:
        raise UserError(f"campaign {campaign} sends no '{name}'")
    return matching[0] if matching else None


# ---------------------------------------------------------------- test sends


@dataclass(frozen=True)
class ProofSent:
    provider: str  # sendgrid | outbox
    message_id: str | None
    subject: str
    file: Path | None  # the .eml written in outbox mode


def send_test(settings: Settings, name: str, to: str, lead: Recipient, *, campaign: str | None = None,
              step: str | None = None) -> ProofSent:
    """Send one proof of `name` to `to`. UserError when `to` is not allowed, the rate
    limit is reached, the email does not render or the provider refuses it."""
    address = _allowed(settings, to)
    shown = preview(settings, name, lead, campaign=campaign, step=step)  # fails before any slot is taken
    with session_scope(settings.db_url) as session:
        if not crud.take_rate_slot(session=session, name="test-send", limit=TEST_SENDS_PER_MINUTE,
                                   window_seconds=60, now=utcnow()):
            raise UserError(f"test sends are limited to {TEST_SENDS_PER_MINUTE} a minute for this installation: "
                            "try again in a minute")
    proof = replace(shown.input, send_id=f"{journey.proof_prefix(lead.key)}{uuid.uuid4().hex[:12]}",
                    lead_key=PROOF_KEY, to=address,
                    marketing=False, proof=True)
    try:
        provider, message_id = EmailActivities(settings).send_proof(proof)
    except ProofNotSent as error:
        raise UserError(str(error)) from error
    file = settings.outbox_dir / f"{proof.send_id}.eml" if provider == "outbox" else None
    return ProofSent(provider, message_id, f"[TEST] {shown.email.subject}", file)


def _allowed(settings: Settings, to: str) -> str:
    try:
        address = canonical_email(to)
    except ValueError as error:
        raise UserError(f"--to: {error}") from error
    allowed = set()
    for entry in settings.test_recipient_list:
        try:
            allowed.add(canonical_email(entry))
        except ValueError:
            continue  # a typo in the list allows nobody by that name
    if address in allowed:
        return address
    with session_scope(settings.db_url) as session:
        if crud.get_user(session=session, email=address) is not None:
            return address  # a user of the web app (contract section 10)
    raise UserError(f"--to: {address} may not receive test sends: it is no web app user (nurture user add) "
                    "and not in NURTURE_TEST_RECIPIENTS (comma-separated)")
