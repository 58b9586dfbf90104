"""`enroll.segment` (contract 8): only leads in the named segment enter the campaign, at
every door (automatic on creation, explicit, event-triggered), checked in the store."""

from __future__ import annotations

import shutil

import pytest

from nurture.campaign import validate_paths
from nurture.service import UserError
from tests.conftest import ROOT, _stack, make_settings

ANCHOR = "  reenroll: never                        # a lead goes through this campaign once\n"


def campaigns_for_segment(tmp_path, segment: str = "french"):
    campaigns = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", campaigns)
    with (campaigns / "segments.yaml").open("a", encoding="utf-8") as segments:
        segments.write("  french: {where: {country: FR}}\n")
    path = campaigns / "b2b-trial.yaml"
    text = path.read_text(encoding="utf-8")
    assert ANCHOR in text
    path.write_text(text.replace(ANCHOR, ANCHOR + f"  segment: {segment}\n"), encoding="utf-8")
    return campaigns


async def test_only_leads_in_the_segment_enter(temporal_env, tmp_path):
    campaigns = campaigns_for_segment(tmp_path)
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        assert (await stack.add("fr@globex.example", country="FR", source="web_form"))["campaign"] == "b2b-trial"
        assert (await stack.add("de@globex.example", country="DE", source="web_form"))["campaign"] is None
        with pytest.raises(UserError, match="lead is not in segment 'french' \\(enroll.segment of b2b-trial\\)"):
            await stack.nurture.enroll("de@globex.example", "b2b-trial")
        await stack.add("de@globex.example", country="FR")  # moved to France: now in the segment
        assert (await stack.nurture.enroll("de@globex.example", "b2b-trial")).lead["campaign"] == "b2b-trial"


def test_an_unknown_segment_is_a_file_line_error_with_a_hint(tmp_path):
    campaigns = campaigns_for_segment(tmp_path, segment="frensh")
    problems = [str(p) for p in validate_paths([campaigns], ROOT / "templates" / "email") if p.severity == "error"]
    assert any("b2b-trial.yaml:19: enroll.segment: unknown segment 'frensh' (did you mean 'french'?)" in p
               for p in problems), problems
