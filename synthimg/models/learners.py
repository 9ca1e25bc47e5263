"""Learners by name: ``ce`` (the paper), ``flyp``, ``lp`` on open_clip models, and ``timm`` ViTs.

A learner owns the module that is trained, its loss on a batch, the classifier used for
evaluation, the image encoder used for linear probes, and its transforms.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from synthimg.config import TrainConfig
from synthimg.models.unwrap import unwrap
from synthimg.registry import Registry
from synthimg.tasks.spec import TaskSpec

LEARNERS = Registry("learner")
register = LEARNERS.register



def learner_name(cfg: TrainConfig) -> str:
    return "timm" if cfg.learner == "timm" else cfg.finetune


def build_learner(cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None | bool = "config") -> "Learner":
    """The learner for ``cfg``; ``pretrained=None`` skips loading weights (a checkpoint will replace them)."""
    weights = cfg.pretrained if pretrained == "config" else pretrained
    return LEARNERS[learner_name(cfg)](cfg, task, device, weights)


class Learner:
    """Base: ``model`` is trained; ``loss(batch)``; ``classifier()`` gives logits for evaluation.

    Learners whose loss is a mean over samples also expose ``sample_losses(batch)`` (one value
    per sample): the trainer then weights and sums them over the global batch, which keeps a
    padded last batch exact.
    """

    model: torch.nn.Module
    transform_train: Any
    transform_eval: Any

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if hasattr(self, "sample_losses"):
            return self.sample_losses(batch).mean()
        raise NotImplementedError

    def classifier(self) -> torch.nn.Module:
        return self.model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _train_transform(cfg: TrainConfig, eval_transform: Any, size: int, mean: Any, std: Any) -> Any:
    """The paper's only augmentation: RandomResizedCrop(size, scale 0.9-1.0)."""
    import torchvision.transforms as T

    if not cfg.augment:
        return eval_transform
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), interpolation=T.InterpolationMode.BICUBIC),
        T.Lambda(_rgb),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _rgb(image: Any) -> Any:
    return image.convert("RGB")


class _ClipBase(Learner):
    def __init__(self, cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None):
        from synthimg.models.clip import create_clip

        kwargs = {"force_image_size": cfg.image_size} if cfg.image_size else {}
        self.bundle = create_clip(cfg.model, pretrained, device=device, **kwargs)
        self.task, self.device, self.cfg = task, device, cfg
        self.prompts = [task.prompts(c) for c in range(task.num_classes)]
        visual = self.bundle.model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        self.transform_eval = self.bundle.preprocess_val
        self.transform_train = _train_transform(cfg, self.transform_eval, size, visual.image_mean or (0.48145466, 0.4578275, 0.40821073),
                                                visual.image_std or (0.26862954, 0.26130258, 0.27577711))
        if cfg.grad_checkpointing:
            self.bundle.model.set_grad_checkpointing(True)

    def zeroshot_head(self) -> torch.nn.Linear:
        from synthimg.models.clip import zeroshot_head

        return zeroshot_head(self.bundle.model, self.bundle.tokenizer, self.prompts, self.device)


@register("ce")
class CeLearner(_ClipBase):
    """Full fine-tune with cross-entropy through the zero-shot-initialised head (the paper's method)."""

    def __init__(self, cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None):
        from synthimg.models.clip import ClipClassifier

        super().__init__(cfg, task, device, pretrained)
        self.model = ClipClassifier(self.bundle.model.visual, self.zeroshot_head()).to(device)

    def sample_losses(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.model(batch["image"].to(self.device, non_blocking=True))
        return F.cross_entropy(logits.float(), batch["label"].to(self.device), reduction="none")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        model = unwrap(self.model)
        return model.features(images)


@register("lp")
class LpLearner(CeLearner):
    """Linear probe only: the image tower is frozen, only the (zero-shot-initialised) head trains."""

    def __init__(self, cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None):
        super().__init__(cfg, task, device, pretrained)
        for p in self.model.visual.parameters():
            p.requires_grad_(False)


@register("flyp")
class FlypLearner(_ClipBase):
    """FLYP: contrastive fine-tuning with open_clip's CLIP loss on template captions; the head is rebuilt for eval."""

    def __init__(self, cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None):
        import open_clip

        from synthimg.dist import rank_world

        super().__init__(cfg, task, device, pretrained)
        self.model = self.bundle.model.to(device)
        rank, world = rank_world()
        self.clip_loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["label"].tolist()
        captions = [self.prompts[c][int(torch.randint(len(self.prompts[c]), (1,), generator=self.generator))] for c in labels]
        text = self.bundle.tokenizer(captions).to(self.device)
        image_features, text_features, logit_scale = self.model(batch["image"].to(self.device), text)[:3]
        return self.clip_loss(image_features, text_features, logit_scale)

    def classifier(self) -> torch.nn.Module:
        from synthimg.models.clip import ClipClassifier

        model = unwrap(self.model)
        return ClipClassifier(model.visual, self.zeroshot_head())

    def zeroshot_head(self) -> torch.nn.Linear:
        from synthimg.models.clip import zeroshot_head

        model = unwrap(self.model)
        return zeroshot_head(model, self.bundle.tokenizer, self.prompts, self.device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        model = unwrap(self.model)
        return model.encode_image(images)


@register("timm")
class TimmLearner(Learner):
    """A timm model with a fresh classification head, trained with cross-entropy."""

    def __init__(self, cfg: TrainConfig, task: TaskSpec, device: str, pretrained: str | None):
        import timm.data

        from synthimg.models.vit import create_vit

        self.device, self.cfg = device, cfg
        extra = {"img_size": cfg.image_size} if cfg.image_size else {}
        self.model = create_vit(cfg.model, task.num_classes, pretrained=pretrained or False, **extra).to(device)
        data_cfg = timm.data.resolve_data_config({}, model=self.model)
        self.transform_eval = timm.data.create_transform(**data_cfg, is_training=False)
        self.transform_train = _train_transform(cfg, self.transform_eval, data_cfg["input_size"][-1], data_cfg["mean"],
                                                data_cfg["std"])
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)

    def sample_losses(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.model(batch["image"].to(self.device, non_blocking=True))
        return F.cross_entropy(logits.float(), batch["label"].to(self.device), reduction="none")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        model = unwrap(self.model)
        return model.forward_head(model.forward_features(images), pre_logits=True)
