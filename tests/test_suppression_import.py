"""`websofttt suppression import`: lists and CSV files, invalid lines named by number, a summary."""
from __future__ import annotations


from tests.test_cli import acme, config, fails, ok, ok_json, rows  # noqa: F401  (fixtures)


def test_csv_with_a_header_imports_the_email_column(tmp_path, acme, ok_json, rows):
    src = tmp_path / "optouts.csv"
    src.write_text("name;Email;date\n"
                   "Jane;Jane@Example.NET;2026-01-02\n"
                   "Bob;\"<bob@example.org>\";2026-01-03\n"
                   "Eve;not-an-address;2026-01-04\n"
                   "\n"
                   "# a comment\n"
                   "Jane again;jane@example.net;2026-01-05\n"
                   "Mal;mal@exa mple.org;x\n", encoding="utf-8")
    result = ok_json("suppression", "import", str(src), "--tenant", "acme", "--cause", "unsubscribe")
    assert result == {"added": 2, "already_present": 1, "invalid": 2,
                      "invalid_lines": [{"line": 4, "text": "Eve;not-an-address;2026-01-04"},
                                        {"line": 8, "text": "Mal;mal@exa mple.org;x"}]}
    assert rows("SELECT address, scope, cause FROM suppressions ORDER BY address") == [
        {"address": "bob@example.org", "scope": "acme", "cause": "unsubscribe"},
        {"address": "jane@example.net", "scope": "acme", "cause": "unsubscribe"}]


def test_plain_list_from_stdin_is_global_and_the_summary_is_readable(tmp_path, ok, rows):
    out = ok("suppression", "import", "-", input="a@example.com\nb@example.com\na@example.com\nbroken\n")
    assert "added: 2" in out and "already present: 1" in out and "line 4: broken" in out
    assert [r["scope"] for r in rows("SELECT scope FROM suppressions")] == ["global", "global"]


def test_unknown_tenant_or_cause_is_exit_2(tmp_path, ok, fails):
    (tmp_path / "list.txt").write_text("a@example.com\n")
    ok("init")
    _, err = fails("suppression", "import", str(tmp_path / "list.txt"), "--tenant", "ghost")
    assert "ghost" in err
    _, err = fails("suppression", "import", str(tmp_path / "list.txt"), "--cause", "whim")
    assert "--cause" in err
