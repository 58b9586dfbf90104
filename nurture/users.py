"""Web app users (contract section 7): roles, password hashes, the sign-in throttle.

Passwords are stored only as argon2id hashes (argon2-cffi's defaults: memory-hard, a
salt per hash, the parameters inside the hash so they can be raised later: a hash made
with older parameters is re-hashed at the next successful sign-in).

The throttle is a pure rule over stored failure times: ten failed sign-ins for one
account, or from one address, within ten minutes refuse that account (or address) for
the ten minutes after the tenth. The times live in the store (`signinfailure`), so the
rule holds across API processes; while refused, attempts are not checked at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session

from nurture import addresses, crud
from nurture.models import User, utcnow

ROLES = ("marketer", "sales", "admin")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is only load
THROTTLE_FAILURES = 10
THROTTLE_WINDOW = timedelta(minutes=10)
THROTTLE_FOR = timedelta(minutes=10)

_hasher = PasswordHasher()
# Verified against when the account does not exist, so an unknown address takes as long
# as a wrong password and the answer's timing does not say which addresses have accounts.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UserProblem(ValueError):
    """Bad input for a user command: one line naming the field."""


@dataclass(frozen=True)
class SignedIn:
    """Who a valid session belongs to."""

    id: int
    email: str
    role: str
    timezone: str | None = None  # the zone their pages show times in (UTC when None)

    @property
    def can_act_on_leads(self) -> bool:
        """Enroll and forget: marketers and admins (sales reps work their handoffs)."""
        return self.role in ("marketer", "admin")

    @property
    def can_act_on_handoffs(self) -> bool:
        """Accept, reject, won, lost: sales reps (their own handoffs) and admins;
        marketers see every handoff read-only."""
        return self.role in ("sales", "admin")


def signed_in(user: User) -> SignedIn:
    assert user.id is not None
    return SignedIn(user.id, user.email, user.role, user.timezone)


def check_zone(name: str | None) -> str | None:
    """An IANA zone name as given (None or blank: UTC), or UserProblem."""
    if name is None or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip()).key
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise UserProblem(f"timezone: unknown time zone '{name.strip()[:64]}' (an IANA name like Europe/Paris)") from None


def check_new(email: str, role: str, password: str) -> str:
    """The normalised address, or UserProblem for a bad address, role or password."""
    try:
        address = addresses.canonical_email(email)
    except ValueError as error:
        raise UserProblem(f"EMAIL: {error}") from error
    if role not in ROLES:
        raise UserProblem(f"--role: expected one of {', '.join(ROLES)}, got '{role}'")
    if len(password) < MIN_PASSWORD:
        raise UserProblem(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserProblem(f"password: at most {MAX_PASSWORD} characters")
    return address


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user whose address and password these are, else None (in about the same time)."""
    try:
        address = addresses.canonical_email(email)
    except ValueError:
        address = None
    user = crud.get_user(session=session, email=address) if address and len(password) <= MAX_PASSWORD else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        assert user.id is not None
        crud.set_password_hash(session=session, user_id=user.id, password_hash=hash_password(password))
    return user


def locked_until(failures: list[datetime], now: datetime) -> datetime | None:
    """When the refusal ends, if ten of these failure times (oldest first) fall within
    ten minutes and the tenth is less than ten minutes ago; else None."""
    n = THROTTLE_FAILURES
    for first, tenth in zip(failures, failures[n - 1:]):
        if tenth - first <= THROTTLE_WINDOW and now < tenth + THROTTLE_FOR:
            return tenth + THROTTLE_FOR
    return None


def throttled(session: Session, account: str, address: str, now: datetime | None = None) -> datetime | None:
    """Until when sign-ins for this account or from this address are refused, or None."""
    now = now or utcnow()
    by_account, by_address = crud.signin_failures(session=session, account=account, address=address,
                                                  since=now - THROTTLE_WINDOW - THROTTLE_FOR)
    ends = [end for end in (locked_until(by_account, now), locked_until(by_address, now)) if end]
    return max(ends) if ends else None


def record_failure(session: Session, account: str, address: str) -> None:
    now = utcnow()
    crud.prune_signin_failures(session=session, before=now - THROTTLE_WINDOW - THROTTLE_FOR)
    crud.add_signin_failure(session=session, account=account[:254], address=address[:64])
