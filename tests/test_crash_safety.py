"""kill -9 at random moments under load: nothing answered 250 is lost (tests/reliability/killloop.py).

The short version of `make reliability`: 3 kills while tenants submit, 2 while unsubscribes and
bounces come in. Each prints its figures (visible with -s).
"""
from __future__ import annotations

import random

import pytest

from tests.reliability.killloop import Node, inbound_run, submission_run


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for both runs (each starts and kills its own serve): `init` is paid once."""
    node = Node(tmp_path_factory.mktemp("crash"))
    yield node
    node.close()


def _report(result, node: Node) -> str:
    return (f"{result.summary()}\n{result.details()}\nlost: {result.lost[:20]}\n"
            f"unexplained duplicates: {result.unexplained[:20]}\nserve.log:\n{node.log_tail()}")


@pytest.mark.timeout(90)
def test_acknowledged_mail_survives_kill_9_and_is_delivered(node):
    result = submission_run(node, kills=3, rng=random.Random(), threads=6)
    print(f"\nsubmission: {result.summary()}\n{result.details()}")
    assert result.acknowledged > 0, _report(result, node)
    assert result.lost == [], _report(result, node)
    assert result.unexplained == [], _report(result, node)    # a duplicate only where a kill had a copy in flight


@pytest.mark.timeout(90)
def test_acknowledged_unsubscribes_and_bounces_survive_kill_9(node):
    result = inbound_run(node, kills=2, rng=random.Random(), tokens=120, threads=4, pace=0.1)
    print(f"\ninbound: {result.summary()}\n{result.details()}")
    assert result.acknowledged > 0, _report(result, node)
    assert result.lost == [], _report(result, node)
    assert result.unexplained == [], _report(result, node)    # acted on twice only where a kill intervened
