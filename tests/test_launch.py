"""One launcher layer: torchrun's and SLURM's variables give the same launch and the same outputs."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from synthimg.dist import Launch, first_host, launch_env

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
               "TORCHELASTIC_RUN_ID")


def test_first_host_of_slurm_node_lists():
    assert first_host("gpu[003-004,007],cpu1") == "gpu003" and first_host("node7") == "node7"
    assert first_host("a[1,3]") == "a1" and first_host("127.0.0.1") == "127.0.0.1"


def test_launch_from_torchrun_or_slurm_variables():
    assert launch_env({}) == Launch()
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launch_env(torchrun) == Launch(3, 8, 1, "torchrun", "h", 29500)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[010-011]",
             "SLURM_JOB_ID": "123"}
    assert launch_env(slurm) == Launch(5, 8, 1, "slurm", "gpu010", 20123)
    assert launch_env(slurm | {"MASTER_ADDR": "m", "MASTER_PORT": "4000"}).master_addr == "m"
    assert launch_env(slurm | torchrun).launcher == "torchrun"  # torchrun inside an allocation
    assert launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Launch()  # a one-task job step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_like(argv: list[str], tasks: int = 2, timeout: int = 600) -> None:
    """What ``srun --ntasks 2 python -m synthimg ...`` does to the processes: SLURM variables, no torchrun."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    base.update(SLURM_NTASKS=str(tasks), SLURM_NODELIST="127.0.0.1", SLURM_JOB_ID="1", MASTER_PORT=str(_free_port()),
                OMP_NUM_THREADS="1")  # as torchrun sets it for several processes per node
    procs = [subprocess.Popen([sys.executable, "-m", "synthimg", *argv], env=base | {"SLURM_PROCID": str(i),
                                                                                     "SLURM_LOCALID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(tasks)]
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
    finally:  # a failed task leaves the other waiting for it in init: stop it
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def torchrun(argv: list[str], timeout: int = 600) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "synthimg", *argv], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_curate_score_under_srun_variables_matches_torchrun(tmp_path):
    from synthimg.data.manifest import read_manifest
    from tests.conftest import scoring_copies

    args, (a, b) = scoring_copies(tmp_path, ("torchrun", "srun"))
    args += ["--workers", "0"]
    torchrun([*args, "--shards", str(a)])
    srun_like([*args, "--shards", str(b)])
    x = read_manifest(a).set_index("key")["clip_score"].sort_index()
    y = read_manifest(b).set_index("key")["clip_score"].sort_index()
    assert len(y) == 40 and y.notna().all()  # both ranks' shards scored and gathered on rank 0
    assert np.allclose(x.to_numpy(), y.to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_train_under_srun_variables_matches_torchrun(tmp_path):
    import torch

    from tests.conftest import write_dataset

    write_dataset(tmp_path / "shards", n=80, maxcount=20)
    args = ["--quiet", "train", "--train-data", str(tmp_path / "shards"), "--task", "cifar10", "--model",
            "synthimg-tiny-vit", "--pretrained", "none", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
            "--warmup", "1", "--workers", "0", "--logdir", str(tmp_path / "logs"), "train.precision=fp32"]
    torchrun([*args, "--name", "torchrun"])
    srun_like([*args, "--name", "srun"])
    stats = {n: json.loads((tmp_path / "logs" / n / "train_stats.json").read_text()) for n in ("torchrun", "srun")}
    assert stats["srun"]["world_size"] == stats["torchrun"]["world_size"] == 2
    keep = ("epoch", "samples", "seen_once", "batch_classes_mean", "loss")
    for a, b in zip(stats["torchrun"]["per_epoch"], stats["srun"]["per_epoch"]):
        assert {k: a.get(k) for k in keep} == pytest.approx({k: b.get(k) for k in keep})
    weights = [torch.load(tmp_path / "logs" / n / "checkpoints" / "epoch_latest.pt", map_location="cpu",
                          weights_only=False)["state_dict"] for n in ("torchrun", "srun")]
    assert weights[0].keys() == weights[1].keys()
    worst = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    assert worst <= 1e-6, worst
