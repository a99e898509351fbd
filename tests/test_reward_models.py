"""Reward models: shapes, encoding, normalisation, ensembles, save/load round trips."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from birl.reward_models import CnnReward, MlpReward, RewardEnsemble, RewardModel, RunningNormalizer, ScaledReward, SpaceSpec, load_reward_model
from birl.serialization import CorruptFileError, load_npz, load_state, read_zip_arrays, save_npz, save_state, write_zip_arrays


class FakeBox:
    def __init__(self, shape):
        self.shape = shape


class FakeDiscrete:
    shape = ()

    def __init__(self, n, start=0):
        self.n, self.start = n, start


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------------ MLP


def test_mlp_shapes_box_and_split():
    torch.manual_seed(0)
    m = MlpReward(3, 2, hidden=(32, 16), scale=2.0, offset=0.5)
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    r = m(obs, act)
    assert r.shape == (7,)
    f = m.features(obs, act)
    assert f.shape == (7, 16) and m.feature_dim == 16
    assert isinstance(m.head, torch.nn.Linear) and m.head.weight.shape == (1, 16)
    torch.testing.assert_close(r, m.head(f).squeeze(-1) * 2.0 + 0.5)


def test_mlp_reward_is_linear_in_head_weight():
    """dr/dw = scale * features: what the successor-feature estimator relies on."""
    torch.manual_seed(0)
    m = MlpReward(4, 1, hidden=(8,), scale=3.0)
    obs, act = torch.randn(1, 4), torch.randn(1, 1)
    (g,) = torch.autograd.grad(m(obs, act).sum(), m.head.weight)
    torch.testing.assert_close(g, 3.0 * m.features(obs, act).detach())


def test_mlp_discrete_one_hot_and_sb3_action_layout():
    torch.manual_seed(0)
    m = MlpReward(5, 3, discrete_obs=True, discrete_act=True, hidden=(8,))
    obs, act = torch.tensor([0, 4, 2]), torch.tensor([2, 0, 1])
    r = m(obs, act)
    assert r.shape == (3,)
    torch.testing.assert_close(m(obs, act[:, None]), r)  # SB3 stores discrete actions as [B, 1]
    with pytest.raises(ValueError, match="obs indices"):
        m(torch.tensor([5, 0, 0]), act)
    with pytest.raises(ValueError, match="act"):
        m(obs, torch.randn(3, 2))


def test_from_spaces_duck_typed_and_gymnasium():
    m = MlpReward.from_spaces(FakeBox((3,)), FakeDiscrete(4, start=1), hidden=(8,))
    assert m.obs_spec == SpaceSpec.box(3) and m.act_spec == SpaceSpec.discrete(4, 1)
    assert m(torch.randn(2, 3), torch.tensor([1, 4])).shape == (2,)
    import gymnasium as gym
    spaces = gym.spaces
    m = MlpReward.from_spaces(spaces.Discrete(6), spaces.Box(-1, 1, (2, 2)), hidden=(8,))
    assert m(torch.tensor([0, 5]), torch.randn(2, 2, 2)).shape == (2,)
    m = MlpReward.from_spaces(spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([2, 3]), hidden=(8,))
    assert m.act_spec.encoded_dim == 5
    assert m(torch.randn(2, 3), torch.tensor([[1, 2], [0, 0]])).shape == (2,)
    state_only = MlpReward.from_spaces(spaces.Box(-1, 1, (3,)), None, hidden=(8,))
    assert state_only(torch.randn(4, 3)).shape == (4,)
    with pytest.raises(TypeError, match="observation_space"):
        MlpReward.from_spaces(object(), FakeDiscrete(2))


def test_next_obs_required_and_checked():
    m = MlpReward(3, 1, use_next_obs=True, hidden=(8,))
    obs, act = torch.randn(4, 3), torch.randn(4, 1)
    assert m(obs, act, torch.randn(4, 3)).shape == (4,)
    with pytest.raises(ValueError, match="next_obs is required"):
        m(obs, act)
    with pytest.raises(ValueError, match="next_obs"):
        m(obs, act, torch.randn(5, 3))
    with pytest.raises(ValueError, match="act must have batch size 4"):
        m(obs, torch.randn(3, 1), torch.randn(4, 3))


def test_bad_constructor_arguments_named():
    with pytest.raises(ValueError, match="hidden"):
        MlpReward(3, 1, hidden=())
    with pytest.raises(ValueError, match="activation"):
        MlpReward(3, 1, activation="gelu-ish")
    with pytest.raises(ValueError, match="scale"):
        MlpReward(3, 1, scale=0.0)
    with pytest.raises(ValueError, match="clamp"):
        MlpReward(3, 1, clamp=-1.0)
    with pytest.raises(TypeError, match="obs_dim"):
        MlpReward(2.5, 1, discrete_obs=True)


def test_tanh_clamp_bounds_output():
    torch.manual_seed(0)
    m = MlpReward(2, 1, hidden=(8,), scale=1000.0, clamp=1.5)
    r = m(torch.randn(100, 2) * 10, torch.randn(100, 1))
    assert r.abs().max() <= 1.5


# ---------------------------------------------------------------------------------- normaliser


def test_running_normalizer_matches_numpy_and_updates_only_when_asked():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 4))
    norm = RunningNormalizer(4)
    for chunk in np.array_split(x, 7):
        norm.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.var.numpy(), x.var(0), rtol=1e-10)
    assert norm.count.item() == 1000

    m = MlpReward(4, 1, hidden=(8,), normalize=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.as_tensor(x, dtype=torch.float32), torch.randn(1000, 1))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # forward never updates
    m.update_normalizer(torch.as_tensor(x), torch.randn(1000, 1))
    np.testing.assert_allclose(m.obs_norm.mean.numpy(), x.mean(0), rtol=1e-6)
    assert m.act_norm.count.item() == 1000


# ---------------------------------------------------------------------------------- CNN


def test_cnn_reward_shapes_and_errors():
    torch.manual_seed(0)
    m = CnnReward((4, 84, 84), 6, hidden=(32,))
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    act = torch.tensor([0, 5, 2])
    assert m(obs, act).shape == (3,)
    assert m.features(obs, act).shape == (3, 32)
    with pytest.raises(ValueError, match="obs must have shape"):
        m(torch.zeros(3, 84, 84, 4, dtype=torch.uint8), act)
    with pytest.raises(ValueError, match="act indices"):
        m(obs, torch.tensor([0, 6, 1]))
    with pytest.raises(ValueError, match="obs_shape"):
        CnnReward((4, 20, 20), 6)
    with pytest.raises(ValueError, match="action_space must be Discrete"):
        CnnReward.from_spaces(FakeBox((4, 84, 84)), FakeBox((2,)))


def test_cnn_reward_scales_float_frames_like_uint8_frames():
    """The wrappers pass image frames as float32 0..255 (reward-model protocol), replay buffers and
    preference segments as uint8: the model must give the same reward on both (it used to treat
    float frames as already scaled, so the inner agent's rewards came from 255x brighter frames)."""
    torch.manual_seed(0)
    m = CnnReward((4, 84, 84), 6, hidden=(32,), use_next_obs=True)
    obs, nxt = (torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8) for _ in range(2))
    act = torch.tensor([0, 5, 2, 1, 3])
    torch.testing.assert_close(m(obs.float(), act, nxt.float()), m(obs, act, nxt))


# ---------------------------------------------------------------------------------- scaled reward


def test_scaled_reward_divides_by_the_fitted_rms_and_rejects_bad_rewards():
    torch.manual_seed(0)
    base = MlpReward(3, 1, hidden=(8,))
    m = ScaledReward(base)
    obs, act = torch.randn(6, 3), torch.randn(6, 1)
    torch.testing.assert_close(m(obs, act), base(obs, act))  # rms starts at 1
    assert m.fit(np.array([3.0, -4.0])) == pytest.approx(np.sqrt(12.5))
    torch.testing.assert_close(m(obs, act), base(obs, act) / np.sqrt(12.5))
    assert set(m.state_dict()) >= {"rms"}
    for bad, match in ((np.array([]), "empty"), (np.array([1.0, np.nan]), "finite"), (np.array([np.inf]), "finite")):
        with pytest.raises(ValueError, match=match):
            m.fit(bad)
        assert float(m.rms) == pytest.approx(np.sqrt(12.5))  # unchanged
    assert m.fit(np.zeros(4)) == 1e-6  # floored: an all-zero reward stays zero, not NaN
    with pytest.raises(ValueError, match="min_rms"):
        ScaledReward(base, min_rms=0.0)


def test_scaled_reward_is_the_same_soft_problem_at_a_scaled_temperature():
    """The identity ``reward_scaling`` rests on: soft-optimal for ``r / c`` at ``tau`` is
    soft-optimal for ``r`` at ``tau * c`` (exact tabular solves), with ``Q`` scaled by ``c``."""
    from birl.tabular import TabularMDP, garnet

    mdp = garnet(7, 3, 4, gamma=0.9, tau=0.6, seed=3, branching=3)
    x = np.random.default_rng(0).standard_normal(4)
    c = 37.5
    scaled = TabularMDP(mdp.P, mdp.features / c, gamma=mdp.gamma, tau=mdp.tau)
    hot = TabularMDP(mdp.P, mdp.features, gamma=mdp.gamma, tau=mdp.tau * c)
    a, b = scaled.soft_solve(x), hot.soft_solve(x)
    np.testing.assert_allclose(a.pi, b.pi, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.Q * c, b.Q, rtol=1e-9, atol=1e-8)


# ---------------------------------------------------------------------------------- ensemble


def test_ensemble_shapes_mean_and_std():
    torch.manual_seed(0)
    ens = RewardEnsemble.build(4, lambda: MlpReward(3, 1, hidden=(16,)))
    obs, act = torch.randn(9, 3), torch.randn(9, 1)
    members = ens.members(obs, act)
    assert members.shape == (4, 9) and len(ens) == 4
    torch.testing.assert_close(ens(obs, act), members.mean(0))
    torch.testing.assert_close(ens.disagreement(obs, act), members.std(0, unbiased=False))
    assert ens.features(obs, act).shape == (9, 64)
    assert (ens.disagreement(obs, act) > 0).all()
    with pytest.raises(ValueError, match="models"):
        RewardEnsemble([])
    with pytest.raises(TypeError, match=r"models\[0\]"):
        RewardEnsemble([torch.nn.Linear(2, 1)])


# ---------------------------------------------------------------------------------- save / load


def _trained_like(m: RewardModel) -> RewardModel:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda: MlpReward(3, 2, hidden=(16, 8), normalize=True, scale=0.5, offset=-1.0, clamp=4.0),
         lambda: (torch.randn(5, 3), torch.randn(5, 2))),
        (lambda: MlpReward(6, 3, discrete_obs=True, discrete_act=True, use_next_obs=True, activation="tanh"),
         lambda: (torch.tensor([0, 1, 5]), torch.tensor([2, 1, 0]), torch.tensor([1, 2, 3]))),
        (lambda: CnnReward((2, 40, 40), 3, hidden=(8,), trunk_dim=16, use_next_obs=True),
         lambda: (torch.randint(0, 256, (2, 2, 40, 40), dtype=torch.uint8), torch.tensor([0, 2]),
                  torch.randint(0, 256, (2, 2, 40, 40), dtype=torch.uint8))),
        (lambda: RewardEnsemble([MlpReward(3, 2, hidden=(8,), normalize=True), MlpReward(3, 2, hidden=(4, 4))]),
         lambda: (torch.randn(5, 3), torch.randn(5, 2))),
    ],
)  # fmt: skip
def test_save_load_round_trip_exact(tmp_path, make, inputs):
    torch.manual_seed(0)
    m = _trained_like(make())
    args = inputs()
    m.update_normalizer(*args)  # normaliser statistics must survive too
    path = tmp_path / "reward.pt"
    m.save(path)
    loaded = type(m).load(path)
    assert type(loaded) is type(m) and loaded.config() == m.config()
    assert_same_state(m, loaded)
    assert torch.equal(m(*args), loaded(*args))
    assert type(load_reward_model(path)) is type(m)
    assert not [p for p in os.listdir(tmp_path) if p != "reward.pt"]  # no temp files left behind


def test_normalizer_stats_are_saved(tmp_path):
    m = MlpReward(2, 1, hidden=(4,), normalize=True)
    m.update_normalizer(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([[0.5], [1.5]]))
    m.save(tmp_path / "m.pt")
    loaded = MlpReward.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.obs_norm.mean.numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(loaded.obs_norm.var.numpy(), [1.0, 4.0])
    assert loaded.obs_norm.count.item() == 2 and loaded.act_norm.count.item() == 2


def test_load_wrong_class_is_type_error(tmp_path):
    MlpReward(2, 1, hidden=(4,)).save(tmp_path / "m.pt")
    with pytest.raises(TypeError, match="not a CnnReward"):
        CnnReward.load(tmp_path / "m.pt")


def test_corrupt_and_truncated_files_raise(tmp_path):
    torch.manual_seed(0)
    m = MlpReward(3, 1, hidden=(64,))
    path = tmp_path / "m.pt"
    m.save(path)
    data = path.read_bytes()

    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="trunc.pt"):
        MlpReward.load(tmp_path / "trunc.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all" * 10)
    with pytest.raises(CorruptFileError):
        MlpReward.load(tmp_path / "garbage.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CorruptFileError):
        MlpReward.load(tmp_path / "empty.pt")

    # flip bytes inside the stored weights: the zip container may not notice, the checksum does
    w = m.trunk[0].weight.detach().numpy().tobytes()
    at = data.find(w[:32])
    assert at > 0
    flipped = bytearray(data)
    flipped[at + 8] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError):
        MlpReward.load(tmp_path / "flipped.pt")
    with pytest.raises(FileNotFoundError):
        MlpReward.load(tmp_path / "missing.pt")
    assert issubclass(CorruptFileError, ValueError)


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "state.pt"
    save_state(path, "x", {"a": 1}, {"w": torch.ones(2)})
    with pytest.raises(TypeError, match="config"):
        save_state(path, "x", {"a": object()}, {"w": torch.zeros(2)})
    kind, cfg, sd = load_state(path)
    assert cfg == {"a": 1} and torch.equal(sd["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["state.pt"]


def test_save_state_streams_big_tensors_and_copies_only_views(tmp_path):
    """A checkpoint holds GBs on Atari: ``save_state`` must not keep extra in-memory copies of
    the tensors (peak RSS of a fresh process grows by far less than the tensor), and a view into
    a larger storage is stored as its own elements, not the whole storage."""
    size_mb = 256
    code = f"""
import resource, torch
from birl.serialization import save_state
t = torch.ones({size_mb} * 2**20, dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
save_state({str(tmp_path / 'big.pt')!r}, "x", {{}}, {{"t": t}})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    extra_mb = float(out.stdout.split()[-1])
    assert extra_mb < 0.5 * size_mb, f"saving a {size_mb} MB tensor raised peak RSS by {extra_mb:.0f} MB"
    _, _, state = load_state(tmp_path / "big.pt", "x")
    assert state["t"].numel() == size_mb * 2**20 and bool((state["t"] == 1).all())

    base = torch.arange(1_000_000, dtype=torch.float32)
    save_state(tmp_path / "view.pt", "x", {}, {"head": base[:10], "strided": base[::250_000]})
    assert os.path.getsize(tmp_path / "view.pt") < 100_000
    _, _, state = load_state(tmp_path / "view.pt", "x")
    assert state["head"].tolist() == list(range(10)) and state["strided"].tolist() == [0, 250_000, 500_000, 750_000]


def test_npz_helpers_round_trip_and_corruption(tmp_path):
    arrays = {"a": np.arange(5, dtype=np.int16), "b": np.eye(2), "c": np.array([True, False])}
    save_npz(tmp_path / "x.npz", arrays, {"hello": [1, 2]})
    back, meta = load_npz(tmp_path / "x.npz")
    assert meta["hello"] == [1, 2]
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[:-40])
    with pytest.raises(CorruptFileError):
        load_npz(tmp_path / "t.npz")


def test_birl_does_not_import_gymnasium_or_sb3():
    code = (
        "import sys, birl.reward_models, birl.feedback, birl.serialization;"
        "bad = [m for m in ('gymnasium', 'stable_baselines3') if m in sys.modules];"
        "assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_zip_array_helpers_round_trip_and_refuse_bad_input(tmp_path):
    arrays = {"a": np.arange(5, dtype=np.int16), "b": np.eye(2)[:, ::-1], "c": np.zeros((0, 3), bool)}  # b: not contiguous
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as archive:
        write_zip_arrays(archive, "ds/", arrays, {"hello": [1, 2]})
        with pytest.raises(ValueError, match="prefix"):
            write_zip_arrays(archive, "ds", arrays, {})
        with pytest.raises(ValueError, match="array name"):
            write_zip_arrays(archive, "bad/", {"x/y": np.zeros(1)}, {})
        with pytest.raises(TypeError, match="dtype object"):
            write_zip_arrays(archive, "obj/", {"o": np.array([None])}, {})
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        back, meta = read_zip_arrays(archive, "ds/")
        with pytest.raises(KeyError):
            read_zip_arrays(archive, "missing/")
    assert meta["hello"] == [1, 2] and list(back) == ["a", "b", "c"]
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp makes 0600 files: a saved model must be as readable as one written by ``open``,
    and replacing a file keeps that file's permissions."""
    umask = os.umask(0o022)
    try:
        save_state(tmp_path / "new.pt", "x", {}, {"w": torch.ones(1)})
        assert os.stat(tmp_path / "new.pt").st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "new.pt", 0o640)
        save_state(tmp_path / "new.pt", "x", {}, {"w": torch.zeros(1)})
        assert os.stat(tmp_path / "new.pt").st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
