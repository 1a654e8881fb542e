"""The `websofttt` command line as an operator sees it: exit codes, printed text, JSON, rows in the store."""
from __future__ import annotations

import getpass
import hashlib
import importlib
import io
import json
import re
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from policy import mta_sts
from policy.credentials import verify_password
from policy.settings import load_settings
from policy.store_sqlite import SqliteStore
from relay import cli as cli_mod
from relay.signing import provider_keys

WEBSOFTTT = str(Path(sys.executable).parent / "websofttt")
TERMS = "2031-07"  # not the default, so accept-terms must use the configured version
PASSWORD = "Correct-Horse-9-battery"
DKIM_LINE = re.compile(r'^s1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+"'
                       r'( "[A-Za-z0-9+/=]+")*$', re.M)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "websofttt.toml"
    path.write_text(f'[paths]\ndata_dir = "var"\n\n[node]\nname = "t1"\n\n[provider]\nterms_version = "{TERMS}"\n')
    return path


@pytest.fixture
def ok(config):
    """Run a command through CliRunner with --config; it must exit 0. Returns stdout."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> str:
        result = runner.invoke(cli_mod.cli, [*args, "--config", str(config)], input=input)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout
    return run


@pytest.fixture
def ok_json(ok):
    return lambda *args, **kw: json.loads(ok(*args, "--json", **kw))


@pytest.fixture
def fails(config, monkeypatch, capsys):
    """Run a command through relay.cli.main (the console script's entry point); it must exit 2.

    Returns (stdout, stderr)."""
    def run(*args: str, input: str = "") -> tuple[str, str]:
        monkeypatch.setattr(sys, "argv", ["websofttt", *args, "--config", str(config)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli_mod.main()
        out, err = capsys.readouterr()
        assert exc.value.code == 2, (out, err)
        assert "Traceback" not in err and err.strip(), err
        return out, err
    return run


@pytest.fixture
def rows(tmp_path):
    """Rows of the store, read with sqlite3 directly, as dicts."""
    def query(sql: str, params: tuple = ()) -> list[dict]:
        with closing(sqlite3.connect(tmp_path / "var" / "websofttt.sqlite")) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params)]
    return query


@pytest.fixture
def acme(ok):
    ok("tenant", "add", "acme")
    return "acme"


def console(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    """The installed console script; no user error may ever print a traceback."""
    proc = subprocess.run([WEBSOFTTT, *args], cwd=cwd, input=input, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# ---- init and DNS

def test_init_creates_store_keys_and_prints_dkim_record(tmp_path, config, ok):
    proc = console("init", cwd=tmp_path)  # finds ./websofttt.toml by itself
    assert proc.returncode == 0, proc.stderr
    var = tmp_path / "var"
    assert (var / "websofttt.sqlite").is_file()
    assert stat.S_IMODE((var / "dkim" / "s1.pem").stat().st_mode) == 0o600
    assert (var / "tls" / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    record = DKIM_LINE.search(proc.stdout)
    assert record, proc.stdout
    zone = ok("dkim", "dns").splitlines()
    assert zone[0] == record.group(0)
    assert {"websofttt.com. IN MX 10 relay.websofttt.com.", "bounces.websofttt.com. IN MX 10 relay.websofttt.com.",
            'bounces.websofttt.com. IN TXT "v=spf1 a:relay.websofttt.com -all"'} <= set(zone)
    assert any(line.startswith('_dmarc.websofttt.com. IN TXT "v=DMARC1; p=none;') for line in zone)
    sts = [line for line in zone if line.startswith("_mta-sts.")]
    assert [line.split()[0] for line in sts] == ["_mta-sts.websofttt.com.", "_mta-sts.bounces.websofttt.com."]
    policy = "\n".join(line[4:] for line in zone if line.startswith(";   "))
    assert mta_sts.parse_policy(policy).matches("relay.websofttt.com")
    assert mta_sts.record_id([sts[0].split(" IN TXT ")[1].strip('"')])
    assert '_smtp._tls.websofttt.com. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@websofttt.com"' in zone


def test_dkim_rotate_publishes_first_then_signs(tmp_path, config, ok, fails):
    ok("init")
    out = ok("dkim", "rotate", "--selector", "s2").splitlines()
    assert out[0].startswith("; signs from ") and out[1].startswith('s2._domainkey.websofttt.com. IN TXT "v=DKIM1')
    zone = ok("dkim", "dns")
    assert zone.index("s1._domainkey") < zone.index("; signs from") < zone.index("s2._domainkey")
    _, err = fails("dkim", "rotate", "--selector", "s2")
    assert "selector 's2' is already in use" in err
    config.write_text(config.read_text() + '\n[dkim]\nrotation_delay = "0s"\n')
    ok("dkim", "rotate", "--selector", "s3")
    zone = ok("dkim", "dns")
    lines = zone.splitlines()                      # ordered by when each key signs: s1, s3 (now), s2 (in 48 h)
    assert re.fullmatch(r"; replaced; keep published until \S+ for mail signed before", lines[0])
    assert lines[1].startswith("s1._domainkey") and lines[2].startswith("s3._domainkey")
    assert lines[3].startswith("; signs from ") and lines[4].startswith("s2._domainkey")
    settings = load_settings(config)
    with closing(SqliteStore(settings.store_path)) as store:
        assert [k.selector for k in provider_keys(settings, store)] == ["s3"]


def test_config_may_come_before_the_command(tmp_path, config, acme):
    """`websofttt --config X tenant list`, as operators type it with most CLIs; after the command, it wins."""
    listed = console("--config", str(config), "tenant", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and [t["id"] for t in json.loads(listed.stdout)] == ["acme"]
    other = tmp_path / "other.toml"
    other.write_text('[paths]\ndata_dir = "elsewhere"\n')
    assert console("--config", str(other), "tenant", "list", "--config", str(config), cwd=tmp_path).returncode == 0
    missing = console("--config", str(tmp_path / "nope.toml"), "tenant", "list", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.toml: configuration file not found" in missing.stderr


def test_init_again_keeps_dkim_key_and_token_secret(tmp_path, ok, rows):
    first = ok("init")
    key = (tmp_path / "var" / "dkim" / "s1.pem").read_bytes()
    secrets = rows("SELECT name, value FROM secrets")
    assert len(secrets) == 1 and len(secrets[0]["value"]) >= 40
    second = ok("init")
    assert (tmp_path / "var" / "dkim" / "s1.pem").read_bytes() == key
    assert rows("SELECT name, value FROM secrets") == secrets
    assert DKIM_LINE.search(second).group(0) == DKIM_LINE.search(first).group(0)
    assert ok("init", "--if-new") == ""


def test_init_if_new_on_fresh_dir_initialises(tmp_path, ok):
    assert DKIM_LINE.search(ok("init", "--if-new"))
    assert (tmp_path / "var" / "dkim" / "s1.pem").exists()


# ---- tenants

def test_tenant_add_show_suspend_resume_accept_terms(ok, ok_json, rows):
    t = ok_json("tenant", "add", "acme", "--allow-from", "Acme.Example", "--network", "10.1.2.3/16",
                "--rate", "500/1h")
    assert {k: t[k] for k in ("id", "status", "reason", "terms_version")} == {
        "id": "acme", "status": "active", "reason": None, "terms_version": None}
    assert (t["allowed_from"], t["networks"], t["rate"]) == (["acme.example"], ["10.1.0.0/16"], "500/1h")
    ok("tenant", "add", "beta")
    assert [x["id"] for x in ok_json("tenant", "list")] == ["acme", "beta"]

    assert "suspended acme" in ok("tenant", "suspend", "acme", "--reason", "complaints under review")
    shown = ok_json("tenant", "show", "acme")
    assert (shown["status"], shown["reason"]) == ("suspended", "complaints under review")
    assert "suspended (complaints under review)" in ok("tenant", "list")
    assert ok_json("tenant", "show", "beta")["status"] == "active"

    assert "resumed acme" in ok("tenant", "resume", "acme")
    assert {k: ok_json("tenant", "show", "acme")[k] for k in ("status", "reason")} == {
        "status": "active", "reason": None}

    assert TERMS in ok("tenant", "accept-terms", "acme")
    assert ok_json("tenant", "show", "acme")["terms_version"] == TERMS
    assert rows("SELECT id, terms_version FROM tenants ORDER BY id") == [
        {"id": "acme", "terms_version": TERMS}, {"id": "beta", "terms_version": None}]


def test_tenant_set_changes_domains_networks_rate_name_and_contact_all_or_nothing(ok, ok_json, fails, rows):
    ok("tenant", "add", "acme", "--allow-from", "acme.example", "--contact", "ops@acme.example")
    changed = ok_json("tenant", "set", "acme", "--add-from", "Mail.Acme.Example", "--add-network", "10.1.2.3/16",
                      "--rate", "2000/1h", "--name", "Acme Inc.", "--contact", "billing@acme.example")
    assert (changed["allowed_from"], changed["networks"], changed["rate"], changed["name"], changed["contact"]) == (
        ["acme.example", "mail.acme.example"], ["10.1.0.0/16"], "2000/1h", "Acme Inc.", "billing@acme.example")
    (event,) = rows("SELECT kind, tenant, detail FROM events WHERE kind = 'tenant_changed'")
    assert event["tenant"] == "acme" and "from acme.example,mail.acme.example" in event["detail"]
    # the last From domain of an active tenant stays; the whole change is refused, nothing half done
    _, err = fails("tenant", "set", "acme", "--remove-from", "acme.example", "--remove-from", "mail.acme.example",
                   "--rate", "1/1h")
    assert "its last From domain cannot be removed" in err
    assert ok_json("tenant", "show", "acme")["rate"] == "2000/1h"
    assert "nothing to change" in ok("tenant", "set", "acme", "--rate", "2000/1h")
    assert len(rows("SELECT id FROM events WHERE kind = 'tenant_changed'")) == 1


@pytest.mark.parametrize("args, expected", [
    (("tenant", "add", "acme"), "already exists"),
    (("tenant", "add", "Bad Id!"), "Bad Id!"),
    (("tenant", "add", "new", "--network", "10.0.0.0/33"), "10.0.0.0/33"),
    (("tenant", "add", "new", "--rate", "fast"), "rate 'fast'"),
    (("tenant", "show", "ghost"), "ghost"),
    (("tenant", "suspend", "acme"), "--reason"),
    (("tenant", "suspend", "ghost", "--reason", "x"), "ghost"),
    (("tenant", "accept-terms", "ghost"), "ghost"),
    (("tenant", "add", "new", "--contact", "not an address"), "contact 'not an address'"),
    (("tenant", "set", "ghost", "--rate", "5/1h"), "no tenant 'ghost'"),
    (("tenant", "set", "acme", "--add-from", "not a domain"), "domain 'not a domain'"),
    (("tenant", "set", "acme", "--add-network", "10.0.0.0/33"), "10.0.0.0/33"),
    (("tenant", "set", "acme", "--remove-network", "192.0.2.0/24"), "network 192.0.2.0/24 is not one of tenant acme's"),
    (("tenant", "set", "acme", "--rate", "fast"), "rate 'fast'"),
    (("tenant", "set", "acme", "--contact", "ops at acme"), "contact 'ops at acme'"),
])
def test_tenant_user_errors_exit_2_naming_the_problem(acme, fails, rows, args, expected):
    _, err = fails(*args)
    assert expected in err
    assert rows("SELECT id, status, terms_version FROM tenants") == [
        {"id": "acme", "status": "active", "terms_version": None}]


# ---- credentials

def test_credential_add_keeps_only_a_scrypt_hash(acme, ok, ok_json, rows):
    out = ok("credential", "add", "acme", "app1", input=f"{PASSWORD}\nsecond line is ignored\n")
    assert "added credential app1 for tenant acme" in out and PASSWORD not in out
    [row] = rows("SELECT username, tenant, hash FROM credentials")
    assert (row["username"], row["tenant"]) == ("app1", "acme")
    assert row["hash"].startswith("scrypt$") and PASSWORD not in row["hash"]
    assert verify_password(row["hash"], PASSWORD.encode())  # exactly the first line, without newline

    listed = ok("credential", "list", "--json")
    assert PASSWORD not in listed and "scrypt" not in listed
    [entry] = json.loads(listed)
    assert (entry["username"], entry["tenant"], entry["kind"]) == ("app1", "acme", "password")
    assert "hash" not in entry

    assert "removed credential app1" in ok("credential", "remove", "app1")
    assert rows("SELECT * FROM credentials") == []
    assert ok_json("credential", "list") == []


def test_credential_add_generate_prints_the_secret_once_and_keeps_its_sha256(acme, ok, ok_json, rows):
    out = ok("credential", "add", "acme", "app2", "--generate")
    secret = out.splitlines()[0]
    assert re.fullmatch(r"wst_smtp_[A-Za-z0-9_-]{43}", secret)           # 32 random bytes: 256 bits
    assert out.count(secret) == 1
    assert ok("credential", "add", "acme", "app3", "--generate").splitlines()[0] != secret
    [row] = rows("SELECT hash FROM credentials WHERE username = 'app2'")
    assert row["hash"] == "sha256$" + hashlib.sha256(secret.encode()).hexdigest()
    assert verify_password(row["hash"], secret.encode()) and not verify_password(row["hash"], secret[:-1].encode())
    listed = ok("credential", "list")
    assert secret not in listed and "sha256" not in listed
    assert {e["username"]: e["kind"] for e in ok_json("credential", "list")} == {"app2": "generated",
                                                                                 "app3": "generated"}


@pytest.mark.parametrize("args, password, expected", [
    (("credential", "add", "acme", "app1"), "short", "at least 12"),
    (("credential", "add", "acme", "app1"), "wst_smtp_chosen-by-a-person", "--generate"),
    (("credential", "add", "ghost", "app1", "--generate"), "", "ghost"),
    (("credential", "add", "ghost", "app1"), PASSWORD, "ghost"),
    (("credential", "add", "acme", "bad user"), PASSWORD, "bad user"),
    (("credential", "remove", "nobody"), "", "nobody"),
])
def test_credential_user_errors_exit_2(acme, fails, rows, args, password, expected):
    out, err = fails(*args, input=password + "\n")
    assert expected in err
    if len(password) >= 4:
        assert password not in out + err
    assert rows("SELECT * FROM credentials") == []


def test_credential_add_duplicate_username_exit_2(acme, ok, fails, rows):
    ok("credential", "add", "acme", "app1", input=PASSWORD + "\n")
    _, err = fails("credential", "add", "acme", "app1", input="Another-password-42\n")
    assert "already exists" in err
    assert len(rows("SELECT * FROM credentials")) == 1


def test_console_credential_add_from_pipe_never_echoes_password(tmp_path, config, acme, rows):
    added = console("credential", "add", "acme", "app1", "--config", str(config), cwd=tmp_path,
                    input=PASSWORD + "\n")
    assert added.returncode == 0 and "added credential app1" in added.stdout
    short = console("credential", "add", "acme", "app2", "--config", str(config), cwd=tmp_path, input="tiny42\n")
    assert short.returncode == 2 and "at least 12" in short.stderr
    for proc, secret in ((added, PASSWORD), (short, "tiny42")):
        assert secret not in proc.stdout + proc.stderr
    assert [r["username"] for r in rows("SELECT username FROM credentials")] == ["app1"]


def test_console_user_errors_exit_2_without_traceback(tmp_path, config):
    bad = console("tenant", "add", "Bad Id!", "--config", str(config), cwd=tmp_path)
    assert bad.returncode == 2 and "Bad Id!" in bad.stderr and bad.stdout == ""
    missing = console("tenant", "list", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


# ---- suppressions

def test_suppression_list_without_reason_refuses_and_writes_no_audit(acme, ok, fails, rows):
    ok("suppression", "add", "someone@example.net")
    for args in (("suppression", "list"), ("suppression", "list", "--json"), ("suppression", "list", "--reason", " ")):
        out, err = fails(*args)
        assert "--reason" in err and "someone@example.net" not in out + err
    assert rows("SELECT * FROM audit") == []


def test_suppression_add_list_json_and_audit(acme, ok, ok_json, rows):
    assert ok("suppression", "add", "Someone@Example.NET").strip() == "added"
    assert ok("suppression", "add", "someone@example.net").strip() == "already suppressed"
    assert ok("suppression", "add", "<X@Y.org>", "--tenant", "acme", "--cause", "unsubscribe").strip() == "added"

    listed = ok_json("suppression", "list", "--reason", "ticket 4711")
    assert [{k: e[k] for k in ("address", "scope", "cause", "expires")} for e in listed] == [
        {"address": "x@y.org", "scope": "acme", "cause": "unsubscribe", "expires": None},
        {"address": "someone@example.net", "scope": "global", "cause": "manual", "expires": None}]
    assert all(ISO_UTC.match(e["created"]) for e in listed)
    assert [e["address"] for e in ok_json("suppression", "list", "--tenant", "acme", "--reason", "t2")] == ["x@y.org"]
    assert "someone@example.net" in ok("suppression", "list", "--reason", "t3")

    audit = ok_json("audit", "list")
    assert [(a["command"], a["shown"], a["reason"]) for a in audit] == [
        ("suppression list", "scope=all", "ticket 4711"), ("suppression list", "scope=acme", "t2"),
        ("suppression list", "scope=all", "t3")]
    assert all(a["os_user"] == getpass.getuser() and ISO_UTC.match(a["time"]) for a in audit)
    assert "ticket 4711" in ok("audit", "list")
    assert len(rows("SELECT * FROM audit")) == 3


def test_suppression_remove(acme, ok, fails, rows):
    ok("suppression", "add", "someone@example.net")
    _, err = fails("suppression", "remove", "someone@example.net", "--tenant", "acme")
    assert "not suppressed" in err and "acme" in err
    assert len(rows("SELECT * FROM suppressions")) == 1
    assert ok("suppression", "remove", "SOMEONE@example.net").strip() == "removed"
    assert rows("SELECT * FROM suppressions") == []
    _, err = fails("suppression", "remove", "someone@example.net")
    assert "not suppressed" in err


@pytest.mark.parametrize("args, expected", [
    (("suppression", "add", "x@y.org", "--tenant", "ghost"), "ghost"),
    (("suppression", "add", "not-an-address"), "not-an-address"),
    (("suppression", "add", "x@y.org", "--cause", "boredom"), "boredom"),
])
def test_suppression_add_user_errors(acme, fails, rows, args, expected):
    assert expected in fails(*args)[1]
    assert rows("SELECT * FROM suppressions") == []


# ---- queue

def test_queue_list_on_empty_node(ok, ok_json):
    assert ok("queue", "list").strip() == "queue is empty"
    assert ok_json("queue", "list") == []


def test_queue_show_requires_reason_and_audits_first(fails, ok_json, rows):
    _, err = fails("queue", "show", "01abc.t1")
    assert "--reason" in err
    assert rows("SELECT * FROM audit") == []
    _, err = fails("queue", "show", "01abc.t1", "--reason", "ticket 4712")
    assert "no message 01abc.t1" in err
    [entry] = ok_json("audit", "list")
    assert (entry["command"], entry["shown"], entry["reason"]) == ("queue show", "01abc.t1", "ticket 4712")
    assert entry["os_user"] == getpass.getuser()


# ---- help

def _command_paths(group: click.Group = cli_mod.cli, prefix: tuple[str, ...] = ()):
    yield prefix
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, prefix + (name,))
        else:
            yield prefix + (name,)


COMMAND_PATHS = list(_command_paths())


def test_each_command_is_loaded_from_the_module_that_defines_it():
    """COMMAND_MODULES names, for each command, the module whose COMMANDS define it, and every module of
    relay/cli/ with commands is in it: a new command group cannot be left out of the lazy group."""
    modules = {p.stem for p in Path(cli_mod.__file__).parent.glob("*.py")} - {"__init__", "common"}
    assert set(cli_mod.COMMAND_MODULES.values()) == modules
    for module in modules:
        defined = {c.name for c in importlib.import_module(f"relay.cli.{module}").COMMANDS}
        assert defined == {n for n, m in cli_mod.COMMAND_MODULES.items() if m == module}, module


def test_a_short_command_does_not_load_the_serving_roles():
    """`websofttt audit …` imports its own module, not the delivery path, the serving roles or aiohttp."""
    code = ("import sys, click; from relay.cli import cli; cli.get_command(click.Context(cli), 'audit'); "
            "print(*sorted(m for m in ('aiohttp', 'relay.serve', 'relay.delivery', 'relay.cli.audit') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["relay.cli.audit"]


def test_help_walk_covers_the_documented_commands():
    expected = {("init",), ("serve",), ("tenant", "accept-terms"), ("credential", "add"), ("suppression", "list"),
                ("queue", "show"), ("dkim", "dns"), ("audit",)}
    assert expected <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "websofttt")
def test_every_help_exits_0_with_an_example(path):
    result = CliRunner().invoke(cli_mod.cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and "Usage:" in result.stdout


def test_dkim_add_domain_aligns_the_tenant_and_prints_its_records(ok, ok_json, fails):
    ok("init")
    ok("tenant", "add", "acme", "--allow-from", "acme.example", "--allow-from", "other.example")
    shown = ok_json("tenant", "show", "acme")
    assert shown["dkim_domains"] == [] and shown["dmarc_unaligned"] == ["acme.example", "other.example"]
    assert "not DMARC-aligned: mail From acme.example, other.example" in ok("tenant", "show", "acme")
    out = ok("dkim", "add-domain", "acme", "ACME.example")
    assert re.search(r'^s1\._domainkey\.acme\.example\. IN TXT "v=DKIM1; k=rsa; p=', out, re.M)
    assert ("; or, to let the provider rotate the key: s1._domainkey.acme.example. IN CNAME "
            "s1-acme-example._domainkey.websofttt.com.") in out
    assert ok("dkim", "dns", "--tenant", "acme") == out                # same key, printed again
    provider = ok("dkim", "dns")
    assert re.search(r'^s1-acme-example\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=rsa; p=', provider, re.M)
    assert ok_json("tenant", "show", "acme")["dmarc_unaligned"] == ["other.example"]
    _, err = fails("dkim", "add-domain", "acme", "stranger.example")
    assert "stranger.example is not an allowed From domain of tenant acme" in err
    ok("tenant", "add", "rival", "--allow-from", "acme.example")
    _, err = fails("dkim", "add-domain", "rival", "acme.example")
    assert "already has a DKIM key of another tenant" in err


def test_ed25519_key_is_made_by_init_and_published(config, ok, fails, tmp_path):
    config.write_text(config.read_text() + '\n[dkim]\ned25519_key_file = "var/dkim/e1.pem"\n')
    out = ok("init")
    assert re.search(r'^e1\._domainkey\.websofttt\.com\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="$', out, re.M)
    assert DKIM_LINE.search(out)
    assert [line for line in ok("dkim", "dns").splitlines() if "_domainkey" in line] == [
        line for line in out.splitlines() if "_domainkey" in line]
    (tmp_path / "var/dkim/e1.pem").write_bytes((tmp_path / "var/dkim/s1.pem").read_bytes())   # an RSA key
    _, err = fails("dkim", "dns")
    assert "ed25519_key_file is not an Ed25519 key" in err
