import json
import subprocess
import sys

import pytest

from synthimg import __version__
from synthimg.cli import main


def run(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_version_and_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "synthimg", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"synthimg {__version__}"


def test_tasks_show_json(capsys):
    code, out, _ = run(capsys, "tasks", "show", "fgvc_aircraft", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"name", "num_classes", "classnames", "templates"}
    assert data["num_classes"] == len(data["classnames"]) == 100 and len(data["templates"]) == 2


def test_tasks_list(capsys):
    code, out, _ = run(capsys, "tasks", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["imagenet"]["classes"] == 1000 and rows["stanford_cars"]["splits"] == ["train*", "val*", "test"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["tasks", "show", "aircraftt"], "unknown task 'aircraftt'"),
        (["config", "show", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["config", "show", "train.lr=fast"], "bad value for 'train.lr'"),
        (["config", "show", "--config", "/nonexistent.yaml"], "config file not found"),
        (["tasks", "nosuchcommand"], "No such command"),
        (["shards", "from-folder", "/nonexistent", "--task", "dtd", "--out", "/tmp/x"], "image folder not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("synthimg: error:") and fragment in err


def test_console_script_one_line_error():
    proc = subprocess.run(["synthimg", "config", "show", "generate.scheduler=magic"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "generate.scheduler" in proc.stderr and "'ddim'" in proc.stderr


def test_doctor_json(capsys):
    code, out, _ = run(capsys, "doctor", "--json")
    info = json.loads(out)
    assert code == 0 and info["versions"]["torch"] and "gpu_count" in info["device"] and "vllm" in info["optional"]


def test_library_log_lines_go_through_our_logging(tmp_path):
    # open_clip warns through the root logger when a model gets no pretrained weights
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "col", n=4, maxcount=4)
    proc = subprocess.run([sys.executable, "-m", "synthimg", "--quiet", "index", "build", "--shards",
                           str(tmp_path / "col"), "--model", "synthimg-tiny-vit", "--pretrained", "none",
                           "--out", str(tmp_path / "idx")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING:root:" not in proc.stderr
    assert "warning: open_clip: No pretrained weights loaded" in proc.stderr
