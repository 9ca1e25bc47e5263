"""The ``synthimg`` command line: thin typer commands that parse, build a config and call a stage.

User errors (:class:`SynthimgError`, bad options) print one line on stderr and exit 2;
``--debug`` shows the traceback instead. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core

from synthimg import __version__
from synthimg.errors import SynthimgError

app = typer.Typer(
    name="synthimg",
    help="Synthetic vs retrieved training images: the Unmet Promise study as a tool.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tasks_app = typer.Typer(help="The task catalog: class names, templates, evaluation splits.", no_args_is_help=True)
shards_app = typer.Typer(help="WebDataset shards: convert, inspect.", no_args_is_help=True)
config_app = typer.Typer(help="Resolve and print configs.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(shards_app, name="shards")
app.add_typer(config_app, name="config")
class _SubcommandFirst(typer.core.TyperGroup):
    """A group that is also a command (``captions`` takes dotted overrides): a subcommand name first wins.

    Without this the group's own variadic overrides argument swallows ``backgrounds ...``.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super().parse_args(ctx, [])
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)


captions_app = typer.Typer(help="Class-targeted captions (LLM or templates) with exact per-class quotas.",
                            invoke_without_command=True, cls=_SubcommandFirst)
app.add_typer(captions_app, name="captions")
index_app = typer.Typer(help="Local CLIP indexes: embed a collection, build faiss, serve the kNN protocol.",
                         no_args_is_help=True)
app.add_typer(index_app, name="index")
curate_app = typer.Typer(help="Curation: CLIP-score filter, decontamination, caps, seeded subsets.", no_args_is_help=True)
app.add_typer(curate_app, name="curate")

_STATE = {"debug": False}

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file")
OverridesArg = typer.Argument(None, help="dotted overrides, e.g. train.lr=1e-5", show_default=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"synthimg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="print the version"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks instead of one-line errors"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    from synthimg import progress
    from synthimg.logs import setup_logging

    _STATE["debug"] = debug
    progress.QUIET = quiet
    setup_logging(debug)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Print versions, devices (CPU/CUDA, GPU count and names) and optional backends."""
    from synthimg.doctor import OPTIONAL, collect

    info = collect()
    if as_json:
        _print_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"python {info['python']} on {info['platform']}")
    table = Table("package", "version", title="versions")
    for name, ver in info["versions"].items():
        table.add_row(name, ver or "[red]missing[/red]")
    console.print(table)
    dev = info["device"]
    where = f"CUDA {dev['torch_cuda']}, {dev['gpu_count']} GPU(s): {', '.join(dev['gpus'])}" if dev["cuda_available"] else "CPU only"
    console.print(f"device: {where}; bf16: {dev['bf16_supported']}; NCCL: {dev['nccl_available']}; faiss GPUs: {dev['faiss_gpus']}")
    table = Table("backend", "importable", "for", title="optional backends")
    for mod, ok in info["optional"].items():
        table.add_row(mod, "yes" if ok else "no", OPTIONAL[mod])
    console.print(table)


@tasks_app.command("list")
def tasks_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """A table of tasks: name, classes, templates, evaluation splits."""
    from synthimg.tasks import get_task, list_tasks

    rows = []
    for name in list_tasks():
        t = get_task(name)
        splits = [f"{s}*" if spec.part is not None else s for s, spec in (t.eval.splits.items() if t.eval else [])]
        rows.append({"name": name, "classes": t.num_classes, "templates": len(t.templates), "splits": splits,
                     "source": t.eval.dataset if t.eval else "wds"})
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "classes", "templates", "eval splits", "torchvision source",
                  caption="* derived by a seeded random_split (see docs/tasks.md)")
    for r in rows:
        table.add_row(r["name"], str(r["classes"]), str(r["templates"]), ", ".join(r["splits"]), r["source"])
    Console().print(table)


@tasks_app.command("show")
def tasks_show(task: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Class names and templates of TASK (``--json``: name, num_classes, classnames, templates)."""
    from synthimg.tasks import get_task

    spec = get_task(task)
    if as_json:
        _print_json(spec.summary())
        return
    typer.echo(f"{spec.name}: {spec.display_name}, {spec.num_classes} classes, {len(spec.templates)} templates")
    typer.echo(f"category word: {spec.category_word or '-'}")
    for note in spec.notes:
        typer.echo(f"note: {note}")
    typer.echo("templates:")
    for t in spec.templates:
        typer.echo(f"  {t}")
    typer.echo("classes:")
    for i, c in enumerate(spec.classnames):
        typer.echo(f"  {i:4d} {c}")


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
    arm: Optional[str] = typer.Option(None, "--arm", help="a study config: that arm's sections (base < its overrides)"),
) -> None:
    """Print the fully resolved config (defaults < YAML < overrides) as YAML.

    A study config (with ``arms:``) prints the stage sections its steps run with.
    """
    import yaml

    from synthimg.config import load_config, read_yaml, to_dict

    if config is not None and "arms" in read_yaml(config):
        from synthimg.study.spec import load_study

        study = load_study(config, overrides)
        if arm is not None and arm not in study.arms:
            raise SynthimgError(f"the study has no arm {arm!r}; arms: {', '.join(study.arms)}")
        cfg = study.stage_config(arm)
    else:
        if arm is not None:
            raise SynthimgError("--arm needs a study config (-c STUDY.yaml)")
        cfg = load_config(config, overrides)
    typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())


@shards_app.command("from-folder")
def shards_from_folder(
    imagefolder: Path = typer.Argument(..., help="folder of class folders (names or indices)"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="task whose classes the folders name"),
    out: Path = typer.Option(..., "--out", "-o", help="output shard folder"),
    maxcount: Optional[int] = typer.Option(None, help="samples per shard"),
    source: Optional[str] = typer.Option(None, help="provenance: synthetic, retrieved or upstream"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Convert an ImageFolder into shards, a manifest, sizes.json, _info.json and classnames.txt."""
    from synthimg.data import from_folder

    cfg = _resolve(config, overrides, "shards", {"maxcount": maxcount, "source": source}, task,
                   "--task is required (or task: in the config)")
    stats = from_folder.run(cfg, imagefolder, out)
    typer.echo(
        f"wrote {stats['successes']} samples in {stats['shards']} shards to {out} "
        f"({stats['failed_to_read']} unreadable skipped, {len(stats['missing_classes'])} classes missing)"
    )
    for item in stats["skipped"][:20]:
        typer.echo(f"skipped {item['path']}: {item['error']}", err=True)


@shards_app.command("inspect")
def shards_inspect(
    shard_dir: Path = typer.Argument(..., help="shard folder"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="name classes after this task"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per-class counts, total, skipped (corrupt / truncated) samples and missing classes."""
    from synthimg.data.inspect import inspect_shards
    from synthimg.tasks import get_task

    report = inspect_shards(shard_dir, get_task(task).classnames if task else None)
    if as_json:
        _print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("class", "samples", title=f"{report['path']}: {report['total']} samples in {report['shards']} shards")
    for name, n in report["per_class"].items():
        table.add_row(name, str(n) if n else "[red]0[/red]")
    console.print(table)
    console.print(f"per class: min {report['min_per_class']}, max {report['max_per_class']}")
    console.print(f"missing classes: {len(report['missing_classes'])}  skipped: {report['skipped']}")
    for shard, c in report["short_shards"].items():
        console.print(f"[yellow]{shard}: read {c['read']} of {c['expected']} samples[/yellow]")


def _current_context() -> Any:
    """The running command's click context (typer >= 0.20 ships its own copy of click)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # older typer: plain click
        from click import get_current_context
    return get_current_context(silent=True)


def _typed(name: str, value: Any) -> bool:
    """True when the user gave this option on the command line (or through its environment variable)."""
    ctx = _current_context()
    if ctx is not None and name in ctx.params:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
    return value is not None  # an option of another name (a converted value): given when set


# flag keys whose value is computed from other options (not the option of the same name)
_CONVERTED = {"height", "width"}


def _either(value: Any, fallback: Any, name: str, fallback_name: str) -> Any:
    """``value`` when its option was typed, else ``fallback`` when that one was (``--height`` beats ``--size``)."""
    if _typed(name, value):
        return value
    return fallback if _typed(fallback_name, fallback) else None


def _resolve(
    config: Optional[Path], overrides: Optional[list[str]], section: str, flags: dict[str, Any],
    task: Optional[str] = None, require_task: str = "", beside: Optional[Path] = None,
    sets: Optional[dict[str, Any]] = None,
) -> Any:
    """The resolved config: defaults < YAML < the options typed < ``sets`` < dotted overrides.

    ``flags`` maps config keys of ``section`` to option values; only options the user typed
    count. ``--pretrained none`` means random weights (``pretrained: null``). ``sets``: values
    that switch options imply (``--no-cap`` -> ``cap: null``). Nothing is changed after
    validation. ``beside``: an earlier stage's output whose config.yaml names the task.
    ``require_task``: the error line when no task results.
    """
    import yaml

    from synthimg.config import load_config

    if task is None and beside is not None and (beside.parent / "config.yaml").is_file():
        task = yaml.safe_load((beside.parent / "config.yaml").read_text()).get("task")
    given = {k: v for k, v in flags.items() if (v is not None if k in _CONVERTED else _typed(k, v))}
    if given.get("pretrained") == "none":
        given["pretrained"] = None
    given.update(sets or {})
    extra: dict[str, Any] = {section: given}
    if task is not None:
        extra["task"] = task
    cfg = load_config(config, overrides, extra=extra)
    if require_task and cfg.task is None:
        raise SynthimgError(require_task)
    return cfg


def _split_list(text: Optional[str], cast: Any = str) -> Optional[list[Any]]:
    if text is None:
        return None
    try:
        return [cast(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SynthimgError(f"cannot read {text!r} as a comma-separated list") from None


ShardsOpt = typer.Option(..., "--shards", help="shard folder (one arm)")
KeysOpt = typer.Option(None, "--keys", help="restrict to this key list (from an earlier curation step)")


@curate_app.command("score")
def curate_score(
    shards: Path = ShardsOpt,
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    model: Optional[str] = typer.Option(None, help="open_clip scorer (the paper: the learner, ViT-B-16)"),
    pretrained: Optional[str] = typer.Option(None, help="tag or checkpoint; 'none' for random weights"),
    reduce: Optional[str] = typer.Option(None, help="max (the paper) or mean (the official code) over templates"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    workers: Optional[int] = typer.Option(None),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Score every sample against its own class's templates; cached, merged into the manifest."""
    from synthimg.curation import clip_score

    cfg = _resolve(config, overrides, "curate", {"model": model, "reduce": reduce, "batch_size": batch_size,
                   "workers": workers, "pretrained": pretrained}, task,
                   "--task is required (the class templates to score against)")
    stats = clip_score.run(cfg, shards)
    if stats["rank"] == 0:
        typer.echo(f"scored {stats['count']} samples of {shards} ({cfg.curate.model}, reduce={cfg.curate.reduce}); "
                   f"mean clip_score {stats['mean_clip_score']:.4f}")


@curate_app.command("filter")
def curate_filter(
    shards: Path = ShardsOpt,
    out: Path = typer.Option(..., "--out", "-o"),
    keys: Optional[Path] = KeysOpt,
    top: Optional[float] = typer.Option(None, help="fraction kept per class and arm (the paper: 0.3)"),
    cap: Optional[int] = typer.Option(None, help="per-class cap keeping the highest scores (the paper: 10000)"),
    no_cap: bool = typer.Option(False, "--no-cap", help="no per-class cap"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Keep the top fraction per class by CLIP score, then cap; writes OUT/keys.parquet."""
    from synthimg.curation import filter as curate_filter_stage

    cfg = _resolve(config, overrides, "curate", {"top": top, "cap": cap}, sets={"cap": None} if no_cap else None)
    stats = curate_filter_stage.run(cfg, shards, out, keys)
    typer.echo(f"kept {stats['kept']} of {stats['count']} samples (top {stats['top']}, cap {stats['cap']}) "
               f"-> {out / 'keys.parquet'}")


@curate_app.command("decontaminate")
def curate_decontaminate(
    shards: Path = ShardsOpt,
    out: Path = typer.Option(..., "--out", "-o"),
    against: Optional[Path] = typer.Option(None, "--against", help="evaluation shard folder (ours or CLIP_benchmark's)"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="take the task's evaluation splits instead"),
    eval_root: Optional[Path] = typer.Option(None, "--eval-root", help="torchvision root or CLIP_benchmark folder"),
    splits: Optional[str] = typer.Option(None, help="evaluation splits to match against, e.g. test,train"),
    keys: Optional[Path] = KeysOpt,
    descriptor: Optional[str] = typer.Option(None, help="clip (default), isc (the paper's) or none"),
    threshold: Optional[float] = typer.Option(None, help="descriptor cosine threshold (ISC default 0.604169)"),
    no_phash: bool = typer.Option(False, "--no-phash", help="skip the perceptual-hash pass"),
    model: Optional[str] = typer.Option(None, help="open_clip model for the clip descriptor"),
    pretrained: Optional[str] = typer.Option(None, help="its tag or checkpoint; 'none' for random weights"),
    isc_weights: Optional[Path] = typer.Option(None, "--isc-weights", help="local isc_ft_v107 weights"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Drop near-duplicates of evaluation images; writes dropped.parquet, keys.parquet, stats, a contact sheet."""
    from synthimg.curation import decontaminate

    cfg = _resolve(config, overrides, "curate", {
        "descriptor": descriptor, "threshold": threshold, "model": model, "pretrained": pretrained,
        "isc_weights": str(isc_weights) if isc_weights else None, "against_splits": _split_list(splits)}, task,
        sets={"phash": False} if no_phash else None)
    stats = decontaminate.run(cfg, shards, out, against, eval_root, keys)
    typer.echo(f"dropped {stats['dropped']} of {stats['count']} candidates matching {stats['eval_images']} evaluation "
               f"images ({stats['dropped_by']}) -> {out}")


@curate_app.command("subsample")
def curate_subsample(
    shards: Path = ShardsOpt,
    out: Path = typer.Option(..., "--out", "-o"),
    scales: Optional[str] = typer.Option(None, help="comma-separated subset sizes, e.g. 1000,10000,all"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds, e.g. 0,1,2"),
    keys: Optional[Path] = KeysOpt,
    all_from: Optional[list[Path]] = typer.Option(None, "--all-from", help=(
        "for scale 'all': other arms' curated pools (key lists or shard folders); 'all' is the smallest pool")),
    paired_with: Optional[Path] = typer.Option(None, "--paired-with", help=(
        "another arm's subsets folder: take the images made from its subsets (SDEdit), not a draw of our own")),
    unstratified: bool = typer.Option(False, "--unstratified", help="the paper's plain random_split"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Seeded, equal-size, nested subsets: OUT/subset_n{N}_s{SEED}.parquet (key lists) + subsets.json."""
    from synthimg.curation import subsample

    cfg = _resolve(config, overrides, "curate", {"scales": _split_list(scales, _scale), "seeds": _split_list(seeds, int)},
                   sets={"stratified": False} if unstratified else None)
    meta = subsample.run(cfg, shards, out, keys, all_from, paired_with)
    typer.echo(f"wrote {len(meta['subsets'])} subsets from a pool of {meta['pool']} -> {out}")


def _scale(text: str) -> int | str:
    return "all" if text.strip() == "all" else int(text)


@app.command("train")
def train_cmd(
    train_data: Optional[str] = typer.Option(None, "--train-data", help="shard folder(s), several joined by '::'"),
    train_keys: Optional[str] = typer.Option(None, "--train-keys", help="key list(s) from curation, '::'-joined"),
    train_data_weights: Optional[str] = typer.Option(None, "--train-data-weights", help="mixing weights, '::'-joined"),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    model: Optional[str] = typer.Option(None, help="open_clip or timm model name"),
    pretrained: Optional[str] = typer.Option(None, help="tag or checkpoint; 'none' for random weights"),
    learner: Optional[str] = typer.Option(None, help="clip (open_clip) or timm"),
    finetune: Optional[str] = typer.Option(None, help="ce (the paper), flyp or lp"),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="global batch"),
    lr: Optional[float] = typer.Option(None),
    warmup: Optional[int] = typer.Option(None),
    workers: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    logs: Optional[str] = typer.Option(
        None, "--logs", "--logdir",
        help="parent folder of runs; under torchrun write --logdir (torchrun reads --logs as its --logs-specs)"),
    name: Optional[str] = typer.Option(None, help="run name: the run lives in LOGS/NAME"),
    resume: Optional[str] = typer.Option(None, help="'latest' or a checkpoint path"),
    eval_root: Optional[str] = typer.Option(None, "--eval-root", help="task data: evaluate val/test every epoch"),
    wise_alphas: Optional[str] = typer.Option(None, "--wise-alphas", help="WiSE-FT alphas, e.g. 0,0.5,1"),
    arm: Optional[str] = typer.Option(None, help="arm recorded in results (default: from the manifest)"),
    precision: Optional[str] = typer.Option(None),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Fine-tune a learner on shards (python -m, torchrun or srun); writes LOGS/NAME."""
    from synthimg.evaluation.run import RunEvaluator
    from synthimg.tasks import get_task
    from synthimg.train import engine

    def parts(text: Optional[str], cast: Any = str) -> Optional[list[Any]]:
        return None if text is None else [cast(p) if p else "" for p in text.split("::")]

    flags = {"data": parts(train_data), "keys": parts(train_keys), "weights": parts(train_data_weights, float),
             "model": model, "learner": learner, "finetune": finetune, "epochs": epochs, "batch_size": batch_size,
             "lr": lr, "warmup": warmup, "workers": workers, "seed": seed, "logs": logs, "name": name, "resume": resume,
             "eval_root": eval_root, "wise_alphas": _split_list(wise_alphas, float), "arm": arm, "precision": precision,
             "grad_accum": grad_accum, "pretrained": pretrained}
    cfg = _resolve(config, overrides, "train", flags, task, "--task is required")
    evaluator = RunEvaluator(get_task(cfg.task), cfg.train.eval_root, cfg.eval) if cfg.train.eval_root else None
    stats = engine.run(cfg, evaluator)
    if stats["rank"] == 0:
        typer.echo(f"run finished: {stats['run_dir']}")


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Option(None, help="open_clip model name (ignored for synthimg checkpoints)"),
    pretrained: Optional[str] = typer.Option(None, help="open_clip tag, checkpoint (ours or open_clip's), or 'none'"),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    dataset_root: Path = typer.Option(..., "--dataset-root", help="torchvision root or CLIP_benchmark WebDataset folder"),
    output: Path = typer.Option(..., "--output", help="results.jsonl to append to"),
    modes: Optional[str] = typer.Option(None, help="zs,lp"),
    splits: Optional[str] = typer.Option(None, help="val,test"),
    arm: str = typer.Option("zeroshot_baseline", help="arm recorded for a plain open_clip model"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    workers: Optional[int] = typer.Option(None),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Zero-shot and linear-probe accuracy of a model or checkpoint; appends lines to OUTPUT."""
    from synthimg.evaluation import run as eval_stage

    flags = {"modes": _split_list(modes), "splits": _split_list(splits), "batch_size": batch_size, "workers": workers}
    cfg = _resolve(config, overrides, "eval", flags, task, "--task is required")
    records = eval_stage.run(cfg, model, pretrained, dataset_root, output, arm=arm)
    for r in records:
        typer.echo(f"{r.dataset} {r.model} {r.pretrained} {r.eval_mode} {r.split}: acc1 {r.metrics.acc1:.4f}")


@captions_app.callback()
def captions_cmd(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="exactly this many unique captions per class"),
    method: Optional[str] = typer.Option(None, help="llm (SynCLR-style) or template"),
    llm: Optional[str] = typer.Option(None, "--llm", help="causal LM hub ID or local path"),
    llm_url: Optional[str] = typer.Option(None, "--llm-url", help="OpenAI-compatible endpoint"),
    llm_backend: Optional[str] = typer.Option(None, "--llm-backend", help="transformers, vllm or openai"),
    seed: Optional[int] = typer.Option(None),
    backgrounds: Optional[str] = typer.Option(None, help="backgrounds JSON (from `captions backgrounds`)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o"),
    keep_parts: bool = typer.Option(False, "--keep-parts", help="keep the per-chunk files (OUT/_parts/) once done"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Write OUT/captions.parquet: class_id, class_name, caption and provenance, exactly --per-class each."""
    if ctx.invoked_subcommand is not None:
        return
    from synthimg.synthetic import captions as captions_stage

    if out is None:
        raise SynthimgError("--out is required")
    cfg = _resolve(config, overrides, "captions", {
        "per_class": per_class, "method": method, "llm": llm, "llm_url": llm_url, "llm_backend": llm_backend,
        "seed": seed, "backgrounds": backgrounds}, task, "--task is required")
    stats = captions_stage.run(cfg, out, keep_parts=keep_parts)
    short = stats["short_classes"]
    typer.echo(f"wrote {stats['count']} captions ({cfg.captions.per_class} per class, {cfg.captions.method}) to "
               f"{out / 'captions.parquet'}; {len(short)} classes short of the quota")
    for name, n in list(short.items())[:20]:
        typer.echo(f"short: {name} has {n} of {cfg.captions.per_class}", err=True)


@captions_app.command("backgrounds")
def captions_backgrounds(
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    llm: Optional[str] = typer.Option(None, "--llm"),
    llm_url: Optional[str] = typer.Option(None, "--llm-url"),
    llm_backend: Optional[str] = typer.Option(None, "--llm-backend", help="transformers, vllm or openai"),
    scope: Optional[str] = typer.Option(None, "--scope", help="class (ImageNet, the paper) or domain (the task's default)"),
    count: Optional[int] = typer.Option(None, "--count", help="places per class or domain (the task's: 80-100)"),
    out: Path = typer.Option(..., "--out", "-o", help="JSON file; an interrupted run resumes from OUT.partial.json"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Ask an LLM for the places of the background prompts (per class or per domain, the paper's counts)."""
    from synthimg.synthetic.backgrounds import make_backgrounds
    from synthimg.tasks import get_task

    cfg = _resolve(config, overrides, "captions", {"llm": llm, "llm_url": llm_url, "llm_backend": llm_backend,
                   "backgrounds_scope": scope, "backgrounds_count": count}, task, "--task is required")
    stats = make_backgrounds(get_task(cfg.task), cfg.captions, out)
    typer.echo(f"{stats['places']} places for {stats['subjects']} {stats['scope']} list(s) in {out} "
               f"({len(stats['short'])} short of {stats['count_per_subject']}); use --backgrounds {out}")


@app.command("generate")
def generate_cmd(
    captions: Optional[Path] = typer.Option(None, "--captions", help="captions.parquet from `synthimg captions`"),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="diffusers model: hub ID or local folder"),
    out: Path = typer.Option(..., "--out", "-o"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="default: the task in the captions' config.yaml"),
    seed: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg", help="classifier-free guidance (the paper: 2.0)"),
    scheduler: Optional[str] = typer.Option(None, help="ddim, dpmsolver++, pndm, euler, euler_a"),
    preset: Optional[str] = typer.Option(None, help="paper (DDIM 50) or fast (DPM-Solver++ 25)"),
    size: Optional[int] = typer.Option(None, "--size", help="render height and width"),
    height: Optional[int] = typer.Option(None),
    width: Optional[int] = typer.Option(None),
    stored_size: Optional[int] = typer.Option(None, "--stored-size", help="stored side (the paper: 256)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    images_per_caption: Optional[int] = typer.Option(None, "--images-per-caption"),
    images_per_shard: Optional[int] = typer.Option(None, "--images-per-shard"),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt"),
    init_shards: Optional[str] = typer.Option(None, "--init-shards", help="SDEdit: render from these real images"),
    init_keys: Optional[str] = typer.Option(None, "--init-keys", help="SDEdit: only these keys (a curated key list)"),
    strength: Optional[float] = typer.Option(None, help="SDEdit strength (noise level gamma)"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Render captions (or SDEdit real images) into shards; resumable and split across torchrun ranks."""

    from synthimg.synthetic import generate as generate_stage

    flags = {"model_id": model_id, "seed": seed, "steps": steps, "cfg": cfg_scale, "scheduler": scheduler,
             "preset": preset, "height": _either(height, size, "height", "size"), "width": _either(width, size, "width", "size"), "stored_size": stored_size,
             "batch_size": batch_size, "images_per_caption": images_per_caption, "images_per_shard": images_per_shard,
             "negative_prompt": negative_prompt, "init_shards": init_shards, "init_keys": init_keys,
             "strength": strength}
    cfg = _resolve(config, overrides, "generate", flags, task,
                   "--task is required (no config.yaml beside the captions names it)", beside=captions)
    stats = generate_stage.run(cfg, out, captions)
    if stats["rank"] == 0:
        typer.echo(f"{stats['successes']} images in {stats['shards']} shards at {out} "
                   f"({stats['rendered_this_run']} rendered now, {stats['shards_skipped']} shards already done, "
                   f"{stats['images_per_sec']} images/s)")


@app.command("retrieve")
def retrieve_cmd(
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    backend: Optional[str] = typer.Option(None, help="knn (HTTP service), local (faiss index) or substring"),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="candidates wanted per class"),
    out: Path = typer.Option(..., "--out", "-o"),
    url: Optional[str] = typer.Option(None, help="clip-retrieval compatible service (knn)"),
    indice_name: Optional[str] = typer.Option(None, "--indice-name"),
    index: Optional[str] = typer.Option(None, help="local index folder (local)"),
    metadata: Optional[str] = typer.Option(None, help="parquet file or glob with url, caption (substring)"),
    k: Optional[int] = typer.Option(None, "--k", help="results per query (the paper: 2000; ImageNet 500)"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Candidates per class: OUT/candidates.parquet (class_id, class_name, url, caption, similarity, ...)."""
    from synthimg.retrieval import retrieve

    flags = {"backend": backend, "per_class": per_class, "url": url, "indice_name": indice_name, "index": index,
             "metadata": metadata, "k_per_query": k}
    cfg = _resolve(config, overrides, "retrieve", flags, task, "--task is required")
    stats = retrieve.run(cfg, out)
    typer.echo(f"{stats['count']} candidates ({stats['backend']}) -> {out / 'candidates.parquet'}; "
               f"{len(stats['short_classes'])} classes below {cfg.retrieve.per_class}")


@index_app.command("build")
def index_build(
    out: Path = typer.Option(..., "--out", "-o", help="index folder"),
    shards: Optional[Path] = typer.Option(None, help="image collection: shard folder (ours or img2dataset's)"),
    captions: Optional[str] = typer.Option(None, help="caption index from a parquet (url, caption) or glob"),
    embeddings: Optional[Path] = typer.Option(None, help=(
        "released embeddings (img_emb/, text_emb/, metadata/, as LAION's): an IVF index with lists on disk")),
    model: Optional[str] = typer.Option(None, help="open_clip embedder (the paper: ViT-L-14)"),
    pretrained: Optional[str] = typer.Option(None, help="tag or checkpoint; 'none' for random weights"),
    factory: Optional[str] = typer.Option(None, help="faiss index factory, e.g. Flat or IVF4096,PQ64"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Embed a collection (resumable by shard, torchrun-aware) and build faiss indexes + metadata."""
    from synthimg.retrieval import index as index_stage

    cfg = _resolve(config, overrides, "index", {"model": model, "factory": factory, "pretrained": pretrained})
    info = index_stage.run(cfg, out, shards, captions, embeddings)
    if "kinds" in info:
        typer.echo(f"index at {out}: " + ", ".join(f"{k} {v['count']} x {v['dim']}" for k, v in info["kinds"].items()))


@index_app.command("serve")
def index_serve(
    index: list[Path] = typer.Option(..., "--index", help="index folder(s); served under their folder names"),
    port: int = typer.Option(1234),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
) -> None:
    """Serve clip-retrieval's back-end protocol (/knn-service, /metadata, /indices-list) for local indexes."""
    from synthimg.retrieval.index import LocalIndex
    from synthimg.retrieval.serve import make_server

    server = make_server({p.name: LocalIndex(p) for p in index}, host, port)
    typer.echo(f"serving {', '.join(p.name for p in index)} at http://{host}:{server.server_port}/knn-service")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.command("download")
def download_cmd(
    candidates: Path = typer.Option(..., "--candidates", help="candidates.parquet from `synthimg retrieve`"),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="images wanted per class"),
    out: Path = typer.Option(..., "--out", "-o"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="default: the task in the candidates' config.yaml"),
    processes: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None),
    keep_rounds: bool = typer.Option(False, "--keep-rounds", help="keep img2dataset's round folders (OUT/_rounds)"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Download with img2dataset until each class has --per-class images; writes our shards + stats."""

    from synthimg.retrieval import download

    cfg = _resolve(config, overrides, "download", {"per_class": per_class, "processes": processes, "threads": threads},
                   task=task, require_task="--task is required (no config.yaml beside the candidates names it)",
                   beside=candidates, sets={"keep_rounds": True} if keep_rounds else None)
    stats = download.run(cfg, candidates, out)
    typer.echo(f"{stats['kept']} images ({cfg.download.per_class} per class wanted) -> {out}; "
               f"{len(stats['shortfall'])} classes short, {stats['status_dict']}")
    for name, n in list(stats["shortfall"].items())[:20]:
        typer.echo(f"short: {name} is {n} images below the quota", err=True)


@app.command("analyze")
def analyze_cmd(
    shards: Path = ShardsOpt,
    keys: list[Path] = typer.Option(..., "--keys", help="subset key lists, smallest first (repeat the option)"),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    eval_root: Path = typer.Option(..., "--eval-root", help="the task's data: the test split is the reference"),
    arm: str = typer.Option(..., "--arm", help="arm name shown in the report"),
    out: Path = typer.Option(..., "--out", "-o"),
    model: Optional[str] = typer.Option(None, help="open_clip feature space (default: curate.model, the learner)"),
    pretrained: Optional[str] = typer.Option(None, help="its tag or checkpoint; 'none' for random weights"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """FID/KID of each subset to the test set, a CLIP-score histogram and gallery thumbnails (for the report)."""
    from synthimg import dist
    from synthimg.evaluation.distance import analyze
    from synthimg.tasks import get_task

    cfg = _resolve(config, overrides, "curate", {"model": model, "pretrained": pretrained}, task, "--task is required")
    info = analyze(shards, list(keys), get_task(cfg.task), eval_root, cfg.curate, out, arm, device=dist.device())
    for s in info["subsets"]:
        typer.echo(f"{arm} n={s['num_train_images']}: FID {s['fid']:.3f}, KID {s['kid_mean']:.4f} +/- {s['kid_std']:.4f}")


@app.command("study")
def study_cmd(
    study_config: Path = typer.Argument(..., help="study YAML (configs/study/*.yaml)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. seeds=[0] base.train.epochs=1"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and its cost; run nothing"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study folder (default: out: in the YAML)"),
    as_json: bool = typer.Option(False, "--json", help="with --dry-run: the plan as JSON"),
    log: Optional[str] = typer.Option(None, "--log", help=(
        "where the steps' own output goes (default: STUDY/study.log; '-': the terminal, as with --debug)")),
) -> None:
    """Run every missing step of a study grid (arms x scales x seeds x lrs), then collect and report.

    The terminal shows one line per step with the elapsed time; what the steps print goes to
    the log file.
    """
    from synthimg.study.run import plan_rows, run_study
    from synthimg.study.spec import load_study

    study = load_study(study_config, overrides, out)
    if dry_run:
        from synthimg.study.pools import check_coverage

        steps, rows, cost, coverage = plan_rows(study, Path(study.out))
        if as_json:
            _print_json({"study": study.name, "task": study.task, "steps": rows, "estimate": cost,
                         "coverage": coverage})
        else:
            _print_plan(study, rows, cost, coverage)
        check_coverage(coverage)
        return
    from rich.console import Console

    from synthimg.progress import terminal

    log_file = None if (log == "-" or _STATE["debug"]) else Path(log) if log else Path(study.out) / "study.log"
    screen = terminal()
    console = Console(file=screen, highlight=False)
    if log_file is not None:
        console.print(f"step output: {log_file}", markup=False)
    stats = run_study(study, _invoke, echo=lambda m: console.print(m, markup=False), log_file=log_file,
                      live=None if progress_quiet() else console.status)
    typer.echo(f"{stats['cells_done']}/{stats['cells']} cells done; {stats['ran']} steps ran now, "
               f"{stats['done_before']} were done before, {len(stats['failed'])} failed, {len(stats['blocked'])} blocked")
    for sid, msg in stats["failed"].items():
        typer.echo(f"failed: {sid}: {msg}", err=True)
    if stats.get("headline"):
        _print_answer(console, stats)
    if stats.get("report"):
        typer.echo(f"results: {stats['results']}\nreport: {stats['report']}")
    if stats["failed"]:
        raise SynthimgError(f"{len(stats['failed'])} steps failed; rerun the same command to retry them")


def _print_plan(study: Any, rows: list[dict[str, Any]], cost: dict[str, Any], coverage: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    shared = [r for r in rows if r["kind"] != "train"]
    cells = [r for r in rows if r["kind"] == "train"]
    table = Table("step", "kind", "status", title=f"study {study.name}: {study.task} -> {study.out}")
    for r in shared:
        table.add_row(r["id"], r["kind"], r["status"])
    console.print(table)
    grid = Table("arm", "scales", "seeds", "lrs", "cells", "todo", title="cells (arm x scale x seed x lr)")
    for arm in study.arms:
        mine = [r for r in cells if r["cell"]["arm"] == arm]
        grid.add_row(arm, ", ".join(f"{n:,}" for n in study.arm_scales(arm)), ", ".join(map(str, study.seeds)),
                     ", ".join(f"{lr:g}" for lr in study.lrs), str(len(mine)),
                     str(sum(r["status"] == "todo" for r in mine)))
    console.print(grid)
    cover = Table("arm", "scale", "expected after curation", "covered", "margin", "pool", title=(
        "coverage: does each planned pool feed its cells? (losses: link success "
        f"{study.losses.link_success:.0%}, decontamination {study.losses.decontam_drop:.0%} + pHash "
        f"{study.losses.phash_drop:.0%}, margin {study.losses.margin:.0%})"))
    for r in coverage:
        scale = r["scale"] if r["scale"] == "all" else f"{r['scale']:,}"
        pool = "-" if r["expected_pool"] is None else f"{r['expected_pool']:,}"
        margin = "-" if r["margin"] is None else f"{r['margin']:+.1%}"
        cover.add_row(r["arm"], scale, pool, "yes" if r["covered"] else "[red]NO[/red]", margin, r["from"])
    console.print(cover)
    t = cost["totals"]
    est = Table("kind", "steps to run", "GPU-hours", title="estimate of what is left")
    for kind, row in cost["per_kind"].items():
        est.add_row(kind, str(row["steps"]), f"{row['gpu_hours']:,.1f}")
    console.print(est)
    console.print(f"images to generate: {t['images_to_generate']:,.0f}; images to download: "
                  f"{t['images_to_download']:,.0f} (~{t['download_hours']:,.1f} h)")
    if t["llm_new_tokens"]:
        console.print(f"LLM tokens (captions and backgrounds): {t['llm_prompt_tokens']:,.0f} prompt, "
                      f"{t['llm_new_tokens']:,.0f} generated at most")
    console.print(f"GPU-hours left: {t['gpu_hours']:,.1f} (whole study {t['gpu_hours_all']:,.1f}); "
                  f"{t['wall_hours_on_gpus']:,.1f} h on {study.estimates.gpus} GPU(s)")
    for kind, rate in cost["rates"].items():
        console.print(f"  rate {kind}: {rate['per_gpu_s']:,.2f} per GPU-second from {rate['from']}")
    from synthimg.study.estimate import index_footprints

    for f in index_footprints(study):
        where = "lists on disk, memory-mapped" if f["ondisk"] else "all in RAM"
        console.print(f"kNN index at LAION-2B scale ({f['indexes']} x {f['n'] / 1e9:.2f}B x {f['dim']}, index.factory "
                      f"{f['factory']}, {f['arms']}): disk {f['disk_bytes'] / 1e12:,.2f} TB, RAM {f['ram_bytes'] / 1e9:,.2f}"
                      f" GB served ({where}); building: {f['parts']:,} parts, up to "
                      f"{f['build_temp_bytes'] / 1e12:,.2f} TB of temporary disk per index", markup=False)
        if not f["ondisk"]:
            console.print("  a flat index keeps every vector in RAM: set index.factory to an IVF-PQ such as "
                          "IVF16384_HNSW32,PQ64 and build it with `index build --embeddings`", markup=False)


def _invoke(argv: list[str]) -> None:
    """Run a synthimg command line in this process (the study's local executor)."""
    command = typer.main.get_command(app)
    result = command.main(args=argv, prog_name="synthimg", standalone_mode=False)
    if isinstance(result, int) and result != 0:
        raise SynthimgError(f"synthimg {' '.join(argv[:2])} exited with status {result}")


toyworld_app = typer.Typer(help="The toy world: a procedural upstream and benchmarks, tiny models trained on it.",
                           no_args_is_help=True)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("build")
def toyworld_build(
    out: Path = typer.Option(..., "--out", "-o"),
    seed: int = typer.Option(0),
    upstream: int = typer.Option(12000, help="upstream images"),
) -> None:
    """Write the upstream (shards, files, LAION-like parquet) and the toy tasks' eval splits."""
    from synthimg.toyworld.world import WorldConfig, build_world

    info = build_world(out, WorldConfig(seed=seed, upstream=upstream))
    typer.echo(f"{info['upstream']:,} upstream images ({len(info['planted'])} planted near-copies of test images), "
               f"tasks {', '.join(info['tasks'])} -> {out}")


@toyworld_app.command("pretrain")
def toyworld_pretrain(
    world: Path = typer.Option(..., "--world", help="a world from `synthimg toyworld build` (default size, same seed)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="weights folder (default: the package's own)"),
    seed: int = typer.Option(0),
    unet_steps: Optional[int] = typer.Option(None, help="UNet steps (default: the shipped recipe's)"),
    eval_every: int = typer.Option(0, help="every N UNet steps, print the fidelity of the EMA weights (0: never)"),
    set_: list[str] = typer.Option([], "--set", help="a recipe setting KEY=VALUE, e.g. unet_snr_gamma=5 (repeatable)"),
) -> None:
    """Reproduce the shipped tiny CLIP and tiny Stable Diffusion pipeline from the world.

    Stages (clip, vae, unet) already in OUT with the same recipe are kept; an interrupted UNet
    run continues from its last checkpoint.
    """
    from synthimg.toyworld.pretrain import WEIGHTS, Recipe, pretrain

    for pair in set_:
        if pair.partition("=")[0] in ("seed", "unet_steps"):
            raise SynthimgError(f"--set {pair}: use --{pair.partition('=')[0].replace('_', '-')} for that setting")
    try:
        recipe = Recipe(seed=seed, **({} if unet_steps is None else {"unet_steps": unet_steps})).override(set_)
    except ValueError as e:
        raise SynthimgError(f"--set: {e}") from None
    target = out or WEIGHTS
    evaluate = None
    if eval_every:
        from synthimg.toyworld.fidelity import demo_sampling, load_judge, measure
        from synthimg.toyworld.pretrain import CLIP_FILE

        def evaluate(pipe: Any, step: int) -> str:
            res = measure(pipe, load_judge(Path(target) / CLIP_FILE), per_class=10, steps=demo_sampling()[0])
            return f"fidelity {res['accuracy']:.3f} (real {res['real_accuracy']:.3f}, chance {res['chance']:.2f})"

    stats = pretrain(world, target, recipe, echo=typer.echo, evaluate=evaluate, eval_every=eval_every)
    seconds = sum(stats[k].get("seconds", 0) for k in ("clip", "vae", "unet") if k in stats)
    typer.echo(f"pretrained in {seconds / 60:.0f} min of stage time -> {target}")


@toyworld_app.command("fidelity")
def toyworld_fidelity(
    weights: Optional[Path] = typer.Option(None, "--weights", help="weights folder (default: the shipped ones)"),
    per_class: int = typer.Option(20, help="images per class, generated and real"),
    steps: Optional[int] = typer.Option(None, help="DDIM steps (default: the demo's, so it measures what the demo trains on)"),
    cfg: float = typer.Option(2.0, help="classifier-free guidance scale"),
    sheet: Optional[Path] = typer.Option(None, help="also write a contact sheet (generated | real) to this PNG"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON only"),
) -> None:
    """Does the toy generator draw what it is asked for? The toy CLIP's zero-shot accuracy on its images."""
    from synthimg.toyworld.fidelity import fidelity

    res = fidelity(weights, per_class, steps, cfg, sheet)
    steps = res["steps"]
    if as_json:
        _print_json({k: res[k] for k in ("accuracy", "chance", "real_accuracy")} | res)
        return
    typer.echo(f"generated: {res['accuracy']:.3f}   real upstream: {res['real_accuracy']:.3f}   chance: "
               f"{res['chance']:.3f}   ({per_class} per class, DDIM {steps} steps, CFG {cfg:g})")
    for name, acc in res["per_class"].items():
        typer.echo(f"  {name:>10}: generated {acc:.2f}  real {res['per_class_real'][name]:.2f}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("synthimg-demo"), "--out", "-o", help="where the world, study and report go"),
    quick: bool = typer.Option(False, "--quick", help="a sub-minute smoke version (one seed, one scale)"),
) -> None:
    """The whole study in miniature on the toy world (no downloads): every stage, then the report.

    The console shows one line per step; everything else (libraries' warnings and progress
    bars) goes to OUT/demo.log, or to the terminal with ``synthimg --debug demo``.
    """
    from rich.console import Console

    from synthimg.progress import terminal
    from synthimg.toyworld.demo import run_demo

    screen = terminal()
    console = Console(file=screen, highlight=False, width=None if screen.isatty() else 130)
    log = None if _STATE["debug"] else out / "demo.log"
    if log is not None:
        console.print(f"details of every step: {log}", markup=False)
    stats = run_demo(out, quick, _invoke, echo=lambda m: console.print(m, markup=False), log_file=log,
                     live=None if progress_quiet() else console.status)
    if stats["failed"]:
        for sid, msg in stats["failed"].items():
            console.print(f"failed: {sid}: {msg}", markup=False)
        raise SynthimgError(f"{len(stats['failed'])} demo steps failed; rerun to retry them"
                           + (f" (details in {log})" if log else ""))
    _print_answer(console, stats)
    report = Path(stats["report"]).parent
    console.print(f"\nreport: {stats['report']}\nplots: {report}/scaling_*.png\ngalleries: {report}/galleries/\n"
                  f"rerun or extend: synthimg study {stats['study_yaml']}", markup=False)


def progress_quiet() -> bool:
    from synthimg import progress

    return progress.QUIET


def _print_answer(console: Any, stats: dict[str, Any]) -> None:
    """The study's answer first (retrieved − synthetic with intervals), then each task's arm table and the notes."""
    from rich.table import Table

    console.print(f"\n{stats['question']}", markup=False)
    console.print(stats["headline"], markup=False, style="bold")
    rows = stats.get("answer_table", [])
    if rows:
        table = Table(*rows[0].keys(), title="retrieved − synthetic at equal N (test accuracy, points)")
        for r in rows:
            table.add_row(*[str(v) for v in r.values()])
        console.print(table)
    for task, rows in stats.get("arm_tables", {}).items():
        table = Table(*(rows[0].keys() if rows else []), title=f"{task}: test accuracy (%), mean ± std over seeds")
        for r in rows:
            table.add_row(*[str(v) for v in r.values()])
        console.print(table)
    for note in stats.get("data_notes", []):
        console.print(f"- {note}", markup=False)


@app.command("report")
def report_cmd(
    results: list[Path] = typer.Argument(..., help="results.jsonl files (or run folders holding them)"),
    out: Path = typer.Option(..., "--out", "-o"),
    baseline: list[Path] = typer.Option([], "--baseline", help=(
        "a CLIP_benchmark result file of the pretrained model: the baseline row (repeatable)")),
) -> None:
    """Tables (Markdown, LaTeX, CSV), scaling plots (PNG, PDF), a cost table and report.html.

    Besides our results.jsonl, RESULTS may be CLIP_benchmark output files as `clip_benchmark
    eval` writes them: each becomes an external row named after its file.
    """
    from synthimg.report.build import build_report

    info = build_report(list(results), out, baselines=list(baseline))
    for line in [info["question"], info["headline"], *info["answer"], *info["notes"]]:
        typer.echo(line)
    typer.echo(f"{info['cells']} cells -> {out}; open {info['html']}")


def _fail(message: str, code: int = 2) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"synthimg: error: {first}", file=sys.stderr)
    sys.exit(code)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Abort and ClickException classes of click and of the copy that newer typer vendors."""
    import click
    import typer.exceptions

    aborts: list[type] = [click.exceptions.Abort]
    errors: list[type] = [click.ClickException]
    if hasattr(typer.exceptions, "Abort"):
        aborts.append(typer.exceptions.Abort)
    try:
        from typer._click.exceptions import (
            ClickException,  # typer >= 0.20 ships its own click
        )

        errors.append(ClickException)
    except ImportError:
        pass
    return tuple(aborts), tuple(errors)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and exit 2."""
    abort, click_error = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="synthimg", standalone_mode=False)
    except SynthimgError as err:
        if _STATE["debug"]:
            raise
        _fail(str(err))
    except abort:
        _fail("aborted", 130)
    except click_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `synthimg` or `synthimg tasks`: show help
            err.show()
            sys.exit(2)
        _fail(err.format_message(), err.exit_code if err.exit_code else 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:
        if _STATE["debug"]:
            raise
        _fail(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)
    sys.exit(result if isinstance(result, int) else 0)
