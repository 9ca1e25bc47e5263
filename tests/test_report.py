import json
import re

import pytest

from synthimg.evaluation.results import ResultRecord, append_result
from synthimg.report.build import build_report


def _line(path, arm, n, seed, split, epoch, acc, mode="zs", lr=1e-5, wise=None, task="fgvc_aircraft"):
    append_result(path, ResultRecord(
        dataset=task, model="ViT-B-16", pretrained="laion2b_s34b_b88k",  # offline-ok: a label, nothing loads
        task="zeroshot_classification" if mode == "zs" else "linear_probe",
        metrics={"acc1": acc, "acc5": None, "mean_per_class_recall": acc}, arm=arm, num_train_images=n,
        finetune="none" if arm == "zeroshot_baseline" else "ce", eval_mode=mode, split=split, seed=seed, epoch=epoch,
        lr=None if arm == "zeroshot_baseline" else lr, wise_alpha=wise, gpu_hours=0.5 * n / 1000))


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.jsonl"
    _line(path, "zeroshot_baseline", 0, 0, "val", 0, 0.27)
    _line(path, "zeroshot_baseline", 0, 0, "test", 0, 0.27)
    for seed, noise in ((0, 0.0), (1, 0.02)):
        for n, base in ((1000, 0.30), (10000, 0.40)):
            # epoch 1 is best on val but worse on test: the report must take epoch 1
            _line(path, "retrieved", n, seed, "val", 1, base + 0.05 + noise)
            _line(path, "retrieved", n, seed, "test", 1, base + noise)
            _line(path, "retrieved", n, seed, "val", 2, base + noise)
            _line(path, "retrieved", n, seed, "test", 2, base + 0.10 + noise)
            _line(path, "retrieved", n, seed, "test", 2, 0.99, wise=0.5)  # WiSE lines are kept apart
    _line(path, "synthetic", 1000, 0, "val", 1, 0.20)
    _line(path, "synthetic", 1000, 0, "test", 1, 0.25)
    return path


def test_report_tables_plots_and_html(results, tmp_path):
    out = tmp_path / "report"
    info = build_report([results], out)
    summary = __import__("pandas").read_csv(out / "summary.csv")
    row = summary[(summary.arm == "retrieved") & (summary.num_train_images == 1000)].iloc[0]
    assert row.acc1_mean == pytest.approx(0.31) and row.acc1_std == pytest.approx(0.01414, abs=1e-4)  # val-chosen epoch 1
    assert row.delta_acc1 == pytest.approx(0.04) and row.acc1_count == 2
    md = (out / "results.md").read_text()
    assert "31.0 ± 1.4" in md and "—" in md  # synthetic at 10,000 images is missing, shown as missing
    tex = (out / "results.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert tex.count("{") == tex.count("}")
    for name in ("scaling_fgvc_aircraft.png", "scaling_fgvc_aircraft.pdf", "cost.csv", "results_long.csv"):
        assert (out / name).is_file()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "31.0 ± 1.4" in page and "<table" in page
    assert not re.search(r"src='(?!data:)", page)  # nothing referenced outside the page
    assert any("exceeds" in n or "within" in n for n in info["notes"])


def test_report_cli(results, tmp_path, capsys):
    from synthimg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["report", str(results), "--out", str(tmp_path / "r")])
    assert info.value.code == 0 and (tmp_path / "r" / "report.html").is_file()
    assert "points vs the zero-shot baseline" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r2")])
    assert info.value.code == 2
    json.dumps({})
