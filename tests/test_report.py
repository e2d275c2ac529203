"""framepress report: tables and plots from lmms-eval result folders (written here in lmms-eval's layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from framepress.cli import main  # noqa: E402
from framepress.evaluation.report import ReportError, collect, kept_text, write_report  # noqa: E402

VISUAL_IN = 6272


def run(folder: Path, stamp: str, method: str, retention: str | None, scores: dict[str, float], kept: list[int],
        flops: float, groups: dict[str, list[str]] | None = None) -> None:
    """One lmms-eval output folder: results plus logged samples with framepress's token counts."""
    args = f"pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method={method},frames=32"
    if retention:
        args += f",retention={retention}"
    results = {task: {"alias": task, "accuracy,none": value, "accuracy_stderr,none": 0.01}
               for task, value in scores.items()}
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / f"{stamp}_results.json").write_text(json.dumps(
        {"results": results, "group_subtasks": groups or {t: [] for t in scores}, "config": {"model_args": args}}
    ))
    leaves = [t for t in scores if not (groups or {}).get(t)]
    for task in leaves:
        counts = {"input_tokens": 6400, "output_tokens": 1, "llm_prefill_flops": flops, "prefill_s": 0.5,
                  "peak_memory_mb": 17000.0}
        if method != "none":
            counts.update(visual_tokens_in=VISUAL_IN, visual_tokens_out=kept[-1],
                          stages=[{"stage": f"s{i}", "visual_out": k} for i, k in enumerate(kept)])
        lines = [json.dumps({"doc_id": i, "token_counts": [counts]}) for i in range(3)]
        (folder / "model" / f"{stamp}_samples_{task}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def results(tmp_path):
    groups = {"mlvu": ["mlvu_a", "mlvu_b"], "videomme": []}
    run(tmp_path / "full", "20260101_000000", "none", None, {"videomme": 58.5, "mlvu": 0.64, "mlvu_a": 0.6, "mlvu_b": 0.7},
        [], 41.4e12, groups)
    run(tmp_path / "unified", "20260101_000001", "unified", "2%/1%",
        {"videomme": 0.549, "mlvu": 0.61, "mlvu_a": 0.6, "mlvu_b": 0.62}, [125, 63], 1.1e12, groups)
    run(tmp_path / "pool", "20260101_000002", "pool", "0.1", {"videomme": 0.50, "mlvu": 0.5, "mlvu_a": 0.5, "mlvu_b": 0.5},
        [627], 4.3e12, groups)
    run(tmp_path / "pool", "20260101_000003", "pool", "0.5", {"videomme": 0.56, "mlvu": 0.6, "mlvu_a": 0.6, "mlvu_b": 0.6},
        [3136], 20e12, groups)
    return tmp_path


def test_rows_carry_scores_retention_and_costs(results):
    rows = {(r.method, r.retention, r.benchmark): r for r in collect([results])}
    assert {b for _, _, b in rows} == {"videomme", "mlvu"}  # a group is reported, its subtasks are not
    unified = rows[("unified", "2%/1%", "videomme")]
    assert unified.score == pytest.approx(54.9) and unified.stats["llm_prefill_flops"] == pytest.approx(1.1e12)
    assert kept_text(unified) == "2%/1%"
    assert unified.retention_value() == pytest.approx(63 / VISUAL_IN)
    assert rows[("full", "100%", "videomme")].score == 58.5  # already a percentage: kept as is
    mlvu = rows[("pool", "0.1", "mlvu")]
    assert mlvu.stats["kept_final"] == pytest.approx(627 / VISUAL_IN)  # from both subtasks' samples


def test_report_tables_and_pictures(results, tmp_path):
    page = write_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    videomme = text.split("## videomme")[1]
    lines = [line for line in videomme.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in lines] == ["| full", "| pool", "| pool", "| unified"]
    assert "| unified | 2%/1% | 2%/1% | 54.9 | 93.8% | 1.1 T | 0.5 | 17000 |" in videomme
    assert "| pool | 0.5 | 50% | 56.0 | 95.7% | 20 T |" in videomme
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(pngs) == 4 and all((tmp_path / "out" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert page.read_text().count("data:image/png;base64,") == 4


def test_the_newest_run_of_a_cell_wins(results):
    run(results / "again", "20270101_000000", "pool", "0.1", {"videomme": 0.2}, [627], 4.3e12)
    rows = {(r.method, r.retention, r.benchmark): r for r in collect([results])}
    assert rows[("pool", "0.1", "videomme")].score == pytest.approx(20.0)


def test_metric_choice(results):
    rows = collect([results], {"videomme": "accuracy"})
    assert all(r.metric == "accuracy" for r in rows)
    with pytest.raises(ReportError, match="--metric videomme=f1: the task reports accuracy"):
        collect([results], {"videomme": "f1"})


def test_damaged_and_unfinished_folders_are_named(tmp_path, capsys):
    with pytest.raises(ReportError, match="does not exist"):
        collect([tmp_path / "nothing"])
    (tmp_path / "run" / "journal").mkdir(parents=True)
    (tmp_path / "run" / "journal" / "rank0.jsonl").write_text('{"key": "a"}\n{"key": "b"}\n')
    with pytest.raises(ReportError, match="journal of 2 finished samples: the run was interrupted"):
        collect([tmp_path / "run"])
    (tmp_path / "run" / "x_results.json").write_text('{"results": {')
    with pytest.raises(ReportError, match="x_results.json is not a complete lmms-eval results file"):
        collect([tmp_path / "run"])
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 2
    assert "not a complete lmms-eval results file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def x_labels(rows, kind):
    """The x tick labels a reader sees (inside the axis) on the plot of ``rows``."""
    import matplotlib.pyplot as plt

    from framepress.evaluation.report import figure

    drawn = figure(rows, kind, "t")
    drawn.canvas.draw()
    axes = drawn.axes[0]
    low, high = axes.get_xlim()
    labels = [t.get_text() for t in axes.get_xticklabels() if low <= t.get_position()[0] <= high and t.get_text()]
    plt.close(drawn)
    return labels, (low, high), axes.get_xscale()


def test_the_x_axis_stays_readable_when_all_points_are_close(tmp_path):
    run(tmp_path / "full", "20260101_000000", "none", None, {"videomme": 0.6}, [], 2.0e9)
    for stamp, method, retention, kept, flops in [("1", "sttm", "0.5", 3130, 1.95e9), ("2", "pool", "0.5", 3136, 1.96e9),
                                                  ("3", "pool", "0.51", 3149, 1.97e9)]:
        run(tmp_path / f"{method}{stamp}", f"20260101_00000{stamp}", method, retention, {"videomme": 0.55}, [kept], flops)
    rows = collect([tmp_path])
    for kind, points in (("retention", [100 * k / VISUAL_IN for k in (3130, 3136, 3149)]), ("flops", [1.95, 1.96, 2.0])):
        labels, (low, high), scale = x_labels(rows, kind)
        assert scale == "linear" and low < min(points) and max(points) < high
        assert len(labels) >= 3 and all(float(label) for label in labels)  # plain numbers, not 4.99x10^1
    write_report([tmp_path], tmp_path / "out")
    assert (tmp_path / "out" / "llava-onevision-qwen2-7b-ov-hf_videomme_vs_retention.png").read_bytes()[:4] == b"\x89PNG"


def test_a_wide_x_range_stays_logarithmic_with_plain_labels(results):
    labels, _, scale = x_labels(collect([results]), "retention")
    assert scale == "log" and {"1", "2", "5", "10", "20", "50"} <= set(labels)
