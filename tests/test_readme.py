"""The README's "Send your first message" block, run as written against `init` + `serve` on the defaults."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WEBSOFTTT, wait_for_port

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_quick_start_commands_are_make_run_and_make_test():
    block = readme_block("Quick start")
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "run"], ["make", "test"]]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_send_your_first_message_as_written(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8587)) == 0:
            pytest.fail("127.0.0.1:8587 (the default submission port) is in use; stop `make run` first")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))        # the block activates ./.venv
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
