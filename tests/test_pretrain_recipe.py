"""The toy pretraining recipe: hashes that name the shipped weights, ``--set`` parsing, the Min-SNR loss."""

import json

import pytest
import torch

from synthimg.cli import main
from synthimg.toyworld.pretrain import (
    STATS_FILE,
    WEIGHTS,
    Recipe,
    diffusion_loss,
    scheduler,
)


def test_the_default_recipe_names_the_shipped_weights_and_neutral_switches_keep_older_names():
    shipped = json.loads((WEIGHTS / STATS_FILE).read_text())
    recipe = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in shipped["recipe"].items()})
    assert recipe == Recipe()  # `synthimg toyworld pretrain` with no --set reproduces what ships
    for stage in ("clip", "vae", "unet"):
        assert recipe.stage_hash(stage) == shipped[stage]["hash"], stage
    # the UNet of 2026-12-02 (plain MSE, 9,000 steps, before the switches existed) keeps its name
    older = recipe.override(["unet_snr_gamma=0", "unet_prediction=epsilon", "unet_text_time=false"])
    assert older.override(["unet_steps=9000"]).stage_hash("unet") == "ada09345e5fd"
    changed = recipe.override(["unet_snr_gamma=2"])
    assert changed.stage_hash("clip") == recipe.stage_hash("clip") and changed.stage_hash("vae") == recipe.stage_hash("vae")
    assert changed.stage_hash("unet") != recipe.stage_hash("unet")
    assert Recipe(unet_snr_gamma=5).stage_hash("unet") == Recipe(unet_snr_gamma=5.0).stage_hash("unet")
    assert recipe.override(["vae_steps=7"]).stage_hash("unet") != recipe.stage_hash("unet")  # trained on the VAE


def test_override_parses_each_fields_type_and_rejects_bad_settings():
    r = Recipe().override(["unet_channels=32,64", "unet_text_time=TRUE", "unet_lr=2e-4", "unet_batch=8",
                           "unet_prediction=v_prediction"])
    assert (r.unet_channels, r.unet_text_time, r.unet_lr, r.unet_batch, r.unet_prediction) == \
        ((32, 64), True, 2e-4, 8, "v_prediction")
    for bad, fragment in [("nokey=1", "KEY one of"), ("unet_lr", "KEY one of"), ("unet_batch=1.5", "takes an int"),
                          ("unet_text_time=maybe", "true or false"), ("unet_channels=a,b", "list of ints"),
                          ("unet_prediction=sample", "unet_prediction must be one of"),
                          ("unet_snr_gamma=nan", "finite"), ("unet_snr_gamma=-1", ">= 0")]:
        with pytest.raises(ValueError, match=fragment):
            Recipe().override([bad])


@pytest.mark.parametrize("pair", ["nokey=1", "unet_prediction=bogus", "seed=3"])
def test_bad_set_is_one_line_exit_2_before_any_training(pair, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["toyworld", "pretrain", "--world", str(tmp_path / "none"), "--out", str(tmp_path / "w"), "--set", pair])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "internal error" not in err[0], err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weighting_is_hang_et_al(prediction):
    sched = scheduler(prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(6, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 100, 400, 700, 999])
    target = noise if prediction == "epsilon" else sched.get_velocity(x0, noise, t)
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)  # the signal-to-noise ratio of each sample's timestep
    weight = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction == "epsilon" else snr + 1)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(diffusion_loss(pred, x0, noise, t, sched, 5.0), (weight * per_sample).mean(), rtol=1e-5)
    assert torch.allclose(diffusion_loss(pred, x0, noise, t, sched, 0.0), per_sample.mean(), rtol=1e-5)
    assert sched.config.prediction_type == prediction
