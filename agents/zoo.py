"""rl_zoo3 integration: our algorithms, YAML-friendly feedback settings and Optuna samplers.

Importing this module changes nothing; :func:`register` does (idempotently):

* it adds ``sobirl`` and ``drlhf`` to rl_zoo3's ``ALGOS`` table and replaces ``sac`` by a
  version that also accepts ``Discrete`` actions (SB3's SAC for ``Box``, unchanged;
  :class:`agents.discrete_sac.DiscreteSAC` for ``Discrete``, e.g. Atari).  Every rl_zoo3 module
  imports the same dict object (``exp_manager``, ``train``, ``enjoy``, ``record_video``,
  ``push_to_hub``, ``load_from_hub``), so it is updated in place; loaded modules holding another
  object under that name are patched too;
* it adds one Optuna sampler per algorithm to ``HYPERPARAMS_SAMPLER`` (and the matching
  converter to ``HYPERPARAMS_CONVERTER``, used by ``--trial-id``).

Each table entry is a :class:`ZooAlgorithm`: called like an SB3 class by rl_zoo3's
``ExperimentManager``, it picks the ``Box`` or ``Discrete`` class from the env's action space and,
for bilevel algorithms, turns the YAML-friendly hyperparameters below into objects.

Bilevel hyperparameter keys (besides every constructor argument of :class:`agents.sobirl.SoBiRL`,
e.g. ``n_queries``, ``query_schedule``, ``segment_length``, ``estimator``, ``outer_freq``):

``feedback``
    ``"preferences"`` (default: a :class:`birl.feedback.SyntheticTeacher` on the TRUE reward) or
    ``"demonstrations"`` (ML-IRL) or ``"joint"`` (both: the AIHF joint loss, weighted by the
    ``pref_weight`` hyperparameter); an already built feedback object passes through.
``teacher_kwargs``
    :class:`~birl.feedback.SyntheticTeacher` arguments (``beta``, ``eps_mistake``, ...); ``seed``
    defaults to the run's seed.  Read only for ``preferences``.
``demonstrations_kwargs``
    where expert trajectories come from, read only for ``demonstrations``: ``{path: demos.npz}``
    (:meth:`birl.feedback.Demonstrations.save`), ``{minari: dataset_id}`` or
    ``{expert: model.zip, expert_algo: sac, n_episodes: 10, deterministic: true}`` (rolls a
    trained agent out in a fresh copy of the env; vector observations only).
``reward_model_kwargs``
    architecture of the reward model: arguments of :meth:`birl.reward_models.CnnReward.from_spaces`
    for image observations, of :meth:`birl.reward_models.MlpReward.from_spaces` otherwise.

Validation: every hyperparameter set of our algorithms is checked by
:func:`agents.config.validate_hyperparams` before anything is built (unknown keys with a
suggestion, wrong types, the agents' own value checks), with the file and line of each key when
rl_zoo3 read it from a YAML file (:func:`register` hooks rl_zoo3's ``read_hyperparameters``).

Extension point: a new algorithm (e.g. ``msobirl``) is one :func:`add_algorithm` call, made
before :func:`register`::

    add_algorithm("msobirl", box="agents.msobirl:MSoBiRL", bilevel=True,
                  sampler=bilevel_sampler(hypergradient=True))
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from agents.config import ConfigError, check_experiment, load_config, validate_hyperparams

__all__ = [
    "ZooAlgorithm",
    "ALGORITHMS",
    "FEEDBACK_KINDS",
    "add_algorithm",
    "register",
    "make_feedback",
    "make_reward_model",
    "bilevel_kwargs",
    "bilevel_keys",
    "bilevel_sampler",
    "CONFIG_DIR",
    "default_config",
    "experiment_manager",
    "check_demonstrations_settings",
    "ConfigError",
    "validate_hyperparams",
]

#: This repository's rl-zoo style hyperparameter files, ``zoo_configs/<algo>.yml``.
def _config_dir() -> Path:
    """``zoo_configs/``: the installed package data, else this repository's folder."""
    try:
        from importlib.resources import files

        return Path(str(files("zoo_configs")))
    except (ImportError, TypeError):  # a source tree that is not installed
        return Path(__file__).resolve().parent.parent / "zoo_configs"


CONFIG_DIR = _config_dir()

FEEDBACK_KINDS = ("preferences", "demonstrations", "joint")
_FEEDBACK_KEYS = ("feedback", "teacher_kwargs", "demonstrations_kwargs", "reward_model_kwargs")
_DEMO_SOURCES = ("path", "minari", "expert")
_DEMO_OPTIONS = ("expert_algo", "n_episodes", "deterministic", "seed")

Sampler = Callable[..., Dict[str, Any]]


def _import(target: str) -> Any:
    """``"package.module:Name"`` -> the object (imported on first use)."""
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"target must look like 'package.module:Name', got {target!r}")
    return getattr(import_module(module), name)


# ------------------------------------------------------------------ feedback and reward model
def _check_mapping(value: Any, key: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"hyperparameter {key!r} must be a mapping (YAML dict), got {type(value).__name__}")
    return dict(value)


def check_demonstrations_settings(settings: Mapping[str, Any]) -> str:
    """Check ``demonstrations_kwargs`` (module docstring) and return its source key.

    Raises ``ValueError`` naming ``demonstrations_kwargs`` unless exactly one source among
    ``path``, ``minari`` and ``expert`` is given and every other key is a known option.
    """
    sources = [k for k in _DEMO_SOURCES if settings.get(k) is not None]
    if len(sources) != 1:
        raise ValueError(
            f"demonstrations_kwargs must name exactly one source among {_DEMO_SOURCES}, got {sorted(settings)}"
        )
    unknown = set(settings) - set(_DEMO_SOURCES) - set(_DEMO_OPTIONS)
    if unknown:
        raise ValueError(f"demonstrations_kwargs has unknown keys {sorted(unknown)}")
    return sources[0]


def _demonstrations(settings: Dict[str, Any], env: Any) -> Any:
    """Build :class:`birl.feedback.Demonstrations` from ``demonstrations_kwargs`` (module docstring)."""
    from birl.feedback import Demonstrations

    source = check_demonstrations_settings(settings)
    if source == "path":
        return Demonstrations.load(settings["path"])
    if source == "minari":
        return Demonstrations.from_minari(settings["minari"])
    return _expert_rollouts(settings, env)


def _expert_rollouts(settings: Dict[str, Any], env: Any) -> Any:
    """Roll a saved agent out in a fresh (unwrapped-by-the-zoo) copy of the training env."""
    from birl.feedback import Demonstrations
    from stable_baselines3.common.preprocessing import is_image_space

    if env is None:
        raise ValueError("demonstrations_kwargs.expert needs the training env (to make a copy to roll out in)")
    if is_image_space(env.observation_space):
        raise ValueError(
            "demonstrations_kwargs.expert rolls out in the raw env, which does not match image "
            "observations after the zoo's wrappers; save Demonstrations to an .npz and use 'path'"
        )
    spec = env.get_attr("spec")[0] if hasattr(env, "get_attr") else env.spec
    rollout_env = dataclasses.replace(spec, additional_wrappers=()).make()  # without the zoo's Monitor etc.
    algo = ALGORITHMS.get(settings.get("expert_algo", "sac"))
    if algo is None:
        raise ValueError(f"demonstrations_kwargs.expert_algo must be one of {sorted(ALGORITHMS)}, got {settings['expert_algo']!r}")
    expert = algo.load(settings["expert"], env=None, device="cpu", buffer_size=1)  # no replay memory needed
    try:
        return Demonstrations.collect(
            expert, rollout_env, int(settings.get("n_episodes", 10)), seed=settings.get("seed"),
            deterministic=bool(settings.get("deterministic", True)),
        )
    finally:
        rollout_env.close()


def _as_float(text: str, name: str) -> float:
    """``float`` of a string, also in YAML spelling (``.inf``)."""
    import yaml

    value = yaml.safe_load(text) if text.strip().startswith(".") else text
    try:
        return float(value)
    except ValueError as err:
        raise ValueError(f"{name} must be a number, got {text!r}") from err


def make_feedback(kind: Any, teacher_kwargs: Any = None, demonstrations_kwargs: Any = None, env: Any = None, seed: Optional[int] = None) -> Any:
    """The ``feedback=`` object of a bilevel agent from YAML-friendly settings.

    Args:
        kind: ``"preferences"``, ``"demonstrations"``, ``"joint"`` (a list of both) or an
            already built feedback object.
        teacher_kwargs: :class:`birl.feedback.SyntheticTeacher` arguments (``preferences``).
        demonstrations_kwargs: the expert data source (``demonstrations``, see module docstring).
        env: the training env (only for ``demonstrations_kwargs.expert``).
        seed: default seed of the teacher.
    """
    from birl.feedback import SyntheticTeacher

    if not isinstance(kind, str):
        return kind
    if kind == "preferences":
        settings = _check_mapping(teacher_kwargs, "teacher_kwargs")
        settings.setdefault("seed", seed)
        for key in ("beta", "skip_threshold"):  # "inf" or ".inf" from a command line
            if isinstance(settings.get(key), str):
                settings[key] = _as_float(settings[key], f"teacher_kwargs.{key}")
        try:
            return SyntheticTeacher(**settings)
        except TypeError as err:
            raise TypeError(f"teacher_kwargs: {err}") from err
    if kind == "demonstrations":
        return _demonstrations(_check_mapping(demonstrations_kwargs, "demonstrations_kwargs"), env)
    if kind == "joint":
        return [make_feedback(part, teacher_kwargs, demonstrations_kwargs, env=env, seed=seed)
                for part in ("demonstrations", "preferences")]
    raise ValueError(f"hyperparameter 'feedback' must be one of {FEEDBACK_KINDS}, got {kind!r}")


def agent_observation_space(env: Any) -> Any:
    """The observation space an SB3 agent sees for ``env`` (channel-last images get transposed)."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    space = env.observation_space
    if is_image_space(space) and not is_image_space_channels_first(space):
        return VecTransposeImage.transpose_space(space)
    return space


def make_reward_model(reward_model_kwargs: Any, observation_space: Any, action_space: Any) -> Any:
    """``CnnReward`` (image observations) or ``MlpReward`` built ``from_spaces`` with the given kwargs."""
    from birl.reward_models import CnnReward, MlpReward

    kwargs = _check_mapping(reward_model_kwargs, "reward_model_kwargs")
    cls = CnnReward if len(getattr(observation_space, "shape", ()) or ()) == 3 else MlpReward
    try:
        return cls.from_spaces(observation_space, action_space, **kwargs)
    except TypeError as err:
        raise TypeError(f"reward_model_kwargs for {cls.__name__}: {err}") from err


def bilevel_keys() -> frozenset:
    """Hyperparameter keys that only bilevel algorithms accept (constructor and YAML-friendly)."""
    from agents.sobirl import _BILEVEL_DEFAULTS

    return frozenset(_BILEVEL_DEFAULTS) | frozenset(_FEEDBACK_KEYS)


def bilevel_kwargs(hyperparams: Dict[str, Any], env: Any, seed: Optional[int] = None) -> Dict[str, Any]:
    """Replace the YAML-friendly keys (module docstring) by ``feedback`` / ``reward_model`` objects."""
    kwargs = dict(hyperparams)
    settings = {key: kwargs.pop(key, None) for key in _FEEDBACK_KEYS}
    kwargs["feedback"] = make_feedback(
        "preferences" if settings["feedback"] is None else settings["feedback"],
        settings["teacher_kwargs"], settings["demonstrations_kwargs"], env=env, seed=seed,
    )
    if settings["reward_model_kwargs"] is not None:
        if kwargs.get("reward_model") is not None:
            raise ValueError("give either 'reward_model' (an object) or 'reward_model_kwargs' (its architecture), not both")
        if seed is not None:  # the agent seeds itself later: make the reward model's init reproducible too
            from stable_baselines3.common.utils import set_random_seed

            set_random_seed(seed)
        kwargs["reward_model"] = make_reward_model(settings["reward_model_kwargs"], agent_observation_space(env), env.action_space)
    return kwargs


# ------------------------------------------------------------------ algorithm table
class ZooAlgorithm:
    """An rl_zoo3 ``ALGOS`` entry choosing the SB3 class from the env's action space.

    Called like an SB3 class (``algo(policy=..., env=..., **hyperparams)``) and loaded like one
    (``algo.load(path, env=None, **kwargs)``).

    Args:
        name: the ``--algo`` name.
        box: ``"module:Class"`` for ``Box`` action spaces (``None``: unsupported).
        discrete: ``"module:Class"`` for ``Discrete`` action spaces (``None``: unsupported).
        bilevel: whether the YAML feedback keys (module docstring) are turned into objects.
    """

    def __init__(self, name: str, box: Optional[str] = None, discrete: Optional[str] = None, bilevel: bool = False) -> None:
        if box is None and discrete is None:
            raise ValueError(f"algorithm {name!r}: give a class for box and/or discrete action spaces")
        self.name, self.box, self.discrete, self.bilevel = name, box, discrete, bilevel
        self.__name__ = self.__qualname__ = name

    def __repr__(self) -> str:
        return f"ZooAlgorithm({self.name!r}, box={self.box!r}, discrete={self.discrete!r}, bilevel={self.bilevel})"

    def select(self, action_space: Any) -> type:
        """The SB3 class for ``action_space``."""
        from gymnasium import spaces

        target = self.box if isinstance(action_space, spaces.Box) else self.discrete if isinstance(action_space, spaces.Discrete) else None
        if target is None:
            raise ValueError(f"algorithm {self.name!r} does not support the action space {action_space}")
        return _import(target)

    def __call__(self, policy: Any, env: Any, **hyperparams: Any) -> Any:
        validate_hyperparams(self, hyperparams, stage="constructor", source=f"{self.name} arguments", action_space=env.action_space)
        if self.bilevel:
            hyperparams = bilevel_kwargs(hyperparams, env, hyperparams.get("seed"))
        return self.select(env.action_space)(policy, env, **hyperparams)

    def load(self, path: Any, env: Any = None, **kwargs: Any) -> Any:
        """Load a saved agent with the class that matches its (saved, or ``env``'s) action space.

        For bilevel algorithms the YAML feedback keys may come along (rl_zoo3 passes the
        hyperparameters when training continues, ``-i``): ``feedback`` is rebuilt as an object,
        the reward model's architecture is the saved one.
        """
        if self.bilevel:
            settings = {key: kwargs.pop(key, None) for key in _FEEDBACK_KEYS}
            if settings["feedback"] is not None:
                kwargs["feedback"] = make_feedback(
                    settings["feedback"], settings["teacher_kwargs"], settings["demonstrations_kwargs"], env=env, seed=kwargs.get("seed")
                )
        if env is not None:
            action_space = env.action_space
        else:
            from agents.archive import read_saved_data

            # only the action space: not the parameters, nor an old archive's pickled preferences
            action_space = read_saved_data(path, ["action_space"], kwargs.get("custom_objects")).get("action_space")
            if action_space is None:
                raise ValueError(f"path: {path!r} does not record its action space; pass env= to load it")
        return self.select(action_space).load(path, env=env, **kwargs)


#: ``--algo`` name -> :class:`ZooAlgorithm` (filled below and by :func:`add_algorithm`).
ALGORITHMS: Dict[str, ZooAlgorithm] = {}
_SAMPLERS: Dict[str, Optional[Sampler]] = {}


def add_algorithm(
    name: str, box: Optional[str] = None, discrete: Optional[str] = None, bilevel: bool = True, sampler: Optional[Sampler] = None
) -> ZooAlgorithm:
    """Add (or replace) an algorithm of this library; :func:`register` then puts it into rl_zoo3.

    Args:
        name: the ``--algo`` name (also the default config ``zoo_configs/<name>.yml``).
        box, discrete: ``"module:Class"`` per action-space type (imported when first used).
        bilevel: turn the YAML feedback keys into objects (see module docstring).
        sampler: Optuna sampler ``(trial, n_actions, n_envs, additional_args) -> hyperparams``
            (``None``: keep rl_zoo3's sampler of that name, if any).
    """
    algorithm = ZooAlgorithm(name, box, discrete, bilevel)
    ALGORITHMS[name] = algorithm
    _SAMPLERS[name] = sampler
    return algorithm


# ------------------------------------------------------------------ Optuna samplers
def bilevel_sampler(hypergradient: bool) -> Sampler:
    """An Optuna sampler: rl_zoo3's SAC search space for the inner level plus the outer level
    (reward learning rate and steps, outer frequency and, with ``hypergradient``, the
    coefficient of the hypergradient's second term).  Sampled names equal constructor arguments,
    so rl_zoo3's off-policy converter passes them through unchanged."""

    def sample(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> Dict[str, Any]:
        from rl_zoo3.hyperparams_opt import sample_sac_params

        params = sample_sac_params(trial, n_actions, n_envs, additional_args)
        params["reward_lr"] = trial.suggest_float("reward_lr", 1e-4, 3e-3, log=True)
        params["reward_steps"] = trial.suggest_int("reward_steps", 10, 200, log=True)
        params["outer_freq"] = trial.suggest_categorical("outer_freq", [500, 1000, 2000, 5000])
        if hypergradient:
            params["hypergrad_coef"] = trial.suggest_float("hypergrad_coef", 0.1, 3.0, log=True)
        return params

    sample.__name__ = f"sample_bilevel_params_{'hypergradient' if hypergradient else 'alternating'}"
    return sample


add_algorithm("sobirl", box="agents.sobirl:SoBiRL", discrete="agents.sobirl:DiscreteSoBiRL", sampler=bilevel_sampler(True))
add_algorithm("msobirl", box="agents.msobirl:MSoBiRL", discrete="agents.msobirl:DiscreteMSoBiRL", sampler=bilevel_sampler(True))
add_algorithm("drlhf", box="agents.sobirl:DRLHF", discrete="agents.sobirl:DiscreteDRLHF", sampler=bilevel_sampler(False))
add_algorithm("sac", box="stable_baselines3:SAC", discrete="agents.discrete_sac:DiscreteSAC", bilevel=False)


# ------------------------------------------------------------------ registration
_ZOO_MODULES = ("rl_zoo3.utils", "rl_zoo3.hyperparams_opt", "rl_zoo3.exp_manager", "rl_zoo3.train")


def _zoo_tables(attribute: str) -> Tuple[dict, ...]:
    """Every distinct dict that a loaded rl_zoo3 module holds under ``attribute``."""
    for module in _ZOO_MODULES:
        import_module(module)
    tables: Dict[int, dict] = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "rl_zoo3" and isinstance(getattr(module, attribute, None), dict):
            table = getattr(module, attribute)
            tables[id(table)] = table
    return tuple(tables.values())


def register() -> Dict[str, ZooAlgorithm]:
    """Put :data:`ALGORITHMS` and their samplers into rl_zoo3's tables (idempotent).

    Returns the registered algorithms.  Raises ``ImportError`` naming the extra when rl_zoo3
    is missing.
    """
    try:
        from rl_zoo3.hyperparams_opt import convert_offpolicy_params
    except ImportError as err:
        raise ImportError("the rl_zoo3 integration needs rl_zoo3: pip install 'soft-bilevel-rl[zoo]'") from err
    for table in _zoo_tables("ALGOS"):
        table.update(ALGORITHMS)
    _install_config_check()
    for name, sampler in _SAMPLERS.items():
        if sampler is None:
            continue
        for table in _zoo_tables("HYPERPARAMS_SAMPLER"):
            table[name] = sampler
        for table in _zoo_tables("HYPERPARAMS_CONVERTER"):
            table[name] = convert_offpolicy_params
    return dict(ALGORITHMS)


def _install_config_check() -> None:
    """Make rl_zoo3's ``ExperimentManager.read_hyperparameters`` validate our algorithms'
    hyperparameters (idempotent): a YAML file is first parsed by :func:`agents.config.load_config`
    (malformed YAML, duplicate keys: errors naming the file and line), then the entry that
    rl_zoo3 picked, with the ``-params`` overrides, goes through
    :func:`agents.config.validate_hyperparams` before any environment is created."""
    from rl_zoo3.exp_manager import ExperimentManager

    original = ExperimentManager.read_hyperparameters
    if getattr(original, "_validates_birl_configs", False):
        return

    def read_hyperparameters(manager: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        if manager.algo not in ALGORITHMS:
            return original(manager)
        config = None
        if str(manager.config).endswith((".yml", ".yaml")):
            config = load_config(manager.config)
        hyperparams, saved = original(manager)
        check_experiment(manager, hyperparams, config)
        return hyperparams, saved

    read_hyperparameters.__doc__ = original.__doc__
    read_hyperparameters._validates_birl_configs = True  # type: ignore[attr-defined]
    read_hyperparameters.__wrapped__ = original  # type: ignore[attr-defined]
    ExperimentManager.read_hyperparameters = read_hyperparameters


def is_registered() -> bool:
    """Whether every entry of :data:`ALGORITHMS` is in every loaded rl_zoo3 ``ALGOS`` table."""
    if "rl_zoo3.utils" not in sys.modules:
        return False
    return all(table.get(name) is algo for table in _zoo_tables("ALGOS") for name, algo in ALGORITHMS.items())


# ------------------------------------------------------------------ experiments
def default_config(algo: str) -> Optional[Path]:
    """``zoo_configs/<algo>.yml`` when this repository ships one, else ``None``."""
    path = CONFIG_DIR / f"{algo}.yml"
    return path if path.is_file() else None


def experiment_manager(
    algo: str,
    env_id: str,
    log_folder: Union[str, Path],
    *,
    n_timesteps: int = 0,
    hyperparams: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    eval_freq: int = -1,
    n_eval_episodes: int = 5,
    config: Union[str, Path, None] = None,
    verbose: int = 0,
    **kwargs: Any,
) -> Any:
    """An rl_zoo3 ``ExperimentManager`` for one run, as ``agents.train`` would build it.

    Registers our algorithms, reads ``config`` (default :func:`default_config`), overrides
    ``n_timesteps`` when positive and the given ``hyperparams``; other keyword arguments go to
    ``ExperimentManager``.  Use ``model, _ = manager.setup_experiment()``, then
    ``manager.learn(model)`` and ``manager.save_trained_model(model)``.
    """
    kwargs.setdefault("log_interval", -1)  # rl_zoo3's CLI default (the class default 0 divides by zero)
    register()
    from rl_zoo3.exp_manager import ExperimentManager

    config = config or default_config(algo)
    if config is None:
        raise ValueError(f"algo {algo!r}: no zoo_configs/{algo}.yml; pass config=")
    args = argparse.Namespace(  # what rl_zoo3 saves as args.yml (enjoy scripts read env_kwargs)
        algo=algo, env=env_id, seed=seed, n_timesteps=n_timesteps, hyperparams=hyperparams,
        conf_file=str(config), log_folder=str(log_folder), env_kwargs=kwargs.get("env_kwargs"),
    )
    return ExperimentManager(
        args, algo, env_id, str(log_folder), n_timesteps=n_timesteps, eval_freq=eval_freq,
        n_eval_episodes=n_eval_episodes, hyperparams=hyperparams, seed=seed, verbose=verbose,
        config=str(config), **kwargs,
    )
