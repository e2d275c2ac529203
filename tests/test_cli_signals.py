"""The command line in real processes: interrupts, SIGTERM and inputs that would hang (each bounded by a timeout)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

ENTRY = "import sys; from framepress.cli import main; sys.exit(main())"  # what the `framepress` script runs
TIMEOUT = 60


def start(*argv, code: str = ENTRY) -> tuple[subprocess.Popen, queue.Queue]:
    """The command, and a queue receiving its stdout lines as they are printed (None at the end). The child gets
    SIGINT's default action back, as a terminal's foreground job has it: a test run started in the background of a
    non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored (Ctrl-C would do nothing)."""
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def wait_for(lines: queue.Queue, prefix: str) -> list[str]:
    """Lines up to and including the first that starts with ``prefix``."""
    seen, deadline = [], time.monotonic() + TIMEOUT
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"ended before a line starting {prefix!r}: {seen}"
        seen.append(line)
        if line.startswith(prefix):
            return seen


def finish(proc: subprocess.Popen) -> str:
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.stderr.read()


# pool's row comes at once; sttm's 400 repeats would take minutes
SLOW = ["compress", "--synthetic", "16x14x14x32", "-r", "0.3", "-m", "pool", "-m", "sttm", "--repeat", "400"]


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_mid_compress_keeps_the_rows_done(signum, status, word):
    proc, lines = start(*SLOW)
    seen = wait_for(lines, "pool ")  # printed as it finished, not at the end
    proc.send_signal(signum)
    err = finish(proc)
    assert proc.returncode == status, err
    assert f"framepress compress: {word}" in err and "1 of 2 methods finished" in err and "Traceback" not in err
    assert seen[-1].split()[:3] == ["pool", "3136", "784"]


def test_sigterm_inside_an_atomic_write_leaves_no_temp_file(tmp_path):
    code = ("import sys, time; from framepress import cli, files; cli._set_signals()\n"
            "try:\n"
            "    with files.atomic(sys.argv[1]) as tmp:\n"
            "        tmp.write_text('half'); print('writing', flush=True); time.sleep(60)\n"
            "except cli.Terminated:\n"
            "    sys.exit(143)\n")
    proc, lines = start(str(tmp_path / "out.txt"), code=code)
    wait_for(lines, "writing")
    assert len(list(tmp_path.iterdir())) == 1  # the hidden temporary file, while it writes
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    assert proc.returncode == 143 and list(tmp_path.iterdir()) == []


def test_a_fifo_as_the_video_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "clip.mp4")
    proc, _ = start("ask", str(tmp_path / "clip.mp4"), "what color")
    err = finish(proc)  # before: blocked forever in av.open
    assert proc.returncode == 2 and "clip.mp4 is a FIFO (named pipe), not a video, image or folder" in err


def test_ctrl_c_while_importing_is_an_interrupt():
    """Ctrl-C during the imports (torch's take most of the run): exit 130, "interrupted", no traceback, even where
    a library's import swallows the KeyboardInterrupt or turns it into another error (a cold fresh clone once
    exited 1, another run 0). The moment is found by trying delays: a signal before main() has set the handlers is
    Python's own (killed by SIGINT), one after a warm run has ended is too late; both try another delay."""
    for delay in (0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 1.5):
        proc, _ = start("compress", "--synthetic", "2x6x6x4", "-m", "pool")
        time.sleep(delay)
        if proc.poll() is not None:  # done already: too fast for this delay
            finish(proc)
            continue
        proc.send_signal(signal.SIGINT)
        err = finish(proc)
        if proc.returncode == -signal.SIGINT:  # before framepress's main(): Python's default handler
            continue
        if proc.returncode == 0 and "interrupted" not in err:  # it ended between the poll and the signal
            continue
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        return
    pytest.fail("every run ended before its signal arrived")


def test_a_ctrl_c_an_import_swallowed_still_ends_the_run_as_interrupted():
    """A library that catches the KeyboardInterrupt (a bare ``except``) while the command runs cannot lose it."""
    code = ("import signal, sys, os\nfrom framepress import cli\n"
            "def swallowing(args):\n"
            "    try:\n        os.kill(os.getpid(), signal.SIGINT)\n    except BaseException:\n        pass\n"
            "    return 0\n"
            "cli.cmd_methods = swallowing\nsys.exit(cli.main(['methods']))\n")
    proc, _ = start(code=code)
    err = finish(proc)
    assert proc.returncode == 130 and "framepress methods: interrupted" in err and "Traceback" not in err, err
