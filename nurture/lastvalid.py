"""The configuration in force: funnel.yaml and the campaign files, or their last valid version.

A marketer's typo must never end a journey. Each time a file loads valid, a copy of it
goes to NURTURE_HOME/last-valid/ (so it survives restarts); while the file is broken,
that copy is what runs, one broken campaign file leaves the others alone, and the break
is reported: one line in the terminal of `nurture up` (or `nurture worker`) when it is
seen and when it is fixed, by /healthz, `campaign list`, `funnel show` and `lead show`.
Once the file is valid again it is picked up as any edit is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nurture.campaign import (
    FUNNEL_FILES,
    Campaign,
    CampaignError,
    Funnel,
    UnknownCampaignError,
    default_funnel,
    load_campaign,
    load_campaign_files,
    load_funnel,
)
from nurture.config import Settings

logger = logging.getLogger("nurture.config")
T = TypeVar("T")


@dataclass(frozen=True)
class BrokenFile:
    """A configuration file that does not load, and what runs instead."""

    file: str
    error: str  # its first error, FILE:LINE: path: message
    fallback: str | None = None  # version of the last valid copy in force; None: nothing runs
    campaign: str | None = None  # for a campaign file: the name of that last valid version

    @property
    def is_funnel(self) -> bool:
        return Path(self.file).name in FUNNEL_FILES

    def line(self) -> str:
        if self.fallback:
            instead = f"running on its last valid version ({self.fallback}) until it is fixed"
        elif self.is_funnel:
            instead = "no valid version yet: leads wait for it"
        else:
            instead = "no valid version yet: not in use until it is fixed"
        return f"{self.file} is invalid, {instead}: {self.error}"


def campaign_refusal(name: str, error: CampaignError) -> str:
    """Why an explicit enrollment in `name` is refused, in one line."""
    if isinstance(error, UnknownCampaignError):
        return str(error)
    return f"campaign '{name}' cannot be enrolled in while its file is invalid: {str(error).splitlines()[0]}"


class NoValidFunnel(Exception):
    """funnel.yaml is broken and no valid version of it was ever seen here."""


class StampCache:
    """A value derived from files, kept while they are unchanged (a stat per file, not a
    parse). For a folder the stamp covers every YAML file in it, so editing a campaign in
    place (which leaves the folder's own mtime alone) is seen at once."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, Path], tuple[tuple[Any, ...], Any]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[Any, ...]:
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        stamp = []
        for file in files:
            try:
                stat = file.stat()
                stamp.append((file.name, stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                stamp.append((file.name, 0, 0))
        return tuple(stamp)

    def get(self, what: str, path: Path, load: Callable[[], T]) -> T:
        stamp = self._stamp(path)
        cached = self._entries.get((what, path))
        if cached and cached[0] == stamp:
            return cached[1]  # type: ignore[no-any-return]
        value = load()
        self._entries[(what, path)] = (stamp, value)
        return value


class ConfigFiles:
    """The funnel and campaigns of one installation, each file or its last valid copy."""

    def __init__(self, settings: Settings) -> None:
        self.funnel_file = settings.funnel_file
        self.campaigns_dir = settings.campaigns_dir
        self.copies = settings.home / "last-valid"
        self._cache = StampCache()

    def funnel(self) -> Funnel:
        """The funnel in force; NoValidFunnel when the file is broken and has no copy."""
        funnel, broken = self._cache.get("funnel", self.funnel_file, self._load_funnel)
        if funnel is None:
            raise NoValidFunnel(broken.line() if broken else str(self.funnel_file))
        return funnel

    def campaigns(self) -> list[Campaign]:
        """Every campaign in force, by name: the valid files and the last valid version of
        each broken one (a broken file never seen valid is left out)."""
        return self._cache.get("campaigns", self.campaigns_dir, self._load_campaigns)[0]

    def broken(self) -> list[BrokenFile]:
        """Every file that does not load now, funnel first."""
        _, funnel = self._cache.get("funnel", self.funnel_file, self._load_funnel)
        return ([funnel] if funnel else []) + self._broken_campaigns()

    def unusable_campaign_files(self) -> list[str]:
        """Broken campaign files with no valid version: automatic enrollment cannot tell
        whether one of them would take a lead, so a lead no other campaign takes waits."""
        return [broken.file for broken in self._broken_campaigns() if broken.fallback is None]

    def _broken_campaigns(self) -> list[BrokenFile]:
        return self._cache.get("campaigns", self.campaigns_dir, self._load_campaigns)[1]

    # ------------------------------------------------------------ loading, once per change

    def _load_funnel(self) -> tuple[Funnel | None, BrokenFile | None]:
        path = self.funnel_file
        if not path.exists():  # the built-in funnel; an old copy must not come back later
            self._remove(self.copies / path.name)
            return default_funnel(), None
        try:
            funnel = load_funnel(path)
        except CampaignError as error:
            copy = self._copy_of(path, load_funnel)
            return copy, self._report(path, error, copy.version if copy else None)
        self._keep(path, funnel.version, self.copies / path.name)
        return funnel, None

    def _load_campaigns(self) -> tuple[list[Campaign], list[BrokenFile]]:
        if not self.campaigns_dir.is_dir():
            return [], []
        valid, errors = load_campaign_files(self.campaigns_dir)
        self._forget_removed({Path(campaign.source_file or "").name for campaign in valid} | {p.name for p in errors})
        for campaign in valid:
            path = Path(campaign.source_file or "")
            self._keep(path, campaign.version, self.copies / "campaigns" / path.name)
        names = {campaign.name for campaign in valid}
        broken = []
        for path, error in errors.items():
            copy = self._copy_of(path, load_campaign)
            if copy is not None and copy.name not in names:
                valid.append(copy)
                names.add(copy.name)
            else:
                copy = None
            broken.append(self._report(path, error, copy.version if copy else None, copy.name if copy else None))
        return sorted(valid, key=lambda campaign: campaign.name), broken

    def _forget_removed(self, names: set[str]) -> None:
        """A file taken away takes its copy along: a new file of that name, broken, must
        not bring the old campaign back."""
        folder = self.copies / "campaigns"
        for copy in folder.iterdir() if folder.is_dir() else []:
            if copy.name not in names and not copy.name.startswith("."):  # (a writer's temporary file)
                self._remove(copy)

    @staticmethod
    def _remove(copy: Path) -> None:
        try:
            copy.unlink(missing_ok=True)
        except OSError as error:
            logger.warning("cannot remove %s: %s", copy, error.strerror or error)

    def _copy_of(self, path: Path, load: Callable[[Path], Any]) -> Any:
        """The last valid version of `path`, as if loaded from `path`; None if there is none."""
        copy = self.copies / path.name if path == self.funnel_file else self.copies / "campaigns" / path.name
        if not copy.is_file():
            return None
        try:
            return load(copy).model_copy(update={"source_file": str(path)})
        except CampaignError:
            return None  # only valid files are copied; a copy edited by hand is not used

    def _keep(self, path: Path, version: str, copy: Path) -> None:
        """Copy a file that just loaded valid, unless it changed since (its hash is the version)."""
        try:
            content = path.read_bytes()
            if hashlib.sha256(content).hexdigest()[:12] != version or (copy.is_file() and copy.read_bytes() == content):
                return
            copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = copy.with_name(f".{copy.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
            temporary.write_bytes(content)
            os.replace(temporary, copy)
        except OSError as error:  # a read-only home still runs, only without the fallback
            logger.warning("cannot keep a copy of %s in %s: %s", path, copy.parent, error.strerror or error)

    @staticmethod
    def _report(path: Path, error: CampaignError, fallback: str | None, campaign: str | None = None) -> BrokenFile:
        first = str(error).splitlines()[0] if str(error) else f"{path}: invalid"
        return BrokenFile(str(path), first, fallback, campaign)
