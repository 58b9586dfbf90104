"""nurture.csvsafe: what nurture writes as CSV never runs as a spreadsheet formula;
what it imports is kept as typed."""

from __future__ import annotations

import csv
import io

import pytest

from nurture import crud
from nurture.csvsafe import neutralise, write_csv
from nurture.importer import import_file


@pytest.mark.parametrize("typed", ["=1+1", "+33 1 23 45 67 89", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1",
                                   '=HYPERLINK("http://evil.example","x")', "=cmd|' /C calc'!A0"])
def test_a_cell_that_would_start_a_formula_gets_a_single_quote(typed):
    assert neutralise(typed) == "'" + typed


@pytest.mark.parametrize("value", ["Ann", "ann@acme.example", "a=b", " =1", "", "O'Brien", 42, -5, 2.5, True, None])
def test_anything_else_is_left_alone(value):
    assert neutralise(value) == value


def test_write_csv_neutralises_every_cell_and_reads_back():
    out = io.StringIO(newline="")
    write_csv(out, ["email", "=notes"], [["ann@acme.example", '=HYPERLINK("x")'], ["bob@acme.example", None],
                                          ["cy@acme.example", -5], ["dee@acme.example", 'say "hi",\nbye']])

    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows == [["email", "'=notes"], ["ann@acme.example", "'=HYPERLINK(\"x\")"], ["bob@acme.example", ""],
                    ["cy@acme.example", "-5"], ["dee@acme.example", 'say "hi",\nbye']]


async def test_import_keeps_cells_as_typed_leading_tab_included(stack, tmp_path):
    path = tmp_path / "leads.csv"
    path.write_text('email,first_name,notes\nann@acme.example,"\t=1+1",=HYPERLINK("x")\n', encoding="utf-8")

    report = await import_file(stack.nurture, path)

    assert report.created == 1, report.problems
    lead = stack.show("ann@acme.example")
    assert lead["first_name"] == "\t=1+1"
    with stack.session() as session:
        assert crud.get_lead(session=session, email="ann@acme.example").attributes == {"notes": '=HYPERLINK("x")'}
