"""The README as an operator follows it: its blocks run as written, and every `websofttt` command it shows
with what the command prints is run in a fresh node directory and compared with the README's text."""
from __future__ import annotations

import base64
import calendar
import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from tests.conftest import Sink, WEBSOFTTT, free_port, run_cli, serve_sink, wait_for_port

README = Path(__file__).resolve().parent.parent / "README.md"
DATA = Path(__file__).resolve().parent / "data"

# What legitimately differs from one run to the next, and nothing wider.
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
KEY = r'p=([A-Za-z0-9+/=]+(?:" "[A-Za-z0-9+/=]+)*)'                 # a DKIM public key, in 255-octet strings
SECRET = r"[A-Za-z0-9_-]"                                           # base64url, the alphabet of generated secrets
QUEUE_ID = r"[0-9a-z]{18}\.n1"                                      # 88 bits in base32, the fixture's node name
CASE_ID = r"[AP]-\d{8}-[A-Z2-7]{6}"
ADDRESS = r"[\w.*+-]+@[\w.-]+\w"


def readme_block(heading: str) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def shown(pattern: str) -> re.Match:
    """Where the README says `pattern`, its line breaks folded, so a sentence is found however it wraps."""
    found = re.search(pattern, re.sub(r"\s+", " ", README.read_text()))
    assert found, f"the README no longer says /{pattern}/"
    return found


def first_message_commands() -> list[str]:
    """The lines of "Send your first message", continuation lines joined."""
    return readme_block("Send your first message").replace("\\\n", " ").splitlines()


def swaks_options() -> dict[str, str]:
    [line] = [c for c in first_message_commands() if c.startswith("swaks ")]
    words = shlex.split(line)[1:]
    return {w: v for w, v in zip(words, words[1:]) if w.startswith("--") and not v.startswith("--")}


def utc(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def key_bits(record: str) -> int:
    """The size of the RSA key a DKIM TXT record publishes."""
    der = base64.b64decode(re.search(KEY, record).group(1).replace('" "', ""))
    return load_der_public_key(der).key_size


def json_values(data) -> set[str]:
    """Every key and scalar in decoded JSON, however nested, as text."""
    if isinstance(data, dict):
        return set(data).union(*map(json_values, data.values()))
    if isinstance(data, list):
        return set().union(*map(json_values, data))
    return {str(data)}


def missing_from_json(human: str, data) -> set[str]:
    """What the human-readable output shows as a value and the JSON lacks: times, ids, addresses, and each
    `key=value` (its key too for a count by state; `-` and `default` stand for an empty field)."""
    found = json_values(data)
    shown = set(re.findall(rf"{TIME}|{QUEUE_ID}|{CASE_ID}|{ADDRESS}", human))
    for token, key, value in re.findall(r"(?<!\S)((\w+)=(\S+))", human):
        if token not in found:
            shown |= set(value.split(",")) - {"-", "default"} | ({key} if value.isdigit() else set())
    assert shown, "no value found in the human-readable output"
    return shown - found


def test_quick_start_commands_are_make_run_and_make_test():
    block = readme_block("Quick start")
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "run"], ["make", "test"]]


@pytest.fixture
def loopback_sink():
    """A next hop on loopback for example.net, so what the README's block queues never leaves the machine."""
    yield from serve_sink(Sink())


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_send_your_first_message_as_written(tmp_path, loopback_sink):
    """As written, against `init` + `serve` on the defaults but for example.net's route, which stays on loopback."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8587)) == 0:
            pytest.fail("127.0.0.1:8587 (the default submission port) is in use; stop `make run` first")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))        # the block activates ./.venv
    (tmp_path / "websofttt.toml").write_text(
        f'[delivery]\nroutes = {{ "example.net" = "127.0.0.1:{loopback_sink.port}" }}\n')
    env = {k: v for k, v in os.environ.items() if k != "WEBSOFTTT_CONFIG"}
    subprocess.run([WEBSOFTTT, "init", "--if-new"], cwd=tmp_path, env=env, check=True, capture_output=True)
    server = subprocess.Popen([WEBSOFTTT, "serve"], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(8587)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("Send your first message")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"<~  250 2\.0\.0 queued as (\S+)", out.stdout)
    queue_id = re.search(r"queued as (\S+)", out.stdout).group(1)
    assert re.search(rf"^{re.escape(queue_id)}\s+acme\s.*\b(queued|deferred|delivered|failed)=1$", out.stdout, re.M)


# ---- every command the README shows with what it prints, in a fresh node directory


@dataclass
class Node:
    dir: Path
    ports: dict[str, int]
    init_output: str = ""
    queue_id: str = ""
    reply: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=self.dir, stdin=stdin, env=env)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        out = self.run(*args, stdin=stdin)
        assert out.returncode == 0, f"websofttt {shlex.join(args)}: {out.stderr}"
        return out.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def audit(self) -> list[dict]:
        return self.json("audit", "list")

    def submit(self) -> tuple[str, str]:
        """The README's swaks message, submitted by smtplib to this node's port; returns the reply and queue id."""
        opts = swaks_options()
        with smtplib.SMTP("127.0.0.1", self.ports["submission"], timeout=10) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(self.dir / "var/tls/cert.pem")))
            client.login(opts["--auth-user"], opts["--auth-password"])
            client.mail(opts["--from"])
            client.rcpt(opts["--to"])
            code, text = client.data(f"From: {opts['--from']}\r\nTo: {opts['--to']}\r\n{opts['--header']}\r\n"
                                     f"\r\nThis is a test mailing\r\n".encode())
        reply = f"{code} {text.decode()}"
        return reply, reply.split()[-1]


@pytest.fixture
def node(tmp_path, monkeypatch) -> Node:
    """`websofttt init` in a fresh directory, then the websofttt commands of "Send your first message" as
    written. Its websofttt.toml only moves the listeners to free loopback ports and names the node."""
    monkeypatch.delenv("WEBSOFTTT_CONFIG", raising=False)
    ports = {role: free_port() for role in ("submission", "inbound", "http")}
    (tmp_path / "websofttt.toml").write_text('[node]\nname = "n1"\nworkers = 1\n' + "".join(
        f'[{role}]\nlisten = ["127.0.0.1:{port}"]\n' for role, port in ports.items()))
    node = Node(tmp_path, ports)
    node.init_output = node.ok("init")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = "\n".join(c for c in first_message_commands() if not c.startswith("swaks "))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return node


def complaint_to_the_abuse_desk() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Jane Roe <jane@example.org>"
    msg["To"] = "4abuse@websofttt.com"
    msg["Subject"] = "Spam from your service"
    msg.set_content("I never signed up for this. The headers of what I got:\n\n"
                    "X-WebSoftTT-Tenant: acme\nFeedback-ID: default:acme:websofttt.com\n")
    return msg


@pytest.fixture
def served(node) -> Node:
    """The node with `serve --only submission` and `serve --only inbound` running (no delivery role, so nothing
    leaves), the README's message submitted and a person's complaint received by the abuse desk."""
    for role in ("submission", "inbound"):
        with open(node.dir / f"{role}.log", "w") as log:
            node.procs.append(subprocess.Popen([WEBSOFTTT, "serve", "--only", role], cwd=node.dir, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for role in ("submission", "inbound"):
            wait_for_port(node.ports[role])
        node.reply, node.queue_id = node.submit()
        with smtplib.SMTP("127.0.0.1", node.ports["inbound"], timeout=10) as client:
            client.send_message(complaint_to_the_abuse_desk())
        deadline = time.monotonic() + 15
        while not node.json("case", "list") and time.monotonic() < deadline:
            time.sleep(0.1)
        yield node
    finally:
        for proc in node.procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_init_prints_the_records_dkim_dns_lists(node):
    """Quick start: "`init` prints the DNS records to publish"; Delivery names what they are."""
    shown(r"`init` prints the DNS records to publish")
    shown(r"`websofttt dkim dns` prints every record to publish: the signing key, .*?, MX records for the inbound "
          r"listener, and SPF and DMARC suggestions")
    records = node.init_output.split("Publish these DNS records:\n", 1)[1]
    assert records == node.ok("dkim", "dns")
    signing = re.search(rf'^s1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; {KEY}"$', records, re.M)
    assert signing and key_bits(signing.group(0)) == 2048
    assert re.search(r"^websofttt\.com\. IN MX 10 relay\.websofttt\.com\.$", records, re.M)
    assert re.search(r"^bounces\.websofttt\.com\. IN MX 10 relay\.websofttt\.com\.$", records, re.M)
    assert re.search(r'^bounces\.websofttt\.com\. IN TXT "v=spf1 .*-all"$', records, re.M)
    assert re.search(r'^_dmarc\.websofttt\.com\. IN TXT "v=DMARC1; p=none;', records, re.M)


def test_an_event_loop_other_than_the_two_named_is_refused_with_exit_2(node):
    names = shown(r"a value other than `(\w+)` or `(\w+)` is refused, exit (\d)")
    out = node.run("serve", env={"WEBSOFTTT_LOOP": "tokio"})
    assert out.returncode == int(names[3])
    assert out.stderr == f"error: WEBSOFTTT_LOOP='tokio': expected one of {names[1]}, {names[2]}\n"


def test_a_generated_credential_is_printed_once_and_listed_by_kind_never_by_hash(node):
    said = shown(r"`websofttt (credential add acme app2 --generate)` prints a secret of (\d+) random bits, "
                 r"`(\w+)` followed by (\d+) characters, once, on stdout")
    out = node.run(*said[1].split())
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{said[3]}{SECRET}{{{said[4]}}}\n", out.stdout)
    secret = out.stdout.strip()
    assert len(base64.urlsafe_b64decode(secret.removeprefix(said[3]) + "=")) * 8 == int(said[2])
    assert secret not in out.stderr
    shown(r"`websofttt credential list` shows each credential's kind, never its hash")
    listed = node.ok("credential", "list")
    assert re.search(r"^app1 +acme +password ", listed, re.M) and re.search(r"^app2 +acme +generated ", listed, re.M)
    digest = hashlib.sha256(secret.encode()).digest()
    assert secret not in listed and digest.hex() not in listed and base64.b64encode(digest).decode() not in listed


def test_dkim_add_domain_prints_the_provider_hosted_selector_the_readme_names(node):
    """The README's tenant (acme, From example.com) aligned with its own key, as "DMARC alignment" tells."""
    selector = shown(r"a CNAME to a provider-hosted selector \(`([^`]+)`")[1]
    domain = re.search(r"--allow-from (\S+)", "\n".join(first_message_commands()))[1]
    shown(r"`tenant show` lists the From domains that are not DMARC-aligned")
    assert f"not DMARC-aligned: mail From {domain} " in node.ok("tenant", "show", "acme")
    printed = node.ok("dkim", "add-domain", "acme", domain)
    txt = re.search(rf'^s1\._domainkey\.{re.escape(domain)}\. IN TXT "v=DKIM1; k=rsa; {KEY}"$', printed, re.M)
    assert txt and key_bits(txt.group(0)) == 2048
    cname = re.search(rf"^; or, to let the provider rotate the key: s1\._domainkey\.{re.escape(domain)}\. "
                      r"IN CNAME (\S+)\.$", printed, re.M)
    assert cname and cname[1] == selector
    hosted = re.search(rf'^{re.escape(selector)}\. IN TXT "v=DKIM1; k=rsa; {KEY}"$', node.ok("dkim", "dns"), re.M)
    assert hosted and hosted[1] == txt[1]
    shown(r"`dkim dns --tenant TENANT` prints the records again")
    assert node.ok("dkim", "dns", "--tenant", "acme") == printed
    assert "not DMARC-aligned" not in node.ok("tenant", "show", "acme")


def test_dkim_rotate_prints_a_record_that_signs_48_h_later(node):
    said = shown(r"`websofttt dkim rotate \[--selector S\]` makes a new RSA-(\d+) key in the store \(default "
                 r"selector `s(YYYYMMDD)`\) and prints its record to publish at once; it signs from "
                 r"`dkim\.rotation_delay` \((\d+) h\) later")
    started = time.time()
    [when, record] = node.ok("dkim", "rotate").splitlines()
    days = {time.strftime("%Y%m%d", time.gmtime(t)) for t in (started, time.time())}
    signs = re.fullmatch(rf"; signs from ({TIME}): publish now", when)
    assert signs and started + int(said[3]) * 3600 - 1 <= utc(signs[1]) <= time.time() + int(said[3]) * 3600
    assert re.fullmatch(rf's({"|".join(days)})\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; {KEY}"', record)
    assert key_bits(record) == int(said[1])
    shown(r"the signing key, keys waiting to sign,")
    zone = node.ok("dkim", "dns")
    assert f"{when.replace(': publish', ' (dkim rotate): publish')}\n{record}\n" in zone


def test_dkim_dns_lists_a_replaced_key_for_a_week_and_the_ed25519_key(node):
    shown(r"a replaced key for a week more \(mail signed with it is still being read\), the Ed25519")
    shown(r"With `\[dkim\] ed25519_key_file` set \(`init` creates the key\)")
    with open(node.dir / "websofttt.toml", "a") as config:
        config.write('[dkim]\ned25519_key_file = "var/dkim/e1.pem"\nrotation_delay = "0s"\n')
    assert re.search(r'^e1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="$',
                     node.ok("init"), re.M)
    rotated = time.time()
    node.ok("dkim", "rotate", "--selector", "s2")
    zone = node.ok("dkim", "dns")
    replaced = re.search(rf"^; replaced; keep published until ({TIME}) for mail signed before\n"
                         r's1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; p=', zone, re.M)
    assert replaced and rotated + 7 * 86400 - 1 <= utc(replaced[1]) <= time.time() + 7 * 86400
    assert re.search(r'^s2\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; p=', zone, re.M)
    assert re.search(r'^e1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=ed25519; p=', zone, re.M)


def test_suppression_import_prints_the_summary_the_readme_names(node):
    said = shown(r"`websofttt suppression import FILE \[--tenant ID\] \[--cause C\]` loads a list \(one address per "
                 r"line, or CSV with an `(\w+)`/`(\w+)` column; `-` reads stdin\).*? and a summary: ([^.]*?) with "
                 r"their numbers")
    added, present, invalid = said[3].split(", ")
    assert node.ok("suppression", "import", "-", stdin="one@example.net\ntwo@example.net\n").splitlines() == [
        f"{added}: 2", f"{present}: 0", f"{invalid}: 0"]
    for column, new, old in (said[1], 1, 1), (said[2], 0, 2):
        csv = node.dir / f"{column}.csv"
        csv.write_text(f"name,{column}\nOne,one@example.net\nBad,not an address\nThree,three@example.net\n")
        assert node.ok("suppression", "import", str(csv)).splitlines() == [
            f"{added}: {new}", f"{present}: {old}", f"{invalid}: 1", "  line 3: Bad,not an address"]


def test_tenant_show_says_why_it_is_suspended_and_both_rates_against_their_limits(node):
    limits = shown(r"a rate above `policy\.complaint_rate` \(([\d.]+) %\) or `policy\.bounce_rate` \(([\d.]+) %\) "
                   r"suspends the tenant with the figures as the reason \(an event of kind `suspended`; `tenant show` "
                   r"says why and shows both rates against their limits\)")
    shown(r"`websofttt tenant resume ID` lifts the suspension")
    node.ok("tenant", "suspend", "acme", "--reason", "complaints under review")
    lines = node.ok("tenant", "show", "acme").splitlines()
    head, rates = lines[0], lines[-1]
    assert re.match(r"acme +suspended \(complaints under review\) ", head)
    assert re.fullmatch(rf"  since {TIME}: complaint rate 0\.00% \(0 for 0 deliveries, limit "
                        rf"{float(limits[1]):.2f}%\), hard bounce rate 0\.00% \(0 for 0 attempts, limit "
                        rf"{float(limits[2]):.2f}%\)", rates)
    node.ok("tenant", "resume", "acme")
    assert re.match(r"acme +active +terms=", node.ok("tenant", "show", "acme"))


def test_inbound_classify_shows_what_the_listener_would_conclude_without_acting(node):
    kinds = shown(r"classified \(([a-z_, ]+), with the header or part that decided\)")[1].split(", ")
    shown(r"`websofttt inbound classify FILE\.\.\. \[--json\]` shows what the listener would conclude about saved "
          r"messages, without acting")
    report = node.dir / "report.eml"
    report.write_bytes((DATA / "complaints/arf_tenant_header_only.eml").read_bytes().replace(b"%%TENANT%%", b"acme"))
    files = [str(DATA / "bounces/postfix_user_unknown.eml"), str(DATA / "bounces/auto_reply_to_bounce_address.eml"),
             str(report)]
    lines = node.ok("inbound", "classify", *files).splitlines()
    rows = node.json("inbound", "classify", *files)
    assert [(r["file"], r["kind"], r["tenant"]) for r in rows] == [
        (files[0], "bounce", None), (files[1], "auto_reply", None), (files[2], "complaint", "acme")]
    assert {r["kind"] for r in rows} <= set(kinds)
    assert lines == [f"{r['file']}: {r['kind']} ({r['evidence']})" + (f" tenant={r['tenant']}" if r["tenant"] else "")
                     for r in rows] and all(r["evidence"] for r in rows)
    assert node.ok("complaint", "list", "--reason", "README check") == "no complaints\n"


def test_queue_list_shows_the_message_under_its_queue_id_without_addresses(served):
    said = shown(r"\| DATA \| accepted and fsync'ed \| `(250 [^`]*)<id>` \|")
    assert re.fullmatch(rf"{re.escape(said[1])}{QUEUE_ID}", served.reply)
    listed = served.ok("queue", "list")
    assert re.search(rf"^{re.escape(served.queue_id)} +acme +{TIME} +\d+ queued=1$", listed, re.M)
    assert "@" not in listed
    shown(r"A second `serve` of the same role on the same data dir is refused")
    again = served.run("serve", "--only", "submission")
    assert again.returncode == 1
    assert re.fullmatch(r"error: another 'websofttt serve' \(pid \d+\) already runs submission for .*\n", again.stderr)


@pytest.fixture
def deferring_hop():
    """A next hop on loopback that answers every copy `451 4.3.0 try again later`."""
    yield from serve_sink(Sink("defer"))


def wait_for_line(node: Node, args: tuple[str, ...], pattern: str) -> str:
    deadline = time.monotonic() + 20
    while not re.search(pattern, out := node.ok(*args), re.M) and time.monotonic() < deadline:
        time.sleep(0.2)
    return out


def test_queue_show_lists_each_outcome_and_queue_retry_and_drop_act_on_it(served, deferring_hop):
    """The delivery role sends everything to a loopback smarthost here, so nothing leaves the machine."""
    shown(r"Each outcome is an event in the store, shown by `queue show`")
    shown(r"`websofttt queue retry ID\|--all` makes deferred recipients due now; `queue drop ID` stops a message")
    with open(served.dir / "websofttt.toml", "a") as config:
        config.write(f'[delivery]\nmode = "smarthost"\nsmarthost = "127.0.0.1:{deferring_hop.port}"\n')
    served.procs.append(subprocess.Popen([WEBSOFTTT, "serve", "--only", "delivery"], cwd=served.dir,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    address = re.escape(swaks_options()["--to"])
    show = ("queue", "show", served.queue_id, "--reason", "README check")
    reply = r"451 4\.3\.0 try again later"
    event = rf"  {TIME} deferred   {address}  {reply}\n"
    once = wait_for_line(served, show, event)
    assert re.search(rf"^  {address}  deferred  attempts=1  {reply}\n{event}\Z", once, re.M)
    assert served.ok("queue", "retry", served.queue_id) == "1 recipient(s) due now\n"
    twice = wait_for_line(served, show, f"({event}){{2}}")
    assert re.search(rf"^  {address}  deferred  attempts=2  {reply}\n({event}){{2}}\Z", twice, re.M)
    assert served.ok("queue", "drop", served.queue_id) == f"dropped {served.queue_id} (1 pending recipient(s))\n"
    assert re.search(rf"^  {address}  dropped  attempts=2  ", served.ok(*show), re.M)


def test_stats_shows_counts_below_k_as_the_readme_says(served):
    said = shown(r"`websofttt stats \[--days 30\] \[--json\]`: per tenant and day, ([^.]*)\. No addresses, and any "
                 r"count below `privacy\.stats_min_count` \(k = (\d+)\) is shown as `([^`]+)` \(`(\w+)` in JSON\), "
                 r"zero included")
    counts = [item.split()[-1] for item in re.split(r", | and ", said[1])]
    out = served.ok("stats")
    [head, row] = out.splitlines()
    columns = head.split()
    assert columns[:2] == ["day", "tenant"] and len(columns) == 2 + len(counts)
    assert all(column.startswith(count[:6]) for column, count in zip(columns[2:], counts))
    assert row.split() == [time.strftime("%Y-%m-%d", time.gmtime()), "acme", *[said[3]] * len(counts)]
    assert said[3] == f"<{said[2]}" and "@" not in out
    [day] = served.json("stats")
    assert [day[c] for c in columns[2:]] == [json.loads(said[4])] * len(counts)


def test_individual_records_are_shown_only_with_a_reason_and_audited(served):
    said = shown(r"commands that show individual records \(([^)]*)\) require `--reason TEXT`, and write an audit row "
                 r"\(time, OS user, command, what was shown, reason\) before showing anything; `websofttt audit list` "
                 r"shows them\. ((?:`[^`]+`(?:, | and )?)+) show no addresses and need no reason")
    address = swaks_options()["--to"]
    case_id = served.json("case", "list")[0]["id"]
    args = {"suppression list": [], "queue show": [served.queue_id], "complaint list": [], "case show": [case_id],
            "privacy export": [address], "privacy erase": [address]}
    audited = [f"{group} {name}" for group, names in re.findall(r"`(\S+) ([\w|]+)`", said[1])
               for name in names.split("|")]
    assert set(audited) == set(args), "a command the README names is missing from this test, or the other way"
    for command in audited:
        before = served.audit()
        refused = served.run(*command.split(), *args[command])
        assert refused.returncode == 2 and refused.stdout == "" and "--reason" in refused.stderr, command
        assert served.audit() == before
        served.ok(*command.split(), *args[command], "--reason", f"README check: {command}")
        entry = served.audit()[-1]
        assert (entry["command"], entry["os_user"], entry["reason"]) == (command, getpass.getuser(),
                                                                         f"README check: {command}")
        assert re.fullmatch(TIME, entry["time"]) and entry["shown"]
    free = [f"{group} {name}" for group, names in re.findall(r"`(\S+) ([\w|]+)`", said[2])
            for name in names.split("|")]
    assert free == ["tenant list", "tenant show", "queue list"]
    before = served.audit()
    for command in free:
        out = served.ok(*command.split(), *(["acme"] if command == "tenant show" else []))
        assert "@" not in out and out.strip()
    assert served.audit() == before


def test_json_on_list_and_show_commands_is_an_array_or_object_of_what_they_show(served):
    """Every value the human-readable output shows is in the JSON too."""
    shown(r"`--json` on list and show commands prints a JSON array \(or object\) with the fields the "
          r"human-readable output shows")
    served.ok("suppression", "import", "-", stdin="blocked@example.net\n")
    served.ok("credential", "add", "acme", "app2", "--generate")
    case_id = served.json("case", "list")[0]["id"]
    commands = {("tenant", "list"): [], ("tenant", "show", "acme"): [], ("credential", "list"): [],
                ("queue", "list"): [], ("queue", "show", served.queue_id): ["--reason", "r"],
                ("suppression", "list"): ["--reason", "r"], ("complaint", "list"): ["--reason", "r"],
                ("case", "list"): [], ("case", "show", case_id): ["--reason", "r"], ("audit", "list"): []}
    for command, extra in commands.items():
        human = re.sub(rf"^  since {TIME}:", "  since:", served.ok(*command, *extra), flags=re.M)  # now - window
        data = served.json(*command, *extra)
        assert isinstance(data, list if command[-1] == "list" else dict) and data, command
        assert missing_from_json(human, data) == set(), command


def test_the_abuse_desk_commands_print_what_the_readme_says(served):
    """The block of "Abuse desk": each command as written (optional parts left out), against its comment."""
    section = README.read_text().split("### Abuse desk", 1)[1]
    block = re.search(r"```\n(websofttt .*?)```", section, re.S)[1]
    case_id = served.json("case", "list")[0]["id"]
    case_format = shown(r"opens an abuse case \(`(A-YYYYMMDD-XXXXXX)`")[1]
    assert re.fullmatch(case_format.replace("YYYYMMDD", time.strftime("%Y%m%d", time.gmtime()))
                        .replace("XXXXXX", "[A-Z2-7]{6}"), case_id)
    printed = {}
    for line in block.splitlines():
        command, comment = line.split("# ")
        words = re.sub(r" \[[^]]*\]", "", command).split()[1:]
        before = served.audit()
        out = served.ok(*[{"ID": case_id if words[0] == "case" else "acme", "R": "README check"}.get(w, w)
                          for w in words])
        assert (served.audit() != before) == comment.strip().endswith(": audited"), line
        printed[" ".join(words[:2])] = comment.strip(), out
    assert list(printed) == ["complaint list", "case list", "case show", "case assign", "case note", "case close",
                             "tenant show"]
    comment, out = printed["complaint list"]
    assert comment == "individual records: audited"
    assert re.fullmatch(rf"{TIME}  acme +\(redacted\) +abuse +header +-  case {case_id}\n", out)
    comment, out = printed["case list"]
    assert comment == "ids, kind, status, tenant, assignee: no addresses"
    assert re.fullmatch(rf"{case_id}  abuse   {TIME}  open   tenant=acme  (not )?acknowledged  assignee=-\n", out)
    comment, out = printed["case show"]
    assert comment == "complainant, subject, evidence, history: audited"
    assert printed["case close"][1] == f"case {case_id}: closed: TEXT (status closed)\n"
    history = [h["action"] for h in served.json("case", "show", case_id, "--reason", "README check")["history"]]
    assert history == ["assigned", "note", "closed"]
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert (fields["complainant"], fields["subject"]) == ("jane@example.org", "Spam from your service")
    assert fields["evidence"].startswith("addressed to abuse; identified by header: tenant acme")
    comment, out = printed["tenant show"]
    assert comment == "status, reason, complaint and bounce rates"
    assert re.match(r"acme +active  ", out)
    assert re.search(rf"^  since {TIME}: complaint rate 0\.00% .*, hard bounce rate 0\.00% .*\n\Z", out, re.M)


def test_privacy_export_and_erase_print_what_the_readme_lists(served):
    said = shown(r"`websofttt privacy export ADDRESS --reason R` prints, as JSON, every record about one address: "
                 r"([^.]*)\. It is audited, with the address masked in the audit row")
    listed = re.split(r", | and ", said[1])
    address = swaks_options()["--to"]
    served.ok("suppression", "import", "-", stdin=f"{address}\n")
    exported = json.loads(served.ok("privacy", "export", address, "--reason", "subject access"))
    records = exported["records"]
    assert len(records) == len(listed) and all(
        sum(key.rstrip("s") in item for item in listed) == 1 for key in records), (records.keys(), listed)
    assert [row["queue_id"] for row in records["queue"]] == [served.queue_id]
    assert [row["address"] for row in records["suppressions"]] == [address]
    assert served.audit()[-1]["shown"] == f"{address[0]}***@{address.split('@')[1]}"
    complainant = json.loads(served.ok("privacy", "export", "jane@example.org", "--reason", "subject access"))
    assert complainant["records"]["cases"] and complainant["records"]["inbound"]
    shown(r"`websofttt privacy erase ADDRESS --reason R` removes all of that except the suppressions, which must "
          r"persist to keep honouring the opt-out\. .*? Mail still queued for the address on this node is not "
          r"delivered")
    erased = served.ok("privacy", "erase", address, "--reason", "erasure request")
    assert "suppressions kept (the opt-out stays): 1\n" in erased and "queue: 1\n" in erased
    after = json.loads(served.ok("privacy", "export", address, "--reason", "subject access"))["records"]
    assert {k: v for k, v in after.items() if v} == {"suppressions": records["suppressions"]}
    [left] = [line for line in served.ok("queue", "list").splitlines() if line.startswith(served.queue_id)]
    assert "=" not in left                                  # no recipient left in any state


def test_the_tenant_api_curl_examples_work_as_written(node):
    """Tenant API: the README's curl commands, run as written against `serve --only http` (the port moved to
    this node's), each answer checked."""
    with open(node.dir / "http.log", "w") as log:
        node.procs.append(subprocess.Popen([WEBSOFTTT, "serve", "--only", "http"], cwd=node.dir, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))
    try:
        wait_for_port(node.ports["http"])
        block = readme_block("Tenant API (the http role, `/v1/`)")
        script = ". .venv/bin/activate\n" + block.replace("127.0.0.1:8080", f"127.0.0.1:{node.ports['http']}").replace(
            "curl -s", "curl -s -w '\\n'")                    # one answer per line, to check each
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=node.dir, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        sent, put, page, imported, deleted, events, message, stats = out.stdout.split("\n")[:8]
        assert [(r["address"], r["status"]) for r in json.loads(sent)["recipients"]] == [("joe@example.net", "queued")]
        assert (json.loads(put)["address"], json.loads(put)["cause"]) == ("jane@example.net", "unsubscribe")
        assert [e["address"] for e in json.loads(page)["data"]] == ["jane@example.net"]
        assert json.loads(imported)["added"] == 2 and deleted == ""
        assert json.loads(events) == {"data": [], "next_cursor": "0"}
        assert json.loads(message)["error"]["code"] == "not_found"
        assert json.loads(stats) == {"data": [], "min_count": 5}
        assert node.json("apikey", "list", "acme")[0]["name"] == "crm"
    finally:
        for proc in node.procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
