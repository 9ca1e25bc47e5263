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

    _STATE["debug"] = debug
    progress.QUIET = quiet


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
def config_show(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Print the fully resolved config (defaults < YAML < overrides) as YAML."""
    import yaml

    from synthimg.config import load_config, to_dict

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
    from synthimg.config import load_config, save_resolved
    from synthimg.data.from_folder import from_folder
    from synthimg.tasks import get_task

    flags = {"shards": {k: v for k, v in {"maxcount": maxcount, "source": source}.items() if v is not None}}
    if task is not None:
        flags["task"] = task
    cfg = load_config(config, overrides, extra=flags)
    if cfg.task is None:
        raise SynthimgError("--task is required (or task: in the config)")
    stats = from_folder(imagefolder, get_task(cfg.task), out, cfg.shards)
    save_resolved(cfg, out)
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
        from typer._click.exceptions import ClickException  # typer >= 0.20 ships its own click

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
