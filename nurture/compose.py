"""What one email says to one lead: the context its templates see, and the rendered email.

The send activity, `nurture email preview` and `nurture email test-send` all call
`compose`, so a preview is, byte for byte, the email the lead gets: the lead's locale
variant, the campaign's subject variant for that lead, its signed unsubscribe and
preference links, its owner and the sender (with the postal address marketing email
must show: the campaign's `sender.address`, else funnel.yaml's).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from nurture import security
from nurture.campaign import CampaignError, load_funnel
from nurture.config import Settings
from nurture.emails import Rendered, render_email, sender_context

log = logging.getLogger(__name__)


class EmailParts(Protocol):
    """The fields of a send (activities.email.SendEmailInput) that decide what it says."""

    lead_key: str
    template: str
    profile: dict[str, Any]
    sender: str
    reply_to: str | None
    sender_address: str | None
    campaign: str | None
    step: str | None
    subject: str | None
    owner: str | None
    extra: dict[str, Any]


def funnel_sender_address(settings: Settings) -> str | None:
    """funnel.yaml's `sender.address`, read as each send happens (cached per file version).
    A funnel.yaml that does not load gives None here rather than holding the email: the
    lead's journey reports that file's errors, and `campaign validate` names them."""
    path = settings.funnel_file
    try:
        return load_funnel(path if path.exists() else None).sender.address
    except CampaignError as error:
        log.warning("funnel.yaml does not load, emails go out without its sender.address: %s",
                    str(error).splitlines()[0])
        return None


def email_context(settings: Settings, parts: EmailParts) -> dict[str, Any]:
    """The template context of contract section 2 for this send, plus `sender`."""
    secret, public = settings.signing_secret(), settings.public_url
    address = parts.sender_address or funnel_sender_address(settings)
    context = {
        "lead": parts.profile,
        "campaign": parts.campaign,
        "step": parts.step,
        "owner": parts.owner,
        "sender": sender_context(parts.sender, parts.reply_to, address),
        "unsubscribe_url": security.unsubscribe_url(public, secret, parts.lead_key),
        "preferences_url": security.preferences_url(public, secret, parts.lead_key),
        **parts.extra,
    }
    handoff = parts.extra.get("handoff")
    if handoff and parts.owner:  # the rep's signed link to this handoff (void once reassigned or closed)
        context["handoff_url"] = security.handoff_url(public, secret, handoff["id"], parts.owner)
    return context


def compose(settings: Settings, parts: EmailParts) -> Rendered:
    """The email `parts` describes, rendered. Raises emails.TemplateError."""
    return render_email(settings.templates_dir, parts.template, email_context(settings, parts),
                        locale=parts.profile.get("locale"), subject_override=parts.subject)
