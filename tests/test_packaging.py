"""The wheel carries what an installed synthimg reads: the top-level data_manifests/ and the toy weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_catalog_data_comes_from_the_top_level_folder():
    from synthimg.manifests import manifests

    assert Path(str(manifests())).resolve() == REPO / "data_manifests"
    assert (manifests() / "tasks" / "dtd" / "classnames.json").is_file()


@pytest.mark.slow
def test_the_wheel_ships_data_manifests_and_works_from_another_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("synthimg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "synthimg/data_manifests/tasks/dtd/classnames.json" in names
    assert "synthimg/data_manifests/captions/incontext.json" in names
    assert any(n.startswith("synthimg/toyworld/weights/toy_sd/") for n in names)
    # the wheel alone, outside the repository: unpacked on the path, `tasks list` reads its catalog
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import synthimg, synthimg.manifests as m; print(synthimg.__file__, m.manifests()); "
            "from synthimg.cli import main; main(['tasks', 'list'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fgvc_aircraft" in out.stdout and "toy_shapes" in out.stdout
    first = out.stdout.splitlines()[0]
    assert first.startswith(str(site / "synthimg")) and str(site / "synthimg" / "data_manifests") in first
