"""Progress that stays readable in a log: whole lines off a terminal, a live bar on one."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

LOOP = """
import time
from gbml.progress import progress
for _ in progress(range(6), desc="train maml-omniglot-5w1s-seed0"):
    time.sleep(0.05)
"""


def run_loop(seconds: str, tty: bool) -> str:
    env = {**os.environ, "GBML_PROGRESS_SECONDS": seconds}
    if not tty:
        out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=True)
        return out.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # 40 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-c", LOOP], env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait()
    os.close(leader)
    return b"".join(chunks).decode()


def test_redirected_progress_is_whole_lines_without_carriage_returns():
    log = run_loop("0", tty=False)
    assert "\r" not in log
    lines = log.splitlines()
    assert lines[-1].startswith("train maml-omniglot-5w1s-seed0: 6/6 it (100%)")
    assert all(line.startswith("train maml-omniglot-5w1s-seed0: ") for line in lines)


def test_redirected_progress_prints_at_most_every_interval():
    lines = run_loop("3600", tty=False).splitlines()
    assert [line.split(" it ")[0] for line in lines] == ["train maml-omniglot-5w1s-seed0: 0/6",
                                                       "train maml-omniglot-5w1s-seed0: 6/6"]


def test_a_terminal_gets_the_live_bar():
    screen = run_loop("0", tty=True)
    assert "\r" in screen and "6/6" in screen
