"""``synthimg study``: a tiny grid runs, resumes after an interruption, reruns only a deleted cell."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthimg.cli import _invoke
from synthimg.errors import SynthimgError
from synthimg.study.run import run_study
from synthimg.study.spec import load_study
from tests.conftest import CLASSNAMES, write_colour_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "study"
PAPER = sorted(CONFIGS.glob("unmet_promise_*.yaml"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_colour_shards(root / "armA", 120, 0, "synthetic")
    write_colour_shards(root / "armB", 120, 50_000, "retrieved")
    for split, n, off in (("train", 60, 10_000), ("val", 30, 20_000), ("test", 60, 30_000)):
        write_colour_shards(root / "eval" / split, n, off, "upstream")
    (root / "eval" / "classnames.txt").write_text("\n".join(CLASSNAMES))
    return root


def _study(world: Path, out: Path, **changes) -> Path:
    data = {
        "name": "tiny", "task": "cifar10", "out": str(out), "eval_root": str(world / "eval"),
        "scales": [20, 40], "seeds": [0, 1], "lrs": [1e-3],
        "arms": {"synthetic": {"source": "shards", "shards": str(world / "armA"), "decontaminate": False},
                 "retrieved": {"source": "shards", "shards": str(world / "armB")}},
        "base": {"curate": {"model": "synthimg-tiny-vit", "pretrained": None, "top": 0.6, "workers": 0,
                            "descriptor": "none"},
                 "train": {"model": "synthimg-tiny-vit", "pretrained": None, "epochs": 2, "batch_size": 20,
                           "warmup": 2, "workers": 0, "precision": "fp32", "lr": 1e-3},
                 "eval": {"workers": 0, "lp_epochs": 10}},
    }
    data.update(changes)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Recorder:
    """Runs command lines in process and records them; optionally interrupts at the n-th train step."""

    def __init__(self, interrupt_at: int | None = None, fail_name: str | None = None):
        self.calls: list[list[str]] = []
        self.interrupt_at, self.fail_name = interrupt_at, fail_name

    def __call__(self, argv: list[str]) -> None:
        self.calls.append(argv)
        trains = [c for c in self.calls if c[0] == "train"]
        if argv[0] == "train" and self.interrupt_at is not None and len(trains) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.fail_name and argv[0] == "train" and self.fail_name in argv[argv.index("--name") + 1]:
            raise SynthimgError("simulated failure")
        _invoke(argv)

    def kinds(self) -> list[str]:
        return [c[0] if c[0] not in ("curate",) else f"curate {c[1]}" for c in self.calls]


def test_tiny_study_interrupt_resume_and_rerun_one_cell(world, tmp_path):
    study = load_study(_study(world, tmp_path / "s"))
    first = Recorder(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, first, echo=lambda *_: None)
    assert first.kinds().count("train") == 3  # two cells finished, the third was interrupted

    second = Recorder()
    stats = run_study(study, second, echo=lambda *_: None)
    assert second.kinds().count("train") == 6  # 8 cells - the 2 finished before
    assert "curate score" not in second.kinds()  # shared steps are not redone
    assert stats["cells_done"] == 8 and not stats["failed"]
    results = (tmp_path / "s" / "results.jsonl").read_text().splitlines()
    arms = {json.loads(line)["arm"] for line in results}
    assert arms == {"synthetic", "retrieved", "zeroshot_baseline"}
    report = tmp_path / "s" / "report"
    for name in ("results.md", "results.tex", "results_long.csv", "scaling_cifar10.png", "report.html",
                 "distances.csv", "clip_scores_cifar10.png"):
        assert (report / name).is_file(), name
    html = (report / "report.html").read_text()
    assert "Galleries" in html and "data:image/jpeg;base64" in html and "FID" in html
    assert list((report / "galleries").glob("*.png"))

    third = Recorder()
    run_study(study, third, echo=lambda *_: None)
    assert third.calls == []  # run twice: the work is done once

    cell = next((tmp_path / "s" / "cells").glob("retrieved-n40-s1-*"))
    (cell / "results.jsonl").unlink()
    fourth = Recorder()
    run_study(study, fourth, echo=lambda *_: None)
    assert [c[0] for c in fourth.calls] == ["train"]
    assert cell.name in fourth.calls[0]
    assert len((tmp_path / "s" / "results.jsonl").read_text().splitlines()) == len(results)


def test_a_failed_cell_is_reported_and_the_others_go_on(world, tmp_path):
    study = load_study(_study(world, tmp_path / "f", scales=[20], seeds=[0], analysis=False, baseline=False))
    rec = Recorder(fail_name="synthetic-n20")
    stats = run_study(study, rec, echo=lambda *_: None)
    assert len(stats["failed"]) == 1 and "simulated failure" in next(iter(stats["failed"].values()))
    assert stats["cells_done"] == 1
    again = Recorder()
    stats = run_study(study, again, echo=lambda *_: None)
    assert [c[0] for c in again.calls] == ["train"] and stats["cells_done"] == 2


class Noisy(Recorder):
    """A step that talks the way libraries do: print, warnings, a C library writing to fd 2."""

    def __call__(self, argv: list[str]) -> None:
        import os

        print("<|endoftext|> a token dump")
        sys.stderr.write("lib.py:1: FutureWarning: a warning from a library\n")  # what warnings.warn prints
        os.write(2, b"C-level noise\n")
        super().__call__(argv)


def test_step_output_goes_to_the_log_and_the_console_gets_one_line_per_step(world, tmp_path, capfd):
    import re

    study = load_study(_study(world, tmp_path / "q", scales=[20], seeds=[0], analysis=False, baseline=False))
    lines: list[str] = []
    stats = run_study(study, Noisy(), echo=lines.append, log_file=tmp_path / "q.log")
    assert stats["cells_done"] == 2 and not stats["failed"]
    console = capfd.readouterr()
    assert "endoftext" not in console.out + console.err and "Warning" not in console.out + console.err
    log = (tmp_path / "q.log").read_text()
    assert "<|endoftext|> a token dump" in log and "FutureWarning" in log and "C-level noise" in log
    steps = [x for x in lines if x.startswith("[")]
    assert steps and all(re.match(r"^\[\s*\d+/\d+\] \d\d:\d\d \S+: done in ", x) for x in steps), steps


def test_mixed_arm_trains_on_both_pools(world, tmp_path):
    study = load_study(_study(world, tmp_path / "m", scales=[20], seeds=[0], analysis=False, baseline=False,
                              arms={"synthetic": {"source": "shards", "shards": str(world / "armA")},
                                    "retrieved": {"source": "shards", "shards": str(world / "armB")},
                                    "mixed": {"source": "mixed", "mix": {"synthetic": 0.5, "retrieved": 0.5}}}))
    stats = run_study(study, _invoke, echo=lambda *_: None)
    assert stats["cells_done"] == 3 and not stats["failed"]
    lines = [json.loads(x) for x in (tmp_path / "m" / "results.jsonl").read_text().splitlines()]
    mixed = [r for r in lines if r["arm"] == "mixed"]
    assert mixed and {r["num_train_images"] for r in mixed} == {20}


@pytest.mark.parametrize("config", PAPER, ids=[p.stem for p in PAPER])
def test_dry_run_on_each_paper_config(config, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "synthimg", "study", str(config), "--dry-run", "--json",
                           "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    cells = [s for s in plan["steps"] if s["kind"] == "train"]
    assert len(cells) >= 2 * 3 and all(s["status"] == "todo" for s in cells)
    assert plan["estimate"]["totals"]["images_to_generate"] > 0
    assert plan["estimate"]["totals"]["gpu_hours"] > 0
    if any(a.source == "synthetic" for a in load_study(config).arms.values()):
        assert plan["estimate"]["totals"]["llm_new_tokens"] > 0  # LLM captioning is priced
        assert any(s["kind"] == "backgrounds" for s in plan["steps"])  # the paper's LLM-written places, first
    cover = plan["coverage"]
    assert cover and all(r["covered"] and r["margin"] >= 0.04 for r in cover if r["scale"] != "all")
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_ablation_configs_plan_what_sec5_compares():
    sdedit = load_study(CONFIGS / "unmet_promise_fgvc_aircraft_sdedit.yaml")
    gammas = sorted(a.overrides["generate"]["strength"] for a in sdedit.arms.values() if a.source == "sdedit")
    assert gammas == [round(0.1 * g, 1) for g in range(1, 11)] and "synthetic" not in sdedit.arms
    assert sdedit.stage_config("sdedit_g05").generate.init_template == "a photo of {c}"
    assert sdedit.stage_config("retrieved").retrieve.backend == "substring"  # inherited from the main config
    mix = load_study(CONFIGS / "unmet_promise_imagenet_mix.yaml")
    for name in ("mix_1to1", "mix_1to2", "mix_1to4"):
        arm = mix.arms[name]
        assert round(arm.scales[0] * arm.mix["retrieved"]) == 50000  # the retrieved part stays fixed
    versions = load_study(CONFIGS / "unmet_promise_fgvc_aircraft_sd_versions.yaml")
    ids = {n: versions.stage_config(n).generate.model_id for n, a in versions.arms.items() if a.source == "synthetic"}
    assert ids == {"synthetic": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                   "synthetic_sd11": "CompVis/stable-diffusion-v1-1", "synthetic_sd13": "CompVis/stable-diffusion-v1-3"}
    from synthimg.study.plan import build_plan

    steps = build_plan(versions, Path("/nonexistent"))
    assert sum(s.kind == "captions" for s in steps) == 1  # one set of captions for the three generators


def test_paper_config_numbers():
    air = load_study(CONFIGS / "unmet_promise_fgvc_aircraft.yaml")
    assert air.arm_scales("retrieved") == [15000, 139000]
    assert {139000, 250000, 500000} <= set(air.arm_scales("synthetic"))
    assert len(air.seeds) >= 3 and air.lrs == [1e-5, 1e-6]
    cfg = air.stage_config("retrieved")
    assert cfg.retrieve.backend == "substring" and cfg.curate.top == 0.3 and cfg.curate.cap == 10000
    assert cfg.generate.cfg == 2.0 and cfg.train.batch_size == 512 and cfg.train.epochs == 30
    imagenet = load_study(CONFIGS / "unmet_promise_imagenet.yaml")
    assert imagenet.lrs == [1e-6] and imagenet.stage_config().train.epochs == 10
    assert imagenet.stage_config("retrieved").retrieve.k_per_query == 500


@pytest.mark.parametrize("change, message", [
    ({"arms": {"a": {"source": "synthetic", "pool_per_class": 1}}, "scales": [1000]}, "cannot be met"),
    ({"arms": {"a": {"source": "retrieved"}}, "scales": [200000],
      "base": {"curate": {"cap": 100}}}, "above its cap"),
    ({"arms": {"a": {"source": "retrieved"}}, "scales": ["all"]}, "only the scale 'all'"),
    ({"arms": {"a": {"source": "mixed", "mix": {"b": 0.5, "c": 0.5}}}}, "not a non-mixed arm"),
    ({"base": {"train": {"lrr": 1}}}, "unknown config key 'train.lrr'"),
    ({"bogus": 1}, "unknown config key 'bogus'"),
])
def test_study_config_errors_are_one_line(world, tmp_path, change, message):
    path = _study(world, tmp_path / "e", **change)
    proc = subprocess.run([sys.executable, "-m", "synthimg", "study", str(path), "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_slurm_executor_through_submitit(world, tmp_path):
    pytest.importorskip("submitit")
    path = _study(world, tmp_path / "j", scales=[20], seeds=[0], analysis=False, baseline=False,
                  arms={"retrieved": {"source": "shards", "shards": str(world / "armB"), "filter": False,
                                      "decontaminate": False}},
                  executor={"kind": "slurm", "slurm": {"cluster": "local", "timeout_min": 10}})
    stats = run_study(load_study(path), None, echo=lambda *_: None)
    assert not stats["failed"] and stats["cells_done"] == 1, stats
    assert len(stats["submitted"]) == 3  # score, subsample, one cell
    assert list((tmp_path / "j" / "slurm").iterdir())


def test_an_impossible_cell_fails_before_any_step_runs(world, tmp_path):
    study = load_study(_study(world, tmp_path / "x", scales=[20, 1000]))  # 120 images per arm cannot give 1000
    recorder = Recorder()
    with pytest.raises(SynthimgError, match="cell of 1,000 images cannot be met"):
        run_study(study, recorder, echo=lambda *_: None)
    assert recorder.calls == [] and not (tmp_path / "x").exists()


def test_scale_all_is_everything_that_survives_equal_across_arms(world, tmp_path):
    arms = {"synthetic": {"source": "shards", "shards": str(world / "armA"), "decontaminate": False},
            "retrieved": {"source": "shards", "shards": str(world / "armB"), "overrides": {"curate": {"top": 0.4}}}}
    study = load_study(_study(world, tmp_path / "all", scales=[20, "all"], seeds=[0], analysis=False, baseline=False,
                              arms=arms))
    stats = run_study(study, _invoke, echo=lambda *_: None)
    assert not stats["failed"] and stats["cells_done"] == 4
    lines = [json.loads(x) for x in (tmp_path / "all" / "results.jsonl").read_text().splitlines()]
    sizes = {(r["arm"], r["num_train_images"]) for r in lines}
    big = {n for _, n in sizes if n != 20}
    assert len(big) == 1  # 'all' is one size for both arms: the smaller curated pool
    pools = [json.loads(p.read_text())["pool"] for p in (tmp_path / "all" / "arms").glob("*/subsets-*/subsets.json")]
    assert big == {min(pools)} and sorted(pools) == [50, 80]  # ceil(40%) vs ceil(60%) of 12 per class


def test_a_short_downloaded_pool_stops_the_arm_before_gpu_work(tmp_path):
    from synthimg.study.plan import Step
    from synthimg.study.pools import PoolCheck

    out = tmp_path / "images"
    out.mkdir()
    (out / "download_stats.json").write_text(json.dumps({"per_class": {"a": 100, "b": 3}}))
    step = Step(id="r.images", kind="download", argv=[], outputs=[out / "download_stats.json"])
    # after the 30% filter, 30 and 1 images; after decontamination (x 0.93), 27 and 0
    PoolCheck("r", 27, 2, 0.3, None, 0.93)(step)
    with pytest.raises(SynthimgError, match="about 27 images after curation, short of the 28-image cell"):
        PoolCheck("r", 28, 2, 0.3, None, 0.93)(step)


def test_sdedit_arm_renders_the_curated_pool_and_pairs_with_its_subsets(world, tmp_path):
    from synthimg.data.manifest import read_keys, read_manifest
    from tests.tiny_models import tiny_sd_pipeline

    sd = tiny_sd_pipeline(tmp_path / "sd")
    arms = {"retrieved": {"source": "shards", "shards": str(world / "armB")},
            "sdedit_g05": {"source": "sdedit", "init_from": "retrieved", "overrides": {"generate": {
                "model_id": str(sd), "strength": 0.5, "height": 32, "width": 32, "stored_size": 32, "steps": 2,
                "batch_size": 40, "dtype": "fp32"}}}}
    study = load_study(_study(world, tmp_path / "sde", scales=[20], seeds=[0], analysis=False, baseline=False,
                              arms=arms))
    stats = run_study(study, _invoke, echo=lambda *_: None)
    assert not stats["failed"] and stats["cells_done"] == 2, stats
    arms_dir = tmp_path / "sde" / "arms"
    sub_r = read_keys(next((arms_dir / "retrieved").glob("subsets-*")) / "subset_n20_s0.parquet")
    sdedit_dir = arms_dir / "sdedit_g05"
    sub_s = read_keys(next(sdedit_dir.glob("subsets-*")) / "subset_n20_s0.parquet")
    manifest = read_manifest(next(sdedit_dir.glob("images-*"))).set_index("key")
    assert [manifest.loc[k, "init_key"] for k in sub_s] == sub_r  # the SDEdit versions of the same images
    assert set(manifest["prompt"].str.startswith("a photo of ")) == {True}  # App. E.1's prompt, not the alt-text
    assert manifest["strength"].eq(0.5).all()
