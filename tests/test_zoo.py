"""rl_zoo3 integration: registration, YAML configs, train / enjoy CLIs and Optuna tuning."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import requires

requires("rl_zoo3")

from gymnasium import spaces  # noqa: E402

from agents import enjoy, train, zoo  # noqa: E402
from birl.feedback import Demonstrations, SyntheticTeacher, Trajectory  # noqa: E402

ALGOS = ("sobirl", "drlhf", "sac", "msobirl")
GENERIC_ATARI_ID = "SpaceInvadersNoFrameskip-v4"  # an Atari id without an entry: the `atari` fallback
REPO = Path(__file__).resolve().parent.parent


def _entries():
    for algo in ALGOS:
        for key in yaml.safe_load(zoo.default_config(algo).read_text()):
            yield algo, key


def test_import_has_no_side_effects():
    code = "import sys, agents.zoo; assert 'rl_zoo3' not in sys.modules and 'stable_baselines3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""})


def test_register_patches_every_zoo_table():
    zoo.register()
    import rl_zoo3.enjoy  # noqa: F401  (imports ALGOS by name)
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    zoo.register()
    assert zoo.is_registered()
    modules = [m for name, m in sys.modules.items() if name.startswith("rl_zoo3") and isinstance(getattr(m, "ALGOS", None), dict)]
    assert {"rl_zoo3.utils", "rl_zoo3.exp_manager", "rl_zoo3.train", "rl_zoo3.enjoy"} <= {m.__name__ for m in modules}
    for module in modules:
        for name in ALGOS:
            assert module.ALGOS[name] is zoo.ALGORITHMS[name], (module.__name__, name)
    for name in ("sobirl", "drlhf"):
        assert callable(HYPERPARAMS_SAMPLER[name]) and callable(HYPERPARAMS_CONVERTER[name])


def test_class_follows_the_action_space():
    from stable_baselines3 import SAC

    from agents.discrete_sac import DiscreteSAC
    from agents.sobirl import DiscreteDRLHF, DiscreteSoBiRL, DRLHF, SoBiRL

    box, discrete = spaces.Box(-1, 1, (2,)), spaces.Discrete(3)
    expected = {"sobirl": (SoBiRL, DiscreteSoBiRL), "drlhf": (DRLHF, DiscreteDRLHF), "sac": (SAC, DiscreteSAC)}
    for name, (box_cls, discrete_cls) in expected.items():
        assert zoo.ALGORITHMS[name].select(box) is box_cls
        assert zoo.ALGORITHMS[name].select(discrete) is discrete_cls
    with pytest.raises(ValueError, match="'sobirl' does not support"):
        zoo.ALGORITHMS["sobirl"].select(spaces.MultiBinary(3))


def test_feedback_from_yaml_settings(tmp_path):
    teacher = zoo.make_feedback("preferences", {"beta": ".inf", "eps_mistake": 0.1}, seed=7)
    assert isinstance(teacher, SyntheticTeacher)
    assert (teacher.beta, teacher.eps_mistake, teacher.seed) == (np.inf, 0.1, 7)
    assert zoo.make_feedback("preferences", {"seed": 3}, seed=7).seed == 3
    with pytest.raises(TypeError, match="teacher_kwargs"):
        zoo.make_feedback("preferences", {"betta": 1.0})
    with pytest.raises(ValueError, match="'feedback' must be one of"):
        zoo.make_feedback("labels")
    demos = Demonstrations([Trajectory(np.zeros((4, 3)), np.zeros((3, 1)), np.ones(3), True, False)])
    demos.save(tmp_path / "demos.npz")
    loaded = zoo.make_feedback("demonstrations", demonstrations_kwargs={"path": str(tmp_path / "demos.npz")})
    assert isinstance(loaded, Demonstrations) and loaded.n_transitions == 3
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("Pendulum-v1")
    SAC("MlpPolicy", env, buffer_size=10).save(tmp_path / "expert.zip")
    rollouts = zoo.make_feedback("demonstrations", demonstrations_kwargs={"expert": str(tmp_path / "expert.zip"), "n_episodes": 2}, env=env)
    assert len(rollouts) == 2 and rollouts.n_transitions == 400  # two full Pendulum episodes
    with pytest.raises(ValueError, match="exactly one source"):
        zoo.make_feedback("demonstrations", demonstrations_kwargs={"path": "a.npz", "minari": "b"})
    with pytest.raises(ValueError, match="unknown keys"):
        zoo.make_feedback("demonstrations", demonstrations_kwargs={"path": "a.npz", "episodes": 3})


@pytest.mark.parametrize("algo,key", list(_entries()))
def test_every_yaml_entry_builds_and_trains_one_step(tmp_path, monkeypatch, algo, key):
    """Every entry, through rl_zoo3's ExperimentManager (wrappers, frame stack, policy), with a
    tiny replay buffer; 4 env steps with learning from step 2 make at least one gradient step."""
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (model compiler warnings) into the cwd
    config = yaml.safe_load(zoo.default_config(algo).read_text())[key]
    env_id = GENERIC_ATARI_ID if key == "atari" else key
    manager = zoo.experiment_manager(
        algo, env_id, tmp_path, n_timesteps=4, hyperparams={"buffer_size": 64, "learning_starts": 2, "batch_size": 8}
    )
    with contextlib.redirect_stdout(io.StringIO()):
        model, saved = manager.setup_experiment()
    try:
        model.learn(4)
        assert model.num_timesteps == 4 and model._n_updates >= 1
        assert saved["policy"] == config["policy"]
        if config["policy"] == "CnnPolicy":  # Atari: stacked uint8 frames, each stored once
            assert model.observation_space.shape == (4, 84, 84)
            assert model.replay_buffer.observations.dtype == np.uint8
            assert model.replay_buffer.optimize_memory_usage and isinstance(model.action_space, spaces.Discrete)
        if algo == "sac":
            assert not hasattr(model, "reward_model")
            return
        assert isinstance(model.feedback, SyntheticTeacher) and model.feedback.seed == 0
        assert (model.n_queries, model.segment_length, model.outer_freq) == (
            config["n_queries"], config["segment_length"], config["outer_freq"]
        )
        assert model.estimator == config["estimator"]
        assert model.reward_model.hidden == tuple(config["reward_model_kwargs"]["hidden"])
    finally:
        model.env.close()


def test_feedback_flag_goes_into_the_hyperparameters():
    argv = train.zoo_argv(["--algo", "sobirl", "--env", "Pendulum-v1", "--feedback", "demonstrations", "-params", "n_queries:5"])
    assert argv[argv.index("--conf-file") + 1] == str(zoo.CONFIG_DIR / "sobirl.yml")
    params = argv[argv.index("-params") + 1 :]
    assert params == ["feedback:'demonstrations'", "n_queries:5"]
    assert "--conf-file" not in train.zoo_argv(["--algo", "ppo"])  # rl_zoo3's own config
    with pytest.raises(SystemExit, match="--feedback applies"):
        train.zoo_argv(["--algo", "sac", "--feedback", "preferences"])


def _small_pendulum_params(*extra: str) -> list:
    return [
        "-params", "learning_starts:100", "outer_freq:100", "n_queries:20", "segment_length:10", "buffer_size:1000",
        "reward_steps:5", "batch_size:32", "policy_kwargs:dict(net_arch=[32, 32])", "successor_net_arch:[32]",
        "reward_model_kwargs:dict(hidden=[32])", *extra,
    ]


def test_train_and_enjoy_cli_on_pendulum(tmp_path, capsys):
    train.main(
        ["--algo", "sobirl", "--env", "Pendulum-v1", "-n", "300", "--seed", "1", "-f", str(tmp_path),
         "--eval-freq", "200", "--eval-episodes", "1", "--verbose", "0", *_small_pendulum_params()]
    )  # fmt: skip
    run = tmp_path / "sobirl" / "Pendulum-v1_1"
    assert (run / "Pendulum-v1.zip").is_file() and (run / "best_model.zip").is_file()
    evaluations = np.load(run / "evaluations.npz")
    assert list(evaluations["timesteps"]) == [200]
    saved = yaml.load((run / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert saved["n_queries"] == 20 and saved["teacher_kwargs"] == {"beta": np.inf}

    model = zoo.ALGORITHMS["sobirl"].load(run / "Pendulum-v1.zip", buffer_size=1)
    assert type(model).__name__ == "SoBiRL" and 0 < len(model.preferences) <= 20

    train.main(  # continue training (rl_zoo3 passes the YAML hyperparameters to load)
        ["--algo", "sobirl", "--env", "Pendulum-v1", "-n", "50", "-f", str(tmp_path), "-i", str(run / "Pendulum-v1.zip"),
         "--eval-freq", "-1", "--verbose", "0", *_small_pendulum_params()]
    )  # fmt: skip
    resumed = zoo.ALGORITHMS["sobirl"].load(tmp_path / "sobirl" / "Pendulum-v1_2" / "Pendulum-v1.zip", buffer_size=1)
    assert isinstance(resumed.feedback, SyntheticTeacher) and resumed.num_timesteps == 50  # rl_zoo3 restarts the count
    assert len(resumed.preferences) >= len(model.preferences)  # the labels of the first run were kept

    out = enjoy.main(["--algo", "sobirl", "--env", "Pendulum-v1", "-f", str(tmp_path), "-n", "200", "--record", "-o", str(tmp_path / "video")])
    assert len(out["episode_returns"]) == 1 and out["episode_returns"][0] < 0  # Pendulum's TRUE reward is <= 0
    assert list((tmp_path / "video").glob("*.mp4"))


def test_demonstrations_feedback_through_the_cli(tmp_path):
    import gymnasium as gym

    demos = Demonstrations.collect(lambda obs: np.zeros(1, np.float32), gym.make("Pendulum-v1"), n_episodes=1, seed=0)
    demos.save(tmp_path / "demos.npz")
    train.main(
        ["--algo", "drlhf", "--env", "Pendulum-v1", "-n", "150", "--seed", "0", "-f", str(tmp_path), "--eval-freq", "-1",
         "--verbose", "0", "--feedback", "demonstrations",
         *_small_pendulum_params(f"demonstrations_kwargs:dict(path='{tmp_path / 'demos.npz'}')")]
    )  # fmt: skip
    model = zoo.ALGORITHMS["drlhf"].load(tmp_path / "drlhf" / "Pendulum-v1_1" / "Pendulum-v1.zip", buffer_size=1)
    assert not model.uses_preferences and model._n_outer >= 1


def test_optimize_with_sqlite_storage(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'tuning.db'}"
    train.main(
        ["--algo", "sobirl", "--env", "Pendulum-v1", "-n", "150", "-f", str(tmp_path), "-optimize", "--n-trials", "2",
         "--n-startup-trials", "1", "--n-evaluations", "1", "--eval-episodes", "1", "--sampler", "random",
         "--pruner", "none", "--no-optim-plots", "--storage", storage, "--study-name", "smoke", "--verbose", "0",
         *_small_pendulum_params("learning_starts:140")]
    )  # fmt: skip
    trials = optuna.load_study(study_name="smoke", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:  # our sampler: SAC's search space plus the outer level
        assert {"reward_lr", "reward_steps", "outer_freq", "hypergrad_coef", "learning_rate"} <= set(trial.params)
        assert np.isfinite(trial.value)


def test_same_seed_same_agent(tmp_path):
    """The reward model is built before the agent seeds itself: it must be seeded too."""

    def reward_weights(folder):
        manager = zoo.experiment_manager("sobirl", "Pendulum-v1", folder, seed=3, hyperparams={"buffer_size": 64})
        with contextlib.redirect_stdout(io.StringIO()):
            model, _ = manager.setup_experiment()
        model.env.close()
        return [p.detach().clone() for p in model.reward_model.parameters()]

    first, second = reward_weights(tmp_path / "a"), reward_weights(tmp_path / "b")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, second))


def test_iqm_with_confidence_interval():
    from agents import bench_zoo

    scores = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]  # IQM ignores the outlier: mean of 2..5
    iqm, lo, hi = bench_zoo.iqm_with_ci(scores, reps=200)
    assert iqm == pytest.approx(3.5) and lo <= iqm <= hi and hi < 50


def test_benchmark_end_to_end_and_resume(tmp_path, capsys):
    """A tiny suite (SoBiRL and SAC, one seed, 60 steps) in a process pool, then a resumed rerun."""
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(
        ["--envs", "Pendulum-v1", "--algos", "sobirl,sac", "--seeds", "1", "--steps", "60", "--queries", "4",
         "--evaluations", "1", "--eval-episodes", "1", "--backend", "processes", "--workers", "1", "--out", str(tmp_path),
         "-params", "learning_starts:20", "outer_freq:20", "segment_length:5", "reward_steps:2", "batch_size:16"]
    )  # fmt: skip
    text = bench_zoo.run_mujoco(args)
    records = sorted((tmp_path / "zoo_runs" / "mujoco" / "Pendulum-v1").glob("*.json"))
    assert [p.name.split("_")[0] for p in records] == ["random", "sac", "sobirl"]
    sobirl = json.loads(records[-1].read_text())
    assert sobirl["env_steps"] == 60 and sobirl["labels"] > 0 and sobirl["curve_steps"] == [60]
    assert "| sobirl | 1 |" in text and "| sac | 1 |" in text and (tmp_path / "curves_mujoco_Pendulum-v1.png").is_file()
    assert (tmp_path / "results.md").read_text().count("## mujoco") == 1 and "Unfinished runs" not in text
    capsys.readouterr()
    bench_zoo.run_mujoco(args)
    assert "3 of 3 runs already done; running 0" in capsys.readouterr().out


def test_benchmark_plan_names_absorbing_states_for_bilevel_runs():
    """Bilevel records made before absorbing states existed must not be reused: the setting is
    part of their identity (a user's value wins); SAC and random runs keep theirs."""
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    plan = lambda *extra: {s.algo: s for s in bench_zoo.plan("mujoco", parser.parse_args(["--seeds", "1", "--algos", "sobirl,sac", *extra]))}  # noqa: E731
    specs = plan()
    assert dict(specs["sobirl"].hyperparams) == {"absorbing_states": "true"}
    assert specs["sobirl"].overrides()["absorbing_states"] is True
    assert specs["sac"].hyperparams == specs["random"].hyperparams == ()
    assert plan("-params", "absorbing_states:False")["sobirl"].overrides()["absorbing_states"] is False
    mixed = plan("-params", "batch_size:16")
    assert dict(mixed["sobirl"].hyperparams) == {"absorbing_states": "true", "batch_size": "16"}
    assert dict(mixed["sac"].hyperparams) == {"batch_size": "16"}


def test_only_seeds_picks_and_orders_the_runs():
    """``--only-seeds 2,0`` runs the random baseline, then seed 2, then seed 0; bad lists fail
    before anything runs, naming the flag."""
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(["--seeds", "3", "--algos", "sobirl,sac", "--only-seeds", "2,0"])
    specs = bench_zoo.plan("mujoco", args)
    picked = bench_zoo.selected(specs, args.only_seeds, args.seeds)
    assert [(s.algo, s.seed) for s in picked] == [("random", 0), ("sobirl", 2), ("sac", 2), ("sobirl", 0), ("sac", 0)]
    assert bench_zoo.selected(specs, None, 3) == specs
    for bad in ("3", "1,1", "-1", "one", ","):
        with pytest.raises(ValueError, match="--only-seeds"):
            bench_zoo.selected(specs, bad, 3)


SMALL_MSOBIRL = {"gradient_steps": "1", "rollout_batch_size": "20", "model_train_freq": "10", "model_rollout_freq": "10",
                 "rollout_schedule": "[0, 10, 1, 2]", "dynamics_kwargs": '{"hidden": [16], "n_members": 2, "n_elites": 1}',
                 "model_fit_kwargs": '{"max_epochs": 2}', "branch_steps": "1"}  # JSON values, as RunSpec stores them


def _kill_at_step_50(spec, folder, monkeypatch):
    """Run ``spec`` until it dies at step 50 (after the checkpoint at 40 of a 3-evaluation, 60-step run)."""
    from stable_baselines3.common.callbacks import BaseCallback

    import agents.zoo
    from agents import bench_zoo

    class Kill(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 50:
                raise RuntimeError("killed")
            return True

    real = agents.zoo.experiment_manager

    def dying(*args, **kwargs):
        manager = real(*args, **kwargs)
        learn = manager.learn

        def learn_and_die(model):
            manager.callbacks.append(Kill())
            return learn(model)

        manager.learn = learn_and_die
        return manager

    with monkeypatch.context() as patch:
        patch.setattr(agents.zoo, "experiment_manager", dying)
        with pytest.raises(RuntimeError, match="killed"):
            bench_zoo._train_record(spec, folder)


def test_a_checkpoint_made_with_another_zoo_config_is_set_aside(tmp_path, monkeypatch):
    from agents import bench_zoo

    spec = bench_zoo.RunSpec(suite="mujoco", env_id="Pendulum-v1", algo="sac", seed=0, steps=60, queries=0, evaluations=3,
                             eval_episodes=1, hyperparams=(("learning_starts", "10"), ("batch_size", "8")))
    folder = tmp_path / spec.name()
    _kill_at_step_50(spec, folder, monkeypatch)
    real = bench_zoo.zoo_config
    monkeypatch.setattr(bench_zoo, "zoo_config", lambda s: {**real(s), "gamma": "0.5"})  # the YAML was edited
    record = bench_zoo._train_record(spec, folder)
    assert record["resumed"] == 0 and record["curve_steps"] == [20, 40, 60] and record["config"]["gamma"] == "0.5"
    [stale] = folder.glob("checkpoints.stale-*")
    assert list(stale.iterdir())  # kept, not deleted


def test_records_made_with_another_zoo_config_are_rerun(tmp_path, monkeypatch, capsys):
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(["--envs", "Pendulum-v1", "--algos", "sobirl,sac", "--seeds", "1", "--backend", "processes", "--out", str(tmp_path)])
    random_spec, sac, sobirl = specs = bench_zoo.plan("mujoco", args)
    for spec, config in ((random_spec, None), (sac, bench_zoo.zoo_config(sac)), (sobirl, {**bench_zoo.zoo_config(sobirl), "n_queries": "7"})):
        spec.record_path(tmp_path).parent.mkdir(parents=True, exist_ok=True)
        spec.record_path(tmp_path).write_text(json.dumps({"final_return": 1.0, **({"config": config} if config else {})}))
    ran = []
    monkeypatch.setattr(bench_zoo, "_execute_processes", lambda todo, a, root: ((s, ran.append(s) or {"final_return": 2.0}) for s in todo))
    bench_zoo.execute(specs, args)
    assert ran == [sobirl]  # the record without a config predates them and is kept
    assert "n_queries" in capsys.readouterr().out
    assert json.loads(sobirl.record_path(tmp_path).read_text())["final_return"] == 2.0
    [stale] = sobirl.record_path(tmp_path).parent.glob(f"{sobirl.name()}.json.stale-*")
    assert json.loads(stale.read_text())["config"]["n_queries"] == "7"


@pytest.mark.parametrize("algo", ["sobirl", "msobirl"])
def test_benchmark_run_killed_midway_continues_from_its_checkpoint(tmp_path, monkeypatch, algo):
    """A run that dies after its second evaluation resumes there: one curve, the full budget."""
    from agents import bench_zoo
    from agents.checkpoint import list_checkpoints, load_checkpoint

    small = {"learning_starts": "10", "outer_freq": "10", "segment_length": "5", "reward_steps": "1", "batch_size": "8",
             **(SMALL_MSOBIRL if algo == "msobirl" else {})}
    spec = bench_zoo.RunSpec(suite="mujoco", env_id="Pendulum-v1", algo=algo, seed=0, steps=60, queries=4, evaluations=3,
                             eval_episodes=1, hyperparams=tuple(small.items()))
    folder = tmp_path / spec.name()
    _kill_at_step_50(spec, folder, monkeypatch)
    [saved] = list_checkpoints(folder / "checkpoints")
    assert load_checkpoint(saved).num_timesteps == 40  # written right after the evaluation at step 40

    record = bench_zoo._train_record(spec, folder)
    assert record["resumed"] == 1 and record["env_steps"] == 60 and record["labels"] > 0
    assert record["curve_steps"] == [20, 40, 60] and len(record["curve_returns"]) == 3
    assert record["final_return"] == record["curve_returns"][-1] and record["train_time_s"] > 0
    assert not (folder / "checkpoints").exists()  # removed once the run is complete


def test_report_only_lists_unfinished_runs_from_their_checkpoints(tmp_path, monkeypatch, capsys):
    """``--report-only`` runs nothing; a killed run appears with its checkpointed evaluations."""
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(
        ["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "1", "--steps", "60", "--evaluations", "3",
         "--eval-episodes", "1", "--out", str(tmp_path), "--report-only", "-params", "learning_starts:10"]
    )  # fmt: skip
    random_spec, spec = bench_zoo.plan("mujoco", args)
    _kill_at_step_50(spec, tmp_path / "zoo_logs" / "mujoco" / "Pendulum-v1" / spec.name(), monkeypatch)
    text = bench_zoo.run_mujoco(args)
    assert not (tmp_path / "zoo_runs").exists()  # nothing was run
    assert "### Unfinished runs" in text
    [sac_line] = [line for line in text.splitlines() if line.startswith("- Pendulum-v1 sac seed 0")]
    assert "at step 20;" in sac_line and sac_line.endswith("at step 40")
    assert f"- Pendulum-v1 random seed 0 (`{random_spec.name()}`): no checkpoint" in text
    assert "No finished training run yet." in text and "| algorithm |" not in text


def test_report_only_lists_a_run_without_checkpoints_from_its_log_folder(tmp_path):
    """A run under ``--no-checkpoints`` shows the evaluations rl_zoo3 logged so far; an unreadable
    evaluations.npz (being rewritten) falls back to "no checkpoint" instead of failing the report."""
    import argparse

    from agents import bench_zoo

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "1", "--out", str(tmp_path), "--report-only"])
    _, spec = bench_zoo.plan("mujoco", args)
    attempt = spec.log_folder(tmp_path / "zoo_logs") / "sac" / "Pendulum-v1_1"
    attempt.mkdir(parents=True)
    np.savez(attempt / "evaluations.npz", timesteps=np.array([2000, 4000]), results=np.array([[-1200.0, -1000.0], [-300.0, -100.0]]))
    [line] = [x for x in bench_zoo.unfinished([spec], tmp_path) if x.startswith("- Pendulum-v1 sac")]
    assert line.endswith(": -1100.0 at step 2000; -200.0 at step 4000 (no checkpoint: its log folder's evaluations.npz)")
    (attempt / "evaluations.npz").write_bytes(b"PK\x03\x04 truncated")
    [line] = [x for x in bench_zoo.unfinished([spec], tmp_path) if x.startswith("- Pendulum-v1 sac")]
    assert line.endswith(": no checkpoint")


def test_report_only_keeps_the_committed_tables_when_run_records_are_missing(tmp_path):
    """A checkout without the records a report was made from gets an error, not emptied tables."""
    import argparse

    from agents import bench_zoo
    from agents.reports import RECORDS_PREFIX, ReportWouldDropRuns

    parser = argparse.ArgumentParser()
    bench_zoo.add_mujoco_arguments(parser)
    args = parser.parse_args(["--envs", "Pendulum-v1", "--algos", "sac", "--seeds", "1", "--out", str(tmp_path), "--report-only"])
    random_spec, _ = bench_zoo.plan("mujoco", args)
    record = random_spec.record_path(tmp_path)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({**asdict(random_spec), "hyperparams": [], "final_return": -1234.5}))
    assert "-1234.5" in bench_zoo.run_mujoco(args)
    report = tmp_path / "results_mujoco.md"
    made = report.read_text()
    assert f"{RECORDS_PREFIX} {record.relative_to(tmp_path).as_posix()} -->" in made
    record.unlink()
    with pytest.raises(ReportWouldDropRuns, match=record.name):
        bench_zoo.run_mujoco(args)
    assert report.read_text() == made


def test_a_run_of_part_of_a_suite_keeps_the_wider_report_and_its_figures(tmp_path, monkeypatch):
    """Running a subset (here one env of a two-env report) saves its records and leaves the report,
    which it would shrink, and the learning-curve figures as they were, with a warning instead of a
    traceback after hours of training; ``--report-only`` with that subset still refuses."""
    import argparse

    from agents import bench_zoo
    from agents.reports import ReportKept, ReportWouldDropRuns

    def parse(envs, *extra):
        parser = argparse.ArgumentParser()
        bench_zoo.add_mujoco_arguments(parser)
        return parser.parse_args(["--envs", envs, "--algos", "sac", "--seeds", "1", "--out", str(tmp_path), *extra])

    wide = parse("Pendulum-v1,Hopper-v5", "--report-only")
    for spec in bench_zoo.plan("mujoco", wide):
        if spec.algo == bench_zoo.RANDOM:
            record = spec.record_path(tmp_path)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({**asdict(spec), "hyperparams": [], "final_return": -1234.5}))
    bench_zoo.run_mujoco(wide)
    report, png = tmp_path / "results_mujoco.md", tmp_path / "curves_mujoco_Pendulum-v1.png"
    made, figure = report.read_text(), png.read_bytes()
    ran = []
    monkeypatch.setattr(bench_zoo, "execute", lambda todo, args: ran.extend(todo))
    with pytest.warns(ReportKept, match=r"not among this command's runs: zoo_runs/mujoco/Hopper-v5/random"):
        text = bench_zoo.run_mujoco(parse("Pendulum-v1"))
    assert [spec.env_id for spec in ran] == ["Pendulum-v1", "Pendulum-v1"] and "-1234.5" in text
    assert report.read_text() == made and png.read_bytes() == figure
    with pytest.raises(ReportWouldDropRuns, match="not among this command's runs"):
        bench_zoo.run_mujoco(parse("Pendulum-v1", "--report-only"))
    assert report.read_text() == made


def test_benchmark_run_stopped_by_keyboard_interrupt_is_not_a_finished_run(tmp_path, monkeypatch):
    """rl_zoo3's learn swallows KeyboardInterrupt; the suite must not record the partial run."""
    from agents import bench_zoo

    spec = bench_zoo.RunSpec(suite="mujoco", env_id="Pendulum-v1", algo="sac", seed=0, steps=40, queries=0,
                             evaluations=2, eval_episodes=1, hyperparams=(("learning_starts", "10"),))

    from stable_baselines3 import SAC

    learn = SAC.learn

    def interrupted(self, total_timesteps, callback=None, **kwargs):
        from stable_baselines3.common.callbacks import BaseCallback

        class Interrupt(BaseCallback):
            def _on_step(self) -> bool:
                if self.num_timesteps >= 30:
                    raise KeyboardInterrupt
                return True

        return learn(self, total_timesteps, callback=[*callback, Interrupt()], **kwargs)

    monkeypatch.setattr(SAC, "learn", interrupted)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 30 of 40; rerun to continue"):
        bench_zoo._train_record(spec, tmp_path / spec.name())


def test_suite_table_gives_env_steps_to_a_normalised_09_per_seed():
    from agents import bench_zoo

    def rec(algo, seed, returns):
        return dict(env_id="E", algo=algo, seed=seed, final_return=returns[-1], curve_steps=[10, 20, 30][: len(returns)],
                    curve_returns=returns, train_time_s=1.0, env_steps=30, labels=5 if algo != "sac" else 0)

    # R_random = 0 and R_SAC = 100 (mean final return of SAC): the target is a return of 90
    records = [dict(env_id="E", algo="random", seed=0, final_return=0.0), rec("sac", 0, [50, 80, 100]), rec("sac", 1, [95, 90, 100]),
               rec("sobirl", 0, [10, 91, 95]), rec("sobirl", 1, [10, 20, 30])]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in bench_zoo.env_table(records, "E").splitlines() if line.startswith("| ")}
    assert rows["| sac"][4] == "30, 10" and rows["| sobirl"][4] == "20, never"


def test_policy_entropy_of_discrete_agents_for_the_run_record():
    """The record's ``final_policy_entropy``: about log(n_actions) for a fresh discrete policy, near 0
    for one collapsed onto an action, ``None`` for continuous actions and an empty buffer."""
    import torch as th

    from agents.bench_zoo import policy_entropy
    from agents.discrete_sac import DiscreteSAC
    from stable_baselines3 import SAC

    model = DiscreteSAC("MlpPolicy", "CartPole-v1", learning_starts=1000, policy_kwargs=dict(net_arch=[16]), seed=0)
    assert policy_entropy(model) is None  # nothing stored yet
    model.learn(120)
    fresh = policy_entropy(model)
    assert abs(fresh - np.log(2)) < 0.05
    with th.no_grad():  # collapse it: a huge bias on action 0
        model.actor.logits_net[-1].bias.copy_(th.tensor([50.0, -50.0]))
    assert policy_entropy(model) < 1e-6
    assert policy_entropy(SAC("MlpPolicy", "Pendulum-v1", learning_starts=10).learn(20)) is None
