"""TaskSpec: a target task's class names, zero-shot templates and evaluation splits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def article(word: str) -> str:
    """English indefinite article for ``word`` ("an" before a vowel letter), as the paper's templates use."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def render(template: str, classname: str) -> str:
    """Fill a CLIP_benchmark-style template: ``{c}`` is the class name, ``{a}`` its article."""
    return template.replace("{a}", article(classname)).replace("{c}", classname)


class SplitSpec(BaseModel):
    """One evaluation split: keyword arguments for the torchvision class, optionally a random_split part."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    part: int | None = None


class RandomSplit(BaseModel):
    """A seeded ``torch.utils.data.random_split``; ``None`` in ``lengths`` means "the rest".

    Using torch's own random_split with a ``manual_seed`` generator reproduces the paper's
    splits exactly (Cars val = 20% of train, ImageNet val = 50K of train, both seed 42).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    lengths: list[float | int | None]
    seed: int = 42


class EvalSpec(BaseModel):
    """Where a task's evaluation images come from (torchvision, ``download=False``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: str = Field(description="torchvision.datasets class name")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    expects: str = Field("", description="what torchvision expects under the root, for error messages")
    splits: dict[str, SplitSpec]
    random_split: RandomSplit | None = None
    label_offset: int = Field(0, description="added to torchvision's label to get the catalog index")
    clip_benchmark: str | None = None

    @model_validator(mode="after")
    def _parts_need_a_split(self) -> "EvalSpec":
        uses_parts = any(s.part is not None for s in self.splits.values())
        if uses_parts and self.random_split is None:
            raise ValueError("splits name a 'part' but no random_split is given")
        return self


class BackgroundsSpec(BaseModel):
    """How the LLM writes the task's backgrounds before captioning (paper Sec. 3.1, App. C).

    The paper asked an LLM once for places per class for ImageNet (about 100 each) and for one
    list per domain for the fine-grained tasks (Aircraft 80, Cars 100, Flowers 100).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    scope: Literal["class", "domain"] = "domain"
    count: int = Field(100, gt=0)
    domain: str = Field("", description="the domain noun in the prompt; '' = the category word or display name")
    source: str = ""


class TaskSpec(BaseModel):
    """A target task. Labels are always indices into ``classnames``, never sorted folder names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str = ""
    aliases: list[str] = Field(default_factory=list)
    classnames: list[str]
    templates: list[str]
    category_word: str = Field("", description="the task's domain word, e.g. 'aircraft'")
    caption_category_word: bool = Field(
        False, description="append category_word to class names in caption prompts (the paper: Aircraft, Cars)")
    templates_source: str = ""
    classnames_source: str = ""
    notes: list[str] = Field(default_factory=list)
    eval: EvalSpec | None = None
    retrieval_templates: list[str] = Field(
        default_factory=list, description="kNN query templates (the paper: Cars 8, DTD 8, Flowers 1); [] = zero-shot ones")
    substring: dict[str, Any] = Field(default_factory=lambda: {"mode": "any", "patterns": ["{c}"]},
                                      description="caption-matching rules for the substring backend")
    backgrounds: BackgroundsSpec = Field(default_factory=BackgroundsSpec)

    @model_validator(mode="after")
    def _check(self) -> "TaskSpec":
        if not self.classnames or not self.templates:
            raise ValueError(f"task {self.name!r} needs class names and templates")
        if len(set(self.classnames)) != len(self.classnames):
            dup = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
            raise ValueError(f"task {self.name!r} has duplicate class names {dup}: disambiguate them")
        if any("{c}" not in t for t in self.templates):
            raise ValueError(f"task {self.name!r}: every template needs a {{c}} placeholder")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, class_id: int) -> list[str]:
        """The zero-shot prompts of one class, in template order, without repeats.

        Templates with ``{a}`` render to the same prompt as their "a" twin for most names;
        repeats are dropped so no prompt is counted twice in the head's average.
        """
        name = self.classnames[class_id]
        return list(dict.fromkeys(render(t, name) for t in self.templates))

    def retrieval_queries(self, class_id: int) -> list[str]:
        """kNN text queries of one class: its retrieval templates (or zero-shot ones), without repeats."""
        name = self.classnames[class_id]
        return list(dict.fromkeys(render(t, name) for t in (self.retrieval_templates or self.templates)))

    def split_names(self) -> list[str]:
        return list(self.eval.splits) if self.eval else []

    def summary(self) -> dict[str, Any]:
        """The JSON shape of ``synthimg tasks show --json``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "classnames": list(self.classnames),
            "templates": list(self.templates),
        }
