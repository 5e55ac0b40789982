"""1D U-Net with FiLM, image encoder, the policy's sampling interface and its checkpoint files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sciddiff.nn.unet1d import ConditionalUnet1D, MatmulConv1d, with_matmul_convs
from sciddiff.nn.vision import ImageEncoder, SpatialSoftmax
from sciddiff.policy.io import load_policy, save_policy
from sciddiff.policy.normalizer import MinMaxNormalizer
from sciddiff.policy.policy import DiffusionPolicy, PolicyConfig

TINY = dict(down_dims=(16, 32), step_embed_dim=16, vision_channels=(8, 16), vision_keypoints=4, vision_dim=8)


@pytest.mark.parametrize("down_dims,horizon", [((16, 32), 8), ((16, 32, 64), 16), ((8, 16, 32, 64), 16)])
def test_unet_shapes(down_dims, horizon):
    net = ConditionalUnet1D(3, global_cond_dim=10, down_dims=down_dims, diffusion_step_embed_dim=16)
    x = torch.randn(4, horizon, 3)
    assert net(x, torch.tensor([0, 5, 50, 99]), torch.randn(4, 10)).shape == x.shape
    assert net(x, 7, torch.randn(4, 10)).shape == x.shape  # scalar timestep broadcasts
    assert ConditionalUnet1D(2, 0, down_dims)(torch.randn(2, horizon, 2), 3).shape == (2, horizon, 2)


def test_unet_film_conditioning():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=6, down_dims=(16, 32), diffusion_step_embed_dim=16)
    x, cond = torch.randn(3, 16, 2), torch.randn(3, 6)
    base = net(x, torch.tensor([10, 10, 10]), cond)
    # the output depends on the observation condition and on the timestep, per sample
    other = cond.clone()
    other[1] += 1.0
    out = net(x, torch.tensor([10, 10, 10]), other)
    assert torch.allclose(out[[0, 2]], base[[0, 2]], atol=1e-6) and not torch.allclose(out[1], base[1], atol=1e-4)
    assert not torch.allclose(net(x, torch.tensor([80, 10, 10]), cond)[0], base[0], atol=1e-4)
    # the condition acts through FiLM: its gradient reaches the scale/bias layers of every residual block
    base.pow(2).mean().backward()
    films = [m for name, m in net.named_modules() if name.endswith("film")]
    assert len(films) == 2 * 2 + 2 + 2 * 1
    assert all(f[1].weight.grad is not None and f[1].weight.grad.abs().sum() > 0 for f in films)


@pytest.mark.parametrize("kernel,stride,padding,bias", [(5, 1, 2, True), (1, 1, 0, True), (3, 2, 1, False), (4, 1, 0, True)])
def test_matmul_conv1d_equals_conv1d(kernel, stride, padding, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(3, 6, 16)
    assert torch.allclose(MatmulConv1d(conv)(x), conv(x), atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (3, 1, 0), (5, 3, 2)])
def test_matmul_conv1d_from_transposed_equals_conv_transpose1d(kernel, stride, padding):
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose1d(6, 5, kernel, stride=stride, padding=padding)
    x = torch.randn(3, 6, 7)
    assert torch.allclose(MatmulConv1d.from_transposed(deconv)(x), deconv(x), atol=1e-6)


@pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="this torch has no weight-only int8 CPU kernel")
def test_int8_matmul_conv1d_is_close_to_conv1d_and_skips_unsupported_widths():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 48, 5, padding=2)  # C*K = 160, a multiple of 16: quantized
    x = torch.randn(1, 32, 16)
    fast = MatmulConv1d(conv, int8_weights=True)
    assert fast.int8 and fast.weight.dtype == torch.int8
    ref = conv(x)
    err = (fast(x) - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.02  # quantized (not bit-equal), but within ~1% of the output's range
    narrow = MatmulConv1d(torch.nn.Conv1d(2, 8, 5, padding=2), int8_weights=True)  # C*K = 10: kernel unsupported
    assert not narrow.int8 and narrow.weight.dtype == torch.float32


def test_timestep_film_table_is_the_same_function_for_integer_timesteps():
    from sciddiff.nn.unet1d import TimestepFiLMTable

    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=6, down_dims=(16, 32, 64), diffusion_step_embed_dim=16).eval()
    tabled = TimestepFiLMTable(net, 100)
    assert tabled.table.shape == (100, sum(res.film[1].out_features for res in net.residual_blocks()))
    x, cond = torch.randn(2, 16, 2), torch.randn(2, 6)
    with torch.no_grad():
        for t in (torch.tensor([3, 99]), torch.tensor(0), 57):
            assert torch.allclose(tabled(x, t, cond), net(x, t, cond), atol=1e-5)


def test_unet_with_matmul_convs_is_the_same_function_and_leaves_the_original():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=6, down_dims=(16, 32, 64), diffusion_step_embed_dim=16).eval()
    fast = with_matmul_convs(net)
    assert any(isinstance(m, MatmulConv1d) for m in fast.modules())
    assert not any(isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) for m in fast.modules())
    assert not any(isinstance(m, MatmulConv1d) for m in net.modules())
    x, t, cond = torch.randn(2, 16, 2), torch.tensor([3, 90]), torch.randn(2, 6)
    with torch.no_grad():
        assert torch.allclose(fast(x, t, cond), net(x, t, cond), atol=1e-5)


def test_spatial_softmax_finds_the_bright_spot():
    layer = SpatialSoftmax(1, 1)
    with torch.no_grad():
        layer.proj.weight.fill_(50.0)
        layer.proj.bias.zero_()
    img = torch.zeros(1, 1, 11, 11)
    img[0, 0, 2, 8] = 1.0  # row 2 (y), column 8 (x)
    xy = layer(img)[0]
    torch.testing.assert_close(xy, torch.tensor([8 / 5 - 1, 2 / 5 - 1]), atol=1e-3, rtol=0)
    enc = ImageEncoder(channels=(8, 16), num_keypoints=4, out_dim=8)
    assert enc(torch.rand(5, 3, 84, 84) * 2 - 1).shape == (5, 8)


def _fitted(policy: DiffusionPolicy, seed: int = 0) -> DiffusionPolicy:
    g = torch.Generator().manual_seed(seed)
    c = policy.config
    for norm, dim in ((policy.state_normalizer, c.state_dim), (policy.action_normalizer, c.action_dim)):
        norm.load_state_dict(MinMaxNormalizer.fit(torch.rand(50, dim, generator=g) * 512).state_dict())
    return policy.eval()


def _obs(config: PolicyConfig, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if config.obs_type == "state":
        return {"state": torch.rand(batch, config.n_obs_steps, config.state_dim, generator=g) * 512}
    return {"agent_pos": torch.rand(batch, config.n_obs_steps, 2, generator=g) * 512,
            "image": torch.randint(0, 256, (batch, config.n_obs_steps, 3, 96, 96), generator=g, dtype=torch.uint8)}


@pytest.mark.parametrize("obs_type,state_dim", [("state", 18), ("image", 2)])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_policy_predicts_action_chunks(obs_type, state_dim, sampler):
    torch.manual_seed(0)
    config = PolicyConfig(obs_type=obs_type, state_dim=state_dim, sampler=sampler, num_inference_steps=4, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    actions = policy.predict_action(_obs(config), generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2, config.n_action_steps, 2)
    # actions come back in env units, inside the normalizer's range (samples are clipped to [-1, 1])
    low, high = policy.action_normalizer.low, policy.action_normalizer.high
    assert ((actions >= low - 1e-3) & (actions <= high + 1e-3)).all()
    nobs = policy.normalize_obs(_obs(config))
    policy.train()
    loss = policy.loss(nobs, torch.rand(2, config.horizon, 2) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss)
    if obs_type == "image":
        assert policy.encoder.stem[0].weight.grad.abs().sum() > 0  # trained end to end


def test_observations_of_another_layout_range_or_size_are_refused_not_acted_on():
    # LeRobot-style 0..1 float frames read as near-black, a 128 px render was cropped to 84 silently: both ran
    # and failed the task; channels-last frames and a history without its step axis were raw torch errors
    config = PolicyConfig(obs_type="image", state_dim=2, num_inference_steps=2, **TINY)
    policy = DiffusionPolicy(config).eval()
    obs = _obs(config)
    for wrong, message in [({"image": obs["image"].float() / 255}, "must be uint8 pixels 0..255"),
                           ({"image": obs["image"].repeat(1, 1, 1, 2, 2)}, r"must be \(B, 2, 3, 96, 96\), got"),
                           ({"image": obs["image"].permute(0, 1, 3, 4, 2)}, "channels last"),
                           ({"agent_pos": obs["agent_pos"][:, -1]}, r"'agent_pos' must be \(B, 2, 2\)")]:
        with pytest.raises(ValueError, match=message):
            policy.predict_action({**obs, **wrong})
    with pytest.raises(ValueError, match="observations hold"):
        policy.predict_action({"image": obs["image"]})
    with pytest.raises(ValueError, match="steps must be >= 1"):  # 0 ran the config's steps
        policy.predict_action(obs, steps=0)
    state = DiffusionPolicy(PolicyConfig(num_inference_steps=2, **TINY)).eval()
    numpy_obs = {"state": _obs(state.config)["state"].numpy()}  # numpy, as an env returns it, is taken
    assert state.predict_action(numpy_obs).shape == (2, config.n_action_steps, 2)


def test_ddim_eta_adds_noise_per_step_and_rides_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = PolicyConfig(sampler="ddim_trailing", num_inference_steps=4, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    obs = _obs(config)

    def act(p, seed):
        return p.predict_action(obs, generator=torch.Generator().manual_seed(seed))

    # eta = 0: the generator only draws x_T; eta = 1 draws fresh noise at every step, so the same x_T ends elsewhere
    deterministic = act(policy, 5)
    policy.config.ddim_eta = 1.0
    ancestral = act(policy, 5)
    assert not torch.allclose(ancestral, deterministic, atol=1e-3)
    torch.testing.assert_close(act(policy, 5), ancestral, rtol=0, atol=0)  # still seeded
    policy.config.sampler = "dpmpp_2m"  # the same noise scale makes DPM-Solver++(2M) its SDE form
    sde = act(policy, 5)
    policy.config.ddim_eta = 0.0
    assert not torch.allclose(sde, act(policy, 5), atol=1e-3)
    torch.testing.assert_close(act(policy, 5), act(policy, 5), rtol=0, atol=0)
    policy.config.sampler, policy.config.ddim_eta = "ddim_trailing", 1.0
    save_policy(tmp_path / "eta.pt", policy, half=False)
    assert load_policy(tmp_path / "eta.pt").config.ddim_eta == 1.0
    policy.config.ddim_eta = math.inf  # DDIM re-noising the predicted clean sample: saved and loaded as such
    save_policy(tmp_path / "renoise.pt", policy, half=False)
    assert load_policy(tmp_path / "renoise.pt").config.ddim_eta == math.inf
    assert not torch.allclose(act(policy, 5), ancestral, atol=1e-3)
    with pytest.raises(ValueError, match="ddim_eta must be in \\[0, 1\\] for the dpmpp_2m"):
        PolicyConfig(sampler="dpmpp_2m", ddim_eta=1.5)
    with pytest.raises(ValueError, match="ddim_eta must be in \\[0, inf\\]"):
        PolicyConfig(ddim_eta=-1.0)


def test_image_crop_random_in_training_centre_in_eval():
    policy = DiffusionPolicy(PolicyConfig(obs_type="image", state_dim=2, **TINY))
    img = torch.arange(96 * 96, dtype=torch.int32).reshape(1, 1, 96, 96).expand(6, 3, 96, 96)
    policy.eval()
    centre = policy.crop(img)
    assert centre.shape == (6, 3, 84, 84) and (centre[:, :, 0, 0] == 6 * 96 + 6).all()
    policy.train()
    torch.manual_seed(0)
    crops = policy.crop(img)
    corners = crops[:, 0, 0, 0]
    assert crops.shape == (6, 3, 84, 84) and len(set(corners.tolist())) > 1
    for crop, corner in zip(crops, corners):  # each crop is a contiguous 84x84 window of the frame
        r, c = divmod(int(corner), 96)
        assert torch.equal(crop, img[0, :, r:r + 84, c:c + 84])


@pytest.mark.parametrize("obs_type,state_dim", [("state", 18), ("image", 2)])
def test_checkpoint_roundtrip_gives_identical_actions(tmp_path, obs_type, state_dim):
    torch.manual_seed(0)
    config = PolicyConfig(obs_type=obs_type, state_dim=state_dim, num_inference_steps=3, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    obs = _obs(config)

    def act(p):
        return p.predict_action(obs, generator=torch.Generator().manual_seed(7))

    save_policy(tmp_path / "full.pt", policy, {"command": "test"}, half=False)
    torch.testing.assert_close(act(load_policy(tmp_path / "full.pt")), act(policy), rtol=0, atol=0)
    # fp16 files: weights rounded once, so two loads agree exactly and stay close to the fp32 policy
    save_policy(tmp_path / "half.pt", policy, half=True)
    a, b = load_policy(tmp_path / "half.pt"), load_policy(tmp_path / "half.pt")
    torch.testing.assert_close(act(a), act(b), rtol=0, atol=0)
    torch.testing.assert_close(act(a), act(policy), rtol=0, atol=2.0)  # pixels
    torch.testing.assert_close(a.action_normalizer.high, policy.action_normalizer.high, rtol=0, atol=0)
    assert (tmp_path / "full.json").exists() and load_policy(tmp_path / "full.pt").meta["command"] == "test"
    assert (tmp_path / "half.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size


def test_frozen_cpu_unet_gives_the_same_actions():
    torch.manual_seed(0)
    config = PolicyConfig(num_inference_steps=3, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    obs = _obs(config, batch=3)
    before = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
    keys = set(policy.state_dict())
    policy.freeze_for_cpu()
    assert set(policy.state_dict()) == keys  # the traced copy is not a submodule
    torch.testing.assert_close(policy.predict_action(obs, generator=torch.Generator().manual_seed(3)), before,
                               rtol=0, atol=1e-3)
    policy.config.cpu_weights = "int8"
    policy.freeze_for_cpu()
    int8 = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
    span = float(policy.action_normalizer.high.max() - policy.action_normalizer.low.min())
    assert 0 < (int8 - before).abs().max() < 0.02 * span  # quantized, and close
    with pytest.raises(ValueError, match="cpu_weights"):
        PolicyConfig(cpu_weights="int4")


def test_frozen_image_encoder_gives_the_same_features():
    torch.manual_seed(0)
    config = PolicyConfig(obs_type="image", state_dim=2, num_inference_steps=3, **TINY)  # 84 px crops of 96 px frames
    policy = _fitted(DiffusionPolicy(config))
    nobs = policy.normalize_obs(_obs(config, batch=3))
    with torch.no_grad():
        eager = policy.encode_obs(nobs)
        policy.freeze_for_cpu()
        assert policy.__dict__.get("_frozen_encoder") is not None
        torch.testing.assert_close(policy.encode_obs(nobs), eager, rtol=0, atol=0)  # other batch than traced: same


def test_image_policy_from_state_reuses_the_unet_exactly():
    """Fed the true block vertices in place of the encoder's output, the transferred image policy's U-Net gives the
    state policy's output: the FiLM input permutation is exact."""
    from sciddiff.policy.image_transfer import image_config, image_policy_from_state

    torch.manual_seed(0)
    state = DiffusionPolicy(PolicyConfig(obs_type="state", state_dim=18, down_dims=(16, 32), step_embed_dim=16))
    for p in state.unet.parameters():
        p.data.normal_(0, 0.3)
    state.state_normalizer.low.copy_(torch.linspace(0, 10, 18))
    state.state_normalizer.high.copy_(torch.linspace(500, 520, 18))
    config = image_config(state.config, (8, 8, 8), 4)
    image = image_policy_from_state(state, DiffusionPolicy(config).encoder, config)
    assert image.config.obs_type == "image" and image.config.vision_dim == 16 and image.config.crop_size == 96
    raw = torch.rand(3, 2, 18) * 500
    nstate = state.state_normalizer.normalize(raw)
    nagent = image.state_normalizer.normalize(raw[..., :2])
    assert torch.allclose(nagent, nstate[..., :2])
    cond_image = torch.cat([nstate[..., 2:], nagent], -1).flatten(1)  # what encode_obs builds with perfect vertices
    x, t = torch.randn(3, 16, 2), torch.tensor([3, 50, 99])
    with torch.no_grad():
        assert torch.allclose(image.unet(x, t, cond_image), state.unet(x, t, nstate.flatten(1)), atol=1e-5)


def test_image_transfer_bad_input_is_one_line(tmp_path, capsys):
    from sciddiff.policy.image_transfer import main

    assert main(["--out", str(tmp_path / "run"), "--state-policy", str(tmp_path / "missing.pt")]) == 2
    assert "no policy checkpoint" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["--out", str(tmp_path / "run"), "--state-policy", str(bogus), "--data", str(tmp_path)]) == 2
    assert "is not a policy checkpoint" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "run"), "--max-seconds", "nan"]) == 2  # nan would never run out
    assert "--max-seconds must be positive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_reusing_the_shipped_encoder_rebuilds_the_shipped_image_policy(tmp_path, capsys):
    """`--encoder-from`: the shipped image policy's encoder under the shipped state policy's U-Net is the shipped image
    policy, bit for bit (its own sampler kept); a state policy as the donor is refused in one line."""
    from sciddiff.policy.image_transfer import main
    from sciddiff.policy.io import load_policy

    shipped = Path(__file__).resolve().parents[1] / "data" / "policy"
    assert main(["--encoder-from", str(shipped / "pusht_image.pt"), "--state-policy", str(shipped / "pusht_state.pt"),
                 "--out", str(tmp_path / "run")]) == 0
    rebuilt, image = load_policy(tmp_path / "run" / "policy.pt"), load_policy(shipped / "pusht_image.pt")
    assert rebuilt.config.to_dict() == image.config.to_dict()
    ours, theirs = rebuilt.state_dict(), image.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    capsys.readouterr()
    assert main(["--encoder-from", str(shipped / "pusht_state.pt"), "--out", str(tmp_path / "bad")]) == 2
    assert "--encoder-from an image policy" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_latency_tool_times_every_variant_and_setting(tmp_path, capsys):
    from sciddiff.policy import latency

    config = PolicyConfig(sampler="ddim_trailing", num_inference_steps=2, **TINY)
    save_policy(tmp_path / "p.pt", _fitted(DiffusionPolicy(config)))
    assert latency.main([str(tmp_path / "p.pt"), "--threads", "1", "--repeats", "2",
                         "--settings", "default,dpmpp_2m:3,ddpm:"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = json.loads(lines[0])
    assert header["isa"] == torch.backends.cpu.get_cpu_capability() and header["threads"] == 1
    rows = [json.loads(line) for line in lines[1:]]
    chain = config.num_train_timesteps  # DDPM runs the whole chain: its label says so
    assert [(r["unet"], r["sampler"], r["steps"]) for r in rows] == [
        (u, s, k) for u in ("eager", "float32", "int8") for s, k in (("ddim_trailing", 2), ("dpmpp_2m", 3), ("ddpm", chain))]
    assert all(0 < r["min_ms"] <= r["median_ms"] for r in rows)
    assert latency.main([str(tmp_path / "p.pt"), "--threads", "1", "--repeats", "2", "--no-eager", "--cpu-weights",
                         "float32", "--settings", "ddim_trailing:14", "--warm-start-t", "0,50"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r["warm_start_t"], r["steps"], r["network_calls"]) for r in rows] == [(0, 14, 14), (50, 14, 7)]
    other = tmp_path / "unet1d_copy.py"  # another version of the inference copy's source: timed beside this one
    other.write_text(Path(latency.__file__).parents[1].joinpath("nn", "unet1d.py").read_text())
    assert latency.main([str(tmp_path / "p.pt"), "--threads", "1", "--repeats", "2", "--no-eager", "--cpu-weights",
                         "int8", "--settings", "default", "--against-unet1d", str(other)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r["unet"] for r in rows] == ["int8", f"int8 ({other})"]


def test_warm_start_begins_at_the_grid_step_and_skips_the_first_calls():
    config = PolicyConfig(sampler="ddim_trailing", num_inference_steps=14, ddim_eta=1.0, warm_start_t=50, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    assert policy.warm_start_step() == 7  # trailing grid 99, 92, ..., 56, 49: first timestep <= 50
    assert policy.warm_start_step("dpmpp_2m") == 0 and policy.warm_start_step(steps=4) == 2  # 99, 74, 49, 24
    calls = []
    policy.unet.register_forward_hook(lambda module, inputs, output: calls.append(int(inputs[1][0])))
    cond = torch.randn(3, config.state_dim * config.n_obs_steps)
    previous = torch.rand(3, config.horizon, config.action_dim) * 2 - 1
    cold = policy.sample(cond, torch.Generator().manual_seed(0))
    assert len(calls) == 14 and calls[0] == 99
    calls.clear()
    warm = policy.sample(cond, torch.Generator().manual_seed(0), previous=previous)
    assert calls == [49, 42, 35, 28, 20, 13, 6]
    again = policy.sample(cond, torch.Generator().manual_seed(0), previous=previous)
    assert torch.equal(warm, again) and not torch.allclose(warm, cold)
    assert warm.shape == cold.shape and warm.abs().max() <= 1.0  # clipped samples
    policy.config.warm_start_t = 0  # off: a previous plan changes nothing
    assert torch.equal(policy.sample(cond, torch.Generator().manual_seed(0), previous=previous), cold)
    with pytest.raises(ValueError, match="warm_start_t"):
        PolicyConfig(warm_start_t=100)


def test_actor_keeps_each_environments_plan_for_warm_starts():
    from sciddiff.policy.runner import TorchPolicyActor

    config = PolicyConfig(sampler="ddim_trailing", num_inference_steps=4, warm_start_t=50, **TINY)
    policy = _fitted(DiffusionPolicy(config))
    seen = []
    predict_plan = policy.predict_plan

    def spy(obs, previous=None, **kw):
        seen.append(previous)
        return predict_plan(obs, previous=previous, **kw)

    policy.predict_plan = spy
    actor = TorchPolicyActor(policy, seed=0)
    obs = {"state": (torch.rand(2, 2, config.state_dim, generator=torch.Generator().manual_seed(0)) * 512).numpy()}
    first = actor(obs, env_ids=[0, 1])
    assert first.shape == (2, config.n_action_steps, 2) and seen[-1] is None and set(actor.plans) == {0, 1}
    plan_1 = actor.plans[1].clone()
    actor({"state": obs["state"][1:]}, env_ids=[1])  # environment 0 finished: the batch shrinks
    assert torch.equal(seen[-1][0], plan_1) and not torch.equal(actor.plans[1], plan_1)
    actor.reset()
    actor({"state": obs["state"][:1]})  # no env ids: row 0 is environment 0
    assert seen[-1] is None and set(actor.plans) == {0}


def test_a_renoising_policy_samples_with_dpm_solver_at_the_most_noise_it_takes():
    """eta = inf (DDIM re-noising, the shipped policies) has no DPM-Solver++ form: that sampler takes its SDE form,
    eta 1, as the CLI says in a note (the latency tools crashed on the shipped checkpoints)."""
    policy = DiffusionPolicy(PolicyConfig(ddim_eta=float("inf"), down_dims=(16, 32))).eval()
    obs = {"state": torch.full((1, 2, 18), 256.0)}
    assert torch.isfinite(policy.predict_action(obs, sampler="dpmpp_2m", steps=3)).all()


def test_fit_normalizers_maps_the_demonstrations_onto_minus_one_to_one():
    policy = DiffusionPolicy(PolicyConfig(state_dim=3, action_dim=2, **TINY))
    g = torch.Generator().manual_seed(0)
    states, actions = torch.rand(4, 50, 3, generator=g) * 400 - 7, torch.rand(200, 2, generator=g) * 9 + 1
    policy.fit_normalizers(states, actions)  # any leading shape: episodes x steps, or rows
    y = policy.state_normalizer.normalize(states.reshape(-1, 3))
    assert torch.allclose(y.amin(0), -torch.ones(3)) and torch.allclose(y.amax(0), torch.ones(3))
    assert torch.allclose(policy.action_normalizer.low, actions.amin(0)) and torch.allclose(policy.action_normalizer.high, actions.amax(0))
