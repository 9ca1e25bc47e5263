import pytest
import torch
import torch.nn.functional as F

from synthimg.errors import SynthimgError
from synthimg.models.clip import (
    ClipClassifier,
    create_clip,
    zeroshot_head,
    zeroshot_weights,
)
from synthimg.models.vit import create_vit
from synthimg.tasks import get_task


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip("synthimg-tiny-vit")


def test_zeroshot_head_is_the_papers(tiny):
    task = get_task("dtd")  # 12 templates, some repeated for some names
    prompts = [task.prompts(c) for c in range(task.num_classes)]
    head = zeroshot_head(tiny.model, tiny.tokenizer, prompts)
    scale = tiny.model.logit_scale.exp().item()
    assert head.weight.shape == (47, tiny.model.text_projection.shape[1])
    assert torch.allclose(head.weight.norm(dim=1), torch.full((47,), scale), rtol=1e-5)
    assert torch.count_nonzero(head.bias) == 0
    # class 5 by hand: normalise each template embedding, average, renormalise
    with torch.no_grad():
        emb = F.normalize(tiny.model.encode_text(tiny.tokenizer(prompts[5])), dim=-1).mean(0)
    assert torch.allclose(head.weight[5], scale * F.normalize(emb, dim=0), atol=1e-5)


def test_classifier_equals_text_template_similarity(tiny):
    task = get_task("cifar10")
    prompts = [task.prompts(c) for c in range(10)]
    weights = zeroshot_weights(tiny.model, tiny.tokenizer, prompts)
    clf = ClipClassifier(tiny.model.visual, zeroshot_head(tiny.model, tiny.tokenizer, prompts)).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = tiny.model.logit_scale.exp() * tiny.model.encode_image(images, normalize=True) @ weights.T
        assert torch.allclose(clf(images), expected, atol=1e-4)
        assert torch.allclose(clf.features(images).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_unknown_names_list_close_matches():
    with pytest.raises(SynthimgError, match="close matches: .*ViT-B-16"):
        create_clip("ViT-B-61")
    with pytest.raises(SynthimgError, match="no pretrained tag 'nope'"):
        create_clip("synthimg-tiny-vit", pretrained="nope")
    with pytest.raises(SynthimgError, match="checkpoint not found"):
        create_clip("synthimg-tiny-vit", pretrained="/nonexistent/model.pt")
    with pytest.raises(SynthimgError, match="unknown timm model"):
        create_vit("vit_base_patch61_224", num_classes=3)


def test_local_checkpoint_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, path)
    again = create_clip("synthimg-tiny-vit", pretrained=str(path))
    for (name, a), b in zip(tiny.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_timm_vit_from_config():
    model = create_vit("test_vit", num_classes=5)
    assert model(torch.randn(2, 3, *model.pretrained_cfg["input_size"][1:])).shape == (2, 5)


def test_unwrap_sees_through_ddp_and_compile_wrappers():
    import torch

    from synthimg.models.unwrap import unwrap

    class Wrapper(torch.nn.Module):  # DDP's shape: the model as .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    core = torch.nn.Sequential()  # empty: falsy, yet a model
    assert unwrap(core) is core and unwrap(Wrapper(core)) is core
    compiled = Wrapper(core)
    compiled._orig_mod = compiled.module  # torch.compile's shape
    assert unwrap(Wrapper(compiled)) is core


def test_an_open_clip_text_tower_converts_to_transformers_exactly(tmp_path):
    import torch

    from synthimg.models.clip import create_clip
    from synthimg.models.clip_text import clip_tokenizer, to_hf_text_model

    torch.manual_seed(0)
    bundle = create_clip("synthimg-toy-clip")  # random weights: nothing shipped is needed
    model = bundle.model.float().eval()
    hf = to_hf_text_model(model).eval()
    tok = clip_tokenizer(tmp_path / "tok", 32)
    texts = ["a photo of a circle.", "small red six-sided shape png", ""]
    ids = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = hf(ids).pooler_output @ model.text_projection
        theirs = model.encode_text(bundle.tokenizer(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)
