"""LaMD's networks on CPU with tiny configs: MCD-VAE shapes and decomposition, KL, the K-step sampler,
the DMG and the discriminator, save/from_pretrained round trips and a short overfit."""

from __future__ import annotations

import pytest
import torch

from stages.edit.lamd import losses
from stages.edit.lamd.discriminator import VideoDiscriminator
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE
from stages.edit.lamd.sampler import sample_motion
from tests.lamd_fixtures import TINY_DISC, one_thread, tiny_dmg, tiny_vae  # noqa: F401


def clip(frames: int, size: int = 16, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand((batch, 3, frames, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames", [1, 3, 4, 7, 16])
def test_motion_latent_is_quarter_size_with_no_time_axis(frames):
    vae = tiny_vae(num_frames=frames)
    posterior = vae.encode_motion(clip(frames, batch=2))
    assert posterior.mean.shape == posterior.logvar.shape == (2, 2, 4, 4)  # H/4 x W/4, d = 2, no L
    assert vae.spatial_factor == 4 and vae.latent_size(16, 16) == (4, 4)


def test_decoder_returns_l_frames_of_the_input_size():
    vae = tiny_vae(num_frames=5)
    x = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    out = vae(x, generator=torch.Generator().manual_seed(0))
    assert out.sample.shape == (2, 3, 5, 16, 24)
    assert out.motion.shape == (2, 2, 4, 6)
    # the normalisation layer: zero mean, unit variance over each sample's latent
    assert torch.allclose(out.motion.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.motion.var((1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)


def test_with_the_motion_latent_fixed_later_frames_do_not_matter():
    vae = tiny_vae()
    a, b = clip(4, seed=1), clip(4, seed=2)
    b[:, :, 0] = a[:, :, 0]  # same first frame, different frames 1..L-1
    z = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out_a = vae.decode(z, vae.encode_content(a[:, :, 0]))
        out_b = vae.decode(z, vae.encode_content(b[:, :, 0]))
        other = vae.decode(z, vae.encode_content(clip(4, seed=4)[:, :, 0]))
        moved = vae.decode(torch.randn(1, 2, 4, 4), vae.encode_content(a[:, :, 0]))
    assert torch.equal(out_a, out_b)
    assert (out_a - other).abs().max() > 1e-3 and (out_a - moved).abs().max() > 1e-3  # both inputs do matter


def test_wrong_frame_count_is_refused():
    with pytest.raises(ValueError, match="takes 4 frames, got 6"):
        tiny_vae().encode_motion(clip(6))


def test_kl_is_zero_at_the_standard_normal_and_positive_elsewhere():
    zero = torch.zeros(3, 2, 4, 4)
    assert losses.kl_divergence(zero, zero).item() == 0.0
    kl = losses.kl_divergence(torch.full_like(zero, 0.5), torch.full_like(zero, -1.0)).item()
    assert kl == pytest.approx(32 * 0.5 * (0.25 + torch.exp(torch.tensor(-1.0)).item() - 1 + 1), rel=1e-5)


def sample_clip(frames: int = 4, size: int = 16) -> torch.Tensor:
    """The project's synthetic sample (64 x 64), shrunk to ``size``: float [1, 3, frames, size, size] in [-1, 1]."""
    import cv2
    import numpy as np

    from jobs.sample_data import generate_sample

    frames_u8 = generate_sample(64, 64, frames, seed=3).frames
    small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames_u8])
    return torch.from_numpy(small).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_twenty_steps_overfit_one_clip():
    torch.manual_seed(0)
    vae = tiny_vae().train()
    x = sample_clip()
    optimiser = torch.optim.Adam(vae.parameters(), lr=5e-3)
    history = []
    for step in range(20):
        out = vae(x, generator=torch.Generator().manual_seed(step))
        loss = losses.l1_loss(out.sample, x) + 1e-4 * losses.kl_divergence(out.posterior.mean, out.posterior.logvar)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history  # the loss at least halves in 20 steps


def test_k_step_sampler_shape_subsequence_and_determinism():
    dmg = tiny_dmg()
    scheduler = dmg.sampling_scheduler()
    scheduler.set_timesteps(200)
    steps = scheduler.timesteps.tolist()
    assert len(steps) == 200 and steps == sorted(steps, reverse=True) and set(steps) < set(range(1000))
    assert dmg.train_scheduler().config.num_train_timesteps == 1000
    tokens = dmg.conditioning(torch.randn(2, 8, 4, 4))
    assert tokens.shape == (2, 16, 16)
    z1 = sample_motion(dmg, tokens, 3, torch.Generator().manual_seed(7))
    z2 = sample_motion(dmg, tokens, 3, torch.Generator().manual_seed(7))
    z3 = sample_motion(dmg, tokens, 3, torch.Generator().manual_seed(8))
    assert z1.shape == (2, 2, 4, 4) and torch.isfinite(z1).all()
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


def test_text_tokens_are_appended_and_refused_without_text_projection():
    content = torch.randn(1, 8, 4, 4)
    dmg = tiny_dmg(text_embed_dim=12)
    assert dmg.conditioning(content, torch.randn(1, 5, 12)).shape == (1, 21, 16)
    with pytest.raises(ValueError, match="without text conditioning"):
        tiny_dmg().conditioning(content, torch.randn(1, 5, 12))


def test_discriminator_gives_patch_logits():
    torch.manual_seed(0)
    disc = VideoDiscriminator(**TINY_DISC)
    logits = disc(clip(4, batch=2))
    assert logits.shape[:2] == (2, 1) and logits.ndim == 5
    assert losses.hinge_discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0


@pytest.mark.parametrize("kind", ["vae", "dmg", "disc"])
def test_save_and_from_pretrained_round_trip_is_bit_identical(kind, tmp_path):
    if kind == "vae":
        model, cls, args = tiny_vae(), MCDVAE, (clip(4),)
    elif kind == "dmg":
        model, cls = tiny_dmg(), MotionGenerator
        args = (torch.randn(1, 2, 4, 4), torch.tensor([10]), torch.randn(1, 8, 4, 4))
    else:
        torch.manual_seed(0)
        model, cls, args = VideoDiscriminator(**TINY_DISC).eval(), VideoDiscriminator, (clip(4),)
    model.save_pretrained(tmp_path / kind)
    loaded = cls.from_pretrained(tmp_path / kind).eval()
    public = lambda cfg: {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()  # noqa: E731
                          if not k.startswith("_")}
    assert public(loaded.config) == public(model.config)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        # safetensors loads weights into memory of another alignment, where CPU kernels may take other SIMD
        # paths (last-bit differences); in freshly allocated memory the loaded model computes the same bits
        for p in loaded.parameters():
            p.data = p.data.clone()
        if kind == "vae":
            first, second = model(*args, sample_posterior=False).sample, loaded(*args, sample_posterior=False).sample
        else:
            first, second = model(*args), loaded(*args)
    assert torch.equal(first, second)


def test_gan_starts_after_warm_up_and_each_term_trains_only_its_network():
    from stages.edit.lamd.training import VaeLossWeights, vae_loss

    x = sample_clip()
    torch.manual_seed(0)
    vae, disc = tiny_vae().train(), VideoDiscriminator(**TINY_DISC)

    def grads(weight: float, step: int):
        vae.zero_grad()
        disc.zero_grad()
        loss, logs = vae_loss(vae, x, VaeLossWeights(gan_weight=weight, gan_start_step=5), step,
                              torch.Generator().manual_seed(0), disc)
        loss.backward()
        return logs, [p.grad.clone() if p.grad is not None else None for p in vae.parameters()], \
            [p.grad.clone() if p.grad is not None else None for p in disc.parameters()]

    warm, _, disc_grads = grads(0.1, 4)
    assert "g_adv" not in warm and all(g is None for g in disc_grads)  # warm-up: L1 + beta KL only
    small, vae_small, disc_small = grads(0.1, 5)
    large, vae_large, disc_large = grads(10.0, 5)
    assert {"g_adv", "d_loss"} <= set(small)
    assert all(torch.equal(a, b) for a, b in zip(disc_small, disc_large))  # lambda never reaches the critic
    assert any(not torch.equal(a, b) for a, b in zip(vae_small, vae_large))  # ... but does reach the autoencoder


def test_dmg_trains_on_the_frozen_vaes_latents():
    from stages.edit.lamd.training import DmgTrainer

    vae = tiny_vae()
    trainer = DmgTrainer(tiny_dmg(), vae, 1e-3, seed=4)
    before = [p.detach().clone() for p in trainer.dmg.parameters()]
    vae_before = [p.detach().clone() for p in vae.parameters()]
    assert trainer.step(sample_clip())["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.dmg.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(vae_before, vae.parameters()))
    assert not any(p.requires_grad for p in vae.parameters())
