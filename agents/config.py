"""Validation of rl-zoo style hyperparameter files (``zoo_configs/*.yml``, ``--conf-file``).

rl_zoo3 hands every key of a YAML entry to the algorithm's constructor, so a typo or a wrong
type used to surface, if at all, deep inside Stable-Baselines3 or after the environments were
built.  :func:`validate_hyperparams` checks one entry before anything is built, and every error
names the offending key (with the file and line when it came from a file):

* unknown keys, with the closest known key as a suggestion (``n_querys`` -> ``n_queries``);
* types: for inner-learner keys from the constructor's annotations (SAC, discrete SAC), for the
  bilevel keys from the defaults of :data:`agents.sobirl._BILEVEL_DEFAULTS` (and the
  model-based defaults of :mod:`agents.msobirl`), for ``teacher_kwargs`` and
  ``reward_model_kwargs`` from the signatures of :class:`birl.feedback.SyntheticTeacher` and
  the reward models;
* values: the agents' own argument checks are run (``BilevelMixin._init_bilevel`` and friends,
  on a bare instance that is thrown away; the teacher is built), so the rules live in one place.

:func:`load_config` reads a file with clear errors for malformed YAML (file, line, column),
duplicate keys and entries that are not mappings; :func:`validate_config_file` checks every
entry of a file.  :func:`agents.zoo.register` makes rl_zoo3 run these checks whenever it reads
the hyperparameters of one of our algorithms (``python -m agents.train``,
:func:`agents.zoo.experiment_manager`), and :class:`agents.zoo.ZooAlgorithm` checks the
constructor arguments again before it builds an agent.

Command line: ``python -m agents.config zoo_configs/sobirl.yml --algo sobirl``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "ConfigError",
    "ConfigFile",
    "load_config",
    "validate_hyperparams",
    "validate_config_file",
    "hyperparameter_schema",
    "check_experiment",
]

PathLike = Union[str, "os.PathLike[str]"]


class ConfigError(ValueError):
    """Invalid hyperparameters.  ``problems`` lists ``(key, message)`` pairs (``key`` may be
    ``None`` for file-level problems); ``path`` is the file, when there is one."""

    def __init__(self, message: str, problems: Sequence[Tuple[Optional[str], str]] = (), path: Optional[str] = None) -> None:
        super().__init__(message)
        self.problems = list(problems) or [(None, message)]
        self.path = path

    @property
    def keys(self) -> List[str]:
        """The keys named by the problems."""
        return [key for key, _ in self.problems if key is not None]


# ------------------------------------------------------------------ YAML with positions
@dataclass
class ConfigFile:
    """A parsed hyperparameter file: ``entries`` (env id -> hyperparameters) and the line of
    every key of every entry (keys merged from an anchor point at the anchor's line)."""

    path: str
    entries: Dict[str, Dict[str, Any]]
    lines: Dict[str, Dict[str, int]] = field(default_factory=dict)
    entry_lines: Dict[str, int] = field(default_factory=dict)

    def location(self, entry: str, key: Optional[str] = None) -> str:
        """``"<path>, line N (entry 'X')"`` for a key (or the entry itself)."""
        line = self.lines.get(entry, {}).get(key) if key is not None else self.entry_lines.get(entry)
        where = self.path if line is None else f"{self.path}, line {line}"
        return f"{where} (entry {entry!r})"


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """``SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` excepted)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: Dict[str, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        raise ConfigError(
                            f"{self.name}, line {line}: duplicate key {key_node.value!r} (first set on line "
                            f"{seen[key_node.value]}); YAML would silently keep only the last value",
                            [(key_node.value, "duplicate key")], path=self.name,
                        )
                    seen[key_node.value] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def _key_lines(node: Any) -> Dict[str, int]:
    """Line of every key of a (constructed, hence merge-flattened) mapping node; later wins."""
    import yaml

    lines: Dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[key_node.value] = key_node.start_mark.line + 1
    return lines


def load_config(path: PathLike) -> ConfigFile:
    """Read an rl-zoo hyperparameter file (env id -> mapping of hyperparameters).

    Raises:
        ConfigError: naming the file and line for malformed YAML, duplicate keys, an empty
            file, a top level that is not a mapping or an entry that is not a mapping.
        FileNotFoundError: when ``path`` does not exist.
    """
    import yaml

    path = os.fspath(path)
    text = Path(path).read_text()
    loader = _yaml_loader()(text)
    loader.name = path
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else path
        detail = err.problem or err.context or "could not parse"
        context = f" ({err.context})" if err.context and err.problem else ""
        raise ConfigError(f"malformed YAML in {where}: {detail}{context}", path=path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {path}: {err}", path=path) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path} is empty: expected a mapping of environment ids to hyperparameters", path=path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must map environment ids to hyperparameters, got a {type(data).__name__}", path=path)
    config = ConfigFile(path, {})
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        entry, line = key_node.value, key_node.start_mark.line + 1
        value = data.get(entry, data.get(_scalar(entry)))
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}, line {line}: entry {entry!r} must be a mapping of hyperparameters, got "
                f"{_describe(value)}", [(entry, "not a mapping")], path=path,
            )
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{path}, line {line}: entry {entry!r} has non-string keys {bad}", path=path)
        config.entries[str(entry)] = value
        config.entry_lines[str(entry)] = line
        config.lines[str(entry)] = _key_lines(value_node)
    return config


def _scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ------------------------------------------------------------------ type specifications
# A spec is a tuple of kinds; ``None`` means "not checked".
_KIND_NAMES = {
    "int": "an int",
    "integer": "an integer",
    "float": "a number",
    "bool": "a bool (true/false)",
    "str": "a string",
    "None": "null",
    "mapping": "a mapping",
    "int_list": "a list of integers",
    "object": "an object",
}
Spec = Optional[Tuple[str, ...]]

_SIMPLE_TOKENS = {
    "int": "int", "float": "float", "bool": "bool", "str": "str", "None": "None", "NoneType": "None",
    "dict": "mapping", "Dict": "mapping", "Mapping": "mapping",
    "Sequence[int]": "int_list", "list[int]": "int_list", "List[int]": "int_list", "tuple[int, ...]": "int_list",
    "Tuple[int, ...]": "int_list",
}


def _spec_from_annotation(annotation: Any) -> Spec:
    """A spec from a (possibly string) annotation of simple types; ``None`` if not simple."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = text.replace("typing.", "").strip()
    while True:  # Optional[X] -> X | None, Union[A, B] -> A | B (innermost first)
        new = re.sub(r"Optional\[([^\[\]]*(?:\[[^\[\]]*\])?[^\[\]]*)\]", r"\1 | None", text)
        new = re.sub(r"Union\[([^\[\]]*(?:\[[^\[\]]*\])?[^\[\]]*)\]", lambda m: m.group(1).replace(",", " |"), new)
        if new == text:
            break
        text = new
    text = re.sub(r"(dict|Dict|Mapping)\[[^\[\]]*\]", r"\1", text)
    kinds = []
    for token in (t.strip() for t in text.split("|")):
        if token not in _SIMPLE_TOKENS:
            return None
        kinds.append(_SIMPLE_TOKENS[token])
    return tuple(dict.fromkeys(kinds))


def _spec_from_default(value: Any) -> Spec:
    """A spec from a default value (bilevel defaults: integral numbers are accepted for ints)."""
    if isinstance(value, bool):
        return ("bool",)
    if isinstance(value, int):
        return ("integer",)
    if isinstance(value, float):
        return ("float",)
    if isinstance(value, str):
        return ("str",)
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ("int_list",)
    return None


def _is_number(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _matches(value: Any, kind: str) -> bool:
    import numbers

    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "integer":  # an int, or a float with an integral value (the agents cast with int())
        return _is_number(value) and math.isfinite(float(value)) and float(value) == int(value)
    if kind == "float":
        return _is_number(value)
    if kind == "bool":
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if kind == "str":
        return isinstance(value, str)
    if kind == "None":
        return value is None
    if kind == "mapping":
        return isinstance(value, Mapping)
    if kind == "int_list":
        return isinstance(value, (list, tuple)) and all(_matches(v, "integer") for v in value)
    if kind == "object":  # anything that YAML cannot write: an already built object
        return not isinstance(value, (bool, numbers.Number, str, list, tuple, Mapping, type(None)))
    raise ValueError(f"unknown kind {kind!r}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _type_problem(key: str, value: Any, spec: Spec) -> Optional[str]:
    if spec is None or any(_matches(value, kind) for kind in spec):
        return None
    expected = " or ".join(_KIND_NAMES[k] for k in spec)
    message = f"{key!r} must be {expected}, got {_describe(value)}"
    if isinstance(value, str) and any(k in spec for k in ("float", "integer", "int")):
        try:
            float(value)
        except ValueError:
            pass
        else:
            message += " (YAML reads numbers such as 1e-3 as strings: write 1.0e-3 or !!float 1e-3)"
    elif "int" in spec and _matches(value, "integer"):
        message += f" (write {int(value)}: Stable-Baselines3 needs an int here, not a float such as !!float 1e6)"
    elif "integer" in spec and _is_number(value):
        message += " (a whole number)"
    return message


# ------------------------------------------------------------------ schemas
#: keyword groups popped by agent classes before the inner learner sees them:
#: ``"module:Class"`` in the agent's MRO -> (``"module:defaults"``, checking method or None)
KEYWORD_GROUPS: Dict[str, Tuple[str, Optional[str]]] = {
    "agents.sobirl:BilevelMixin": ("agents.sobirl:_BILEVEL_DEFAULTS", "_init_bilevel"),
    "agents.msobirl:MSoBiRL": ("agents.msobirl:_MODEL_DEFAULTS", "_init_model_based"),
    "agents.msobirl:DiscreteMSoBiRL": ("agents.msobirl:_TABULAR_DEFAULTS", None),
}

#: types of keyword-group keys whose default (``None`` or a string) does not tell the whole type
_GROUP_TYPES: Dict[str, Spec] = {
    "reward_model": ("object", "None"),
    "estimator": ("str", "None"),
    "storm_mu": ("float", "None"),
    "query_schedule": ("str", "mapping", "object"),
    "dynamics_kwargs": ("mapping", "None"),
    "model_fit_kwargs": ("mapping", "None"),
    "branch_steps": ("integer", "None"),
    "msobirl_xi": ("float", "None"),
    "transition_model": None,
}

#: keys rl_zoo3's ExperimentManager reads itself (never passed to the constructor)
ZOO_KEYS: Dict[str, Spec] = {
    "n_timesteps": ("float",),
    "n_envs": ("int",),
    "frame_stack": ("int",),
    "normalize": ("bool", "str", "mapping"),
    "env_wrapper": None,
    "vec_env_wrapper": None,
    "callback": None,
    "monitor_kwargs": ("mapping", "str"),
    "env_kwargs": ("mapping", "str"),
    "noise_type": ("str",),
    "noise_std": ("float",),
}
#: constructor keys that rl_zoo3 may receive as Python source text (it ``eval``s them)
_ZOO_EVAL_KEYS = frozenset({"policy_kwargs", "replay_buffer_class", "replay_buffer_kwargs"})
#: constructor arguments that rl_zoo3 sets from its command line
ZOO_RESERVED = {"env": "--env", "seed": "--seed", "verbose": "--verbose", "device": "--device", "tensorboard_log": "--tensorboard-log"}
#: YAML-friendly keys of the bilevel algorithms (see :mod:`agents.zoo`)
FEEDBACK_TYPES: Dict[str, Spec] = {
    "feedback": ("str", "object", "None"),
    "teacher_kwargs": ("mapping", "None"),
    "demonstrations_kwargs": ("mapping", "None"),
    "reward_model_kwargs": ("mapping", "None"),
}
_DEMO_OPTION_TYPES: Dict[str, Spec] = {
    "path": ("str",), "minari": ("str",), "expert": ("str",), "expert_algo": ("str",),
    "n_episodes": ("int",), "deterministic": ("bool",), "seed": ("int", "None"),
}


def _target(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def _qualified(klass: type) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"


def hyperparameter_schema(cls: type) -> Dict[str, Spec]:
    """Every keyword the agent class ``cls`` accepts, mapped to its type spec.

    The explicit ``__init__`` parameters along the MRO (while each ``__init__`` forwards
    ``**kwargs``) plus the keyword groups of :data:`KEYWORD_GROUPS` found in the MRO.
    """
    schema: Dict[str, Spec] = {}
    for klass in cls.__mro__:
        group = KEYWORD_GROUPS.get(_qualified(klass))
        if group is not None:
            for key, default in _target(group[0]).items():
                schema.setdefault(key, _GROUP_TYPES[key] if key in _GROUP_TYPES else _spec_from_default(default))
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_"):
                spec = _spec_from_annotation(p.annotation)
                if spec is not None and p.default is None and "None" not in spec:
                    spec = spec + ("None",)
                schema.setdefault(p.name, spec)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    if "feedback" in schema:
        schema["feedback"] = FEEDBACK_TYPES["feedback"]
    return schema


def _algorithm(algo: Any) -> Any:
    """A :class:`agents.zoo.ZooAlgorithm` from a name or an algorithm."""
    from agents import zoo

    if isinstance(algo, str):
        if algo not in zoo.ALGORITHMS:
            raise ConfigError(f"unknown algorithm {algo!r}; ours are {sorted(zoo.ALGORITHMS)}")
        return zoo.ALGORITHMS[algo]
    return algo


def _classes(algorithm: Any, action_space: Any = None) -> List[type]:
    if action_space is not None:
        return [algorithm.select(action_space)]
    return [_target(t) for t in (algorithm.box, algorithm.discrete) if t is not None]


def _teacher_schema() -> Dict[str, Spec]:
    from birl.feedback import SyntheticTeacher

    params = list(inspect.signature(SyntheticTeacher.__init__).parameters.values())[1:]
    return {p.name: _spec_from_annotation(p.annotation) for p in params if p.kind != p.VAR_KEYWORD}


def _reward_model_schema() -> Dict[str, Spec]:
    from birl.reward_models import CnnReward, MlpReward

    schema: Dict[str, Spec] = {}
    for cls in (MlpReward, CnnReward):  # the class is picked later, from the observation space
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind != p.KEYWORD_ONLY:
                continue
            spec = _spec_from_annotation(p.annotation)
            if spec is not None and p.default is None and "None" not in spec:
                spec = spec + ("None",)
            schema[p.name] = spec if schema.get(p.name, spec) == spec else None  # typed differently: unchecked
    return schema


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------ validation
def validate_hyperparams(
    algo: Any,
    hyperparams: Mapping[str, Any],
    *,
    stage: str = "file",
    source: str = "hyperparameters",
    locations: Optional[Mapping[str, str]] = None,
    action_space: Any = None,
    require: Sequence[str] = (),
) -> None:
    """Check the hyperparameters of one run of ``algo`` before anything is built.

    Args:
        algo: ``--algo`` name (e.g. ``"sobirl"``) or a :class:`agents.zoo.ZooAlgorithm`.
        hyperparams: one YAML entry (``stage="file"``: rl_zoo3 keys such as ``n_timesteps``
            allowed) or the keyword arguments of the constructor (``stage="constructor"``).
        stage: ``"file"`` or ``"constructor"``.
        source: where the hyperparameters come from, for the messages (e.g. the file).
        locations: per-key locations (``"file.yml, line 12 (entry 'Pendulum-v1')"``, ``"-params"``)
            overriding ``source``.
        action_space: when given, check against the class used for it (else the union of the
            ``Box`` and ``Discrete`` classes).
        require: keys that must be present.

    Raises:
        ConfigError: listing every problem, each naming its key and location.
    """
    if stage not in ("file", "constructor"):
        raise ValueError(f"stage must be 'file' or 'constructor', got {stage!r}")
    if not isinstance(hyperparams, Mapping):
        raise ConfigError(f"{source}: hyperparameters must be a mapping, got {_describe(hyperparams)}")
    algorithm = _algorithm(algo)
    classes = _classes(algorithm, action_space)
    schemas = [hyperparameter_schema(cls) for cls in classes]
    schema: Dict[str, Spec] = {}
    for s in schemas:  # union; a key typed differently by the two classes is not type checked
        for key, spec in s.items():
            schema[key] = spec if key not in schema or schema[key] == spec else None
    if algorithm.bilevel:
        for key, spec in FEEDBACK_TYPES.items():
            schema[key] = spec
    if stage == "file":
        for key in ZOO_RESERVED:
            schema.pop(key, None)
        schema.update(ZOO_KEYS)
        for key in _ZOO_EVAL_KEYS & set(schema):
            schema[key] = None if schema[key] is None else schema[key] + ("str",)
        schema["policy"] = ("str",)

    report = _Problems(source, locations)
    for key in require:
        if key not in hyperparams:
            report(key, f"{key!r} is missing")
    for key, value in hyperparams.items():
        if not isinstance(key, str):
            report(None, f"hyperparameter names must be strings, got {_describe(key)}")
        elif stage == "file" and key in ZOO_RESERVED:
            report(key, f"{key!r} is set by rl_zoo3's command line ({ZOO_RESERVED[key]}), not by the hyperparameters")
        elif key not in schema:
            hint = _owner_hint(key, algorithm) or _suggest(key, schema)
            report(key, f"unknown hyperparameter {key!r} for --algo {algorithm.name}{hint}")
        else:
            message = _type_problem(key, value, schema[key])
            if message is not None:
                report(key, message)
    if algorithm.bilevel:
        _check_feedback_settings(hyperparams, report)
    for cls in classes:  # value checks, once keys and types are right
        if report.problems:
            break
        _run_agent_checks(cls, hyperparams, report)
    if report.problems:
        lines = "\n".join(f"  - {message}" for _, message in report.problems)
        raise ConfigError(f"invalid hyperparameters for --algo {algorithm.name}:\n{lines}", report.problems)


class _Problems:
    """Collects ``(key, "<location>: message")``; called as ``report(key, message)``."""

    def __init__(self, source: str, locations: Optional[Mapping[str, str]]) -> None:
        self.source, self.locations = source, dict(locations or {})
        self.problems: List[Tuple[Optional[str], str]] = []

    def __call__(self, key: Optional[str], message: str) -> None:
        where = self.locations.get(key, self.source) if key is not None else self.source
        self.problems.append((key, f"{where}: {message}"))


def _owner_hint(key: str, algorithm: Any) -> str:
    """Which of our other algorithms accept ``key`` (e.g. a bilevel key given to ``sac``)."""
    from agents import zoo

    owners = []
    for name, other in zoo.ALGORITHMS.items():
        if name == algorithm.name:
            continue
        try:
            keys = set().union(*(hyperparameter_schema(c) for c in _classes(other)))
        except ImportError:
            continue
        if other.bilevel:
            keys |= set(FEEDBACK_TYPES)
        if key in keys:
            owners.append(name)
    return f"; it is a hyperparameter of {', '.join(sorted(owners))}" if owners else ""


def _check_keys(name: str, settings: Mapping[str, Any], schema: Mapping[str, Spec], report: _Problems) -> None:
    for key, value in settings.items():
        if key not in schema:
            report(name, f"unknown key {key!r} in {name!r}{_suggest(str(key), schema)}; known keys: {sorted(schema)}")
            continue
        message = _type_problem(f"{name}.{key}", value, schema[key])
        if message is not None:
            report(name, message)


def _check_feedback_settings(hyperparams: Mapping[str, Any], report: _Problems) -> None:
    """``feedback``, ``teacher_kwargs``, ``demonstrations_kwargs``, ``reward_model_kwargs``."""
    from agents import zoo

    def mapping(key: str) -> Mapping[str, Any]:  # wrong types were reported already
        value = hyperparams.get(key)
        return value if isinstance(value, Mapping) else {}

    kind = hyperparams.get("feedback")
    if isinstance(kind, str) and kind not in zoo.FEEDBACK_KINDS:
        report("feedback", f"'feedback' must be one of {zoo.FEEDBACK_KINDS}, got {kind!r}{_suggest(kind, zoo.FEEDBACK_KINDS)}")
        return
    teacher = mapping("teacher_kwargs")
    if teacher:
        schema = _teacher_schema()
        schema["beta"] = ("float", "str")  # ".inf" / "inf" from a command line
        schema["skip_threshold"] = ("float", "str", "None")
        n_problems = len(report.problems)
        _check_keys("teacher_kwargs", teacher, schema, report)
        if len(report.problems) == n_problems:
            try:  # the teacher's own argument checks
                zoo.make_feedback("preferences", teacher)
            except (TypeError, ValueError) as err:
                report("teacher_kwargs", f"'teacher_kwargs': {err}")
    demos = mapping("demonstrations_kwargs")
    if demos:
        _check_keys("demonstrations_kwargs", demos, _DEMO_OPTION_TYPES, report)
    if kind in ("demonstrations", "joint"):
        try:
            zoo.check_demonstrations_settings(demos)
        except ValueError as err:
            report("demonstrations_kwargs", str(err))
        else:
            path = demos.get("path")
            if path is not None and not Path(path).is_file():
                report("demonstrations_kwargs", f"'demonstrations_kwargs.path': no such file {path!r}")
    reward = mapping("reward_model_kwargs")
    if reward:
        _check_keys("reward_model_kwargs", reward, _reward_model_schema(), report)
        if hyperparams.get("reward_model") is not None:
            report("reward_model_kwargs", "give either 'reward_model' (an object) or 'reward_model_kwargs' (its architecture), not both")


def _run_agent_checks(cls: type, hyperparams: Mapping[str, Any], report: _Problems) -> None:
    """Run the agent's own argument checks of every keyword group on a throwaway bare instance."""
    import numpy as np

    from birl.feedback import Demonstrations, SyntheticTeacher, Trajectory

    if getattr(cls, "default_estimator", None) == "none" and hyperparams.get("estimator") not in (None, "none"):
        report("estimator", f"{cls.__name__} has no hypergradient estimator: leave 'estimator' unset or 'none', got {hyperparams['estimator']!r}")
        return
    for klass in cls.__mro__:
        group = KEYWORD_GROUPS.get(_qualified(klass))
        if group is None or group[1] is None:
            continue
        defaults = _target(group[0])
        kwargs = {key: hyperparams.get(key, default) for key, default in defaults.items()}
        bare = object.__new__(cls)
        try:
            if group[1] == "_init_bilevel":
                if isinstance(hyperparams.get("feedback"), (SyntheticTeacher, Demonstrations)):
                    feedback: Any = hyperparams["feedback"]
                elif hyperparams.get("feedback") == "demonstrations":
                    feedback = Demonstrations([Trajectory(np.zeros((2, 1)), np.zeros((1, 1)), np.zeros(1), True, False)])
                else:
                    feedback = SyntheticTeacher()
                getattr(cls, group[1])(bare, feedback, **kwargs)
            else:
                getattr(cls, group[1])(bare, **kwargs)
        except (TypeError, ValueError) as err:
            message = str(err)
            match = re.match(r"\W*(\w+)", message)  # the agents' messages start with the argument
            key = match.group(1) if match else None
            if key in defaults:
                report(key, message)
            else:
                report(None, f"{cls.__name__}: {message}")


# ------------------------------------------------------------------ files
def validate_config_file(path: PathLike, algo: Any, entries: Optional[Iterable[str]] = None) -> ConfigFile:
    """Load ``path`` and validate every entry (or the given ``entries``) for ``algo``.

    Each entry must hold ``policy`` and ``n_timesteps``.  Returns the :class:`ConfigFile`;
    raises :class:`ConfigError` listing the problems of all entries.
    """
    config = load_config(path)
    names = list(config.entries) if entries is None else list(entries)
    problems: List[Tuple[Optional[str], str]] = []
    for name in names:
        if name not in config.entries:
            problems.append((None, f"{config.path}: no entry {name!r}{_suggest(name, config.entries)}"))
            continue
        try:
            validate_hyperparams(
                algo, config.entries[name], source=config.location(name),
                locations={key: config.location(name, key) for key in config.entries[name]},
                require=("policy", "n_timesteps"),
            )
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        lines = "\n".join(f"  - {message}" for _, message in problems)
        raise ConfigError(f"invalid hyperparameter file {config.path}:\n{lines}", problems, path=config.path)
    return config


def check_experiment(manager: Any, hyperparams: Mapping[str, Any], config: Optional[ConfigFile]) -> None:
    """Validate what an rl_zoo3 ``ExperimentManager`` read (file entry plus overrides)."""
    entry = None
    if config is not None:
        gym_id = manager.env_name.gym_id
        entry = gym_id if gym_id in config.entries else "atari" if getattr(manager, "_is_atari", False) and "atari" in config.entries else "default"
    overrides = set(manager.custom_hyperparams or {})
    locations = {}
    for key in hyperparams:
        if key in overrides:
            locations[key] = "-params"
        elif config is not None and entry in config.entries:
            locations[key] = config.location(entry, key)
    source = config.location(entry) if config is not None and entry in config.entries else str(manager.config)
    require = ["policy"] + (["n_timesteps"] if manager.n_timesteps <= 0 else [])
    validate_hyperparams(manager.algo, hyperparams, source=source, locations=locations, require=require)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m agents.config FILE [FILE ...] --algo ALGO [--entry ENV_ID]``: check files."""
    parser = argparse.ArgumentParser(prog="python -m agents.config", description="Check rl-zoo hyperparameter files.")
    parser.add_argument("files", nargs="+", help="YAML hyperparameter files")
    parser.add_argument("--algo", required=True, help="algorithm the files are for (sobirl, drlhf, sac, ...)")
    parser.add_argument("--entry", action="append", default=None, help="only this entry (repeatable)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            config = validate_config_file(path, args.algo, args.entry)
        except (ConfigError, FileNotFoundError) as err:
            print(err, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: {len(args.entry or config.entries)} entries valid for --algo {args.algo}")
    return status


if __name__ == "__main__":
    sys.exit(main())
