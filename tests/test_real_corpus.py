"""The classifier on real mail from public corpora (tests/data/real/, README.md there for sources and
licenses): recall and precision per kind, hard/soft and exact recipients of bounces, held to the goals
that the README states. The expected readings (expected.toml) were written by reading each mail.

Two views: the message as `websofttt inbound classify` sees a saved file (no role address), and as
the listener sees it at the bounce address (bounce+TOKEN@, where bounces and auto-replies arrive).
"""
from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inbound.classify import KINDS, Classification, classify

DATA = Path(__file__).parent / "data" / "real"
EXPECTED = tomllib.loads((DATA / "expected.toml").read_text(encoding="utf-8"))
PERMANENT = {True: True, False: False, "none": None}
SCORED = ("bounce", "complaint", "auto_reply", "other")
GOALS = {"bounce recall": 0.95, "hard/soft": 0.90, "recipients": 0.90, "complaint recall": 0.95,
         "auto_reply recall": 1.0}
VIEWS = {"offline": [], "bounce address": ["bounce"]}


def read(name: str, roles: list[str]) -> Classification:
    return classify((DATA / name).read_bytes(), roles, [None] * len(roles))


@dataclass
class Score:
    """Counts over the corpus for one view, and the samples behind every miss."""
    expected: Counter = field(default_factory=Counter)
    got: Counter = field(default_factory=Counter)
    right: Counter = field(default_factory=Counter)
    misses: dict[str, list[str]] = field(default_factory=dict)

    def miss(self, name: str, what: str) -> None:
        self.misses.setdefault(name, []).append(what)

    def ratio(self, key: str) -> float:
        return self.right[key] / self.expected[key] if self.expected[key] else 1.0

    def precision(self, kind: str) -> float:
        return self.right[kind] / self.got[kind] if self.got[kind] else 1.0

    def figures(self) -> dict[str, float]:
        return {"bounce recall": self.ratio("bounce"), "hard/soft": self.ratio("hard/soft"),
                "recipients": self.ratio("recipients"), "complaint recall": self.ratio("complaint"),
                "auto_reply recall": self.ratio("auto_reply")}


def score(roles: list[str]) -> Score:
    s = Score()
    for name, spec in sorted(EXPECTED.items()):
        got = read(name, roles)
        want = spec["kind"]
        s.expected[want] += 1
        s.got[got.kind] += 1
        if got.kind == want:
            s.right[want] += 1
        else:
            s.miss(name, f"kind {got.kind} ({got.evidence}), expected {want}")
        if want != "bounce":
            continue
        s.expected["hard/soft"] += 1
        if got.permanent is PERMANENT[spec["permanent"]]:
            s.right["hard/soft"] += 1
        else:
            s.miss(name, f"permanent {got.permanent}, expected {spec['permanent']}")
        s.expected["recipients"] += 1
        if sorted(got.recipients) == sorted(spec["recipients"]):
            s.right["recipients"] += 1
        else:
            s.miss(name, f"recipients {list(got.recipients)}, expected {spec['recipients']}")
    return s


SCORES = {view: score(roles) for view, roles in VIEWS.items()}


def test_every_sample_has_an_entry_and_the_corpus_is_wide():
    assert sorted(EXPECTED) == sorted(str(p.relative_to(DATA)) for p in DATA.glob("*/*.eml"))
    assert len(EXPECTED) >= 150
    assert len({spec["family"] for spec in EXPECTED.values()} - {"unknown", "person"}) >= 40
    for name, spec in EXPECTED.items():
        assert spec["kind"] in KINDS and spec["kind"] != "unsubscribe", name
        assert (spec["permanent"] == "none") is (spec["kind"] != "bounce"), name
        assert all(a == a.lower() and "@" in a for a in spec["recipients"]), name


@pytest.mark.parametrize("view", VIEWS)
def test_goals(view, capsys):
    s = SCORES[view]
    figures = s.figures()
    with capsys.disabled():
        print(f"\nreal corpus, {view}: {len(EXPECTED)} samples")
        for kind in SCORED:
            print(f"  {kind:11} {s.expected[kind]:4} expected  recall {s.ratio(kind):6.1%}  "
                  f"precision {s.precision(kind):6.1%}")
        for key in ("hard/soft", "recipients"):
            print(f"  {key:11} {s.right[key]:4}/{s.expected[key]} right ({s.ratio(key):.1%})")
        for name, what in sorted(s.misses.items()):
            print(f"  miss {name}: {'; '.join(what)}")
    assert {k: v for k, v in figures.items() if v < GOALS[k]} == {}


@pytest.mark.parametrize("view", VIEWS)
def test_nothing_else_is_taken_for_a_bounce_or_a_complaint(view):
    s = SCORES[view]
    assert s.precision("bounce") >= 0.95 and s.precision("complaint") >= 0.95


@pytest.mark.parametrize("name", sorted(n for n, s in EXPECTED.items() if s["kind"] != "other"))
def test_no_report_or_auto_reply_is_an_unsubscribe_request(name):
    assert read(name, ["unsubscribe"]).kind != "unsubscribe"
