"""The demo command: rows stream as runs finish, Ctrl-C keeps what was done, TTFT is a warmed-up median."""

from __future__ import annotations

import json

import pytest

from framepress import demo
from framepress.pipeline import Answer

SETTINGS = [("sttm", 0.25, {}, 0.25), ("unified", "25%/12.5%", {"inner_layer": demo.INNER_LAYER}, 0.25),
            ("dycoke", 0.1, {}, 0.1)]  # the last one cannot meet its budget: an n/a row


class Recorder:
    """What stdout had printed since the previous run when each run started (``outs``), and all of stderr."""

    def __init__(self, capsys):
        self.capsys, self.outs, self.errs = capsys, [], []

    def take(self):
        captured = self.capsys.readouterr()
        self.errs.append(captured.err)
        return captured.out

    def finish(self):
        out = self.take()
        return "".join(self.outs) + out, "".join(self.errs)


@pytest.fixture
def record(monkeypatch, capsys):
    """The demo over three settings instead of every method, with a :class:`Recorder`; ``record(n)`` makes the
    n-th run (from 0) raise KeyboardInterrupt as Ctrl-C would."""
    monkeypatch.setattr(demo, "settings", lambda: list(SETTINGS))
    recorder = Recorder(capsys)
    real = demo._ask

    def setup(interrupt_at=None):
        def ask(pipe, video, question):
            if len(recorder.outs) == interrupt_at:
                raise KeyboardInterrupt
            recorder.outs.append(recorder.take())
            return real(pipe, video, question)

        monkeypatch.setattr(demo, "_ask", ask)
        return recorder

    return setup


def test_rows_print_as_each_run_finishes(tmp_path, record):
    rec = record()
    assert demo.run_demo(tmp_path) == 0
    out, err = rec.finish()
    header, rule = rec.outs[0].splitlines()
    assert header == demo.HEADER and "TTFT ms (median of 3)" in header and set(rule) == {"-"}
    # when each run starts, the row of the run before it is already out, and nothing else
    assert [o.split()[0] for o in rec.outs[1:]] == ["none", "sttm", "unified"]
    assert [len(o.splitlines()) for o in rec.outs[1:]] == [1, 1, 1]
    rows = out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["none", "sttm", "unified", "dycoke"]
    assert "25%/12.5%" in rows[2] and "n/a" in rows[3] and rows[0].endswith("'green' right")
    assert "time to first token: the median of 3 prefills after a warm-up run" in err
    assert "demo:" in err  # the progress bar
    assert "pictures of what each method kept at 25% retention (25%/12.5% for the two-stage methods)" in err
    assert sorted(p.name for p in tmp_path.glob("show_*.png")) == ["show_sttm.png", "show_unified.png"]


def test_ctrl_c_keeps_the_rows_done_and_exits_130(tmp_path, record):
    rec = record(interrupt_at=2)
    assert demo.run_demo(tmp_path) == 130
    out, err = rec.finish()
    assert [r.split()[0] for r in out.splitlines()[2:]] == ["none", "sttm"]
    assert "interrupted after 2 of 4 runs" in err and "2 of 2 runs answered 'green'" in err
    assert (tmp_path / "show_sttm.png").is_file() and f"{tmp_path}/show_<method>.png" in err


def test_ctrl_c_in_json_mode_prints_the_rows_done(tmp_path, record):
    rec = record(interrupt_at=1)
    assert demo.run_demo(tmp_path, json_output=True) == 130
    report = json.loads(rec.finish()[0])
    assert report["interrupted"] is True and [r["method"] for r in report["rows"]] == ["none"]
    assert report["ttft_runs"] == 3 and len(report["rows"][0]["ttft_runs_s"]) == 3


class FakePipe:
    """Answers with these times to first token, one a call."""

    def __init__(self, ttfts):
        self.ttfts, self.calls = list(ttfts), []

    def ask(self, video, question, max_new_tokens):
        self.calls.append(max_new_tokens)
        return Answer("green", {"ttft_s": self.ttfts.pop(0), "total_s": 1.0})


def test_ttft_is_the_median_of_timed_runs_after_a_warm_up():
    pipe = FakePipe([9.0, 3.0, 1.0, 2.0])  # a cold first run, then three timed prefills
    row = demo._ask(pipe, None, "q")
    assert pipe.calls == [4, 1, 1, 1]  # the answer (and warm-up), then prefill-only runs of one new token
    assert row["ttft_s"] == 2.0 and row["ttft_runs_s"] == [1.0, 2.0, 3.0]
    assert row["answer"] == "green" and row["total_s"] == 1.0


def test_ctrl_c_before_any_row_says_only_that(tmp_path, record):
    rec = record(interrupt_at=0)
    assert demo.run_demo(tmp_path) == 130
    out, err = rec.finish()
    assert out.splitlines() == [demo.HEADER, "-" * len(demo.HEADER)]
    assert "interrupted after 0 of 4 runs" in err and "answered" not in err and "pictures" not in err
