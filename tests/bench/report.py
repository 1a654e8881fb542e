"""Turning runs into the figures that are printed and written to JSON.

Medians over rounds (not means) because one disturbed run on a shared 2-core machine should not
move the figure; min and max are shown so that the spread is visible. Ratios are taken per round
(the relay's run against Postfix's run of the same round and configuration), then their median.
The AUTH paths with a slow password check (e, f) may run fewer messages per run than the others in
the same round (see run.py, --auth-messages): a ratio of rates is still taken within the round.
The heartbeat probe's NOOP reply times are pooled over the rounds of a configuration before their
percentiles are taken (a single run of a quick benchmark holds a few dozen of them).
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence

from measure import percentile, summary

RATIOS = (("d", "b"), ("d", "c"), ("e", "d"), ("e", "f"), ("g", "d"), ("d-pg", "d"), ("d-pg1ms", "d"),
          ("d-shaped", "d"), ("d-secure", "d-mx"))
PROBE = {"a": "loadgen -> smtp-sink (the probe's floor, at d's rate)", "b": "loadgen -> Postfix -> sink",
         "c": "loadgen -> Postfix+OpenDKIM -> sink", "d": "loadgen -> relay (trusted net) -> sink",
         "e": "loadgen TLS+AUTH password -> relay -> sink",
         "f": "loadgen TLS+AUTH -> Postfix+Dovecot+OpenDKIM -> sink",
         "g": "loadgen TLS+AUTH generated -> relay -> sink"}
SERVER = {"b": "Postfix", "c": "Postfix+OpenDKIM", "d": "relay (trusted net)", "e": "relay (TLS+AUTH password)",
          "f": "Postfix+Dovecot+OpenDKIM (TLS+AUTH)", "g": "relay (TLS+AUTH generated)",
          "d-pg": "relay + PostgreSQL (trusted net)", "d-pg1ms": "relay + PostgreSQL 1 ms away",
          "d-shaped": "relay, the sink a shaped site", "d-mx": "relay, opportunistic TLS to the MX",
          "d-secure": "relay, MTA-STS + DANE to the MX"}
HEARTBEAT_TARGET_MS = 20        # the heartbeat's p99 a relay whose store never blocks its event loop stays under
WIDTH = 56


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
            client = [r["client_cpu_ms_per_message"] for r in chosen if r.get("client_cpu_ms_per_message") is not None]
            rss = [r["peak_rss_mib"] for r in chosen if r["peak_rss_mib"] is not None]
            pss = [r["peak_pss_mib"] for r in chosen if r.get("peak_pss_mib") is not None]
            parts: dict[str, list[float]] = {}
            for r in chosen:
                for k, v in (r.get("cpu_ms_parts") or {}).items():
                    parts.setdefault(k, []).append(v)
            beats = [ms for r in chosen for ms in r.get("heartbeat_ms", ())]
            proxy = [r["proxy_cpu_ms_per_message"] for r in chosen if "proxy_cpu_ms_per_message" in r]
            hops: dict[str, list[float]] = {}
            for r in chosen:
                for k, v in (r.get("next_hop_cpu_ms_per_message") or {}).items():
                    hops.setdefault(k, []).append(v)
            out.setdefault(path, {})[_name(concurrency, reuse)] = {
                "messages": chosen[0]["messages"],
                **({"heartbeat": {"count": len(beats), "p50_ms": round(percentile(beats, 50), 2),
                                  "p99_ms": round(percentile(beats, 99), 2), "max_ms": max(beats)}} if beats else {}),
                **({"proxy_cpu_ms_per_message": round(statistics.median(proxy), 3)} if proxy else {}),
                **({"next_hop_cpu_ms_per_message": {k: round(statistics.median(v), 3) for k, v in hops.items()}}
                   if hops else {}),
                "cpu_ms_parts": {k: round(statistics.median(v), 3) for k, v in parts.items()} or None,
                "rate": {k: round(v, 1) for k, v in summary([r["rate"] for r in chosen]).items()},
                "cpu_ms_per_message": round(statistics.median(cpu), 3) if cpu else None,
                "client_cpu_ms_per_message": round(statistics.median(client), 3) if client else None,
                "peak_rss_mib": max(rss) if rss else None,
                "peak_pss_mib": max(pss) if pss else None,
                "foreign_cpu_share": _median([r.get("foreign_cpu_share") for r in chosen]),
                "rounds": len(chosen)}
    return out


def cpu_per_message(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Median CPU ms per message of each server path over its runs, per connection mode (b: Postfix,
    c: Postfix+OpenDKIM, f: Postfix+OpenDKIM+Dovecot, d, e and g: every process of the relay node, d-pg and
    d-pg1ms: the relay node's and the PostgreSQL server's)."""
    out: dict[str, dict[str, float]] = {}
    for path in SERVER:
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
    rsa = results.get("openssl_rsa2048") or {}
    lines = [f"\nCPU: {results['cpu']}; Postfix {results.get('postfix', '?')}; {results.get('opendkim', '')}; "
             f"Dovecot {results.get('dovecot') or '-'}; relay event loop: {results.get('loop', '?')}",
             "openssl speed -seconds 1 rsa2048: " + (f"{rsa['sign_per_s']:.0f} sign/s, {rsa['verify_per_s']:.0f} verify/s "
                                                     f"({rsa.get('openssl', '')}, one core)" if "sign_per_s" in rsa
                                                     else f"failed: {rsa.get('error', 'not run')}"),
             f"{results['message_bytes']} bytes per message, {results['rounds']} round(s), relay workers = "
             f"{results['relay_workers']}; messages per run: {results.get('messages_note') or results['messages']}\n",
             f"{'path':<{WIDTH}} {'config':<10} {'msgs':>5} {'median':>8} {'min':>8} {'max':>8}  {'CPU ms/msg':>10} "
             f"{'client':>7} {'peak RSS MiB':>12} {'PSS MiB':>8} {'others':>7}"]
    for path in paths:
        for name, s in results["summary"].get(path, {}).items():
            cpu = "-" if s["cpu_ms_per_message"] is None else f"{s['cpu_ms_per_message']:.2f}"
            client = "-" if s.get("client_cpu_ms_per_message") is None else f"{s['client_cpu_ms_per_message']:.2f}"
            rss = "-" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:.0f}"
            pss = "-" if s.get("peak_pss_mib") is None else f"{s['peak_pss_mib']:.0f}"
            other = "-" if s.get("foreign_cpu_share") is None else f"{s['foreign_cpu_share']:.0%}"
            lines.append(f"{path + ' ' + results['paths'][path]:<{WIDTH}} {name:<10} {s.get('messages', ''):>5} "
                         f"{s['rate']['median']:>8.1f} {s['rate']['min']:>8.1f} {s['rate']['max']:>8.1f}  {cpu:>10} "
                         f"{client:>7} {rss:>12} {pss:>8} {other:>7}")
    lines.append("(client: CPU ms per message of the load generator, smtp-source or loadgen.py, on the same cores as the "
                 "server; others: median share of the machine's CPU used by processes this benchmark did not start, "
                 "during the run; above ~10 % the figures are disturbed)")
    if results["ratios"]:
        shown = [(t, b) for t, b in RATIOS if any(f"{t}/{b}" in rs for rs in results["ratios"].values())]
        lines.append(f"\n{'ratio of msg/s':<14} " + " ".join(f"{n:>22}" for n in (f"{t}/{b}" for t, b in shown)))
        for name, rs in results["ratios"].items():
            cells = []
            for t, b in shown:
                r = rs.get(f"{t}/{b}")
                cells.append(f"{r['median']:.3f} [{', '.join(f'{x:.2f}' for x in r['rounds'])}]" if r else "-")
            lines.append(f"{name:<14} " + " ".join(f"{c:>22}" for c in cells))
        lines.append("(median of the per-round ratios [each round's]; d/b, d/c: relay vs Postfix on the trusted "
                     "network; e/d: what STARTTLS + AUTH with a person's password costs the relay; e/f: the relay vs "
                     "Postfix + Dovecot + OpenDKIM, both over STARTTLS + AUTH; g/d: the same with a generated credential. "
                     "e and g are driven by loadgen.py (Python), d by smtp-source (C): on a small machine the injectors "
                     "take different shares of the CPU, so for e/d and g/d the CPU ratios below are the cleaner "
                     "figure; d-pg/d: the relay with its store on PostgreSQL vs on SQLite; d-pg1ms/d: the same with "
                     "the store 1 ms away, a round trip the relay should overlap rather than wait for; d-shaped/d: what "
                     "shaping costs; d-secure/d-mx: the relay delivering through DNS (Unbound) to a STARTTLS MX with the "
                     "domain's MTA-STS enforce policy and the MX host's DANE-EE TLSA record checked (policies cached in "
                     "memory, DNSSEC trusted) vs the same MX with both off, opportunistic STARTTLS; both pass the same "
                     "Postfix MX, whose CPU is not in the relay's)")
    cpu = results.get("cpu_per_message") or {}
    if cpu:
        lines.append("\nCPU ms per message (median over concurrencies and rounds), one connection per message / reuse:")
        for path, modes in cpu.items():
            lines.append(f"  {path:<8} {SERVER[path]:<37} " + "  ".join(f"{m} {v:7.2f}" for m, v in modes.items()))
        for top, bottom in RATIOS:
            both = [m for m in ("new", "reuse") if m in cpu.get(top, {}) and m in cpu.get(bottom, {})]
            if both:
                lines.append(f"  {top}/{bottom} CPU ratio: " + "  ".join(
                    f"{m} {cpu[top][m] / cpu[bottom][m]:.2f}x" for m in both))
        parts = [(path, name, s["cpu_ms_parts"]) for path in paths
                 for name, s in results["summary"].get(path, {}).items() if s.get("cpu_ms_parts")]
        if parts:
            lines.append("  by process tree: " + "; ".join(
                f"{path} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in ps.items()) for path, name, ps in parts))
    hops = [(path, name, s["next_hop_cpu_ms_per_message"]) for path in paths
            for name, s in results["summary"].get(path, {}).items() if s.get("next_hop_cpu_ms_per_message")]
    if hops:
        lines.append("  the next hop's own CPU (tls_mx.py: the Postfix MX, Knot + Unbound, the MTA-STS policy server; "
                     "not in the relay's figures), ms per message: " + "; ".join(
                         f"{path} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in hs.items()) for path, name, hs in hops))
    lines += _render_store(results, paths)
    costs = results.get("password_check")
    if costs:
        lines.append(f"\none password check, CPU ms (median of {costs['checks_timed']} timed checks on this machine): "
                     f"relay scrypt {costs['scrypt']['params']} {costs['scrypt']['cpu_ms']:.1f} ms; Dovecot ARGON2ID "
                     f"{costs['argon2id']['params']} {costs['argon2id']['cpu_ms']:.1f} ms (both 32 MiB). The relay "
                     f"remembers a verified login per worker (submission.auth_cache_ttl); Dovecot's auth cache is on, but "
                     f"Dovecot 2.3's passwd-file passdb has no cache key, so every login checks the hash, one at a "
                     f"time in the single auth process (see dovecot.py)")
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
    ehlo = results.get("ehlo")
    if ehlo:
        lines.append(f"\nEHLO reply time (write EHLO -> last line of the reply), median of "
                     f"{next((v['count'] for v in ehlo.values() if 'count' in v), 20)}, each on a new connection, "
                     f"the client with TCP_NODELAY as asyncio's clients (unless said):")
        for name, v in ehlo.items():
            lines.append(f"  {name:<46} " + (f"{v['median_ms']:7.3f} ms  (min {v['min_ms']:.3f}, max {v['max_ms']:.3f})"
                                             if "median_ms" in v else f"failed: {v['error']}"))
    floor = results.get("floor")
    if floor:
        if "error" in floor and "total_new_ms" not in floor:
            lines.append(f"\nfloor of the stack on the relay's loop ({floor.get('loop', '?')}, floor.py): RSA-2048 "
                         f"{floor.get('rsa_sign_ms', float('nan')):.2f} ms, "
                         f"inbound {floor.get('inbound_new_ms', float('nan')):.2f}"
                         f"/{floor.get('inbound_reuse_ms', float('nan')):.2f} ms; FAILED: {floor['error']}")
        else:
            lines.append(f"\nfloor of the stack on the relay's loop ({floor['loop']}, floor.py, {floor['messages']} messages): "
                         f"RSA-2048 signature {floor['rsa_sign_ms']:.2f} ms + inbound accept-and-drop "
                         f"{floor['inbound_new_ms']:.2f} ms new / {floor['inbound_reuse_ms']:.2f} ms reuse + outbound "
                         f"{floor['outbound_ms']:.2f} ms = {floor['total_new_ms']:.2f} ms per signed, relayed message with "
                         f"one connection per message, {floor['total_reuse_ms']:.2f} ms with reuse")
    flood = results.get("flood")
    if flood:
        lines.append("\nflood probe: the verified tenant (path e: STARTTLS + AUTH, one connection per message, c10, from "
                     "127.0.0.1) alone and under a flood of wrong passwords from 50 clients (127.0.0.2 ... 127.0.0.51), in "
                     "alternating windows, each variant on a fresh relay node:")
        for users, v in flood.items():
            lines += render_flood(users, v)
    retried = [r for r in results["runs"] if r.get("client_errors")]
    if retried:
        lines.append("\nWARNING: the client met errors and retried (every message was sent in the end) in: " + "; ".join(
            f"round {r['round']} {r['path']} {_name(r['concurrency'], r['reuse'])}: {', '.join(r['client_errors'])}"
            for r in retried))
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


def _render_store(results: dict, paths: Sequence[str]) -> list[str]:
    """The store round trip the proxy made, its CPU, and the heartbeat probe's NOOP reply times."""
    lines = []
    rtt = results.get("store_round_trip")
    if rtt:
        lines.append(f"\nPostgreSQL round trip (median `SELECT 1`): {rtt['direct_ms']:.3f} ms direct, "
                     f"{rtt['proxied_ms']:.3f} ms through the latency proxy of d-pg1ms (+{rtt['added_ms']:.3f} ms)")
    proxy = [(name, s["proxy_cpu_ms_per_message"]) for name, s in results["summary"].get("d-pg1ms", {}).items()
             if "proxy_cpu_ms_per_message" in s]
    if proxy:
        lines.append("  the proxy's own CPU (the simulated network, not in d-pg1ms's CPU above), ms per message: "
                     + ", ".join(f"{name} {v:.2f}" for name, v in proxy))
    beats = [(path, name, s["heartbeat"]) for path in paths for name, s in results["summary"].get(path, {}).items()
             if "heartbeat" in s]
    if beats:
        lines.append(f"\nheartbeat: NOOP reply time on a connection of its own to the relay, one every 50 ms "
                     f"during the runs (target p99 < {HEARTBEAT_TARGET_MS} ms with d-pg1ms):")
        for path, name, b in beats:
            lines.append(f"  {path:<7} {name:<10} p50 {b['p50_ms']:7.2f} ms  p99 {b['p99_ms']:7.2f} ms  max "
                         f"{b['max_ms']:7.2f} ms  ({b['count']} NOOPs)")
    errors = [f"round {r['round']} {r['path']} {_name(r['concurrency'], r['reuse'])}: {r['heartbeat']['error']}"
              for r in results["runs"] if (r.get("heartbeat") or {}).get("error")]
    if errors:
        lines.append("  WARNING: the heartbeat's connection failed in: " + "; ".join(errors))
    return lines


def render_flood(users: str, v: dict) -> list[str]:
    title = {"unknown": "wrong passwords for unknown usernames (a new one per attempt)",
             "victim": "wrong passwords for the tenant's own username (app1)"}.get(users, users)
    if "error" in v:
        return [f"  {title}: failed: {v['error']}"]
    alone, during, fl = v["alone"], v["with_flood"], v["flood"]
    codes = fl["by_code"]
    others = {k: n for k, n in codes.items() if k not in ("535", "454")}
    rates = " ".join(f"{a:.0f}" + (f" [{f:.0f}]" if f is not None else "")
                     for a, f in zip(v["alone_rates"], [*v["flood_rates"], None]))
    out = [f"  {title}:",
           f"    {v['windows']} flood windows of {v['window_seconds']:.0f} s between windows alone; msg/s alone "
           f"[with the flood]: {rates}",
           f"    tenant alone {alone['rate']:.1f} msg/s (relay {alone['relay_cpu_share']:.0%} of a core); with the flood "
           f"{during['rate']:.1f} msg/s (relay {during['relay_cpu_share']:.0%} of a core, {during['refused']} refused"
           + (f": {'; '.join(during['errors'][:2])}" if during["refused"] else "") + ")",
           "    rate with flood / rate alone around it, median of the windows: "
           + (f"{v['ratio']:.2f} (" + ", ".join("-" if r is None else f"{r:.2f}" for r in v["window_ratios"]) + ")"
              if v.get("ratio") is not None else "- (no rate alone)")]
    if v.get("ratio_after_lockout") is not None:
        out[-1] += (f"; in the {v['windows_after_lockout']} windows after every flooding address was locked out "
                    f"({fl['all_locked_after']:.1f} s into the flood): {v['ratio_after_lockout']:.2f}")
    elif fl.get("all_locked_after") is None:
        out[-1] += "; not every flooding address was locked out before the end"
    if users == "victim":
        out.append(f"    the username's lock: {codes.get('535', 0)} wrong passwords for app1 were checked (535) before "
                   f"the lock answered 454 (threshold {v['threshold']}: attempts already admitted when the first "
                   f"failures were counted are checked too)")
    if during.get("relay_cpu_ms_per_flood_attempt") is not None:
        out.append(f"    the relay's CPU per flood attempt (its CPU in the flood windows less the tenant's messages at "
                   f"the cost they had alone): {during['relay_cpu_ms_per_flood_attempt']:.2f} ms")
    out.append(f"    the flood: {fl['attempts']} AUTH attempts ({fl['attempts'] / max(fl['seconds'], 0.1):.0f}/s, client "
               f"CPU {fl['cpu_seconds']:.0f} s in {fl['seconds']:.0f} s): {codes.get('535', 0)} x 535, "
               f"{codes.get('454', 0)} x 454 4.7.0 lockout"
               + (", " + ", ".join(f"{n} x {k}" for k, n in others.items()) if others else ""))
    held = fl["lockout_held"] == fl["clients"]
    out.append(f"    lockout (auth_failures {v['threshold']} per address or username in {v['window_s']:.0f} s): "
               f"{fl['reached_threshold']} of {fl['clients']} addresses reached {v['threshold']} x 535 of their own, "
               f"{fl['locked_out']} got 454; "
               + (f"the rules held for every address (at most {fl['max_535_per_address']} x 535 each, nothing but 454 "
                  f"after the first 454, no 235)" if held else
                  f"broken for {fl['clients'] - fl['lockout_held']} addresses: "
                  + "; ".join(f"{a}: {why}" for a, why in list(fl["lockout_broken"].items())[:5])))
    return out
