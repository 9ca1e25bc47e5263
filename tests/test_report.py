import json
import re

import pandas as pd
import pytest

from synthimg.evaluation.results import ResultRecord, append_result
from synthimg.report.build import build_report

SEEDS = (0, 1, 2)


def _line(path, arm, n, seed, split, epoch, acc, mode="zs", lr=1e-5, wise=None, task="fgvc_aircraft", source=None):
    append_result(path, ResultRecord(
        dataset=task, model="ViT-B-16", pretrained="laion2b_s34b_b88k",  # offline-ok: a label, nothing loads
        task="zeroshot_classification" if mode == "zs" else "linear_probe",
        metrics={"acc1": acc, "acc5": None, "mean_per_class_recall": acc}, arm=arm, arm_source=source,
        num_train_images=n, finetune="none" if arm == "zeroshot_baseline" else "ce", eval_mode=mode, split=split,
        seed=seed, epoch=epoch, lr=None if arm == "zeroshot_baseline" else lr, wise_alpha=wise,
        gpu_hours=0.5 * n / 1000))


@pytest.fixture
def results(tmp_path):
    """Two arms x 3 seeds x 2 LRs x 2 epochs, with traps for selection on test and on one seed."""
    path = tmp_path / "results.jsonl"
    for split in ("val", "test"):
        _line(path, "zeroshot_baseline", 0, 0, split, 0, 0.27)
    for arm, base in (("retrieved", 0.40), ("synthetic", 0.30)):
        for seed in SEEDS:
            noise = 0.01 * seed
            # lr 1e-5: epoch 1 is best on val (and worse on test than epoch 2: the report must take epoch 1)
            _line(path, arm, 1000, seed, "val", 1, base + 0.05 + noise)
            _line(path, arm, 1000, seed, "test", 1, base + noise)
            _line(path, arm, 1000, seed, "val", 2, base + noise)
            _line(path, arm, 1000, seed, "test", 2, base + 0.10 + noise)
            # lr 1e-6: seed 0 is lucky on val (a per-seed choice would take it), the mean over seeds is lower
            lucky = 0.30 if seed == 0 else -0.20
            _line(path, arm, 1000, seed, "val", 1, base + lucky, lr=1e-6)
            _line(path, arm, 1000, seed, "test", 1, 0.99, lr=1e-6)
            _line(path, arm, 1000, seed, "test", 2, 0.99, wise=0.5)  # WiSE lines are kept apart
    # retrieved at 10,000 images: seed 2's selected point has no test line
    for seed in SEEDS:
        _line(path, "retrieved", 10000, seed, "val", 1, 0.50)
        if seed != 2:
            _line(path, "retrieved", 10000, seed, "test", 1, 0.45)
    return path


def test_one_lr_per_cell_by_mean_val_and_retrieved_minus_synthetic(results, tmp_path, caplog):
    from scipy import stats

    out = tmp_path / "report"
    costs = {"retrieved": {"index": 2e-4, "retrieve": 1e-5, "score": 1e-5},
             "synthetic": {"captions": 1e-5, "generate": 1e-3, "score": 1e-5}}
    info = build_report([results], out, data_costs=costs)
    chosen = pd.read_csv(out / "results_long.csv")
    small = chosen[chosen.num_train_images == 1000]
    assert set(small.selected_lr) == {1e-5} and set(small.epoch) == {1}  # lr by the mean, epoch by val
    assert len(small) == 6 and set(small.seed) == set(SEEDS)
    summary = pd.read_csv(out / "summary.csv")
    row = summary[(summary.arm == "retrieved") & (summary.num_train_images == 1000)].iloc[0]
    assert row.acc1_mean == pytest.approx(0.41) and row.acc1_std == pytest.approx(0.01) and row.acc1_count == 3
    assert row.delta_acc1 == pytest.approx(0.14)

    # retrieved - synthetic at equal N, with Welch's 95% interval
    diffs = pd.read_csv(out / "differences.csv")
    d = diffs[diffs.num_train_images == 1000].iloc[0]
    r = [0.40 + 0.01 * s for s in SEEDS]
    s = [0.30 + 0.01 * s for s in SEEDS]
    ref = stats.ttest_ind(r, s, equal_var=False).confidence_interval(0.95)
    assert d.diff_acc1 == pytest.approx(0.10) and (d.ci_low, d.ci_high) == pytest.approx((ref.low, ref.high))
    assert bool(d.excludes_zero)
    assert any("retrieved - synthetic = +10.0 points" in n and "95% CI" in n and "excludes 0" in n for n in info["answer"])

    # the selected point without a test line is reported as missing, with a warning, not dropped
    assert info["missing"] == [{"dataset": "fgvc_aircraft", "model": "ViT-B-16", "arm": "retrieved", "finetune": "ce",
                                "eval_mode": "zs", "num_train_images": 10000, "seed": 2, "lr": 1e-5, "epoch": 1}]
    assert any("has no test line" in rec.getMessage() for rec in caplog.records)
    big = summary[(summary.arm == "retrieved") & (summary.num_train_images == 10000)].iloc[0]
    assert big.acc1_count == 2 and big.missing == 1
    assert any(n.startswith("missing: fgvc_aircraft zs retrieved at 10,000") for n in info["notes"])

    # the compute view charges every arm its data: retrieval's index, queries and scoring too
    cost = pd.read_csv(out / "cost.csv")
    ret = cost[(cost.arm == "retrieved") & (cost.num_train_images == 1000)].iloc[0]
    assert ret.data_index_gpu_hours == pytest.approx(0.2) and ret.data_gpu_hours == pytest.approx(0.22)
    assert ret.gpu_hours_total == pytest.approx(0.5 + 0.22)
    syn = cost[(cost.arm == "synthetic")].iloc[0]
    assert syn.data_generate_gpu_hours == pytest.approx(1.0) and syn.data_index_gpu_hours == 0


def test_report_tables_plots_and_html(results, tmp_path):
    out = tmp_path / "report"
    build_report([results], out)
    md = (out / "results.md").read_text()
    assert "41.0 ± 1.0" in md and "—" in md  # synthetic at 10,000 images is missing, shown as missing
    assert "Retrieved − synthetic" in md
    assert "| arm | images | ZS | LP | Δ vs baseline | retrieved − synthetic |\n|---|" in md  # one clean header
    tex = (out / "results.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert tex.count("{") == tex.count("}")
    assert "\\caption{fgvc\\_aircraft" in tex and not set("Δ±−—") & set(tex)  # compiles with pdflatex
    header = tex.split("\\toprule\n", 1)[1].split("\n")
    assert header[0].startswith("arm & images & ZS & LP & $\\Delta$ vs baseline") and header[1] == "\\midrule"
    for name in ("scaling_fgvc_aircraft.png", "scaling_fgvc_aircraft.pdf", "cost.csv", "results_long.csv"):
        assert (out / name).is_file()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "41.0 ± 1.0" in page and "<table" in page
    assert not re.search(r"src='(?!data:)", page)  # nothing referenced outside the page
    assert page.index("id='answer'") < page.index("<h2>Results</h2>") < page.index("<h2>Provenance</h2>")
    for head in re.findall(r"<thead>(.*?)</thead>", page):  # one clean header row per table
        assert head.count("<tr>") == 1 and "<th></th>" not in head
        cells = re.findall(r"<th>(.*?)</th>", head)
        assert len(cells) == len(set(cells)), cells
    for body in re.findall(r"<tbody>(.*?)</tbody>", page):
        assert body.count("<tr>") <= 10
    assert "arm</th><th>images</th><th>ZS</th><th>LP</th><th>Δ vs baseline</th><th>retrieved − synthetic" in page


def test_arm_colours_are_distinct_and_the_same_everywhere():
    from synthimg.report.plots import arm_colours

    kinds = {"retrieved": "retrieved", "retrieved_substring": "retrieved", "synthetic": "synthetic",
             "target_train": "shards", "zeroshot_baseline": "baseline"}
    colours = arm_colours(sorted(kinds), kinds)
    assert len(set(colours.values())) == len(colours)
    assert colours["zeroshot_baseline"] == "#888888"  # the baseline is grey, never an arm's colour


def test_plain_tick_labels():
    from synthimg.report.plots import plain_number

    assert [plain_number(v) for v in (50, 120, 1000, 10000, 1.5e6, 0.002)] == ["50", "120", "1K", "10K", "1.5M", "0.002"]


def test_arm_kind_comes_from_the_data_not_the_name(tmp_path):
    path = tmp_path / "r.jsonl"
    for seed in SEEDS:
        for arm, source, acc in (("knn", "retrieved", 0.5), ("substring", "retrieved", 0.4), ("sd15", "synthetic", 0.3)):
            _line(path, arm, 100, seed, "val", 1, acc + 0.01 * seed, source=source)
            _line(path, arm, 100, seed, "test", 1, acc + 0.01 * seed, source=source)
    info = build_report([path], tmp_path / "out")
    pairs = {(d["retrieved"], d["synthetic"]) for d in info["differences"]}
    assert pairs == {("knn", "sd15"), ("substring", "sd15")}


def test_report_cli(results, tmp_path, capsys):
    from synthimg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["report", str(results), "--out", str(tmp_path / "r")])
    assert info.value.code == 0 and (tmp_path / "r" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "points vs the pretrained baseline" in out and "retrieved - synthetic" in out
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r2")])
    assert info.value.code == 2
    assert (tmp_path / "r" / "differences.csv").read_text().startswith("dataset,eval_mode,num_train_images,retrieved")


def test_a_seed_missing_at_the_chosen_lr_is_reported_not_dropped(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    for seed in SEEDS:
        for lr, acc in ((1e-5, 0.5), (1e-6, 0.3)):
            if seed == 2 and lr == 1e-5:
                continue  # this run crashed before its first evaluation
            _line(path, "retrieved", 100, seed, "val", 1, acc, lr=lr)
            _line(path, "retrieved", 100, seed, "test", 1, acc, lr=lr)
    info = build_report([path], tmp_path / "out")
    assert [(m["seed"], m["lr"]) for m in info["missing"]] == [(2, 1e-5)]
    assert any("different numbers of seeds" in r.getMessage() for r in caplog.records)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.iloc[0].acc1_count == 2 and summary.iloc[0].missing == 1


def test_study_charges_every_arm_its_data(tmp_path):
    from synthimg.study.plan import Step
    from synthimg.study.run import data_costs
    from synthimg.study.spec import StudyConfig

    def step(sid, kind, arm, folder, stats, deps=(), name=None):
        d = tmp_path / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / (name or f"{kind}_stats.json")).write_text(json.dumps(stats))
        return Step(id=sid, kind=kind, argv=[], outputs=[d / "out"], deps=list(deps), arm=arm)

    steps = [
        step("idx", "index", None, "idx", {"gpu_seconds": 7200.0}),
        step("k.ret", "retrieve", "knn", "k1", {"gpu_seconds": 360.0}, ["idx"]),
        step("k.dl", "download", "knn", "k0", {}, ["k.ret"]),
        step("s.ret", "retrieve", "sub", "s1", {"gpu_seconds": 0.0}),
        step("k.score", "score", "knn", "k2", {"gpu_seconds": 360.0}, ["k.dl"]),
        step("k.dec", "decontaminate", "knn", "k3", {"gpu_seconds": 36.0}, ["k.score"]),
        step("cap", "captions", None, "y1", {"gpu_seconds": 720.0}),  # shared captions
        step("y.gen", "generate", "syn", "y2", {"gpu_seconds": 36000.0}, ["cap"]),
        step("k.sub", "subsample", "knn", "k4", {"pool": 1000}, ["k.dec", "y.gen"], name="subsets.json"),
        step("y.sub", "subsample", "syn", "y4", {"pool": 1000}, ["y.gen"], name="subsets.json"),
        step("s.sub", "subsample", "sub", "s4", {"pool": 500}, ["s.ret"], name="subsets.json"),
    ]
    for s in steps:
        if s.kind == "subsample":
            s.outputs = [s.outputs[0].parent / "subsets.json"]
    study = StudyConfig.model_validate({"task": "cifar10", "arms": {
        "knn": {"source": "retrieved", "index": {"shards": "x", "share_classes": 20}},
        "sub": {"source": "retrieved"}, "syn": {"source": "synthetic"},
        "mix": {"source": "mixed", "mix": {"knn": 0.5, "syn": 0.5}}}, "scales": [10]})
    costs = data_costs(study, steps)
    assert costs["knn"] == pytest.approx({"index": 1.0 / 1000, "retrieve": 0.1 / 1000, "score": 0.1 / 1000,
                                          "decontaminate": 0.01 / 1000})  # 10 of the index's 20 classes;
    # (the subsets step's link to the synthetic arm, as for scale 'all', is not charged to knn)
    assert costs["syn"] == pytest.approx({"captions": 0.2 / 1000, "generate": 10.0 / 1000})
    assert costs["sub"] == pytest.approx({"retrieve": 0.0})
    assert costs["mix"]["generate"] == pytest.approx(0.5 * 10.0 / 1000)


def _clip_benchmark_file(folder, dataset="fgvc_aircraft", task="zeroshot_classification", acc=0.25,
                         classnames=None):
    """A result file exactly as ``clip_benchmark eval`` writes it (cli.py: one ``json.dump`` of this dict)."""
    metrics = ({"acc1": acc, "acc5": 0.6, "mean_per_class_recall": acc} if task == "zeroshot_classification" else
               {"lp_acc1": acc, "lp_acc5": 0.6, "lp_mean_per_class_recall": acc, "lp_best_wd": 0.0})
    dump = {"dataset": dataset, "model": "ViT-B-32", "pretrained": "openai", "task": task, "metrics": metrics,
            "language": "en"}
    if classnames:
        dump["classnames"] = classnames
    path = folder / f"{dataset.replace('/', '_')}_openai_ViT-B-32_en_{task}.json"  # its default --output
    with open(path, "w") as f:
        json.dump(dump, f)
    return path


def test_our_lines_carry_clip_benchmarks_language(results):
    line = json.loads(results.read_text().splitlines()[0])
    assert line["language"] == "en" and "classnames" not in line and "templates" not in line


def test_clip_benchmark_files_read_as_external_rows(results, tmp_path):
    zs = _clip_benchmark_file(tmp_path, classnames=["707-320", "727-200"])
    lp = _clip_benchmark_file(tmp_path, task="linear_probe", acc=0.5)
    alone = build_report([zs], tmp_path / "alone")
    assert alone["cells"] == 1 and (tmp_path / "alone" / "report.html").is_file()

    build_report([results, zs, lp], tmp_path / "both")
    summary = pd.read_csv(tmp_path / "both" / "summary.csv")
    ext = summary[summary.arm == "external_openai_ViT-B-32"].set_index("eval_mode")
    assert ext.loc["zs", "acc1_mean"] == pytest.approx(0.25) and ext.loc["lp", "acc1_mean"] == pytest.approx(0.5)
    assert ext.loc["zs", "delta_acc1"] == pytest.approx(0.25 - 0.27)  # against our own pretrained baseline
    assert {"retrieved", "synthetic", "zeroshot_baseline"} <= set(summary.arm)


def test_a_clip_benchmark_file_as_the_baseline(tmp_path, results):
    ours = tmp_path / "arms.jsonl"
    ours.write_text("".join(l + "\n" for l in results.read_text().splitlines()
                            if json.loads(l)["arm"] != "zeroshot_baseline"))
    # CLIP_benchmark names VTAB's flowers wds/vtab/flowers; it is our flowers102
    base = _clip_benchmark_file(tmp_path, acc=0.2)
    build_report([ours], tmp_path / "r", baselines=[base])
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert summary[summary.arm == "zeroshot_baseline"].acc1_mean.tolist() == [pytest.approx(0.2)]
    assert summary[(summary.arm == "retrieved") & (summary.num_train_images == 1000)].delta_acc1.iloc[0] == \
        pytest.approx(0.41 - 0.2)

    from synthimg.errors import SynthimgError

    with pytest.raises(SynthimgError, match="both the results and a --baseline file"):
        build_report([results], tmp_path / "r2", baselines=[base])


def test_clip_benchmark_dataset_names_map_to_ours(tmp_path):
    from synthimg.report.external import dataset_name

    assert dataset_name("wds/vtab/flowers") == "flowers102" and dataset_name("cars") == "stanford_cars"
    assert dataset_name("imagenet1k") == "imagenet" and dataset_name("wds/some/new_set") == "some_new_set"


def test_a_bad_line_is_one_error_naming_it(results, tmp_path):
    from synthimg.cli import main

    bad = tmp_path / "bad.jsonl"
    lines = results.read_text().splitlines()
    broken = json.loads(lines[0]) | {"eval_mode": "zero"}
    bad.write_text("\n".join([lines[0], json.dumps(broken), lines[1]]) + "\n")
    with pytest.raises(SystemExit) as info:
        main(["report", str(bad), "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    retrieval = tmp_path / "retrieval.json"
    retrieval.write_text(json.dumps({"dataset": "mscoco_captions", "model": "ViT-B-32", "pretrained": "openai",
                                     "task": "zeroshot_retrieval", "metrics": {"image_retrieval_recall@5": 0.5},
                                     "language": "en"}))
    with pytest.raises(SystemExit) as info:  # a retrieval result is skipped with a warning; nothing else to report
        main(["report", str(retrieval), "--out", str(tmp_path / "r")])
    assert info.value.code == 2


def test_log_axis_labels_never_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthimg.report.plots import _log_axis

    # four arms a few percent apart in GPU-hours, as the compute-matched panel has them
    for values in ([0.0012, 0.00125, 0.0013, 0.0014, 0.002, 0.0021, 0.01], [50, 120], [50, 60, 70, 80, 90, 1e6]):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(values, range(len(values)))
        _log_axis(ax, values)
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
        assert len(boxes) >= 2
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), values
        plt.close(fig)
