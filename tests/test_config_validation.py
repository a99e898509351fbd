"""Hyperparameter files: every error names the key (and the file and line), before training starts."""

from __future__ import annotations

import contextlib
import io
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import requires

requires("rl_zoo3")

from agents import config, train, zoo  # noqa: E402
from agents.config import ConfigError, load_config, validate_config_file, validate_hyperparams  # noqa: E402

SHIPPED = [(algo, path) for algo in ("sobirl", "drlhf", "sac") for path in [zoo.default_config(algo)]]
PENDULUM = {"n_timesteps": 100, "policy": "MlpPolicy"}


def write(tmp_path: Path, text: str, name: str = "conf.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(err: ConfigError) -> str:
    return "\n".join(message for _, message in err.problems)


# ------------------------------------------------------------------ shipped files
@pytest.mark.parametrize("algo,path", SHIPPED, ids=[algo for algo, _ in SHIPPED])
def test_every_shipped_entry_validates(algo, path):
    parsed = validate_config_file(path, algo)
    assert parsed.entries == yaml.safe_load(path.read_text())  # same data as rl_zoo3's safe_load
    assert len(parsed.entries) >= 10
    for entry, values in parsed.entries.items():
        assert set(values) <= set(parsed.lines[entry]), entry  # every key has a line


def test_shipped_bilevel_entries_also_validate_as_constructor_arguments():
    """What rl_zoo3 passes to the constructor (zoo keys removed) passes the constructor-stage check."""
    from gymnasium import spaces

    for algo in ("sobirl", "drlhf"):
        for entry, values in load_config(zoo.default_config(algo)).entries.items():
            kwargs = {k: v for k, v in values.items() if k not in config.ZOO_KEYS and k != "policy"}
            space = spaces.Discrete(4) if values["policy"] == "CnnPolicy" else spaces.Box(-1, 1, (1,))
            validate_hyperparams(algo, kwargs, stage="constructor", action_space=space)


def test_command_line_checker(tmp_path, capsys):
    assert config.main([str(zoo.default_config("sobirl")), "--algo", "sobirl"]) == 0
    assert "entries valid for --algo sobirl" in capsys.readouterr().out
    bad = write(tmp_path, "Pendulum-v1:\n  n_timesteps: 10\n  policy: MlpPolicy\n  n_querys: 3\n")
    assert config.main([str(bad), "--algo", "sobirl"]) == 1
    assert "n_querys" in capsys.readouterr().err


# ------------------------------------------------------------------ malformed files
@pytest.mark.parametrize(
    "text, match",
    [
        ("Pendulum-v1:\n  n_timesteps: 10\n   policy: MlpPolicy\n", r"malformed YAML in .*conf\.yml, line 3, column \d+: mapping values are not allowed"),
        ("Pendulum-v1:\n  policy: [MlpPolicy\n  n_timesteps: 10\n", r"malformed YAML in .*conf\.yml, line \d+, column \d+"),
        ("Pendulum-v1:\n\tpolicy: MlpPolicy\n", r"malformed YAML in .*conf\.yml, line 2"),
        ("Pendulum-v1:\n  n_queries: 3\n  policy: MlpPolicy\n  n_queries: 5\n", r"conf\.yml, line 4: duplicate key 'n_queries' \(first set on line 2\)"),
        ("", r"conf\.yml is empty"),
        ("- Pendulum-v1\n", r"conf\.yml: the top level must map environment ids"),
        ("Pendulum-v1: 3\n", r"conf\.yml, line 1: entry 'Pendulum-v1' must be a mapping of hyperparameters, got int 3"),
    ],
    ids=["indentation", "unclosed-list", "tab", "duplicate", "empty", "list", "entry-not-mapping"],
)
def test_malformed_files_name_the_file_and_line(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, text))
    assert info.value.path.endswith("conf.yml")


def test_merge_keys_are_not_duplicates_and_lines_follow_overrides(tmp_path):
    path = write(
        tmp_path,
        """
        base: &base
          n_timesteps: 100
          policy: MlpPolicy
          n_queries: 3
        Pendulum-v1:
          <<: *base
          n_queries: 5
        """,
    )
    parsed = validate_config_file(path, "sobirl")
    assert parsed.entries["Pendulum-v1"]["n_queries"] == 5
    assert parsed.lines["Pendulum-v1"] == {"n_timesteps": 2, "policy": 3, "n_queries": 7}


# ------------------------------------------------------------------ keys and types
def check(algo: str, **hyperparams) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_hyperparams(algo, {**PENDULUM, **hyperparams})
    return info.value


def test_unknown_key_is_named_with_a_suggestion():
    err = check("sobirl", n_querys=10)
    assert err.keys == ["n_querys"]
    assert "unknown hyperparameter 'n_querys' for --algo sobirl (did you mean 'n_queries'?)" in str(err)
    assert "did you mean 'learning_rate'" in str(check("sac", learning_rat=1e-3))
    assert "did you mean 'outer_freq'" in str(check("drlhf", outer_frequency=10))


def test_bilevel_key_given_to_sac_says_who_accepts_it():
    assert "it is a hyperparameter of drlhf, msobirl, sobirl" in str(check("sac", n_queries=10))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("n_queries", "many", "'n_queries' must be an integer, got str 'many'"),
        ("n_queries", None, "'n_queries' must be an integer, got NoneType None"),
        ("n_queries", True, "'n_queries' must be an integer, got bool True"),
        ("segment_length", 2.5, "'segment_length' must be an integer, got float 2.5"),
        ("estimator", 3, "'estimator' must be a string or null, got int 3"),
        ("query_schedule", 4, "'query_schedule' must be a string or a mapping or an object, got int 4"),
        ("successor_net_arch", "big", "'successor_net_arch' must be a list of integers, got str 'big'"),
        ("reward_lr", "1e-3", "write 1.0e-3 or !!float 1e-3"),
        ("label_smoothing", [0.1], "'label_smoothing' must be a number, got list [0.1]"),
        ("buffer_size", 1e6, "'buffer_size' must be an int, got float 1000000.0 (write 1000000"),
        ("gamma", "0.99", "'gamma' must be a number, got str '0.99'"),
        ("use_sde", "yes", "'use_sde' must be a bool (true/false), got str 'yes'"),
        ("ent_coef", [1], "'ent_coef' must be a string or a number, got list [1]"),
        ("teacher_kwargs", [1], "'teacher_kwargs' must be a mapping or null"),
        ("n_timesteps", "long", "'n_timesteps' must be a number, got str 'long'"),
        ("policy", 3, "'policy' must be a string, got int 3"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(key, value, expected):
    err = check("sobirl", **{key: value})
    assert err.keys == [key]
    assert expected in str(err)


def test_integral_floats_are_fine_where_the_agent_casts_with_int():
    validate_hyperparams("sobirl", {**PENDULUM, "n_queries": 500.0, "hypergrad_warmup": 1e5, "n_timesteps": 2e4})


def test_every_problem_is_reported_at_once():
    err = check("sobirl", n_querys=10, n_queries="many", segment_length=2.5, estimator=3)
    assert err.keys == ["n_querys", "n_queries", "segment_length", "estimator"]


def test_keys_set_by_the_command_line_are_refused():
    err = check("sobirl", seed=3)
    assert "'seed' is set by rl_zoo3's command line (--seed)" in str(err)
    validate_hyperparams("sobirl", {"seed": 3, "verbose": 0}, stage="constructor")  # what rl_zoo3 passes


def test_required_keys():
    with pytest.raises(ConfigError, match="'n_timesteps' is missing"):
        validate_hyperparams("sobirl", {"policy": "MlpPolicy"}, require=("policy", "n_timesteps"))


# ------------------------------------------------------------------ values: the agents' own checks
@pytest.mark.parametrize(
    "algo, kwargs, match",
    [
        ("sobirl", {"n_queries": 0}, "n_queries must be a positive integer, got 0"),
        ("sobirl", {"label_smoothing": 1.5}, r"label_smoothing must lie in \[0, 1\)"),
        ("sobirl", {"estimator": "sucessor"}, "estimator must be one of"),
        ("sobirl", {"query_schedule": "front"}, "query_schedule must be 'budgeted', 'front_loaded'"),
        ("sobirl", {"query_schedule": {"decay": "fast"}}, "query_schedule {'decay': 'fast'}"),
        ("sobirl", {"storm_mu": 0.0}, r"storm_mu must lie in \(0, 1\]"),
        ("drlhf", {"estimator": "successor"}, "DRLHF has no hypergradient estimator"),
        ("sobirl", {"feedback": "labels"}, "'feedback' must be one of"),
        ("sobirl", {"feedback": "demonstrations", "estimator": "branch", "demonstrations_kwargs": {"minari": "d"}},
         "estimator='branch' needs preference feedback"),
    ],
)
def test_values_go_through_the_agents_checks(algo, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        validate_hyperparams(algo, {**PENDULUM, **kwargs})


def test_nested_settings_are_checked(tmp_path):
    assert "unknown key 'betta' in 'teacher_kwargs' (did you mean 'beta'?)" in str(check("sobirl", teacher_kwargs={"betta": 1.0}))
    assert "'teacher_kwargs': eps_mistake" in str(check("sobirl", teacher_kwargs={"eps_mistake": 2.0}))
    validate_hyperparams("sobirl", {**PENDULUM, "teacher_kwargs": {"beta": ".inf", "skip_threshold": "0.5"}})
    assert "unknown key 'hiden' in 'reward_model_kwargs' (did you mean 'hidden'?)" in str(check("sobirl", reward_model_kwargs={"hiden": [8]}))
    assert "'reward_model_kwargs.hidden' must be a list of integers" in str(check("sobirl", reward_model_kwargs={"hidden": "wide"}))
    err = check("sobirl", feedback="demonstrations")
    assert err.keys == ["demonstrations_kwargs"] and "exactly one source" in str(err)
    assert "no such file" in str(check("sobirl", feedback="demonstrations", demonstrations_kwargs={"path": str(tmp_path / "nope.npz")}))
    assert "unknown key 'episodes'" in str(check("sobirl", demonstrations_kwargs={"path": "a.npz", "episodes": 3}))


def test_model_based_keys_are_known_and_checked():
    """M-SoBiRL's own keyword groups (agents.msobirl) are picked up from the class."""
    algorithm = zoo.ZooAlgorithm("msobirl", box="agents.msobirl:MSoBiRL", bilevel=True)  # not registered
    schema = config.hyperparameter_schema(algorithm.select(__import__("gymnasium").spaces.Box(-1, 1, (1,))))
    assert {"real_ratio", "model_train_freq", "n_queries", "buffer_size"} <= set(schema)
    validate_hyperparams(algorithm, {**PENDULUM, "real_ratio": 0.5, "estimator": "model", "branch_steps": None})
    with pytest.raises(ConfigError, match=r"real_ratio must lie in \(0, 1\]"):
        validate_hyperparams(algorithm, {**PENDULUM, "real_ratio": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'model_retain'"):
        validate_hyperparams(algorithm, {**PENDULUM, "model_retian": 2})


# ------------------------------------------------------------------ through rl_zoo3, before any env is built
def test_experiment_manager_reports_file_and_line_before_creating_anything(tmp_path):
    conf = write(tmp_path, "Pendulum-v1:\n  n_timesteps: 100\n  policy: MlpPolicy\n  segment_length: 2.5\n")
    manager = zoo.experiment_manager("sobirl", "Pendulum-v1", tmp_path / "logs", config=conf)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(ConfigError) as info:
        manager.setup_experiment()
    assert f"{conf}, line 4 (entry 'Pendulum-v1'): 'segment_length' must be an integer, got float 2.5" in str(info.value)
    assert not (tmp_path / "logs").exists()  # no log folder, no env, no model


def test_experiment_manager_names_command_line_overrides(tmp_path):
    manager = zoo.experiment_manager("sobirl", "Pendulum-v1", tmp_path / "logs", hyperparams={"n_querys": 3})
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(ConfigError, match=r"-params: unknown hyperparameter 'n_querys'.*'n_queries'"):
        manager.setup_experiment()


def test_train_cli_rejects_bad_files_before_training(tmp_path):
    malformed = write(tmp_path, "Pendulum-v1:\n  n_timesteps: 100\n   policy: MlpPolicy\n", "malformed.yml")
    args = ["--algo", "sobirl", "--env", "Pendulum-v1", "-f", str(tmp_path / "logs"), "--verbose", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(ConfigError, match=r"malformed YAML in .*malformed\.yml, line 3"):
            train.main([*args, "--conf-file", str(malformed)])
        with pytest.raises(ConfigError, match=r"-params: 'n_queries' must be an integer, got str 'many'"):
            train.main([*args, "-params", "n_queries:'many'"])
    assert not (tmp_path / "logs").exists()


def test_constructor_arguments_are_checked_before_the_agent_is_built():
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("Pendulum-v1")
    try:
        with pytest.raises(ConfigError, match="unknown hyperparameter 'n_querys'.*'n_queries'"):
            zoo.ALGORITHMS["sobirl"]("MlpPolicy", env, n_querys=3)
        with pytest.raises(ConfigError, match="'policy_kwargs' must be a mapping or null, got str"):
            zoo.ALGORITHMS["sac"]("MlpPolicy", env, policy_kwargs="dict(net_arch=[8])")  # rl_zoo3 evals it before
    finally:
        env.close()


def test_register_installs_the_check_once():
    from rl_zoo3.exp_manager import ExperimentManager

    zoo.register()
    zoo.register()
    hooked = ExperimentManager.read_hyperparameters
    assert hooked._validates_birl_configs
    assert not getattr(hooked.__wrapped__, "_validates_birl_configs", False)
