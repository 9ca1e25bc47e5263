"""Every registered plug-in provides what its Protocol asks (``synthimg.plugins``)."""

import inspect
import re

import pytest

from synthimg import plugins


def _provides(cls: type, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``cls`` lacks (instance attributes count when its code assigns them)."""
    source = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("synthimg"))
    missing = []
    for name in plugins.members(protocol):
        if hasattr(cls, name):
            continue
        if not re.search(rf"self\.{name}\b[^=\n]*=|self\.{name}\s*,.*=|^\s*{name}\s*[:=]", source, re.M):
            missing.append(name)
    return missing


def _registered():
    from synthimg.curation.descriptors import DESCRIPTORS
    from synthimg.models.learners import LEARNERS
    from synthimg.synthetic.llm import BACKENDS

    yield from ((plugins.Learner, cls) for cls in LEARNERS.values())
    yield from ((plugins.Descriptor, cls) for cls in DESCRIPTORS.values())
    yield from ((plugins.LLM, cls) for cls in BACKENDS.values())


@pytest.mark.parametrize("protocol, cls", list(_registered()), ids=lambda x: getattr(x, "__name__", str(x)))
def test_registered_plugins_follow_their_protocol(protocol, cls):
    assert _provides(cls, protocol) == []


def test_the_run_evaluator_is_an_evaluator():
    from synthimg.evaluation.run import RunEvaluator

    assert _provides(RunEvaluator, plugins.Evaluator) == []


def test_members_lists_data_and_methods():
    assert plugins.members(plugins.LLM) == ["complete", "id"]
    assert plugins.members(plugins.Search) == ["__call__"]
