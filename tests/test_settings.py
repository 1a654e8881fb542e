"""Configuration as operators meet it: the example file, the defaults, error messages, lookup order, the CLI."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from policy.settings import _SCHEMA, ENV_CONFIG, ConfigError, Rate, Settings, find_config, load_settings
from policy.values import parse_duration, parse_listen, parse_nameservers, parse_rate

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "websofttt.example.toml"
WEBSOFTTT = str(Path(sys.executable).parent / "websofttt")


def write(directory: Path, text: str, name: str = "websofttt.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- the example file

def test_example_documents_every_key_with_its_default(monkeypatch):
    documented = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {s: sorted(keys) for s, keys in documented.items()} == {s: sorted(keys) for s, keys in _SCHEMA.items()}

    monkeypatch.chdir(EXAMPLE.parent)  # the example's "./var" and the default "./var" are then the same directory
    example, defaults = load_settings(EXAMPLE), load_settings(None)
    assert example.source == str(EXAMPLE)
    assert example.data_dir == EXAMPLE.parent.resolve() / "var"
    for f in dataclasses.fields(Settings):
        if f.name != "source":
            assert getattr(example, f.name) == getattr(defaults, f.name), f"[{f.name}] differs from the default"


# ---- embedded defaults

def test_defaults_run_on_a_fresh_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert s.source == "<defaults>"
    assert s.submission.listen == (("127.0.0.1", 8587),)
    assert s.submission.tls_listen == ()
    assert s.inbound.listen == (("127.0.0.1", 8025),)
    assert s.http.listen == (("127.0.0.1", 8080),)
    assert s.http.public_url == "http://127.0.0.1:8080"
    assert s.provider.domain == "websofttt.com"
    assert s.provider.domains == {"websofttt.com", "bounces.websofttt.com"}
    assert s.data_dir == tmp_path.resolve() / "var"
    assert s.store_path == tmp_path.resolve() / "var" / "websofttt.sqlite"
    assert s.self_signed and s.tls_cert == tmp_path.resolve() / "var" / "tls" / "cert.pem"
    assert s.dkim_key == tmp_path.resolve() / "var" / "dkim" / "s1.pem"
    assert s.delivery.mode == "mx" and s.delivery.smarthost is None and s.delivery.routes == {}
    assert s.policy.tenant_rate == Rate(10000, 3600)
    assert s.node.name and s.node.workers >= 1


# ---- errors: each names the file, the key and what is expected

BAD = {
    "nameserver by name": ('[dns]\nnameservers = ["ns1.example.net"]\n',
                           ["[dns] nameservers must be a list of nameserver addresses", "got ['ns1.example.net']"]),
    "mx port out of range": ("[delivery]\nmx_port = 70000\n", ["[delivery] mx_port must be a port number from 1 to 65535"]),
    "unknown section": ("[smtp]\nlisten = []\n", ["unknown section [smtp]", "expected one of: provider"]),
    "section not a table": ('provider = "websofttt.com"\n', ["[provider] must be a table"]),
    "unknown key": ("[submission]\nmax_recipient = 5\n",
                    ["unknown key [submission] max_recipient", "max_recipients"]),
    "string for count": ('[submission]\nmax_recipients = "100"\n',
                         ["[submission] max_recipients must be a positive integer", "got '100'"]),
    "zero count": ("[submission]\nmax_recipients = 0\n", ["[submission] max_recipients must be a positive integer"]),
    "bool for workers": ("[node]\nworkers = true\n", ["[node] workers must be an integer from 0", "got True"]),
    "no port": ('[inbound]\nlisten = ["localhost"]\n', ['[inbound] listen must be "host:port"', "'localhost'"]),
    "port out of range": ('[http]\nlisten = ["1.2.3.4:99999"]\n', ['[http] listen must be "host:port"', "99999"]),
    "IPv6 without brackets": ('[submission]\ntls_listen = ["::1:25"]\n',
                              ["[submission] tls_listen", "IPv6 addresses in brackets"]),
    "listen not a list": ('[inbound]\nlisten = "127.0.0.1:25"\n', ['[inbound] listen must be a list of "host:port"']),
    "duration in words": ('[delivery]\nmax_queue_lifetime = "5 minutes"\n',
                          ["[delivery] max_queue_lifetime must be a duration such as", "'5 minutes'"]),
    "unknown unit": ('[submission]\ntimeout = "5x"\n', ["[submission] timeout must be a duration such as", "'5x'"]),
    "bare number": ("[policy]\nack_interval = 5\n", ["[policy] ack_interval must be a duration such as", "got 5"]),
    "bad schedule step": ('[delivery]\nretry_schedule = ["1m", "soon"]\n',
                          ["[delivery] retry_schedule must be a duration", "'soon'"]),
    "bad rate": ('[policy]\ntenant_rate = "lots"\n', ['[policy] tenant_rate must be a rate such as "10000/1h"']),
    "bad fraction": ("[policy]\ncomplaint_rate = 1.5\n", ["[policy] complaint_rate must be a number between 0 and 1"]),
    "bad domain": ('[provider]\ndomain = "web softtt"\n', ["[provider] domain must be a domain name", "'web softtt'"]),
    "bad address": ('[provider]\nabuse_address = "abuse"\n', ["[provider] abuse_address must be an address"]),
    "bad mode": ('[delivery]\nmode = "relay"\n', ['[delivery] mode must be "mx" or "smarthost"']),
    "bad route": ('[delivery]\nroutes = { "example.org" = "mx.example.org" }\n',
                  ['[delivery] routes must be "host:port"']),
    "smarthost mode without smarthost": ('[delivery]\nmode = "smarthost"\n',
                                         ['[delivery] smarthost must be "host:port" when mode = "smarthost"']),
    "cert without key": ('[tls]\ncert_file = "cert.pem"\n', ["[tls] cert_file and key_file must be given together"]),
    "empty data_dir": ('[paths]\ndata_dir = ""\n', ["[paths] data_dir must be a non-empty directory path"]),
    "bad store url": ('[store]\nurl = "mysql://db"\n', ["[store] url must be empty", "postgresql://"]),
    "bad public url": ('[http]\npublic_url = "example.org"\n', ["[http] public_url must be an http:// or https://"]),
    "no listener": ("[submission]\nlisten = []\n", ["[submission] listen and tls_listen are both empty"]),
    "two listeners on one address": ('[submission]\nlisten = ["127.0.0.1:2525"]\n[inbound]\nlisten = ["127.0.0.1:2525"]\n',
                                     ["[inbound] listen 127.0.0.1:2525 is also in [submission] listen"]),
    "not TOML": ("this is not = = toml\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("text, expected", BAD.values(), ids=BAD.keys())
def test_bad_configuration_is_reported_with_file_key_and_expectation(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ")
    for fragment in expected:
        assert fragment in message


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: configuration file not found"):
        load_settings(tmp_path / "missing.toml")


# ---- value parsers

@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("5d", 432000),
                                           ("1w", 604800), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, listen", [("127.0.0.1:8587", ("127.0.0.1", 8587)), ("[::1]:25", ("::1", 25)),
                                          (":25", ("0.0.0.0", 25)), ("mx.example.org:2525", ("mx.example.org", 2525))])
def test_parse_listen(text, listen):
    assert parse_listen(text) == listen


@pytest.mark.parametrize("text, servers", [(["127.0.0.1"], (("127.0.0.1", 53),)), (["127.0.0.1:5353"], (("127.0.0.1", 5353),)),
                                           (["[::1]:53", "::1"], (("::1", 53), ("::1", 53)))])
def test_parse_nameservers(text, servers):
    assert parse_nameservers(text) == servers


@pytest.mark.parametrize("text, rate", [("10000/1h", Rate(10000, 3600)), ("100/m", Rate(100, 60)),
                                        ("5/30s", Rate(5, 30))])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("parser, text", [(parse_duration, "5"), (parse_duration, "-5m"), (parse_listen, "[::1:25"),
                                          (parse_listen, "host:0"), (parse_listen, "host:²"),
                                          (parse_rate, "0/1h"), (parse_rate, "10/0s"), (parse_rate, "ten/1h")])
def test_parsers_reject_with_what_is_expected(parser, text):
    with pytest.raises(ValueError, match="such as"):
        parser(text)


# ---- paths and lookup order

def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(write(tmp_path / "elsewhere", "").parent)
    etc = tmp_path.resolve() / "etc"
    path = write(etc, '[paths]\ndata_dir = "state"\n'
                      '[tls]\ncert_file = "tls/cert.pem"\nkey_file = "/abs/key.pem"\n'
                      '[dkim]\nkey_file = "../keys/dkim.pem"\n[tokens]\nsecret_file = "secret"\n')
    s = load_settings(path)
    assert s.data_dir == etc / "state"
    assert s.store_path == etc / "state" / "websofttt.sqlite"
    assert (s.tls_cert, s.tls_key) == (etc / "tls" / "cert.pem", Path("/abs/key.pem"))
    assert not s.self_signed
    assert s.dkim_key == tmp_path.resolve() / "keys" / "dkim.pem"
    assert s.tokens.secret_file == etc / "secret"
    assert load_settings(write(etc, "[node]\nworkers = 2\n", "other.toml")).data_dir == etc / "var"


def test_find_config_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    assert find_config(None) == (None, False)
    write(tmp_path, '[provider]\ndomain = "cwd.example"\n')
    assert find_config(None) == (Path("websofttt.toml"), False)
    assert load_settings(find_config(None)[0]).provider.domain == "cwd.example"
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "env.toml"))
    assert find_config(None) == (tmp_path / "env.toml", True)
    assert find_config("cli.toml") == (Path("cli.toml"), True)


# ---- the CLI: bad configuration is exit 2 with a message, never a traceback

def run(cwd: Path, *args: str, env_config: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_CONFIG}
    if env_config:
        env[ENV_CONFIG] = env_config
    return subprocess.run([WEBSOFTTT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


CLI_BAD = {
    "missing file": (None, ["missing.toml: configuration file not found"]),
    "unknown key": ('[node]\nnam = "a"\n', ["bad.toml: unknown key [node] nam", "expected one of: name, workers"]),
    "bad duration": ('[delivery]\nmax_queue_lifetime = "5 days"\n',
                     ["bad.toml: [delivery] max_queue_lifetime must be a duration such as", "'5 days'"]),
}


@pytest.mark.parametrize("text, expected", CLI_BAD.values(), ids=CLI_BAD.keys())
@pytest.mark.parametrize("via", ["--config", "env"])
def test_cli_exits_2_naming_file_and_key(tmp_path, text, expected, via):
    name = "missing.toml" if text is None else write(tmp_path, text, "bad.toml").name
    args = ("tenant", "list") + (("--config", name) if via == "--config" else ())
    result = run(tmp_path, *args, env_config=name if via == "env" else None)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    for fragment in expected:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()


def test_serve_with_a_missing_certificate_exits_2_naming_it(tmp_path):
    path = write(tmp_path, '[paths]\ndata_dir = "data"\n'
                           '[tls]\ncert_file = "certs/relay.pem"\nkey_file = "certs/relay.key"\n')
    result = run(tmp_path, "serve", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path.resolve() / 'certs' / 'relay.pem'}: cannot read TLS certificate" in result.stderr
    assert "Traceback" not in result.stderr
