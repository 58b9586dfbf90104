"""nurture.campaign: loading campaign and funnel YAML, and the problems a marketer sees."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nurture.campaign import (
    Campaign,
    CampaignError,
    Funnel,
    GotoStep,
    IfStep,
    Problem,
    SendStep,
    WaitForStep,
    WaitStep,
    campaign_json_schema,
    default_funnel,
    find_campaign,
    load_campaign,
    load_campaigns,
    load_funnel,
    parse_duration,
    validate_paths,
)

# The contract's sample campaign (section 5b), comments included, as a marketer writes it.
SAMPLE_CAMPAIGN = """\
name: b2b-trial                      # unique; the file name need not match
description: Trial sign-ups to a sales demo
sender: {from: "Acme <hello@acme.example>", reply_to: sales@acme.example}
enroll:                              # who may enter; default: subscribed leads at stage lead
  stages: [lead, recycled]
  where: {source: [web_form, content_download]}   # optional, `where` operators
  auto_on: [created, recycled]
  priority: 10
  reenroll: never                    # never | after_exit
send_window:                         # optional: emails wait for the next allowed slot
  timezone: lead                     # the lead's own timezone, else default_timezone
  default_timezone: Europe/Paris
  days: [mon, tue, wed, thu, fri]
  hours: "09:00-17:30"
frequency_cap: {max: 3, per: 7d}     # at most 3 marketing emails per 7 days per lead
exit_when: [{stage: [sql, opportunity, customer]}]
steps:
  - {id: welcome, send: welcome}
  - {wait: 2d}
  - {id: case-study, send: case_study, subject: ["Save 30% like Globex", "{{ lead.first_name }}, a story for you"]}
  - {id: wait-click, wait_for: {event: email_click, step: case-study}, timeout: 3d, on_timeout: reminder}
  - {id: demo-invite, send: demo_invite}
  - {goto: end}
  - {id: reminder, send: case_study_reminder}
  - {id: branch-hot, if: {temperature: hot}, then: demo-invite}
  - {wait: 5d}
  - {id: end, send: last_chance}
"""

# The contract's sample funnel (section 5a).
SAMPLE_FUNNEL = """\
scoring:
  events:                            # points per event; first matching rule wins
    email_open: 1
    email_click: 5
    page_view:
      - {where: {url: {contains: /pricing}}, points: 15, max_per_day: 15}
      - {points: 2, max_per_day: 10}
    content_download: 10
    webinar_attended: 20
    quote_request: 30
    email_unsubscribe: -10
  fit:                               # profile rules -> fit points -> grade
    - {where: {job_title: {matches: "(?i)\\\\b(vp|director|head|chief|c[ te]o)\\\\b"}}, points: 20}
    - {where: {company_size: {gte: 50}}, points: 15}
    - {where: {email: {endswith: [gmail.com, yahoo.com, hotmail.com]}}, points: -20}
  grades: {A: 35, B: 20, C: 5, D: 0} # lowest fit points for each grade; below D is F
  decay: {every: 30d, points: 10}    # each full 30 days since the last scored event: -10, never below 0
qualify:
  mql: {score: 50, min_grade: C}
  sql: {bant: all}                   # all | a number 1-4 of true BANT facts; needs mql first
  disqualify: [{grade: F}]           # -> stage disqualified, journey ends, no more email
handoff:
  owners: [alice@acme.example, bob@acme.example]
  assign: round_robin                # or: {by: country, map: {FR: alice@acme.example, "*": bob@acme.example}}
  notify: {template: sales_handoff, webhook: "https://crm.example/hooks/lead"}
  sla: 2d                            # no accept/reject by then: remind the owner once; after a second sla, reassign
"""

HEAD = """\
name: trial
sender: {from: hello@acme.example}
"""


def write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def report(path: Path, templates_dir: Path | None = None) -> list[str]:
    """validate_paths' lines for one file, without the file name: `LINE: path: message`."""
    return [str(problem).removeprefix(f"{path}:") for problem in validate_paths([path], templates_dir)]


def with_head(folder: Path, body: str) -> Path:
    """A campaign file: HEAD (name and sender, lines 1-2), then `body` from line 3."""
    return write(folder, HEAD + textwrap.dedent(body))


def campaign_with_steps(folder: Path, steps: str, head: str = HEAD) -> Path:
    """A campaign whose steps start at line 4."""
    return write(folder, head + "steps:\n" + textwrap.dedent(steps))


# ---------------------------------------------------------------- the contract's samples


def test_contract_sample_campaign_loads(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE_CAMPAIGN, "b2b-trial.yaml")

    campaign = load_campaign(path)

    assert campaign.name == "b2b-trial"
    assert campaign.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert campaign.source_file == str(path)
    assert [step.id for step in campaign.steps] == [
        "welcome", "step-2", "case-study", "wait-click", "demo-invite",
        "step-6", "reminder", "branch-hot", "step-9", "end",
    ]
    assert [step.kind for step in campaign.steps] == [
        "send", "wait", "send", "wait_for", "send", "goto", "send", "if", "wait", "send",
    ]
    wait_click = campaign.steps[3]
    assert isinstance(wait_click, WaitForStep)
    assert wait_click.timeout == timedelta(days=3) and wait_click.on_timeout == "reminder"
    assert isinstance(campaign.steps[7], IfStep) and campaign.steps[7].if_.temperature == "hot"
    assert campaign.step_index("reminder") == 6
    assert campaign.sender.from_ == "Acme <hello@acme.example>"
    assert campaign.frequency_cap is not None and campaign.frequency_cap.per == timedelta(days=7)
    assert report(path) == []


def test_contract_sample_funnel_loads(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE_FUNNEL, "funnel.yaml")

    funnel = load_funnel(path)

    assert funnel.scoring.events["email_open"][0].points == 1
    assert funnel.scoring.events["page_view"][1].max_per_day == 10
    assert funnel.scoring.fit[0].where == {"job_title": {"matches": r"(?i)\b(vp|director|head|chief|c[ te]o)\b"}}
    assert funnel.qualify.mql.min_grade == "C"
    assert funnel.handoff.sla == timedelta(days=2)
    assert funnel.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert report(path) == []


def test_no_funnel_file_means_the_defaults(tmp_path: Path) -> None:
    assert load_funnel(None) == default_funnel()
    assert load_funnel(tmp_path / "funnel.yaml") == default_funnel()


def test_empty_funnel_file_means_the_defaults_with_a_version(tmp_path: Path) -> None:
    funnel = load_funnel(write(tmp_path, "", "funnel.yaml"))

    assert funnel.scoring == Funnel().scoring and funnel.version


def test_models_survive_the_temporal_data_converter(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, SAMPLE_CAMPAIGN))
    funnel = load_funnel(write(tmp_path, SAMPLE_FUNNEL, "funnel.yaml"))

    assert Campaign.model_validate_json(campaign.model_dump_json(by_alias=True)) == campaign
    assert Funnel.model_validate_json(funnel.model_dump_json(by_alias=True)) == funnel


def test_the_same_file_has_the_same_version_and_an_edit_changes_it(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE_CAMPAIGN)
    first = load_campaign(path).version

    assert load_campaign(path).version == first
    path.write_text(SAMPLE_CAMPAIGN.replace("wait: 5d", "wait: 6d"), encoding="utf-8")
    assert load_campaign(path).version != first


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1d 12h", timedelta(days=1, hours=12)),
        ("P2DT4H", timedelta(days=2, hours=4)),  # what pydantic writes
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2 days", "1.5d", "d2", "0d", "2y", "pizza", "-1d", 0, -5, "P0D",
                                  "3651d", "99999999999999999999w", 10**30, "P99999999D"])
def test_invalid_durations(text: str | int) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_a_zero_wait_is_an_error_not_a_spin(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - {wait: 0}
    """)

    assert report(path) == ["5: steps.1.wait: invalid duration 0: must be longer than zero"]


def test_a_key_with_a_control_character_keeps_each_problem_on_one_line(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome, "sub\\nject": x}
    """)

    (problem,) = report(path)
    assert "\n" not in problem and "sub\\nject" in problem


def test_control_characters_in_the_file_are_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: x\nsteps:\n  - {send: \x07welcome}\n")

    with pytest.raises(CampaignError) as error:
        load_campaign(path)
    (problem,) = error.value.problems
    assert problem.message.startswith("invalid YAML") and "\n" not in str(problem)


def test_an_invalid_duration_is_reported_at_its_line(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - wait: 2 days
    """)

    assert report(path) == [
        "5: steps.1.wait: invalid duration '2 days': use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h",
    ]


def test_a_bare_number_duration_is_seconds_with_a_warning(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - {wait: 2}
    """)

    assert report(path) == ["5: steps.1.wait: warning: 2 means 2 seconds; write '2s' if you mean it, or e.g. '2d' for days"]
    assert load_campaign(path).steps[1] == WaitStep(id="step-2", wait=timedelta(seconds=2))


# ---------------------------------------------------------------- YAML and shapes


def test_yaml_syntax_error_is_one_problem_at_its_line(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - {wait: 2d
          - {send: last_chance}
    """)

    assert report(path) == [
        "6: (file): invalid YAML: expected ',' or '}', but got '{' (while parsing a flow mapping started at line 5)",
    ]
    with pytest.raises(CampaignError):
        load_campaign(path)


def test_tabs_get_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "steps:\n\t- {send: welcome}\n")

    assert report(path) == [
        "4: (file): invalid YAML: found character '\\t' that cannot start any token; indent with spaces, not tabs",
    ]


def test_an_empty_campaign_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")

    assert report(path) == ["1: (file): the file is empty: expected a campaign with name, sender and steps"]


def test_a_key_given_twice(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
        name: other
    """)

    assert report(path) == ["5: name: key 'name' is given twice (first at line 1)"]


def test_unknown_key_suggests_the_right_one_with_file_and_line(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - {id: case-study, send: case_study, subjet: Hello}
    """)

    problems = validate_paths([path], None)

    assert [str(p) for p in problems] == [f"{path}:5: steps.1.subjet: unknown key 'subjet' (did you mean 'subject'?)"]
    assert problems[0] == Problem(str(path), 5, "steps.1.subjet", "unknown key 'subjet' (did you mean 'subject'?)")


def test_unknown_top_level_key_and_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: trial
        sendr: {from: hello@acme.example}
        steps: [{send: welcome}]
    """)

    assert report(path) == [
        "1: sender: required, but missing",
        "2: sendr: unknown key 'sendr' (did you mean 'sender'?)",
    ]


def test_unknown_key_in_an_optional_section(tmp_path: Path) -> None:
    path = with_head(tmp_path, """\
        send_window: {timezon: lead}
        frequency_cap:
          max: 3
          pr: 7d
        steps: [{send: welcome}]
    """)

    assert report(path) == [
        "3: send_window.timezon: unknown key 'timezon' (did you mean 'timezone'?)",
        "4: frequency_cap.per: required, but missing",
        "6: frequency_cap.pr: unknown key 'pr' (did you mean 'per'?)",
    ]


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    path = with_head(tmp_path, """\
        enroll:
          priority: abc
        frequency_cap: {max: many, per: 7d}
        steps: [{send: welcome}]
    """)

    assert report(path) == [
        "4: enroll.priority: expected a whole number, got 'abc'",
        "5: frequency_cap.max: expected a whole number, got 'many'",
    ]


def test_loader_fields_cannot_be_written(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "version: 3\nsteps: [{send: welcome}]\n")

    assert report(path) == ["3: version: unknown key 'version' (nurture fills it in from the file)"]


def test_numbers_as_names_are_text(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: 1, send: welcome}
          - {goto: 1}
    """)

    assert report(path) == [
        "5: steps.1.goto: steps loop forever without a wait: 1 -> step-2 -> 1 (add a wait or wait_for inside the loop)",
    ]


def test_country_no_stays_text(tmp_path: Path) -> None:
    # YAML 1.1 would read NO as false: Norway must stay Norway.
    path = write(tmp_path, HEAD + "enroll: {where: {country: NO, vip: true}}\nsteps: [{send: welcome}]\n")

    assert load_campaign(path).enroll.where == {"country": "NO", "vip": True}


# ---------------------------------------------------------------- steps


def test_step_with_no_kind(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {send: welcome}
          - {id: oops}
          - {id: typo, sned: case_study}
          - welcome
    """)

    assert report(path) == [
        "5: steps.1: a step needs one of send, wait, wait_for, goto, if",
        "6: steps.2: a step needs one of send, wait, wait_for, goto, if (did you mean 'send' instead of 'sned'?)",
        "7: steps.3: expected a step like {id: welcome, send: welcome}, got 'welcome'",
    ]


def test_step_with_two_kinds(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - id: welcome
            send: welcome
            wait: 2d
    """)

    assert report(path) == [
        "6: steps.0.wait: a step has one kind, but this one has both 'send' and 'wait': split it into two steps",
    ]


def test_a_campaign_needs_steps(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "steps: []\n")

    assert report(path) == ["3: steps: must not be empty"]


def test_template_name_with_extension(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, "  - {send: welcome.html}\n")

    assert report(path) == ["4: steps.0.send: give the template name without its extension: 'welcome'"]


def test_duplicate_step_ids(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: hello, send: welcome}
          - {wait: 1d}
          - {id: hello, send: case_study}
    """)

    assert report(path) == ["6: steps.2.id: duplicate step id 'hello' (also the step at line 4)"]


@pytest.mark.parametrize(
    "step, path",
    [
        ("{if: {temperature: hot}, then: remindr}", "steps.1.then"),
        ("{if: {temperature: hot}, then: reminder, else: remindr}", "steps.1.else"),
        ("{wait_for: {event: email_click}, timeout: 3d, on_timeout: remindr}", "steps.1.on_timeout"),
    ],
)
def test_jump_to_a_missing_step(tmp_path: Path, step: str, path: str) -> None:
    file = campaign_with_steps(tmp_path, f"""\
          - {{id: welcome, send: welcome}}
          - {step}
          - {{id: reminder, send: case_study_reminder}}
    """)

    assert report(file) == [f"5: {path}: unknown step id 'remindr' (did you mean 'reminder'?)"]


def test_goto_a_missing_step(tmp_path: Path) -> None:
    file = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {goto: remindr}
          - {id: reminder, send: case_study_reminder}
    """)

    assert report(file) == [
        "5: steps.1.goto: unknown step id 'remindr' (did you mean 'reminder'?)",
        "6: steps.2: warning: step 'reminder' is never reached: the step before it always jumps away and nothing jumps to it",
    ]


def test_wait_for_must_name_a_send_step(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {id: pause, wait: 1d}
          - wait_for:
              event: email_click
              step: pause
            timeout: 3d
          - wait_for: {event: email_open, step: welcom}
            timeout: 3d
    """)

    assert report(path) == [
        "8: steps.2.wait_for.step: step 'pause' is a wait step: only a send step's email can be opened or clicked",
        "10: steps.3.wait_for.step: unknown step id 'welcom' (did you mean 'welcome'?)",
    ]


def test_a_loop_without_a_wait_is_caught(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {id: check, if: {temperature: hot}, then: done}
          - {id: again, goto: check}
          - {id: done, send: last_chance}
    """)

    assert report(path) == [
        "6: steps.2.goto: steps loop forever without a wait: check -> again -> check (add a wait or wait_for inside the loop)",
    ]
    with pytest.raises(CampaignError, match="loop forever"):
        load_campaign(path)


def test_a_step_jumping_to_itself_is_a_loop(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, "  - {id: spin, goto: spin}\n")

    assert report(path) == [
        "4: steps.0.goto: steps loop forever without a wait: spin -> spin (add a wait or wait_for inside the loop)",
    ]


def test_a_loop_with_a_wait_is_fine(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: nudge, send: case_study_reminder}
          - {id: listen, wait_for: {event: email_click, step: nudge}, timeout: 7d, on_timeout: nudge}
          - {id: hot, if: {temperature: hot}, then: done}
          - {wait: 1w}
          - {goto: hot}
          - {id: done, send: demo_invite}
    """)

    assert report(path) == []
    assert isinstance(load_campaign(path).steps[4], GotoStep)


def test_unreachable_step_is_a_warning(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {goto: end}
          - {id: orphan, send: case_study}
          - {id: end, send: last_chance}
    """)

    problems = validate_paths([path], None)

    assert [str(p).removeprefix(f"{path}:") for p in problems] == [
        "6: steps.2: warning: step 'orphan' is never reached: the step before it always jumps away and nothing jumps to it",
    ]
    assert problems[0].severity == "warning"
    assert load_campaign(path).step_index("orphan") == 2  # warnings do not stop loading


def test_a_subject_with_broken_template_syntax(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - id: welcome
            send: welcome
            subject:
              - Hello
              - "{{ lead.first_name }"
    """)

    assert report(path) == ["8: steps.0.subject.1: subject template: unexpected '}'"]


# ---------------------------------------------------------------- hostile and repeated files


def alias_bomb(levels: int) -> str:
    """A campaign file whose each level repeats the one before nine times: 9**levels values."""
    rows = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return HEAD + "\n".join(rows) + "\nsteps: [{id: welcome, send: welcome}]\n"


def test_a_yaml_alias_bomb_is_refused_in_under_a_second_with_one_line(tmp_path: Path) -> None:
    import time

    bomb = write(tmp_path, alias_bomb(9))  # 12 lines standing for 387 million values
    small = write(tmp_path, alias_bomb(5), "small.yaml")  # 59049 values: past the budget too
    started = time.monotonic()

    problems = validate_paths([bomb, small], None)

    assert time.monotonic() - started < 1
    message = ("invalid YAML: the aliases (*name) of this file stand for more than 10000 values: write the values out, "
               "or use fewer aliases")
    assert [str(p) for p in problems] == [f"{bomb}:7: (file): {message}", f"{small}:7: (file): {message}"]
    with pytest.raises(CampaignError, match="stand for more than 10000 values"):
        load_campaign(bomb)


def test_anchors_and_merge_keys_within_the_budget_still_work(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - &mail {id: welcome, send: welcome, subject: [Hello, Hi]}
          - {wait: 2d}
          - {<<: *mail, id: again}
    """)

    assert [step.id for step in load_campaign(path).steps] == ["welcome", "step-2", "again"]


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import nurture.campaign

    parsed: list[str] = []
    read_yaml = nurture.campaign._read_yaml
    monkeypatch.setattr(nurture.campaign, "_read_yaml", lambda path: parsed.append(path.name) or read_yaml(path))
    path = write(tmp_path, SAMPLE_CAMPAIGN, "b2b.yaml")
    funnel = write(tmp_path, SAMPLE_FUNNEL, "funnel.yaml")
    an_hour_ago = os.stat(path).st_mtime_ns - 3600 * 10**9
    for file in (path, funnel):
        os.utime(file, ns=(an_hour_ago, an_hour_ago))

    first = load_campaign(path)
    again = [load_campaign(path), find_campaign(tmp_path, "b2b-trial"), *load_campaigns(tmp_path)]
    funnels = [load_funnel(funnel), load_funnel(funnel)]

    assert parsed == ["b2b.yaml", "funnel.yaml"]
    assert all(campaign == first for campaign in again) and funnels[0] == funnels[1]
    path.write_text(SAMPLE_CAMPAIGN.replace("Trial sign-ups", "Trial signups!"), encoding="utf-8")  # same size
    assert load_campaign(path).description == "Trial signups! to a sales demo"
    assert parsed == ["b2b.yaml", "funnel.yaml", "b2b.yaml"]


def test_a_file_edited_twice_within_a_clock_tick_is_never_served_stale(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE_CAMPAIGN)
    versions = []
    for description in ("aaaa", "bbbb", "cccc"):  # the same size each time, written at once
        path.write_text(SAMPLE_CAMPAIGN.replace("Trial sign-ups to a sales demo", description), encoding="utf-8")
        versions.append(load_campaign(path).description)

    assert versions == ["aaaa", "bbbb", "cccc"]


# ---------------------------------------------------------------- send window, cap, enroll, conditions


def test_send_window_problems(tmp_path: Path) -> None:
    path = with_head(tmp_path, """\
        send_window:
          timezone: Europe/Pariss
          default_timezone: Mars/Olympus
          days: [monday]
          hours: "09:00-25:00"
        steps: [{send: welcome}]
    """)

    assert report(path) == [
        "4: send_window.timezone: unknown time zone 'Europe/Pariss' (did you mean 'Europe/Paris'?); expected 'lead' or an IANA time zone",
        "5: send_window.default_timezone: unknown time zone 'Mars/Olympus' (use an IANA name like Europe/Paris); expected an IANA time zone",
        "6: send_window.days.0: unknown day 'monday' (did you mean 'mon'?)",
        "7: send_window.hours: invalid end time in '09:00-25:00': use HH:MM from 00:01 to 24:00",
    ]


@pytest.mark.parametrize(
    "window, message",
    [
        ("{hours: '9-17'}", "send_window.hours: expected hours like '09:00-17:30', got '9-17'"),
        ("{hours: '24:00-24:00'}", "send_window.hours: invalid start time in '24:00-24:00': use HH:MM from 00:00 to 23:59"),
        ("{hours: '09:60-17:00'}", "send_window.hours: invalid start time in '09:60-17:00': use HH:MM from 00:00 to 23:59"),
        ("{hours: '10:00-10:00'}", "send_window.hours: no hour allowed: '10:00-10:00' starts where it ends"),
        ("{days: []}", "send_window.days: no day allowed: list at least one of mon, tue, wed, thu, fri, sat, sun"),
        ("{timezone: Paris}", "send_window.timezone: unknown time zone 'Paris' (use an IANA name like Europe/Paris); expected 'lead' or an IANA time zone"),
    ],
)
def test_send_window_with_no_allowed_slot(tmp_path: Path, window: str, message: str) -> None:
    path = write(tmp_path, HEAD + f"send_window: {window}\nsteps: [{{send: welcome}}]\n")

    assert report(path) == [f"3: {message}"]


@pytest.mark.parametrize("window", ["{timezone: lead}", "{timezone: America/New_York, hours: '00:00-24:00'}", "{days: [sat]}"])
def test_valid_send_windows(tmp_path: Path, window: str) -> None:
    path = write(tmp_path, HEAD + f"send_window: {window}\nsteps: [{{send: welcome}}]\n")

    assert report(path) == []


def test_an_overnight_window_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "send_window: {hours: '17:30-09:00'}\nsteps: [{send: welcome}]\n")

    assert report(path) == [
        "3: send_window.hours: warning: '17:30-09:00' runs overnight: emails go out from 17:30 to midnight"
        " and from midnight to 09:00 (write the earlier time first for a daytime window)",
    ]


def test_frequency_cap_needs_at_least_one_email(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "frequency_cap: {max: 0, per: 7d}\nsteps: [{send: welcome}]\n")

    assert report(path) == ["3: frequency_cap.max: must be at least 1, got 0"]


def test_enroll_stages_and_where_operators(tmp_path: Path) -> None:
    path = with_head(tmp_path, """\
        enroll:
          stages: [lead, MQL, prospect]
          where:
            source: web_form
            country: [FR, BE]
            company_size: {gte: 50, lesser: 500}
            job_title: {matches: "(vp|director"}
          auto_on: [create]
        steps: [{send: welcome}]
    """)

    assert report(path) == [
        "4: enroll.stages.1: unknown stage 'MQL' (did you mean 'mql'?)",
        "4: enroll.stages.2: unknown stage 'prospect' (expected one of: visitor, lead, mql, sql, opportunity, customer, disqualified, recycled)",
        "8: enroll.where.company_size: unknown operator 'lesser' (expected one of: eq, in, contains, startswith, endswith, matches, gte, lte, gt, lt, exists)",
        "9: enroll.where.job_title: invalid regular expression '(vp|director': missing ), unterminated subpattern at position 0",
        "10: enroll.auto_on.0: unknown trigger 'create' (did you mean 'created'?)",
    ]


def test_condition_keys(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {if: {temperature: hott}, then: done}
          - {if: {grade: G}, then: done}
          - {if: {score: {gtee: 50}}, then: done}
          - {if: {score: {gte: lots}}, then: done}
          - {if: {event: Email_Click}, then: done}
          - {if: {}, then: done}
          - {if: {stage: mql, temprature: hot}, then: done}
          - {id: done, send: welcome}
        exit_when: [{stage: client}]
    """)

    assert report(path) == [
        "4: steps.0.if.temperature: unknown temperature 'hott' (did you mean 'hot'?)",
        "5: steps.1.if.grade: unknown grade 'G' (expected one of: A, B, C, D, F)",
        "6: steps.2.if.score: unknown score operator 'gtee' (did you mean 'gte'?)",
        "7: steps.3.if.score.gte: expected a number, got 'lots'",
        "8: steps.4.if.event: event names are lower-case words joined by _, like email_click: got 'Email_Click' (did you mean 'email_click'?)",
        "9: steps.5.if: empty condition, which always holds: give at least one of temperature, stage, score, grade, event, step, attribute",
        "10: steps.6.if.temprature: unknown key 'temprature' (did you mean 'temperature'?)",
        "12: exit_when.0.stage: unknown stage 'client' (expected one of: visitor, lead, mql, sql, opportunity, customer, disqualified, recycled)",
    ]


def test_an_event_one_letter_off_a_built_in_is_a_warning(tmp_path: Path) -> None:
    path = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {wait_for: {event: email_clik, step: welcome}, timeout: 3d}
          - {wait_for: {event: trial_started}, timeout: 3d}
    """)

    assert report(path) == [
        "5: steps.1.wait_for.event: warning: 'email_clik' is not a built-in event (did you mean 'email_click'?);"
        " only custom events of that name will match",
    ]


def test_sender_must_be_an_address(tmp_path: Path) -> None:
    path = write(tmp_path, "name: trial\nsender: {from: Acme}\nsteps: [{send: welcome}]\n")

    assert report(path) == ["2: sender.from: expected an email address like hello@acme.example, got 'Acme'"]


def test_campaign_name_format(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD.replace("name: trial", "name: B2B Trial") + "steps: [{send: welcome}]\n")

    assert report(path) == ["1: name: use lower-case letters, digits, '-' and '_', like b2b-trial; got 'B2B Trial'"]


def test_line_breaks_and_control_characters_are_refused_where_they_could_forge_headers_or_lines(tmp_path: Path) -> None:
    # Double-quoted YAML turns \r\n and \x1b escapes into the characters themselves.
    path = write(tmp_path, """\
        name: "trial\\n"
        sender: {from: "Acme <hello@acme.example>\\r\\nBcc: all@victims.example", reply_to: "sales@acme.example\\n"}
        steps:
          - {id: "welcome\\r\\nsent welcome", send: welcome, subject: ["Hello", "Hi\\r\\nBcc: x@y.example"]}
          - {id: "wait\\x1b[2J", wait: 2d}
          - {id: last, send: welcome, subject: "Bye\\u2028now"}
    """)

    one_line = "must be one line of text without control characters: found"
    assert report(path) == [
        "1: name: use lower-case letters, digits, '-' and '_', like b2b-trial; got 'trial\\n'",
        f"2: sender.from: {one_line} '\\r' at character 26",
        f"2: sender.reply_to: {one_line} '\\n' at character 19",
        f"4: steps.0.id: {one_line} '\\r' at character 8",
        f"4: steps.0.subject.1: {one_line} '\\r' at character 3",
        f"5: steps.1.id: {one_line} '\\x1b' at character 5",
        f"6: steps.2.subject: {one_line} '\\u2028' at character 4",
    ]


def test_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: trial
        sender: {from: hello@acme.example, replyto: sales@acme.example}
        frequency_cap: {max: 3, per: 7days}
        steps:
          - {id: welcome, send: welcome}
          - {wait: soon}
          - {id: check, wait_for: {event: email_click, step: welcome}, timeout: 3d, on_timeout: nudge}
          - {goto: welcom}
    """)

    assert report(path) == [
        "2: sender.replyto: unknown key 'replyto' (did you mean 'reply_to'?)",
        "3: frequency_cap.per: invalid duration '7days': use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h",
        "6: steps.1.wait: invalid duration 'soon': use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h",
        "7: steps.2.on_timeout: unknown step id 'nudge' (expected one of: welcome, step-2, check, step-4)",
        "8: steps.3.goto: unknown step id 'welcom' (did you mean 'welcome'?)",
    ]
    with pytest.raises(CampaignError) as caught:
        load_campaign(path)
    assert len(caught.value.problems) == 5
    assert str(caught.value) == "\n".join(f"{path}:{line}" for line in report(path))


# ---------------------------------------------------------------- funnel


def test_funnel_problems(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        scoring:
          events:
            Email_Open: 1
            form_submit: lots
          fit:
            - {where: {job_title: {matches: "(?i(vp"}}, points: 20}
          grades: {A: 10, B: 20, C: 5, D: 0}
        qualify:
          mql: {score: 50, min_grade: E}
          sql: {bant: 5}
        handoff:
          owners: [alice@acme.example, bob]
          assign: {by: country, map: {FR: alice@acme.example, "*": carol}}
          notify: {webhook: crm.example/hooks}
    """, "funnel.yaml")

    assert report(path) == [
        "3: scoring.events.Email_Open: event names are lower-case words joined by _, like email_click: got 'Email_Open' (did you mean 'email_open'?)",
        "4: scoring.events.form_submit: expected points (a whole number) or a list of rules like - {points: 2}, got 'lots'",
        "6: scoring.fit.0.where.job_title: invalid regular expression '(?i(vp': missing -, : or ) at position 3",
        "7: scoring.grades: grades must go down from A to D: B (20) is above A (10)",
        "9: qualify.mql.min_grade: unknown grade 'E' (expected one of: A, B, C, D, F)",
        "10: qualify.sql.bant: expected 'all' or how many BANT facts must be true, 1 to 4; got 5",
        "12: handoff.owners.1: expected an email address like hello@acme.example, got 'bob'",
        "13: handoff.assign.map.*: expected an email address like hello@acme.example, got 'carol'",
        "14: handoff.notify.webhook: expected an http:// or https:// URL, got 'crm.example/hooks'",
    ]
    with pytest.raises(CampaignError):
        load_funnel(path)


def test_funnel_grade_bands_must_all_be_there(tmp_path: Path) -> None:
    path = write(tmp_path, "scoring:\n  grades: {A: 35, B: 20}\n", "funnel.yaml")

    assert report(path) == ["2: scoring.grades: missing grade C, D: give the lowest fit points of each of A, B, C, D"]


def test_funnel_assign_by_country(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        handoff:
          owners: [alice@acme.example, bob@acme.example]
          assign: {by: country, map: {NO: alice@acme.example, "*": bob@acme.example}}
    """, "funnel.yaml")

    funnel = load_funnel(path)

    assert funnel.handoff.assign != "round_robin"
    assert funnel.handoff.assign.map == {"NO": "alice@acme.example", "*": "bob@acme.example"}  # type: ignore[union-attr]


def test_funnel_assign_mistakes(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        handoff:
          assign: {by: country, mapping: {FR: alice@acme.example}}
        qualify:
          disqualify: [{grade: F}, {}]
    """, "funnel.yaml")
    other = write(tmp_path, "handoff: {assign: random}\n", "other-funnel.yaml")

    assert report(path) == [
        "2: handoff.assign.map: required, but missing",
        "2: handoff.assign.mapping: unknown key 'mapping' (did you mean 'map'?)",
        "4: qualify.disqualify.1: empty condition, which always holds: give at least one of temperature, stage, score, grade, event, step, attribute",
    ]
    with pytest.raises(CampaignError, match=r"handoff.assign: unknown value 'random' \(expected one of: round_robin\)"):
        load_funnel(other)  # any file name: the caller says it is the funnel


def test_funnel_rules_after_a_catch_all_warn(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        scoring:
          events:
            page_view:
              - {points: 2}
              - {where: {url: {contains: /pricing}}, points: 15}
            email_clik: 5
    """, "funnel.yaml")

    assert report(path) == [
        "5: scoring.events.page_view.1: warning: this rule never scores: the rule at line 4 has no `where` and matches every page_view first",
        "6: scoring.events.email_clik: warning: 'email_clik' is not a built-in event (did you mean 'email_click'?); only custom events of that name will match",
    ]


# ---------------------------------------------------------------- directories


def test_load_campaigns_sorted_by_name_without_the_funnel(tmp_path: Path) -> None:
    write(tmp_path, SAMPLE_FUNNEL, "funnel.yaml")
    write(tmp_path, HEAD.replace("trial", "zeta") + "steps: [{send: welcome}]\n", "a.yaml")
    write(tmp_path, HEAD.replace("trial", "alpha") + "steps: [{send: welcome}]\n", "b.yml")
    (tmp_path / "notes.txt").write_text("not a campaign")

    campaigns = load_campaigns(tmp_path)

    assert [c.name for c in campaigns] == ["alpha", "zeta"]
    assert campaigns[0].source_file == str(tmp_path / "b.yml")


def test_load_campaigns_reports_all_files_and_duplicate_names(tmp_path: Path) -> None:
    first = write(tmp_path, HEAD + "steps: [{send: welcome}]\n", "a.yaml")
    second = write(tmp_path, HEAD + "steps: [{send: welcome}]\n", "b.yaml")
    broken = write(tmp_path, HEAD.replace("trial", "other") + "steps: [{wait: soon}]\n", "c.yaml")

    with pytest.raises(CampaignError) as caught:
        load_campaigns(tmp_path)

    assert str(caught.value).splitlines() == [
        f"{broken}:3: steps.0.wait: invalid duration 'soon': use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h",
        f"{second}:1: name: campaign name 'trial' is already used by {first}",
    ]


def test_find_campaign_by_name_not_file_name(tmp_path: Path) -> None:
    write(tmp_path, SAMPLE_CAMPAIGN, "trial-sequence.yaml")
    write(tmp_path, HEAD.replace("trial", "other") + "steps: [{wait: soon}]\n", "broken.yaml")

    assert find_campaign(tmp_path, "b2b-trial").source_file == str(tmp_path / "trial-sequence.yaml")
    with pytest.raises(CampaignError, match="invalid duration 'soon'"):
        find_campaign(tmp_path, "other")


def test_find_an_unknown_campaign(tmp_path: Path) -> None:
    write(tmp_path, SAMPLE_CAMPAIGN, "b.yaml")
    write(tmp_path, HEAD + "steps: [{send: welcome}]\n", "a.yaml")

    with pytest.raises(CampaignError) as caught:
        find_campaign(tmp_path, "b2b")

    assert str(caught.value) == "unknown campaign 'b2b' (known: b2b-trial, trial)"
    assert isinstance(caught.value, KeyError)


def test_validate_a_directory_checks_the_funnel_as_a_funnel(tmp_path: Path) -> None:
    write(tmp_path, SAMPLE_CAMPAIGN, "b2b-trial.yaml")
    funnel = write(tmp_path, "qualify: {mql: {score: 0}}\n", "funnel.yaml")

    assert [str(p) for p in validate_paths([tmp_path], None)] == [f"{funnel}:1: qualify.mql.score: must be at least 1, got 0"]


def test_validate_a_missing_path(tmp_path: Path) -> None:
    assert [str(p) for p in validate_paths([tmp_path / "nope.yaml"], None)] == [
        f"{tmp_path / 'nope.yaml'}:1: (file): no such file or directory",
    ]


# ---------------------------------------------------------------- templates


# A campaign head whose sender has the postal address marketing email must show.
ADDRESSED = """\
name: trial
sender: {from: hello@acme.example, address: "Acme Inc., 1 Main Street, Springfield"}
"""
FOOTER_HTML = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ sender.address }}</p>\n'
FOOTER_TEXT = "Unsubscribe: {{ unsubscribe_url }}\n{{ sender.address }}\n"


def write_template(folder: Path, name: str, html: str, subject: str = "Hello", body: str = "Hi there",
                   footer: bool = True) -> None:
    """NAME.html and NAME.txt; with `footer`, the unsubscribe link and postal address after them."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.html").write_text(html + (FOOTER_HTML if footer else ""), encoding="utf-8")
    (folder / f"{name}.txt").write_text(f"Subject: {subject}\n\n{body}\n" + (FOOTER_TEXT if footer else ""),
                                        encoding="utf-8")


def test_templates_must_exist_and_render(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "welcome", "<p>Hello {{ lead.first_name or 'there' }}</p>\n")
    write_template(templates, "case_study", "<p>Hi</p>\n<p>{{ lead.frist_name }}</p>\n")
    path = campaign_with_steps(tmp_path, """\
          - {id: welcome, send: welcome}
          - {id: case-study, send: case_study}
          - {id: demo, send: demo_invite}
    """, ADDRESSED)

    lines = report(path, templates)

    assert lines[0].startswith("5: steps.1.send: template case_study.html line 2: ")
    assert "frist_name" in lines[0]
    assert lines[1:] == [f"6: steps.2.send: email 'demo_invite' not found: no demo_invite.html and no demo_invite.txt in {templates}"]


def test_the_funnel_handoff_template_must_exist(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "welcome", "<p>Hello</p>\n")
    path = write(tmp_path, "handoff:\n  notify: {template: sales_hand_off}\n", "funnel.yaml")

    (templates / "sales_handoff.html").write_text("<p>{{ lead.email }}</p>\n", encoding="utf-8")

    assert report(path, templates) == [
        f"2: handoff.notify.template: email 'sales_hand_off' not found: no sales_hand_off.html and no sales_hand_off.txt in {templates}",
    ]
    assert report(write(tmp_path, "handoff: {owners: [alice@acme.example]}\n", "funnel.yaml"), templates) == [
        f"1: handoff.notify.template: email 'sales_handoff' has no plain-text part: no sales_handoff.txt in {templates} "
        "(its first line is `Subject: ...`, then the text)",
    ]


def test_subject_variants_are_rendered_for_the_sample_leads_at_their_own_line(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "welcome", "<p>Hello</p>\n")
    path = campaign_with_steps(tmp_path, """\
          - id: welcome
            send: welcome
            subject:
              - "ok {{ lead.first_name or 'there' }}"
              - "ok {{ unknown_var }}"
          - {id: two, send: welcome, subject: "{{ lead.company or '' }}"}
          - {id: three, send: welcome, subject: "{{ lead.first_name }}, a story for you"}
    """, ADDRESSED)

    assert report(path, templates) == [
        "8: steps.0.subject.1: subject template: 'unknown_var' is undefined",
        "9: steps.1.subject: subject template: the subject is empty",
        "10: steps.2.subject: warning: subject template: prints None when the value is empty: give it a default, "
        'e.g. {{ lead.first_name or "there" }}',
    ]
    assert [p.severity for p in validate_paths([path], templates)] == ["error", "error", "warning"]


def test_the_handoff_template_is_checked_with_its_owner_set(tmp_path: Path) -> None:
    # The handoff email always goes to an assigned owner; a campaign email may have none.
    templates = tmp_path / "templates"
    write_template(templates, "sales_handoff", "<p>Hi {{ owner }}: {{ lead.email }}</p>\n", subject="SQL for {{ owner }}")
    write_template(templates, "welcome", "<p>Your rep: {{ owner }}</p>\n")
    funnel = write(tmp_path, "handoff: {owners: [alice@acme.example]}\n", "funnel.yaml")
    campaign = campaign_with_steps(tmp_path, "- {id: welcome, send: welcome}\n", ADDRESSED)

    assert report(funnel, templates) == []
    assert report(campaign, templates) == [
        "4: steps.0.send: template welcome.html line 1: prints None when the value is empty: give it a default, "
        'e.g. {{ lead.first_name or "there" }}',
    ]


def test_the_repository_campaigns_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    problems = validate_paths([root / "campaigns"], root / "templates" / "email")

    assert [str(p) for p in problems if p.severity == "error"] == []


# ---------------------------------------------------------------- JSON schema


def test_json_schema_accepts_the_contract_sample_and_rejects_unknown_keys() -> None:
    schema = campaign_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    sample = yaml.safe_load(SAMPLE_CAMPAIGN)

    assert list(validator.iter_errors(sample)) == []
    assert not validator.is_valid({**sample, "sendr": {"from": "x@y.example"}})
    assert not validator.is_valid({**sample, "steps": [{"send": "welcome", "wait": "2d"}]})
    assert not validator.is_valid({**sample, "steps": [{"id": "x"}]})


def test_json_schema_shape() -> None:
    schema = campaign_json_schema()

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "version" not in schema["properties"] and "source_file" not in schema["properties"]
    kinds = [ref["$ref"].rsplit("/", 1)[1] for ref in schema["properties"]["steps"]["items"]["oneOf"]]
    assert kinds == ["SendStep", "WaitStep", "WaitForStep", "GotoStep", "IfStep"]


def test_funnel_schema_command_accepts_the_sample_funnel_and_the_defaults(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NURTURE_HOME": str(tmp_path / "home"), "NURTURE_CAMPAIGNS_DIR": str(tmp_path)}

    def nurture(*args: str) -> Any:
        result = subprocess.run([sys.executable, "-m", "nurture.cli", *args], capture_output=True, text=True,
                                env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    schema = nurture("funnel", "schema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    repository_funnel = Path(__file__).resolve().parent.parent / "campaigns" / "funnel.yaml"
    defaults = nurture("funnel", "show", "--json")  # no funnel.yaml in tmp_path: the built-in defaults

    assert schema["title"] == "nurture funnel" and "version" not in schema["properties"]
    assert [e.message for e in validator.iter_errors(yaml.safe_load(repository_funnel.read_text()))] == []
    assert [e.message for e in validator.iter_errors(yaml.safe_load(SAMPLE_FUNNEL))] == []
    assert [e.message for e in validator.iter_errors(defaults)] == []
    assert [e.message for e in validator.iter_errors({})] == []
    assert not validator.is_valid({"scoring": {"evnts": {}}})
    assert not validator.is_valid({"scoring": {"events": {"email_open": "one"}}})
    assert not validator.is_valid({"handoff": {"sla": "2 days"}})
    assert not validator.is_valid({"qualify": {"sql": {"bant": 5}}})


def test_step_classes_keep_their_kind() -> None:
    assert [cls(**args).kind for cls, args in [
        (SendStep, {"id": "a", "send": "welcome"}),
        (WaitStep, {"id": "b", "wait": "2d"}),
    ]] == ["send", "wait"]
