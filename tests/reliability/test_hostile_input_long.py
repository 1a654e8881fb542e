"""The long hostile-input run (`make reliability`): 100,000 generated cases against both listeners.

The strategies, checks and relay are tests/test_hostile_input.py's; here each strategy gets its share of
`WEBSOFTTT_FUZZ_EXAMPLES` (default 100,000), cut into chunks of at most CHUNK cases so that no single
test nears the 3,600 s timeout of `make reliability`. The explicit cases of that module run here
(with the idle-connection flood and the slow drip) once as well; last, the summary line:

    hostile inputs run: N, server answered all, crashes: 0, max RSS growth: X MB

Measured on 2 cores: see README, Reliability.
"""
from __future__ import annotations

import math
import os

import pytest

from tests import test_hostile_input as H
from tests.test_hostile_input import hostile  # noqa: F401  the module-scoped relay, one for this module
from tests.test_hostile_input import (  # noqa: F401  run here too, against this module's relay
    test_a_long_folded_header_does_not_stall_other_clients,
    test_a_pipelined_flood_does_not_stall_other_clients,
    test_a_second_starttls_inside_tls_is_refused_or_closed,
    test_crlf_in_an_authenticated_recipient_never_reaches_the_spool,
    test_giant_messages,
    test_idle_connection_flood,
    test_lines_found_by_the_generated_runs,
    test_lines_pipelined_after_a_closing_reply_raise_nothing,
    test_no_smuggling_to_the_next_hop,
    test_oversized_messages_get_552_and_the_server_goes_on,
    test_slow_drip_does_not_hold_up_other_clients,
    test_starttls_sessions_give_back_their_inbound_slot,
)

TOTAL = int(os.environ.get("WEBSOFTTT_FUZZ_EXAMPLES") or 100_000)
CHUNK = 5_000
# hypothesis keeps every example of a run (its tree of choices) until the run ends: 2,000 cases of lines
# up to 2 MiB held 3.8 GB in one run, which the peak-RSS bound would blame on the server
CHUNK_BY_STRATEGY = {"long_lines": 250}
LEAK_BOUND_MB = 100     # live memory may not grow by more than this from the first quarter of the run to the end
LIVE: list[float] = []  # live memory (RSS after malloc_trim) after each chunk, MB


def chunks() -> list[tuple[str, int, int]]:
    """(strategy, chunk number, cases in it) for every strategy's share of TOTAL."""
    out = []
    for name in H.FUZZERS:
        cases = H.examples(name, TOTAL)
        parts = math.ceil(cases / CHUNK_BY_STRATEGY.get(name, CHUNK))
        out += [(name, i, math.ceil(cases / parts)) for i in range(parts)]
    return out


def test_the_run_is_big_enough():
    assert sum(n for _, _, n in chunks()) >= TOTAL


@pytest.mark.parametrize("name,part,cases", chunks(), ids=[f"{n}-{i}" for n, i, _ in chunks()])
def test_generated(hostile, name, part, cases):
    H.run_fuzzer(hostile, name, count=cases)
    LIVE.append(hostile.heartbeat.live_memory())


def test_zz_report(hostile):
    s = H.summary(hostile)
    answered = "server answered all" if s["answered"] == s["cases"] else \
        f"server answered {s['answered']:,} of them"
    print(f"\nhostile inputs run: {s['cases']:,}, {answered}, crashes: {s['crashes']}, "
          f"max RSS growth: {s['peak_rss_growth_mb']:.0f} MB (after the run: {s['rss_growth_untrimmed_mb']:.0f} MB, "
          f"{s['rss_growth_mb']:.0f} MB once glibc returns its free arena memory)")
    print(f"by strategy: {s['by_strategy']}; seconds: {s['seconds_by_strategy']}; slowest answer to another "
          f"client: {s['slowest_heartbeat_s']} s ({s['slowest_during']}; not counted: {s['slowest_heartbeat_gc_s']} s "
          f"in the garbage collector, {s['gc_seconds']} s in all)")
    if s["slowest_stack"]:
        print(f"every thread while that answer was late:\n{s['slowest_stack']}")
    quarter = max(1, len(LIVE) // 4)
    growth = LIVE[-1] - max(LIVE[:quarter])
    print(f"live memory after each chunk (MB): {[round(m) for m in LIVE]}; growth after the first quarter: "
          f"{growth:.0f} MB")
    # A long run holds more at once than the short one (hypothesis keeps its examples, glibc its arenas of
    # the threads that signed or stored megabyte copies), so the bound here is on growth with the number
    # of cases, which is what a leak shows: 100 MB over 75,000 cases is about 1 kB per case.
    assert growth < LEAK_BOUND_MB, LIVE
    H.assert_summary(s, rss_bound=H.RSS_BOUND_MB * 3)
