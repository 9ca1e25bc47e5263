import json
from pathlib import Path

import pytest
import torch

from synthimg.data.splits import load_split, split_indices
from synthimg.errors import SynthimgError
from synthimg.tasks import TaskSpec, get_task, list_tasks, render
from synthimg.tasks.spec import RandomSplit, SplitSpec

COUNTS = {
    "imagenet": 1000, "fgvc_aircraft": 100, "stanford_cars": 196, "dtd": 47, "flowers102": 102, "oxford_pets": 37,
    "food101": 101, "sun397": 397, "caltech101": 102, "cifar10": 10, "cifar100": 100, "eurosat": 10,
    "toy_shapes": 10, "toy_polygons": 6,
}
# The paper's zero-shot templates (Sec. 4) and OpenAI's 80 for ImageNet.
TEMPLATES = {"imagenet": 80, "fgvc_aircraft": 2, "stanford_cars": 9, "dtd": 12, "flowers102": 2}
PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "classnames"
PUBLIC_NAME = {"fgvc_aircraft": "aircraft", "stanford_cars": "cars", "flowers102": "flowers", "oxford_pets": "pets"}
# Documented differences (docs/tasks.md, task.json notes): ImageNet's repeated names, Pets' order.
DISAMBIGUATED = {"imagenet": {744: "projectile", 836: "sunglass"}}


def test_catalog_has_every_task_with_the_right_class_count():
    assert list_tasks() == list(COUNTS)
    for name, n in COUNTS.items():
        assert get_task(name).num_classes == n, name


@pytest.mark.parametrize("name, n", TEMPLATES.items())
def test_paper_template_counts(name, n):
    assert len(get_task(name).templates) == n


@pytest.mark.parametrize("name", list(COUNTS))
def test_prompts_unique_across_classes(name):
    task = get_task(name)
    owner = {}
    for c in range(task.num_classes):
        prompts = task.prompts(c)
        assert prompts and len(prompts) == len(set(prompts))
        for p in prompts:
            assert owner.setdefault(p, c) == c, f"{name}: prompt {p!r} shared by classes {owner[p]} and {c}"


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="public class-name lists not beside the checkout")
@pytest.mark.parametrize("name", [n for n in COUNTS if not n.startswith("toy_")])
def test_names_agree_with_public_lists(name):
    public = json.loads((PUBLIC / f"{PUBLIC_NAME.get(name, name)}.json").read_text())
    ours = get_task(name).classnames
    assert len(public) == len(ours)
    if name == "oxford_pets":  # same names; official class-id order vs OpenAI's case-sensitive sort
        assert sorted(public) == sorted(ours) and ours[:2] == ["Abyssinian", "american bulldog"]
        return
    fixed = DISAMBIGUATED.get(name, {})
    for i, (a, b) in enumerate(zip(public, ours)):
        assert b == fixed.get(i, a), f"{name}[{i}]: public {a!r}, catalog {b!r}"


def test_imagenet_duplicates_stay_distinct():
    names = get_task("imagenet").classnames
    assert names[657] != names[744] and names[836] != names[837]
    assert names[134] != names[517] and names[638] != names[639]


def test_templates_render_articles():
    assert render("a photo of {a} {c}.", "Audi A4") == "a photo of an Audi A4."
    assert render("a photo of {a} {c}.", "rose") == "a photo of a rose."
    assert get_task("flowers102").prompts(0) == ["a photo of a pink primrose, a type of flower."]


def test_unknown_task_lists_choices():
    with pytest.raises(SynthimgError, match="did you mean fgvc_aircraft"):
        get_task("fgvc_aircrft")
    assert get_task("aircraft").name == "fgvc_aircraft"


def test_spec_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicate class names"):
        TaskSpec(name="x", classnames=["a", "a"], templates=["{c}"])


def test_derived_splits_match_torch_random_split():
    spec = RandomSplit(lengths=[0.8, 0.2], seed=42)
    train, val = split_indices(1000, spec)
    ref = torch.utils.data.random_split(range(1000), [0.8, 0.2], generator=torch.Generator().manual_seed(42))
    assert train == list(ref[0].indices) and val == list(ref[1].indices)
    assert len(val) == 200 and not set(train) & set(val)
    assert split_indices(1000, spec) == [train, val]  # a stable function of the seed
    assert split_indices(1000, RandomSplit(lengths=[0.8, 0.2], seed=0))[1] != val
    rest, held = split_indices(60000, RandomSplit(lengths=[None, 50000], seed=42))
    assert len(held) == 50000 and len(rest) == 10000


def test_missing_root_says_where_data_goes(tmp_path: Path):
    with pytest.raises(SynthimgError, match=r"fgvc-aircraft-2013b") as info:
        load_split(get_task("fgvc_aircraft"), "test", tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(SynthimgError, match="no split 'dev'"):
        load_split(get_task("dtd"), "dev", tmp_path)


def _fake_dtd(root: Path, classes: list[str], per_split: int = 2) -> None:
    from PIL import Image

    data = root / "dtd" / "dtd"
    for split in ("train", "val", "test"):
        lines = []
        for c in classes:
            for i in range(per_split):
                rel = f"{c}/{c}_{split}_{i}.jpg"
                (data / "images" / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (i, 0, 0)).save(data / "images" / rel)
                lines.append(rel)
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def test_torchvision_split_and_derived_part(tmp_path: Path):
    dtd = get_task("dtd")
    _fake_dtd(tmp_path, dtd.classnames)
    test = load_split(dtd, "test", tmp_path)
    assert len(test) == 2 * 47 and test[0][1] == 0 and test[len(test) - 1][1] == 46
    derived = dtd.model_copy(update={
        "name": "dtd_derived",
        "aliases": [],
        "eval": dtd.eval.model_copy(update={
            "splits": {"train": SplitSpec(kwargs={"split": "train"}, part=0), "val": SplitSpec(kwargs={"split": "train"}, part=1)},
            "random_split": RandomSplit(lengths=[0.8, 0.2], seed=42),
        }),
    })
    spec = derived  # load_split takes any TaskSpec; no need to touch the global catalog
    train, val = load_split(spec, "train", tmp_path), load_split(spec, "val", tmp_path)
    assert len(train) + len(val) == 94 and not set(train.indices) & set(val.indices)


def test_partial_torchvision_folder_cannot_shift_labels(tmp_path: Path):
    dtd = get_task("dtd")
    _fake_dtd(tmp_path, dtd.classnames[1:])  # torchvision would relabel every class down by one
    with pytest.raises(SynthimgError, match="46 classes"):
        load_split(dtd, "test", tmp_path)


def test_clip_benchmark_wds_layout(tmp_path: Path):
    from tests.conftest import CLASSNAMES, write_dataset

    write_dataset(tmp_path / "test", n=20, maxcount=10)
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSNAMES))
    (tmp_path / "test" / "nshards.txt").write_text("2")
    records = list(load_split(get_task("cifar10"), "test", tmp_path))
    assert len(records) == 20 and {r["label"] for r in records} == set(range(10))
    with pytest.raises(SynthimgError, match="splits there: test"):
        load_split(get_task("cifar10"), "train", tmp_path)
