"""The benchmark front end: every suite is wired to an argument parser and a run function."""

import inspect
import json
from importlib import import_module
from pathlib import Path

import pytest

from agents.benchmark import SUITES, build_parser, main


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_parses_its_defaults_and_has_a_runner(suite):
    module, _, run, _ = SUITES[suite]
    runner = getattr(import_module(f"agents.{module}"), run)
    params = list(inspect.signature(runner).parameters)
    assert params[0] == "args" and params[1:] in ([], ["command"])
    args = build_parser().parse_args([suite])
    assert args.suite == suite


def test_unknown_suite_and_bad_joint_arguments_are_rejected(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["no-such-suite"])
    with pytest.raises(ValueError, match="--demos"):
        main(["joint", "--demos", "3", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--methods"):
        main(["joint", "--methods", "bc,dagger", "--out", str(tmp_path)])


def test_overrides_name_their_runs_so_cached_runs_never_mix_settings():
    from agents.bench_pendulum import params_tag, parse_params

    params = parse_params(["gradient_steps=10", "estimator='none'"])
    assert params == {"gradient_steps": 10, "estimator": "none"}
    assert params_tag(params) == "_estimator-none_gradient_steps-10" and params_tag({}) == ""
    from agents.bench_model_based import msobirl_variants

    args = build_parser().parse_args(["model-based", "--msobirl-params", "gradient_steps=10"])
    assert msobirl_variants(args.msobirl_params) == [{"gradient_steps": 10}]
    assert msobirl_variants(build_parser().parse_args(["model-based"]).msobirl_params) == [{}]
    args = build_parser().parse_args(["model-based", "--msobirl-params", "--msobirl-params", "hypergrad_coef=0.01"])
    assert msobirl_variants(args.msobirl_params) == [{}, {"hypergrad_coef": 0.01}]
    with pytest.raises(ValueError, match="--msobirl-params: the same variant"):
        msobirl_variants([["gradient_steps=10"], ["gradient_steps=10"]])
    with pytest.raises(ValueError, match="--params: estimator"):
        parse_params(["estimator=none"])  # a bare name is not a Python literal


def test_model_based_table_has_a_row_per_msobirl_variant_and_steps_relative_to_sobirl():
    from agents.bench_model_based import _table

    def rec(method, seed, curve, params=None):
        return dict(method=method, env="E", seed=seed, true_return=curve[-1][1], curve=curve, wall_s=1.0, steps=100,
                    labels=10, **({"params": params} if params else {}))

    # R_random = 0, R_SAC_true = 100: the 0.9 target is a return of 90, averaged over the last 3 episodes.
    fast, slow, never = [[10, 90], [20, 90], [30, 90]], [[10, 0], [20, 90], [30, 90], [40, 90], [50, 90], [60, 90]], [[10, 0]] * 3
    records = [rec("sac_true", 0, fast), rec("sobirl", 0, slow), rec("msobirl", 0, fast),
               rec("msobirl", 0, never, {"hypergrad_coef": 0.01})]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in _table(records, "E", 0.0) if line.startswith("| ")}
    assert rows["| sobirl"][3] == "40" and rows["| sobirl"][4] == "1.00"
    assert rows["| msobirl"][3] == "30" and rows["| msobirl"][4] == "0.75"
    assert rows["| msobirl (hypergrad_coef=0.01)"][3] == "never" and rows["| msobirl (hypergrad_coef=0.01)"][4] == "n/a"


@pytest.mark.parametrize("method", ["drlhf", "sac_true"])
def test_model_based_run_killed_midway_continues_from_its_checkpoint(tmp_path, monkeypatch, method):
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from agents import bench_model_based
    from agents.checkpoint import list_checkpoints, load_checkpoint

    class Kill(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 250:
                raise RuntimeError("killed")
            return True

    learn = SAC.learn
    monkeypatch.setattr(SAC, "learn", lambda self, total, callback=None, **kw: learn(self, total, callback=[*callback, Kill()], **kw))
    path = str(tmp_path / f"Pendulum-v1_{method}_seed0.json")
    with pytest.raises(RuntimeError, match="killed"):
        bench_model_based._run(method, "Pendulum-v1", 0, 600, 10, path, {})
    [saved] = list_checkpoints(bench_model_based.checkpoint_folder(path))
    assert load_checkpoint(saved).num_timesteps == 240  # every tenth of the 600 steps
    monkeypatch.setattr(SAC, "learn", learn)

    record = bench_model_based._run(method, "Pendulum-v1", 0, 600, 10, path, {})
    # the resumed run starts a new 200-step episode at its checkpoint's step (240)
    assert record["resumed"] == 1 and record["steps"] == 600 and [t for t, _ in record["curve"]] == [200, 440]
    assert json.loads(Path(path).read_text()) == record and not bench_model_based.checkpoint_folder(path).exists()


def test_offline_expert_retrained_in_a_fresh_checkout_gets_new_demos_and_references(tmp_path):
    """Only the expert's references are in git: a retrained expert must not reuse another's."""
    import json

    from agents.bench_offline import expert_and_demos

    first = expert_and_demos("Pendulum-v1", tmp_path, expert_steps=50, max_demos=1)
    ref_path = tmp_path / "reference_Pendulum-v1.json"
    assert json.loads(ref_path.read_text())["expert"] == first["expert"]
    ref_path.write_text(json.dumps({**json.loads(ref_path.read_text()), "expert": 12345.0}))
    assert expert_and_demos("Pendulum-v1", tmp_path, expert_steps=50, max_demos=1)["expert"] == 12345.0  # all kept: reused
    (tmp_path / "expert_Pendulum-v1.zip").unlink()  # as in a fresh checkout
    again = expert_and_demos("Pendulum-v1", tmp_path, expert_steps=50, max_demos=1)
    assert again["expert"] != 12345.0 and json.loads(ref_path.read_text())["expert"] == again["expert"]
