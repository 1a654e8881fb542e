"""Turning runs into the figures that are printed and written to JSON.

Medians over rounds (not means) because one disturbed run on a shared 2-core machine should not
move the figure; min and max are shown so that the spread is visible. Ratios are taken per round
(the relay's run against Postfix's run of the same round and configuration), then their median.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence

from measure import summary

RATIOS = (("d", "b"), ("d", "c"), ("e", "b"), ("e", "c"))
PROBE = {"a": "loadgen -> smtp-sink (the probe's floor, at d's rate)", "b": "loadgen -> Postfix -> sink",
         "c": "loadgen -> Postfix+OpenDKIM -> sink", "d": "loadgen -> relay (trusted net) -> sink",
         "e": "loadgen TLS+AUTH -> relay -> sink"}


def _name(concurrency: int, reuse: bool) -> str:
    return f"c{concurrency} {'reuse' if reuse else 'new'}"


def _runs(runs: list[dict], path: str, concurrency: int | None = None, reuse: bool | None = None) -> list[dict]:
    return [r for r in runs if r["path"] == path and (concurrency is None or r["concurrency"] == concurrency)
            and (reuse is None or r["reuse"] == reuse)]


def medians(runs: list[dict], path: str) -> dict[str, float]:
    """Median msg/s of `path` per configuration (what the latency probe takes its peak from)."""
    by_config: dict[str, list[float]] = {}
    for r in _runs(runs, path):
        by_config.setdefault(_name(r["concurrency"], r["reuse"]), []).append(r["rate"])
    return {k: statistics.median(v) for k, v in by_config.items()}


def summarise(runs: list[dict], paths: Sequence[str], configs: Sequence[tuple[int, bool]]) -> dict:
    """path -> configuration -> msg/s median/min/max, CPU ms per message (median), peak RSS (max)."""
    out: dict = {}
    for path in paths:
        for concurrency, reuse in configs:
            chosen = _runs(runs, path, concurrency, reuse)
            if not chosen:
                continue
            cpu = [r["cpu_ms_per_message"] for r in chosen if r["cpu_ms_per_message"] is not None]
            rss = [r["peak_rss_mib"] for r in chosen if r["peak_rss_mib"] is not None]
            pss = [r["peak_pss_mib"] for r in chosen if r.get("peak_pss_mib") is not None]
            out.setdefault(path, {})[_name(concurrency, reuse)] = {
                "rate": {k: round(v, 1) for k, v in summary([r["rate"] for r in chosen]).items()},
                "cpu_ms_per_message": round(statistics.median(cpu), 3) if cpu else None,
                "peak_rss_mib": max(rss) if rss else None,
                "peak_pss_mib": max(pss) if pss else None,
                "foreign_cpu_share": _median([r.get("foreign_cpu_share") for r in chosen]),
                "rounds": len(chosen)}
    return out


def cpu_per_message(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Median CPU ms per message of each server path over its runs, per connection mode (b: Postfix,
    c: Postfix+OpenDKIM, d and e: every process of the relay node)."""
    out: dict[str, dict[str, float]] = {}
    for path in "bcde":
        for mode, reuse in (("new", False), ("reuse", True)):
            values = [r["cpu_ms_per_message"] for r in _runs(runs, path, reuse=reuse)
                      if r["cpu_ms_per_message"] is not None]
            if values:
                out.setdefault(path, {})[mode] = round(statistics.median(values), 3)
    return out


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def ratios(runs: list[dict], configs: Sequence[tuple[int, bool]]) -> dict:
    """configuration -> "d/b" etc. -> per-round ratios of msg/s and their median."""
    out: dict = {}
    for concurrency, reuse in configs:
        for top, bottom in RATIOS:
            per_round = []
            for r in _runs(runs, top, concurrency, reuse):
                other = [o for o in _runs(runs, bottom, concurrency, reuse) if o["round"] == r["round"]]
                if other:
                    per_round.append(round(r["rate"] / other[0]["rate"], 3))
            if per_round:
                out.setdefault(_name(concurrency, reuse), {})[f"{top}/{bottom}"] = {
                    "rounds": per_round, "median": round(statistics.median(per_round), 3)}
    return out


def render(results: dict, paths: Sequence[str], configs: Sequence[tuple[int, bool]]) -> str:
    """The plain-text report printed at the end of `make bench`."""
    lines = [f"\nCPU: {results['cpu']}; Postfix {results.get('postfix', '?')}; {results.get('opendkim', '')}",
             f"{results['messages']} messages of {results['message_bytes']} bytes per run, {results['rounds']} "
             f"round(s), relay workers = {results['relay_workers']}\n",
             f"{'path':<42} {'config':<10} {'median':>8} {'min':>8} {'max':>8}  {'CPU ms/msg':>10} {'peak RSS MiB':>12} {'PSS MiB':>8} {'others':>7}"]
    for path in paths:
        for name, s in results["summary"].get(path, {}).items():
            cpu = "-" if s["cpu_ms_per_message"] is None else f"{s['cpu_ms_per_message']:.2f}"
            rss = "-" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:.0f}"
            pss = "-" if s.get("peak_pss_mib") is None else f"{s['peak_pss_mib']:.0f}"
            other = "-" if s.get("foreign_cpu_share") is None else f"{s['foreign_cpu_share']:.0%}"
            lines.append(f"{path + ' ' + results['paths'][path]:<42} {name:<10} {s['rate']['median']:>8.1f} "
                         f"{s['rate']['min']:>8.1f} {s['rate']['max']:>8.1f}  {cpu:>10} {rss:>12} {pss:>8} {other:>7}")
    lines.append("(others: median share of the machine's CPU used by processes this benchmark did not start, "
                 "during the run; above ~10 % the figures are disturbed)")
    if results["ratios"]:
        lines.append(f"\n{'ratio of msg/s':<14} " + " ".join(f"{n:>24}" for n in (f"{t}/{b}" for t, b in RATIOS)))
        for name, rs in results["ratios"].items():
            cells = []
            for t, b in RATIOS:
                r = rs.get(f"{t}/{b}")
                cells.append(f"{r['median']:.3f} [{', '.join(f'{x:.2f}' for x in r['rounds'])}]" if r else "-")
            lines.append(f"{name:<14} " + " ".join(f"{c:>24}" for c in cells))
    cpu = results.get("cpu_per_message") or {}
    if cpu:
        names = {"b": "Postfix", "c": "Postfix+OpenDKIM", "d": "relay (trusted net)", "e": "relay (TLS+AUTH)"}
        lines.append("\nCPU ms per message (median over concurrencies and rounds), one connection per message / reuse:")
        for path, modes in cpu.items():
            lines.append(f"  {path} {names[path]:<22} " + "  ".join(f"{m} {v:7.2f}" for m, v in modes.items()))
        for top, bottom in RATIOS:
            both = [m for m in ("new", "reuse") if m in cpu.get(top, {}) and m in cpu.get(bottom, {})]
            if both:
                lines.append(f"  {top}/{bottom} CPU ratio: " + "  ".join(
                    f"{m} {cpu[top][m] / cpu[bottom][m]:.2f}x" for m in both))
    if results["latency"]:
        lines.append("\nsubmission reply latency (end of DATA -> 250) at a fixed rate of half the path's peak, "
                     "20 pooled connections:")
        for path, lat in results["latency"].items():
            if "error" in lat:
                lines.append(f"  {path}: failed: {lat['error']}")
            else:
                lines.append(f"  {path} {PROBE[path]:<52} at {lat['rate']:7.1f} msg/s: "
                             f"p50 {lat['p50_ms']:7.2f} ms  p99 {lat['p99_ms']:7.2f} ms  ({lat['messages']} messages"
                             f"{', ' + str(lat['late']) + ' started late' if lat['late'] else ''})")
    extra = [r for r in results["runs"] if r.get("extra_at_sink")]
    if extra:
        lines.append("\nWARNING: the sink received more than N in: " + ", ".join(
            f"round {r['round']} {r['path']} {_name(r['concurrency'], r['reuse'])} (+{r['extra_at_sink']})" for r in extra))
    if results["checks"]:
        lines.append("\ncorrectness check (before the runs): "
                     + "; ".join(f"{p}: {v}" for p, v in results["checks"].items()))
    if results["failures"]:
        lines.append("\nFAILED: " + "\n        ".join(f"{p}: {v}" for p, v in results["failures"].items()))
    return "\n".join(lines)
