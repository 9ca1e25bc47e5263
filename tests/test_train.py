import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synthimg.config import load_config
from synthimg.data.shards import sample_key
from synthimg.errors import SynthimgError
from synthimg.evaluation.results import read_results
from tests.conftest import CLASSNAMES, write_colour_shards


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A learnable toy task: colour = class. Training shards plus an eval root in CLIP_benchmark's layout."""
    root = tmp_path_factory.mktemp("toy")
    write_colour_shards(root / "train", 200, 0)
    for split, n, off in (("train", 100, 10_000), ("val", 50, 20_000), ("test", 100, 30_000)):
        write_colour_shards(root / "eval" / split, n, off, "upstream")
    (root / "eval" / "classnames.txt").write_text("\n".join(CLASSNAMES))
    return root


def _cfg(toy: Path, logs: Path, name: str, *overrides: str):
    return load_config(overrides=[
        "task=cifar10", f"train.data=[{toy / 'train'}]", "train.model=synthimg-tiny-vit", "train.pretrained=null",
        "train.epochs=3", "train.batch_size=20", "train.lr=1e-3", "train.warmup=2", "train.workers=0",
        "train.precision=fp32", f"train.logs={logs}", f"train.name={name}", "eval.workers=0", "eval.lp_epochs=20",
        "eval.lp_warmup=5",
        *overrides,
    ])


def test_ce_learns_and_writes_the_run_layout(toy, tmp_path):
    from synthimg.evaluation.run import RunEvaluator
    from synthimg.tasks import get_task
    from synthimg.train.engine import train

    cfg = _cfg(toy, tmp_path, "ce", f"train.eval_root={toy / 'eval'}", "train.wise_alphas=[0.0,1.0]")
    run = train(cfg, RunEvaluator(get_task("cifar10"), toy / "eval", cfg.eval))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "epoch_latest.pt"]
    assert (run / "config.yaml").is_file() and "samples_per_second_per_gpu" in (run / "out.log").read_text()
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    records = read_results(run / "results.jsonl")
    zs = {(r.split, r.epoch): r.metrics.acc1 for r in records if r.eval_mode == "zs" and r.wise_alpha is None}
    assert set(zs) == {(s, e) for s in ("val", "test") for e in (1, 2, 3)}
    assert zs[("test", 3)] > 0.5  # chance is 0.1
    assert {r.arm for r in records} == {"synthetic"} and all(r.num_train_images == 200 for r in records)
    lp = [r for r in records if r.eval_mode == "lp" and r.wise_alpha is None]
    assert {(r.split, r.epoch) for r in lp} == {(s, e) for s in ("val", "test") for e in (1, 2, 3)}  # every epoch
    assert {r.split: r.lp_trained_on for r in lp} == {"val": "train", "test": "train+val"}
    assert all(r.lp_epochs == 20 for r in lp)
    wise = {r.wise_alpha: r.metrics.acc1 for r in records if r.wise_alpha is not None and r.split == "test"
            and r.eval_mode == "zs"}
    assert wise[1.0] == zs[("test", 3)]  # alpha 1 is the fine-tuned model
    ckpt = torch.load(run / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["learner"] == "ce"

    # every line, saved alone as .json, is read by CLIP_benchmark's `build`
    single = tmp_path / "single"
    single.mkdir()
    for i, line in enumerate((run / "results.jsonl").read_text().splitlines()):
        (single / f"{i}.json").write_text(line)
    proc = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build", str(single), "--output", str(tmp_path / "b.csv")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "synthimg-tiny-vit none" in (tmp_path / "b.csv").read_text()

    # `synthimg eval` on a checkpoint reproduces the in-training number
    from synthimg.evaluation.run import evaluate

    again = evaluate("ignored", str(run / "checkpoints" / "epoch_2.pt"), get_task("cifar10"), toy / "eval",
                     cfg.eval.model_copy(update={"modes": ["zs"]}), tmp_path / "r.jsonl")
    assert {r.split: r.metrics.acc1 for r in again} == {"val": zs[("val", 2)], "test": zs[("test", 2)]}


@pytest.mark.parametrize("overrides", [["train.finetune=flyp"], ["train.finetune=lp"],
                                       ["train.learner=timm", "train.model=test_vit", "train.batch_size=10"]])
def test_other_learners_run(toy, tmp_path, overrides):
    from synthimg.train.engine import train

    cfg = _cfg(toy, tmp_path, "x", "train.epochs=1", "train.steps_per_epoch=3", *overrides)
    run = train(cfg)
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["steps"] == 3 and np.isfinite(stats["epoch_losses"][0])


def test_lp_learner_freezes_the_tower(toy, tmp_path):
    from synthimg.train.engine import train

    cfg = _cfg(toy, tmp_path, "lp", "train.finetune=lp", "train.epochs=1", "train.steps_per_epoch=2")
    run = train(cfg)
    state = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    from synthimg.models.clip import create_clip

    torch.manual_seed(0)
    fresh = create_clip("synthimg-tiny-vit").model.visual.state_dict()
    assert all(torch.equal(state[f"visual.{k}"], v) for k, v in fresh.items())


def _run_cli(args: list[str], launcher: list[str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([*(launcher or [sys.executable, "-m", "synthimg"]), "--quiet", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _train_args(toy: Path, logs: Path, name: str, *extra: str) -> list[str]:
    return ["--train-data", str(toy / "train"), "--task", "cifar10", "--model", "synthimg-tiny-vit", "--pretrained",
            "none", "--epochs", "4", "--batch-size", "20", "--lr", "1e-3", "--warmup", "2", "--workers", "2",
            "--logs", str(logs), "--name", name, "train.precision=fp32", *extra]


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_weights(toy, tmp_path):
    whole = _run_cli(_train_args(toy, tmp_path, "whole"))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    paused = tmp_path / "paused"  # the run stops right after its epoch-2 checkpoint: killed there, never racing
    killed = _run_cli(_train_args(toy, tmp_path, "killed"), start_new_session=True,
                      env=os.environ | {"SYNTHIMG_PAUSE_AT": "checkpoint:2", "SYNTHIMG_PAUSE_FILE": str(paused)})
    deadline = time.time() + 300
    while not paused.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), "the run never reached its epoch-2 checkpoint"
    os.killpg(killed.pid, signal.SIGKILL)  # the trainer and its loader workers
    killed.wait()
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("*.pt")) == [
        "epoch_1.pt", "epoch_2.pt", "epoch_latest.pt"]
    resumed = _run_cli([*_train_args(toy, tmp_path, "killed"), "--resume", "latest"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "epoch_4.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "epoch_4.pt", weights_only=True)
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-6), k


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(toy, tmp_path):
    full = tmp_path / "full"
    write_colour_shards(full, 50, 0, maxcount=10)  # 50 = 2 batches of 20 and a short one of 10 (padded per rank)
    common = ["--train-data", str(full), "--task", "cifar10", "--model", "synthimg-tiny-vit", "--pretrained", "none",
              "--epochs", "2", "--batch-size", "20", "--lr", "1e-3", "--warmup", "0", "--workers", "0",
              "--logdir", str(tmp_path), "train.precision=fp32", "train.augment=false"]
    one = _run_cli([*common, "--name", "one"])
    assert one.wait(timeout=300) == 0, one.stderr.read()[-2000:]
    two = _run_cli([*common, "--name", "two"],
                   launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "synthimg"])
    assert two.wait(timeout=300) == 0, two.stderr.read()[-3000:]
    s1 = json.loads((tmp_path / "one" / "train_stats.json").read_text())
    s2 = json.loads((tmp_path / "two" / "train_stats.json").read_text())
    assert s2["world_size"] == 2
    assert s1["epoch_losses"] == pytest.approx(s2["epoch_losses"], rel=1e-4)
    a = torch.load(tmp_path / "one" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    # the padded batch gives the same update (up to float noise that Adam scales up where gradients are ~0)
    assert all(torch.allclose(v, b[k], atol=1e-4) for k, v in a.items())


def test_bad_input(toy, tmp_path):
    from synthimg.data.manifest import write_keys
    from synthimg.train.engine import Trainer

    keys = write_keys([sample_key(1), "999999999", "999999998"], tmp_path / "k.parquet")
    with pytest.raises(SynthimgError, match="2 keys of the key list are not in"):
        Trainer(_cfg(toy, tmp_path, "k", f"train.keys=[{keys}]"))
    with pytest.raises(SynthimgError, match="close matches: .*ViT-B-16"):
        Trainer(_cfg(toy, tmp_path, "m", "train.model=ViT-B-61")).run()
    with pytest.raises(SynthimgError, match="not divisible"):
        Trainer(_cfg(toy, tmp_path, "b", "train.batch_size=21", "train.grad_accum=2"))


def test_the_test_probe_trains_on_train_plus_val():
    from synthimg.evaluation.linear_probe import ProbeSettings, probe_pair

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 4

    def split(labels: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tensor(labels).repeat_interleave(n)
        return centres[y] + 0.3 * torch.randn(len(y), 8, generator=g), y

    # class 2 appears in val and test only: only a probe that saw val can name it
    feats = {"train": split([0, 1], 40), "val": split([2], 40), "test": split([0, 1, 2], 20)}
    settings = ProbeSettings(lr=0.05, batch_size=32, epochs=30, warmup=5)
    pair = probe_pair(feats, 3, settings, seed=0, device="cpu", held_out_val=False)
    assert pair.val_trained_on == "train" and pair.test_trained_on == "train+val"
    assert pair.val["acc1"] == 0.0 and pair.test["acc1"] > 0.95


def test_the_paper_schedule():
    from synthimg.models.schedule import warmup_cosine

    # the official cosine_lr: (i + 1) / warmup, then 0.5 (1 + cos(pi (i - w) / (T - w)))
    assert warmup_cosine(0, 500, 1000) == pytest.approx(1 / 500)
    assert warmup_cosine(499, 500, 1000) == pytest.approx(1.0)
    assert warmup_cosine(500, 500, 1000) == pytest.approx(1.0)
    assert warmup_cosine(750, 500, 1000) == pytest.approx(0.5)
    assert warmup_cosine(999, 500, 1000) == pytest.approx(0.5 * (1 + np.cos(np.pi * 499 / 500)))


def test_paper_optimiser_decays_every_parameter(toy, tmp_path):
    from synthimg.train.engine import Trainer, _optimizer

    trainer = Trainer(_cfg(toy, tmp_path, "opt"))
    learner, _ = trainer._build()
    opt, _ = _optimizer(learner, trainer.tcfg, 10)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]
    assert opt.param_groups[0]["eps"] == 1e-8 and opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(learner.model.parameters()))
    variant = trainer.tcfg.model_copy(update={"wd_exclude_norms": True})
    opt, _ = _optimizer(learner, variant, 10)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]


def test_mixing_two_arms_and_a_missing_eval_root(toy, tmp_path):
    from synthimg.evaluation.run import RunEvaluator
    from synthimg.tasks import get_task
    from synthimg.train.engine import train

    other = tmp_path / "retrieved"
    write_colour_shards(other, 60, 50_000, source="retrieved", maxcount=20)
    cfg = _cfg(toy, tmp_path, "mix", f"train.data=[{toy / 'train'},{other}]", "train.weights=[1.0,1.0]",
               "train.epochs=1", "train.workers=1")
    run = train(cfg)
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["num_train_images"] == 260 and stats["steps"] == 13
    assert json.loads((run / "train_stats.json").read_text())["epoch_losses"][0] > 0
    from synthimg.train.data import infer_arm, resolve_sources

    assert infer_arm(resolve_sources(cfg.train)) == "mixed"
    with pytest.raises(SynthimgError, match="does not exist"):
        RunEvaluator(get_task("cifar10"), tmp_path / "nowhere", cfg.eval)


def test_lp_only_writes_both_probes_every_epoch(toy, tmp_path):
    from synthimg.evaluation.run import RunEvaluator
    from synthimg.tasks import get_task
    from synthimg.train.engine import train

    cfg = _cfg(toy, tmp_path, "lp_only", f"train.eval_root={toy / 'eval'}", "eval.modes=[lp]", "train.epochs=2")
    run = train(cfg, RunEvaluator(get_task("cifar10"), toy / "eval", cfg.eval))
    records = read_results(run / "results.jsonl")
    assert {(r.eval_mode, r.split, r.epoch, r.lp_trained_on) for r in records} == {
        ("lp", "val", e, "train") for e in (1, 2)} | {("lp", "test", e, "train+val") for e in (1, 2)}


def test_paper_configs_resolve_to_the_papers_optimiser(capsys):
    from pathlib import Path

    import yaml

    from synthimg.cli import main

    for config in sorted((Path(__file__).resolve().parents[1] / "configs" / "study").glob("unmet_promise_*.yaml")):
        with pytest.raises(SystemExit) as info:
            main(["config", "show", "-c", str(config)])
        assert info.value.code == 0
        train = yaml.safe_load(capsys.readouterr().out)["train"]
        assert (train["eps"], train["wd"], train["wd_exclude_norms"], train["precision"]) == (1e-8, 0.1, False, "fp32")
        assert (train["beta1"], train["beta2"], train["grad_clip"], train["warmup"]) == (0.9, 0.95, 1.0, 500)


def test_eval_memo_yields_the_same_batches_and_decodes_a_split_once():
    """A split that fits the budget is decoded once; one that does not is streamed every time."""
    import torch

    from synthimg.evaluation.data import MemoSplit, clear_memo, eval_batches

    class Counting(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 10

        def __getitem__(self, i):
            Counting.reads += 1
            return torch.full((3, 4, 4), float(i)), i % 3

    clear_memo()
    plain = [(x.clone(), y.clone()) for x, y in eval_batches(Counting(), 4, 0)]
    Counting.reads = 0
    split = MemoSplit(Counting(), ("toy", "test"), budget_bytes=1 << 20)
    for _ in range(3):
        got = list(eval_batches(split, 4, 0))
        assert len(got) == len(plain) and all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, plain))
    assert Counting.reads == 10  # the first pass only
    Counting.reads = 0
    tight = MemoSplit(Counting(), ("toy", "other"), budget_bytes=100)  # 10 images of 192 bytes do not fit
    for _ in range(2):
        assert sum(len(y) for _, y in eval_batches(tight, 4, 0)) == 10
    assert Counting.reads == 20
    clear_memo()


def test_eval_memo_keys_on_the_files_and_skips_transforms_it_cannot_pin(tmp_path, monkeypatch):
    import torchvision.transforms as T

    from synthimg.data import splits
    from synthimg.evaluation.data import MemoSplit
    from synthimg.evaluation.run import _split
    from synthimg.tasks import get_task

    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "0.tar").write_bytes(b"x")
    monkeypatch.setattr(splits, "load_split", lambda task, split, root, transform: object())
    task = get_task("cifar10")
    plain = T.Compose([T.Resize(32), T.ToTensor()])
    first = _split(task, "test", tmp_path, plain, memo_mb=64)
    assert isinstance(first, MemoSplit) and _split(task, "test", tmp_path, plain, memo_mb=64).key == first.key
    (tmp_path / "test" / "0.tar").write_bytes(b"rewritten in place")  # the folder's own mtime may not move
    assert _split(task, "test", tmp_path, plain, memo_mb=64).key != first.key
    for unpinned in (lambda im: im, T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])):
        assert not isinstance(_split(task, "test", tmp_path, unpinned, memo_mb=64), MemoSplit)
    assert not isinstance(_split(task, "test", tmp_path, plain, memo_mb=0), MemoSplit)
