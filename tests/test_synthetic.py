import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest

from synthimg.config import CaptionsConfig, GenerateConfig
from synthimg.errors import SynthimgError
from synthimg.synthetic.captions import make_captions
from synthimg.synthetic.prompting import PromptBuilder, concept, load_incontext
from synthimg.tasks import get_task
from tests.tiny_models import tiny_causal_lm, tiny_sd_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"lm": tiny_causal_lm(root / "lm"), "sd": tiny_sd_pipeline(root / "sd")}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_template_captions_exact_quota(tmp_path):
    table, stats = make_captions(get_task("fgvc_aircraft"), CaptionsConfig(method="template", per_class=5), tmp_path,
                                 progress=False)
    assert len(table) == 500 and table["caption"].nunique() == 500
    assert table.groupby("class_id").size().eq(5).all() and not stats["short_classes"]
    assert {"class_id", "class_name", "caption", "caption_method", "caption_seed"} <= set(table.columns)
    assert not (tmp_path / "_parts").exists()  # a finished run leaves only its table and stats
    again, _ = make_captions(get_task("fgvc_aircraft"), CaptionsConfig(method="template", per_class=5), tmp_path / "b",
                             progress=False, keep_parts=True)
    assert again["caption"].tolist() == table["caption"].tolist() and (tmp_path / "b" / "_parts").is_dir()
    # a rerun of the finished run returns it, with no work (its table file is untouched)
    before = (tmp_path / "captions.parquet").stat().st_mtime_ns
    rerun, _ = make_captions(get_task("fgvc_aircraft"), CaptionsConfig(method="template", per_class=5), tmp_path,
                             progress=False)
    assert rerun["caption"].tolist() == table["caption"].tolist()
    assert (tmp_path / "captions.parquet").stat().st_mtime_ns == before
    other, _ = make_captions(get_task("fgvc_aircraft"), CaptionsConfig(method="template", per_class=6), tmp_path,
                             progress=False)  # other settings: made again
    assert len(other) == 600


def test_llm_captions_exact_quota_with_provenance(models, tmp_path):
    cfg = CaptionsConfig(method="llm", per_class=5, llm=str(models["lm"]), max_new_tokens=12, batch_size=64, seed=3)
    table, stats = make_captions(get_task("fgvc_aircraft"), cfg, tmp_path, progress=False)
    assert len(table) == 500 and table["caption"].nunique() == 500 and table.groupby("class_id").size().eq(5).all()
    assert set(table["prompt_type"]) <= {"c", "c_relation", "c_background"}
    row = table.iloc[0]
    assert row["llm"] == str(models["lm"]) and row["temperature"] == 0.8 and row["top_p"] == 0.9
    assert len(json.loads(row["example_ids"])) == 3 and row["caption_seed"] == 3
    assert "\n" not in "".join(table["caption"]) and stats["generated"] >= 500
    assert "\n707-320 aircraft" in table[table.class_id == 0]["prompt"].iloc[0]  # the category word is added ...
    assert set(table[table.class_id == 0]["class_name"]) == {"707-320"}  # ... and not part of the label
    again, _ = make_captions(get_task("fgvc_aircraft"), cfg, tmp_path / "again", progress=False)
    assert again["prompt"].tolist() == table["prompt"].tolist()  # the same seed gives the same prompts


def test_prompt_mix_and_examples():
    data = load_incontext()
    # the paper's in-context pools: 52 (class), 20 (relation), 50 (background); ours are written for synthimg
    assert {k: len(v) for k, v in data["examples"].items()} == {"c": 52, "c_relation": 20, "c_background": 50}
    assert len(data["relations"]) == 10
    builder = PromptBuilder(get_task("stanford_cars"), seed=0)
    kinds = Counter(builder.build(c % 196, a).prompt_type for c in range(196) for a in range(20))
    total = sum(kinds.values())
    assert abs(kinds["c"] / total - 0.44) < 0.03 and abs(kinds["c_relation"] / total - 0.11) < 0.02
    p = builder.build(5, 7)
    assert p.text.count("=>") == 4 and p.text.endswith("=>") and builder.build(5, 7).text == p.text
    assert concept(get_task("stanford_cars"), 0).endswith(" car") and concept(get_task("dtd"), 0) == "banded"


class _FakeOpenAI(BaseHTTPRequestHandler):
    def do_GET(self):  # /v1/models
        self._json({"data": [{"id": "fake-llm"}]})

    def do_POST(self):  # /v1/completions
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = [{"index": i, "text": f" caption {body['seed']}-{i} of {p.splitlines()[-1][:40]}\nmore"}
                   for i, p in enumerate(body["prompt"])]
        self._json({"choices": choices})

    def _json(self, data):
        blob = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def log_message(self, *args):
        pass


def test_openai_compatible_endpoint(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = CaptionsConfig(method="llm", per_class=3, llm_url=f"http://127.0.0.1:{server.server_port}")
        table, _ = make_captions(get_task("cifar10"), cfg, tmp_path, progress=False)
    finally:
        server.shutdown()
        server.server_close()  # now the port refuses connections
    assert len(table) == 30 and table["caption"].nunique() == 30
    assert set(table["llm"]) == {f"fake-llm@http://127.0.0.1:{server.server_port}"}
    assert not table["caption"].str.contains("more").any()  # only the first line is kept
    with pytest.raises(SynthimgError, match="unreachable"):
        make_captions(get_task("cifar10"), cfg, tmp_path / "dead", progress=False)


def _gen_args(captions: Path, sd: Path, out: Path, *extra: str) -> list[str]:
    return ["--quiet", "generate", "--captions", str(captions), "--model-id", str(sd), "--out", str(out), "--steps",
            "3", "--size", "32", "--stored-size", "16", "--batch-size", "4", "--images-per-shard", "8", *extra]


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions")
    from synthimg.cli import main

    with pytest.raises(SystemExit):
        main(["--quiet", "captions", "--task", "cifar10", "--per-class", "4", "--method", "template", "--out", str(out)])
    return out / "captions.parquet"


@pytest.mark.slow
def test_generate_complete_balanced_and_deterministic(models, captions, tmp_path):
    from synthimg.data.inspect import inspect_shards
    from synthimg.data.manifest import read_manifest

    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / name)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    report = inspect_shards(tmp_path / "a", progress=False)
    assert report["total"] == 40 and report["min_per_class"] == report["max_per_class"] == 4 and not report["skipped_total"]
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")  # same seed, same bytes
    meta = read_manifest(tmp_path / "a").iloc[0]
    assert meta["source"] == "synthetic" and meta["scheduler"] == "ddim" and meta["cfg"] == 2.0 and meta["steps"] == 3
    assert meta["caption_method"] == "template" and meta["model_id"] == str(models["sd"])
    stats = json.loads((tmp_path / "a" / "generate_stats.json").read_text())
    assert stats["images_per_sec"] > 0 and stats["gpu"]["type"] == "cpu"


def test_one_image_regenerates_alone(models, captions):
    import numpy as np

    from synthimg.synthetic.generate import Engine, load_captions, text_items

    cfg = GenerateConfig(model_id=str(models["sd"]), steps=3, height=32, width=32, batch_size=4)
    engine = Engine(cfg, "cpu")
    items = text_items(load_captions(captions, get_task("cifar10")), get_task("cifar10"), cfg)[:4]
    batch = [np.asarray(im, dtype=np.int16) for im, _ in engine.render(items)]
    alone = np.asarray(engine.render([items[2]])[0][0], dtype=np.int16)
    assert np.abs(alone - batch[2]).max() <= 1  # same noise; batched kernels may round one step apart


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_clean_result(models, captions, tmp_path):
    clean = subprocess.run([sys.executable, "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / "clean")],
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0
    paused = tmp_path / "paused"  # the run stops right after its second shard: killed there, never racing
    proc = subprocess.Popen([sys.executable, "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ | {"SYNTHIMG_PAUSE_AT": "shard:1", "SYNTHIMG_PAUSE_FILE": str(paused)})
    deadline = time.time() + 300
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), "the run never reached its second shard"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in (tmp_path / "killed").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    again = subprocess.run([sys.executable, "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / "killed")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "killed" / "generate_stats.json").read_text())["shards_skipped"] >= 2
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "clean")


@pytest.mark.slow
def test_torchrun_two_ranks_make_the_same_dataset(models, captions, tmp_path):
    one = subprocess.run([sys.executable, "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "synthimg", *_gen_args(captions, models["sd"], tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "generate_stats.json").read_text())["world_size"] == 2


def test_sdedit_from_real_shards(models, tmp_path):
    from synthimg.cli import main
    from synthimg.data.manifest import read_manifest
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "real", n=6, maxcount=6)
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "generate", "--task", "cifar10", "--init-shards", str(tmp_path / "real"), "--model-id",
              str(models["sd"]), "--out", str(tmp_path / "sdedit"), "--strength", "0.5", "--steps", "4", "--size", "32",
              "--stored-size", "16"])
    assert info.value.code == 0
    manifest = read_manifest(tmp_path / "sdedit")
    assert len(manifest) == 6 and set(manifest["strength"]) == {0.5} and manifest["init_key"].tolist()[0] == "000000000"


def test_bad_generation_input(models, captions, tmp_path, capsys):
    from synthimg.cli import main

    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"class_id": pd.Series(dtype=int), "caption": pd.Series(dtype=str)}).to_parquet(empty)
    partial = tmp_path / "partial.parquet"
    pd.read_parquet(captions).query("class_id != 7").to_parquet(partial)
    cases = [
        (["--captions", str(captions), "--model-id", str(tmp_path / "no_model")], "model folder not found"),
        (["--captions", str(empty), "--model-id", str(models["sd"]), "--task", "cifar10"], "is empty"),
        (["--captions", str(partial), "--model-id", str(models["sd"]), "--task", "cifar10"], "1 cifar10 classes have no captions in"),
    ]
    for args, fragment in cases:
        with pytest.raises(SystemExit) as info:
            main(["--quiet", "generate", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and fragment in err and err.count("\n") == 1


class _ListLLM:
    """A deterministic stand-in LLM: each completion lists a few places named after its seed and subject."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.tokens, self.id = 0, fail_after, 0, "list-llm"

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return [" " + "\n".join(f"{k + 2}. place {seed % 1000}-{i}-{k}" for k in range(7)) + "\n8. " + "x" * 90
                for i, _ in enumerate(prompts)]


def test_backgrounds_per_domain_and_per_class_with_the_papers_counts(tmp_path):
    from synthimg.synthetic.backgrounds import make_backgrounds

    cfg = CaptionsConfig(method="llm", llm="unused", batch_size=8)
    stats = make_backgrounds(get_task("fgvc_aircraft"), cfg, tmp_path / "air.json", llm=_ListLLM(), progress=False)
    data = json.loads((tmp_path / "air.json").read_text())
    assert list(data) == ["backgrounds"] and len(data["backgrounds"]) == 80 == len(set(data["backgrounds"]))
    assert stats["scope"] == "domain" and not stats["short"] and all(len(p) <= 60 for p in data["backgrounds"])
    stats = make_backgrounds(get_task("imagenet"), cfg.model_copy(update={"backgrounds_count": 10}),
                             tmp_path / "in.json", llm=_ListLLM(), progress=False)
    data = json.loads((tmp_path / "in.json").read_text())
    assert stats["scope"] == "class" and len(data) == 1000 and all(len(v) == 10 for v in data.values())
    # the captions read it: every background prompt names one of the LLM's places
    builder = PromptBuilder(get_task("fgvc_aircraft"), seed=0, backgrounds=str(tmp_path / "air.json"))
    places = set(json.loads((tmp_path / "air.json").read_text())["backgrounds"])
    backs = [b.background for b in (builder.build(c, a) for c in range(100) for a in range(5)) if b.background]
    assert backs and set(backs) <= places


def test_backgrounds_resume_exactly_after_an_interruption(tmp_path):
    from synthimg.synthetic.backgrounds import make_backgrounds

    cfg = CaptionsConfig(method="llm", llm="unused", batch_size=16, backgrounds_count=20)
    task = get_task("flowers102")
    make_backgrounds(task, cfg.model_copy(update={"backgrounds_scope": "class"}), tmp_path / "whole.json",
                     llm=_ListLLM(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        make_backgrounds(task, cfg.model_copy(update={"backgrounds_scope": "class"}), tmp_path / "cut.json",
                         llm=_ListLLM(fail_after=9), progress=False)
    assert (tmp_path / "cut.json.partial.json").is_file() and not (tmp_path / "cut.json").exists()
    llm = _ListLLM()
    make_backgrounds(task, cfg.model_copy(update={"backgrounds_scope": "class"}), tmp_path / "cut.json", llm=llm,
                     progress=False)
    assert (tmp_path / "cut.json").read_text() == (tmp_path / "whole.json").read_text()
    assert not (tmp_path / "cut.json.partial.json").exists() and llm.calls < 18
    calls = _ListLLM()
    make_backgrounds(task, cfg.model_copy(update={"backgrounds_scope": "class"}), tmp_path / "cut.json", llm=calls,
                     progress=False)
    assert calls.calls == 0  # a finished file is not asked again


def test_backgrounds_cli_with_a_real_tiny_llm(models, tmp_path):
    from synthimg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--quiet", "captions", "backgrounds", "--task", "dtd", "--llm", str(models["lm"]), "--count", "5",
              "--out", str(tmp_path / "bg.json"), "captions.max_rounds=2", "captions.max_new_tokens=20"])
    assert info.value.code == 0
    stats = json.loads((tmp_path / "bg_stats.json").read_text())
    assert stats["scope"] == "domain" and stats["prompts"] >= 1 and stats["tokens"] > 0
