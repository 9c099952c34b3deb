"""The diffusion-method framework: configs, model loading and preflight, clip selection,
video attention processors, and DDIM against diffusers' own scheduler. No model weights are
downloaded; the few tests that load models use the tiny stack from ``diffusion_fixtures``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, from_dict, load_config
from stages.edit.diffusion import ddim
from stages.edit.diffusion.attention import FrameState, VideoAttnProcessor, attend, sparse_causal_kv
from stages.edit.diffusion.base import VideoTooShortError, select_frames
from stages.edit.diffusion.config import DiffusionConfig
from stages.edit.diffusion.loading import check_sources, load_components
from stages.edit.tune_a_video import TuneAVideoConfig
from tests.diffusion_fixtures import TINY_CLIP, save_tiny_sd, tiny_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    return str(save_tiny_sd(tmp_path_factory.mktemp("tiny-sd")))


def test_config_validation_names_the_field():
    assert DiffusionConfig().device == "auto"
    for bad, field in (({"width": 500}, "width"), ({"num_frames": 0}, "num_frames"),
                       ({"guidance_scale": -1.0}, "guidance_scale"), ({"device": "tpu"}, "device"),
                       ({"attention": "xformers"}, "attention")):
        with pytest.raises(ConfigError, match=field):
            from_dict(TuneAVideoConfig, bad, "methods.tune_a_video")
    with pytest.raises(ConfigError, match="unknown key 'steps'"):
        from_dict(TuneAVideoConfig, {"steps": 3})


def test_tune_a_video_defaults_are_the_release():
    c = TuneAVideoConfig()
    assert (c.num_frames, c.frame_stride, c.width, c.height) == (24, 2, 512, 512)
    assert (c.learning_rate, c.train_steps, c.weight_decay, c.max_grad_norm) == (3e-5, 500, 1e-2, 1.0)
    assert (c.num_inference_steps, c.guidance_scale, c.inversion_prompt) == (50, 12.5, "")
    assert c.trainable_modules == ("attn1.to_q", "attn2.to_q", "attn_temp") and c.gradient_checkpointing
    assert c.frames_needed == 47 and c.resources.num_gpus == 0  # CPU defaults; the YAML asks for GPUs


def test_production_yaml_validates():
    from jobs.edit_videos import EditJobConfig, method_configs

    path = os.path.join(ROOT, "jobs", "configs", "tune_a_video.yaml")
    config = load_config(EditJobConfig, path)
    tav = method_configs(config, path)["tune_a_video"]
    assert isinstance(tav, TuneAVideoConfig)
    # dtype auto: bf16 on cards that support it, fp16 (with a GradScaler) elsewhere, fp32 on the CPU
    assert tav.model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and tav.dtype == "auto"
    assert tav.resources.num_gpus == 1 and tav.frames_needed <= config.decode.max_frames


def test_preflight_checks_model_paths(tiny_sd, tmp_path, monkeypatch):
    check_sources(DiffusionConfig(model=tiny_sd), ALL)
    with pytest.raises(ConfigError, match="does not exist"):
        check_sources(DiffusionConfig(model=str(tmp_path / "nope")), ALL)
    with pytest.raises(ConfigError, match="unet: .* is not a diffusers folder"):
        check_sources(DiffusionConfig(model=str(tmp_path)), ALL)
    # a component named on its own overrides the model's subfolder
    check_sources(DiffusionConfig(model=str(tmp_path), unet=os.path.join(tiny_sd, "unet")), ("unet",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        check_sources(DiffusionConfig(model="someone/not-cached-model"), ("unet",))
    with pytest.raises(ConfigError, match="neither an existing local path nor a hub id"):
        check_sources(DiffusionConfig(model="bad id with spaces"), ("unet",))


def test_components_load_through_from_pretrained(tiny_sd):
    models = load_components(DiffusionConfig(model=tiny_sd), ALL)
    assert type(models["unet"]).__name__ == "UNet2DConditionModel"
    assert type(models["scheduler"]).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in models["unet"].parameters())
    assert models["tokenizer"](["a disc"]).input_ids[0][0] == models["tokenizer"].bos_token_id


def test_select_frames_stride_resize_and_too_short():
    frames = np.zeros((10, 40, 60, 3), np.uint8)
    frames[:] = np.arange(10, dtype=np.uint8)[:, None, None, None] * 20
    cfg = DiffusionConfig(num_frames=4, frame_stride=3, width=32, height=16)
    clip = select_frames(frames, cfg)
    assert clip.shape == (4, 16, 32, 3) and clip.dtype == np.uint8
    assert [int(f[0, 0, 0]) for f in clip] == [0, 60, 120, 180]
    crop = select_frames(frames, DiffusionConfig(num_frames=2, width=16, height=16, resize="crop"))
    assert crop.shape == (2, 16, 16, 3)
    with pytest.raises(VideoTooShortError, match="video has 10 frames; tune_a_video needs 11"):
        select_frames(frames, DiffusionConfig(num_frames=4, frame_stride=3, start_frame=1), "tune_a_video")


def test_sparse_causal_kv_takes_first_and_previous_frame():
    b, f, n, c = 2, 4, 3, 5
    x = torch.arange(f, dtype=torch.float32).view(1, f, 1, 1).expand(b, f, n, c).reshape(b * f, n, c)
    out = sparse_causal_kv(x, f).view(b, f, 2 * n, c)
    assert out[:, :, :n].eq(0).all()  # first half: frame 0
    assert [int(out[0, i, n, 0]) for i in range(f)] == [0, 0, 1, 2]  # second half: frame max(i-1, 0)


def test_attend_backends_and_slicing_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    ref = attend(q, k, v, scale=8 ** -0.5)
    assert torch.allclose(attend(q, k, v, scale=8 ** -0.5, backend="eager"), ref, atol=1e-5)
    assert torch.allclose(attend(q, k, v, scale=8 ** -0.5, chunk=5), ref, atol=1e-6)


def test_sparse_causal_attention_with_one_frame_is_self_attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(3, 10, 16)  # 3 videos of 1 frame
    plain = attn(x)
    state = FrameState(num_frames=1)
    attn.set_processor(VideoAttnProcessor(state, "sparse_causal"))
    assert torch.allclose(attn(x), plain, atol=1e-6)
    # with 3 frames, frame 0 still sees only itself; frame 2 sees frames 0 and 1, not itself
    state.num_frames = 3
    video = torch.randn(3, 10, 16)
    out = attn(video)
    attn.set_processor(AttnProcessor2_0())
    assert torch.allclose(out[0], attn(video[:1])[0], atol=1e-6)
    ctx = torch.cat([video[0], video[1]])[None]
    assert torch.allclose(out[2], attn(video[2:3], encoder_hidden_states=ctx)[0], atol=1e-5)


def test_ddim_inversion_is_exact_for_a_constant_noise_model():
    sched = tiny_scheduler()
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def eps(z, t):
        return torch.full_like(z, 0.3)

    inverted = ddim.ddim_invert(eps, x, sched, 10)
    assert not torch.allclose(inverted, x)
    assert torch.allclose(ddim.ddim_sample(eps, inverted, sched, 10), x, atol=1e-5)


def test_ddim_sample_matches_diffusers_scheduler_step():
    sched = tiny_scheduler()
    x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1))

    def eps(z, t):
        return torch.tanh(z) * (t / 1000.0)

    ours = ddim.ddim_sample(eps, x, sched, 5)
    sched.set_timesteps(5)
    ref = x
    for t in sched.timesteps:
        ref = sched.step(eps(ref, int(t)), t, ref, eta=0.0).prev_sample
    assert torch.allclose(ours, ref, atol=1e-5)


def test_guidance_one_is_the_conditional_prediction():
    u, c = torch.randn(4), torch.randn(4)
    assert torch.allclose(ddim.guided(u, c, 1.0), c, atol=1e-6)
    assert torch.allclose(ddim.guided(u, c, 0.0), u, atol=1e-6)  # scale 0: the unconditional prediction
    # worked values: the conditional direction (c - u) = (1, 0, 4) scaled by 12.5 from u
    u, c = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 2.0])
    assert ddim.guided(u, c, 12.5).tolist() == [12.5, 1.0, 48.0]


def test_tiny_clip_shape_is_valid():
    assert TuneAVideoConfig(**TINY_CLIP).frames_needed == 3
