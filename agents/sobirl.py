"""SoBiRL and DRLHF: Stable-Baselines3 agents for soft bilevel RL (DESIGN.md sections 2 and 4).

The inner level is SB3's SAC (``SoBiRL``, ``Box`` actions) or our discrete SAC
(``DiscreteSoBiRL``), trained on rewards from a learned reward model ``r_x``.  The outer level
runs every ``outer_freq`` environment steps:

1. ask the feedback source for labels on segments from the most recent rollouts,
2. estimate the hypergradient (seed 003, "Second visit to hyper-gradient")

       grad phi = E[grad l] + (1/tau) E[ l * sum_i sum_h grad(Q - V)(s^i_h, a^i_h) ]

   with a pluggable estimator for ``grad(Q - V)``:

   * ``successor`` (default): ``Psi(s, a) - E_pi Psi(s, .)`` from a successor-feature critic
     trained by TD beside the SAC critic (:mod:`agents.successor`); it covers the reward's last
     layer, the feature network gets the direct term;
   * ``myopic``: the released paper code's surrogate, ``grad r(s, a) - E_pi grad r(s, .)``;
   * ``none``: the second term off (DRLHF, Christiano et al. 2017: alternating fits),

3. update the reward model (Adam on the surrogate whose gradient is the estimate),
4. relabel every reward in the replay buffer with the current model (PEBBLE).

``tau`` is SAC's entropy coefficient ``alpha`` at the time of the outer step (fixed or
auto-tuned): SAC's soft-optimal policy is ``pi ∝ exp(Q / alpha)``, so ``alpha`` plays the role of
the temperature ``tau`` of the soft MDP.

Score-function term and off-policy data: the term assumes segments drawn from the current
policy.  It is computed only on the pairs queried at this outer step, which come from the last
``outer_freq`` environment steps (nearly on-policy); the direct term uses the whole preference
dataset.  A leave-one-out loss baseline reduces its variance without bias.

Demonstrations (ML-IRL, seed 002): ``phi = -E_D[log pi*(a|s)]`` has no direct term and
``grad phi = -(1/tau) E_D[grad(Q - V)(s, a)]``; with ``successor`` the last layer uses ``Psi``
and the feature network the one-step surrogate; ``myopic``/``none`` use the one-step surrogate
``-(1/tau) E_D[r(s, a) - E_pi r(s, .)]`` for all parameters.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import gymnasium as gym
import numpy as np
import torch as th
from torch.func import functional_call
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecEnv

from agents.archive import read_stored_preferences, save_agent_archive
from agents.branching import SnapshotLog, branch_rollout_gradient, check_branchable
from agents.buffers import BilevelReplayBuffer
from agents.discrete_sac import DiscreteSAC
from agents.successor import SuccessorCritic, reward_head_gradient, successor_loss, td_target
from birl.feedback import (
    BudgetedSchedule,
    Demonstrations,
    HumanTeacher,
    PreferenceDataset,
    QuerySchedule,
    SegmentBatch,
    SyntheticTeacher,
    bradley_terry_nll,
    preference_accuracy,
    sample_segments_from_buffer,
    segment_returns,
    select_queries,
)
from birl.hypergrad import leave_one_out
from birl.reward_models import CnnReward, MlpReward, RewardModel, ScaledReward, build_reward_model
from envs.reward_wrapper import VecParameterisedReward

__all__ = ["SoBiRL", "DiscreteSoBiRL", "DRLHF", "DiscreteDRLHF", "ESTIMATORS"]

ESTIMATORS = ("successor", "myopic", "branch", "none")


class _NonFinite(Exception):
    """Raised inside an outer step when ``what`` holds NaN or inf (the step is then skipped)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _require_finite(what: str, *values: Any) -> None:
    """Raise :class:`_NonFinite` naming ``what`` unless every value (array, tensor, number) is finite."""
    for value in values:
        if isinstance(value, th.Tensor):
            finite = bool(th.isfinite(value.detach()).all())
        else:
            finite = bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))
        if not finite:
            raise _NonFinite(what)


_TEACHERS = (SyntheticTeacher, HumanTeacher)


def _as_sources(feedback) -> Tuple[Any, ...]:
    return tuple(feedback) if isinstance(feedback, (list, tuple)) else (feedback,)


def _teacher_of(feedback):
    return next((f for f in _as_sources(feedback) if isinstance(f, _TEACHERS)), None)


def _demonstrations_of(feedback):
    return next((f for f in _as_sources(feedback) if isinstance(f, Demonstrations)), None)


def _check_feedback(feedback):
    """One feedback source, or a list of one preference source and one :class:`Demonstrations`
    (the AIHF joint loss); returns it (a list as a tuple)."""
    if feedback is None:
        raise ValueError(
            "feedback is required: pass a birl.feedback.SyntheticTeacher or HumanTeacher (preferences), "
            "birl.feedback.Demonstrations (ML-IRL), or a list of one of each (joint loss)"
        )
    sources = _as_sources(feedback)
    for f in sources:
        if not isinstance(f, _TEACHERS + (Demonstrations,)):
            raise TypeError(f"feedback must be a SyntheticTeacher, HumanTeacher or Demonstrations, got {type(f).__name__}")
        if isinstance(f, Demonstrations) and len(f) == 0:
            raise ValueError("feedback: the Demonstrations hold no trajectory")
    n_teachers = sum(isinstance(f, _TEACHERS) for f in sources)
    n_demos = sum(isinstance(f, Demonstrations) for f in sources)
    if len(sources) == 0 or n_teachers > 1 or n_demos > 1:
        raise ValueError(
            f"feedback: a list must hold one preference source and/or one Demonstrations, got "
            f"{[type(f).__name__ for f in sources]}"
        )
    return sources if isinstance(feedback, (list, tuple)) else feedback



#: options a ``query_schedule`` mapping may set (:class:`birl.feedback.BudgetedSchedule`'s shape)
SCHEDULE_OPTIONS = ("initial_fraction", "decay")


def budgeted_schedule(spec: Union[str, Dict[str, float]], n_queries: int, total_steps: int) -> BudgetedSchedule:
    """The :class:`BudgetedSchedule` that spreads ``n_queries`` over ``total_steps`` outer steps
    as ``spec`` says: ``"budgeted"`` (evenly), ``"front_loaded"`` (a quarter at the first step,
    the rest evenly) or a mapping of ``initial_fraction`` and ``decay``; a bad spec raises
    ``ValueError`` naming ``query_schedule``."""
    if isinstance(spec, str):
        if spec not in ("budgeted", "front_loaded"):
            raise ValueError(
                f"query_schedule must be 'budgeted', 'front_loaded', a mapping of {SCHEDULE_OPTIONS} or a QuerySchedule, "
                f"got {spec!r}"
            )
        spec = {"initial_fraction": 0.25 if spec == "front_loaded" else 0.0}
    if not isinstance(spec, Mapping):
        raise ValueError(f"query_schedule must be a str, a mapping or a QuerySchedule, got {spec!r}")
    unknown = sorted(set(spec) - set(SCHEDULE_OPTIONS))
    if unknown:
        raise ValueError(f"query_schedule has unknown option(s) {unknown}; it takes {list(SCHEDULE_OPTIONS)}")
    try:
        return BudgetedSchedule(int(n_queries), int(total_steps), **{k: float(v) for k, v in spec.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"query_schedule {dict(spec)!r}: {err}") from None


class BilevelMixin:
    """The outer level shared by the continuous and discrete agents (see module docstring)."""

    default_estimator: ClassVar[str] = "successor"
    #: agents saved before the option existed load with fragments inside episodes, as they were trained
    absorbing_states: bool = False
    #: agents saved before the option existed load paying the inner learner the raw reward
    reward_scaling: bool = False
    #: estimators this class accepts; subclasses add theirs (M-SoBiRL adds ``"model"``, which
    #: takes the one-step surrogate's place through ``_myopic_directions``/``_one_step_advantage``)
    estimators: ClassVar[Tuple[str, ...]] = ESTIMATORS
    #: whether the inner learner may be paid the rescaled reward (``reward_scaling``)
    supports_reward_scaling: ClassVar[bool] = True

    # ------------------------------------------------------------------ construction
    def _init_bilevel(
        self,
        feedback: Union[SyntheticTeacher, Demonstrations, None],
        reward_model: Optional[RewardModel],
        estimator: Optional[str],
        n_queries: int,
        query_schedule: Union[str, Dict[str, float], QuerySchedule],
        query_selection: str,
        n_candidates: int,
        segment_length: int,
        outer_freq: int,
        reward_lr: float,
        reward_batch_size: int,
        reward_steps: int,
        label_smoothing: float,
        hypergrad_warmup: int,
        hypergrad_coef: float,
        storm_mu: Optional[float],
        successor_lr: float,
        successor_net_arch: Sequence[int],
        n_action_samples: int,
        demo_batch_size: int,
        relabel_batch_size: int,
        branch_states: int,
        branch_horizon: int,
        branch_rollouts: int,
        max_nonfinite_steps: int = 5,
        pref_weight: float = 1.0,
        absorbing_states: bool = True,
        reward_scaling: bool = False,
    ) -> None:
        feedback = _check_feedback(feedback)
        estimator = self.default_estimator if estimator is None else estimator
        if estimator == "branch" and _demonstrations_of(feedback) is not None:
            raise ValueError("estimator='branch' needs preference feedback only: expert states cannot be restored")
        if not (np.isfinite(pref_weight) and pref_weight >= 0):
            raise ValueError(f"pref_weight must be a finite number >= 0, got {pref_weight!r}")
        if estimator not in self.estimators:
            raise ValueError(f"estimator must be one of {self.estimators}, got {estimator!r}")
        for name, value in (
            ("n_queries", n_queries),
            ("segment_length", segment_length),
            ("outer_freq", outer_freq),
            ("reward_batch_size", reward_batch_size),
            ("reward_steps", reward_steps),
            ("n_candidates", n_candidates),
            ("n_action_samples", n_action_samples),
            ("demo_batch_size", demo_batch_size),
            ("relabel_batch_size", relabel_batch_size),
            ("branch_states", branch_states),
            ("branch_horizon", branch_horizon),
            ("branch_rollouts", branch_rollouts),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(max_nonfinite_steps, bool) or int(max_nonfinite_steps) != max_nonfinite_steps or max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be a positive integer, got {max_nonfinite_steps!r}")
        if not reward_lr > 0:
            raise ValueError(f"reward_lr must be positive, got {reward_lr!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        if storm_mu is not None and not 0 < storm_mu <= 1:
            raise ValueError(f"storm_mu must lie in (0, 1], got {storm_mu!r}")
        if not isinstance(query_schedule, QuerySchedule):
            budgeted_schedule(query_schedule, 1, 1)  # checks a name or a mapping before training starts
        if query_selection not in ("uniform", "disagreement", "entropy"):
            raise ValueError(f"query_selection must be 'uniform', 'disagreement' or 'entropy', got {query_selection!r}")
        if not isinstance(absorbing_states, (bool, np.bool_)):
            raise TypeError(f"absorbing_states must be a bool, got {absorbing_states!r}")
        if not isinstance(reward_scaling, (bool, np.bool_)):
            raise TypeError(f"reward_scaling must be a bool, got {reward_scaling!r}")
        if reward_scaling and not self.supports_reward_scaling:
            raise ValueError(f"reward_scaling=True is not supported by {type(self).__name__}")
        self.feedback = feedback
        self.pref_weight = float(pref_weight)
        self.absorbing_states = bool(absorbing_states)
        self.reward_scaling = bool(reward_scaling)
        self.estimator = estimator
        self.n_queries, self.query_schedule, self.query_selection = int(n_queries), query_schedule, query_selection
        self.n_candidates, self.segment_length, self.outer_freq = int(n_candidates), int(segment_length), int(outer_freq)
        self.reward_lr, self.reward_batch_size, self.reward_steps = reward_lr, int(reward_batch_size), int(reward_steps)
        self.label_smoothing, self.hypergrad_warmup, self.hypergrad_coef = label_smoothing, int(hypergrad_warmup), hypergrad_coef
        self.storm_mu, self.successor_lr, self.successor_net_arch = storm_mu, successor_lr, tuple(successor_net_arch)
        self.n_action_samples, self.demo_batch_size = int(n_action_samples), int(demo_batch_size)
        self.relabel_batch_size = int(relabel_batch_size)
        self.branch_states, self.branch_horizon, self.branch_rollouts = int(branch_states), int(branch_horizon), int(branch_rollouts)
        self._reward_model_init = reward_model
        self.preferences = PreferenceDataset()
        self._n_outer = 0
        self._n_asked = 0
        self._successor_updates = 0
        self._last_outer_step = -1
        self._outer_total = None
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self._n_skipped_nonfinite = 0  # outer steps skipped for non-finite values, and the current streak
        self._n_nonfinite_consecutive = 0

    def _init_from_kwargs(self, feedback, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Split bilevel from inner-learner arguments.  SB3's ``load`` constructs the agent with
        ``_init_setup_model=False`` and restores the saved attributes itself: skip validation then."""
        bilevel, inner = _split_kwargs(kwargs)
        if inner.get("_init_setup_model", True):
            self._init_bilevel(feedback, **bilevel)
        inner.setdefault("replay_buffer_class", BilevelReplayBuffer)
        return inner

    def __init__(self, policy: Union[str, Type], env: Union[GymEnv, str, None], feedback=None, **kwargs: Any) -> None:
        super().__init__(policy, env, **self._init_from_kwargs(feedback, kwargs))
        teacher = self.teacher if getattr(self, "feedback", None) is not None else None  # no feedback yet in SB3's load
        if isinstance(teacher, SyntheticTeacher) and teacher.seed is None and self.seed is not None:
            # reproducibility: an unseeded teacher follows the agent's seed (as the zoo does)
            teacher.seed = int(self.seed)
            teacher.reset()

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_bilevel()

    @property
    def teacher(self) -> Union[SyntheticTeacher, HumanTeacher, None]:
        """The preference source among the feedback sources (``None`` without one)."""
        return _teacher_of(self.feedback)

    @property
    def demonstrations(self) -> Optional[Demonstrations]:
        """The demonstrations among the feedback sources (``None`` without them)."""
        return _demonstrations_of(self.feedback)

    @property
    def uses_preferences(self) -> bool:
        return self.teacher is not None

    @property
    def uses_demonstrations(self) -> bool:
        return self.demonstrations is not None

    @property
    def needs_successor(self) -> bool:
        return self.estimator == "successor"

    def _setup_bilevel(self) -> None:
        """Build reward model, successor critic and optimisers; wrap the env (after SB3's setup)."""
        obs_space, act_space = self.observation_space, self.action_space
        self._storm_state, self._demo_data, self._snapshots = None, None, None
        if getattr(self, "_reward_model_init", None) is not None:
            model = self._reward_model_init
            self._reward_model_spec = (type(model).__name__, model.config())
        elif getattr(self, "_reward_model_spec", None) is None:
            if len(getattr(obs_space, "shape", ())) == 3:
                model = CnnReward.from_spaces(obs_space, act_space)
            else:  # small by default: the successor critic's output has the size of its last layer
                model = MlpReward.from_spaces(obs_space, act_space, hidden=(64, 64))
            self._reward_model_spec = (type(model).__name__, model.config())
        else:  # loading: rebuild the architecture, SB3 then loads the weights
            model = build_reward_model(*self._reward_model_spec)
        self._reward_model_init = None
        self._check_reward_model(model)
        self.reward_model = model.to(self.device)
        # what the inner learner is paid: the reward itself, or the reward over its replay RMS
        self.inner_reward = ScaledReward(self.reward_model).to(self.device) if self.reward_scaling else self.reward_model
        self.reward_optimizer = th.optim.Adam(self.reward_model.parameters(), lr=self.reward_lr)
        if self.needs_successor:
            self.successor = SuccessorCritic(obs_space, act_space, self.reward_model.feature_dim, self.successor_net_arch).to(self.device)
            self.successor_target = copy.deepcopy(self.successor)
            self.successor_target.requires_grad_(False)
            self.successor_optimizer = th.optim.Adam(self.successor.parameters(), lr=self.successor_lr)
        self._outer_rng = np.random.default_rng(self.seed)
        if self.env is not None:
            self._wrap_reward_env()
            self._setup_snapshots()

    def _setup_snapshots(self) -> None:
        """``branch``: check the envs can be cloned (at construction) and start the snapshot log."""
        self._snapshots = None
        if self.estimator == "branch":
            check_branchable(self.env)
            self._snapshots = SnapshotLog(self.env, keep=max(self.outer_freq, 2 * self.segment_length) + 2)

    def _check_reward_model(self, model: th.nn.Module) -> None:
        """Fail at construction, not mid-training, when the model does not fit the env."""
        if not isinstance(model, RewardModel):
            raise TypeError(f"reward_model must be a birl.reward_models.RewardModel, got {type(model).__name__}")
        obs = th.as_tensor(np.stack([self.observation_space.sample() for _ in range(2)]))
        act = th.as_tensor(np.stack([self.action_space.sample() for _ in range(2)]))
        try:
            with th.no_grad():
                out = model(obs, act, obs)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"reward_model does not accept this env's observations {self.observation_space} and actions "
                f"{self.action_space}: {err}"
            ) from err
        if tuple(out.shape) != (2,):
            raise ValueError(f"reward_model must return one reward per transition, got shape {tuple(out.shape)}")
        if self.needs_successor and not isinstance(getattr(model, "head", None), th.nn.Linear):
            raise ValueError(
                f"estimator='successor' needs a reward_model with a single last linear layer `head`; "
                f"{type(model).__name__} has none (use estimator='myopic' for ensembles)"
            )

    def _wrap_reward_env(self) -> None:
        """Rewards seen by the inner learner come from the reward model; Monitor (inside) keeps TRUE returns."""
        if not isinstance(self.env, VecParameterisedReward):
            self.env = VecParameterisedReward(self.env, self.inner_reward)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset=force_reset)
        if getattr(self, "reward_model", None) is not None:
            self._wrap_reward_env()
            self._setup_snapshots()

    def _setup_learn(self, total_timesteps: int, *args, **kwargs):
        out = super()._setup_learn(total_timesteps, *args, **kwargs)
        # outer steps happen at start + 1, start + 1 + outer_freq, ... below the total
        start = max(self.num_timesteps, self.learning_starts)
        expected = -(-max(0, self._total_timesteps - start - 1) // self.outer_freq)
        self._outer_total = self._n_outer + max(1, expected - 1)  # the last one completes the budget
        if self.uses_preferences and self.estimator != "none" and self.hypergrad_warmup >= self._total_timesteps:
            warnings.warn(
                f"hypergrad_warmup={self.hypergrad_warmup} is not below the {self._total_timesteps} env steps of this "
                "run: the hypergradient's second term never switches on, so the outer level is plain preference "
                f"learning while the {self.estimator!r} estimator still costs compute; lower hypergrad_warmup "
                "or use estimator='none'",
                UserWarning,
                stacklevel=2,
            )
        if self._snapshots is not None:
            self._snapshots.record(self.replay_buffer.pos)
        return out

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        # An EvalCallback's env gives the TRUE reward while the training env is wrapped in the
        # learned reward, so SB3's "not of the same type" warning would fire on every run.  That
        # difference is the point of evaluating on the TRUE reward; silence exactly that warning.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Training and eval env are not of the same type", category=UserWarning)
            return super()._init_callback(callback, progress_bar)

    def _store_transition(self, replay_buffer, *args, **kwargs) -> None:
        super()._store_transition(replay_buffer, *args, **kwargs)
        if self._snapshots is not None:  # the envs' states now produce the next row's observations
            self._snapshots.record(replay_buffer.pos)

    # ------------------------------------------------------------------ policy access
    def _tau(self) -> float:
        """Temperature of the soft MDP of the learned reward ``r`` that the inner learner solves:
        its entropy coefficient ``alpha``, times the scale ``rms`` of its reward ``r / rms`` with
        ``reward_scaling`` (:class:`birl.reward_models.ScaledReward`)."""
        tau = self._ent_coef_float()
        return tau * float(self.inner_reward.rms) if self.reward_scaling else tau

    def _ent_coef_float(self) -> float:
        """The inner learner's current entropy coefficient ``alpha``."""
        raise NotImplementedError

    def _policy_tools(self, obs: th.Tensor) -> Tuple[Callable[[th.Tensor], th.Tensor], Optional[th.Tensor]]:
        """``(sample, probs)``: a sampler of buffer-format actions at ``obs`` and, for discrete
        actions, the action probabilities ``[B, A]`` (``None`` for continuous)."""
        raise NotImplementedError

    def _env_actions(self, buffer_actions: np.ndarray) -> np.ndarray:
        """Buffer actions (scaled to [-1, 1] for Box) to the env's action units (reward model input)."""
        return buffer_actions

    def _buffer_actions(self, env_actions: np.ndarray) -> np.ndarray:
        return env_actions

    # ------------------------------------------------------------------ training
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        if self._n_outer == 0 or self.num_timesteps - self._last_outer_step >= self.outer_freq:
            self._outer_step()
        super().train(gradient_steps, batch_size)
        if self.needs_successor:
            self._train_successor(gradient_steps, batch_size)

    def _train_successor(self, gradient_steps: int, batch_size: int) -> None:
        """TD for ``Psi ~ grad_w Q`` with SAC's discount and Polyak targets (agents.successor)."""
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = data.discounts if getattr(data, "discounts", None) is not None else self.gamma
            grad_r = reward_head_gradient(
                self.reward_model, data.observations, self._env_actions_t(data.actions), data.next_observations
            )
            sample, next_probs = self._policy_tools(data.next_observations)
            target = td_target(self.successor_target, grad_r, data.next_observations, data.dones, discounts, sample, next_probs)
            loss = successor_loss(self.successor, data.observations, data.actions, target)
            self.successor_optimizer.zero_grad()
            loss.backward()
            self.successor_optimizer.step()
            losses.append(loss.item())
            self._successor_updates += 1
            if self._successor_updates % self.target_update_interval == 0:  # counted over the whole run
                polyak_update(self.successor.parameters(), self.successor_target.parameters(), self.tau)
        if losses:
            self.logger.record("train/successor_loss", float(np.mean(losses)))

    def _env_actions_t(self, actions: th.Tensor) -> th.Tensor:
        return th.as_tensor(self._env_actions(actions.cpu().numpy()), device=self.device)

    # ------------------------------------------------------------------ outer level
    def _schedule(self) -> QuerySchedule:
        if isinstance(self.query_schedule, QuerySchedule):
            return self.query_schedule
        return budgeted_schedule(self.query_schedule, self.n_queries, self._outer_total or 1)

    def _recent_window(self) -> Dict[str, np.ndarray]:
        """The last ``outer_freq`` transitions per env, in time order (nearly on-policy data),
        with actions converted to env units."""
        buf: BilevelReplayBuffer = self.replay_buffer
        n_filled = buf.size()
        length = min(n_filled, max(self.outer_freq, 2 * self.segment_length))
        idx = (buf.pos - length + np.arange(length)) % buf.buffer_size
        self._window_rows = idx
        win = buf.window(idx)
        # segments carry actions in env units, as the reward model sees them everywhere else
        acts = win["acts"]
        win["acts"] = self._env_actions(acts.reshape((-1,) + acts.shape[2:])).reshape(acts.shape)
        return win

    def _query(self) -> Optional[Tuple[SegmentBatch, SegmentBatch, np.ndarray]]:
        """Ask the teacher about new pairs from recent rollouts; store them; return the labelled pairs."""
        late = self.teacher.drain() if isinstance(self.teacher, HumanTeacher) else None
        if late is not None:  # human answers given after their label() call returned
            self.preferences.add(*late)
        k = self._schedule()(self._n_outer, asked=self._n_asked)
        if k <= 0:
            return None
        win = self._recent_window()
        m = k * self.n_candidates
        try:
            segs = sample_segments_from_buffer(
                win["obs"], win["acts"], win["true_rewards"], win["dones"], horizon=self.segment_length,
                n=2 * m, rng=self._outer_rng, next_obs=win["next_obs"], replace=True,
                terminations=win["terminations"] if self.absorbing_states else None,
            )
        except ValueError:  # no full-length fragment yet (episodes shorter than segment_length so far)
            return None
        s1, s2 = segs[np.arange(m)], segs[np.arange(m, 2 * m)]
        if self.query_selection == "uniform" or m == k:
            chosen = select_queries("uniform", k, rng=self._outer_rng, m=m)
        else:
            with th.no_grad():
                r1 = segment_returns(self.reward_model, s1, per_member=True).cpu().numpy()
                r2 = segment_returns(self.reward_model, s2, per_member=True).cpu().numpy()
            _require_finite("reward-model outputs on candidate segments", r1, r2)
            chosen = select_queries(self.query_selection, k, r1, r2)
        s1, s2 = s1[chosen], s2[chosen]
        _require_finite("segment true rewards", s1.true_rewards, s2.true_rewards)
        labels, keep = self.teacher.label(s1, s2)
        _require_finite("feedback labels", labels)
        self._n_asked += k
        self.preferences.add(s1, s2, labels, keep)
        return s1[np.flatnonzero(keep)], s2[np.flatnonzero(keep)], labels[keep]

    def _segment_inputs(self, seg: SegmentBatch) -> Tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        """A segment batch ``[N, H, ...]`` flattened to ``[N*H, ...]`` tensors ``(obs, acts, next_obs)``."""
        flat = lambda a: None if a is None else th.as_tensor(a.reshape((-1,) + a.shape[2:]), device=self.device)  # noqa: E731
        return flat(seg.obs), flat(seg.acts), flat(seg.next_obs)

    def _score_directions(self, batches: Sequence[SegmentBatch]) -> th.Tensor:
        """For each segment tuple, ``(1/tau) sum_i sum_h (Psi(s,a) - E_pi Psi(s,.))`` ``[N, k]``."""
        total = 0.0
        for seg in batches:
            n, h = seg.acts.shape[:2]
            obs, act, _ = self._segment_inputs(seg)
            act = th.as_tensor(self._buffer_actions(act.cpu().numpy()), device=self.device)
            with th.no_grad():
                sample, probs = self._policy_tools(obs)
                adv = self.successor.advantage(obs, act, sample, probs, self.n_action_samples)
            total = total + (adv.reshape(n, h, -1) * self._alive(seg)[..., None]).sum(1)
        return total / self._tau()

    def _alive(self, seg: SegmentBatch) -> th.Tensor:
        """``[N, H]`` 1 on real steps, 0 on absorbing ones: an absorbing state has one action, so its
        soft advantage ``Q - V`` (and each of its terms) is 0."""
        return th.as_tensor(seg.alive, dtype=th.float32, device=self.device)

    def _branch_directions(self, batches: Sequence[SegmentBatch]) -> th.Tensor:
        """``branch`` (agents.branching): ``(1/tau) sum_i sum_h [grad_w Q - grad_w V](s_h, a_h)`` ``[N, k]``
        from fresh rollouts restarted at ``branch_states`` visited pairs drawn uniformly (reweighted)."""
        n, h = batches[0].acts.shape[:2]
        # real steps only (absorbing ones contribute 0), flat index (m, batch, step) as below
        real = np.flatnonzero(np.stack([seg.alive for seg in batches], 1).reshape(-1))
        chosen = self._outer_rng.choice(real, size=min(self.branch_states, real.size), replace=False)
        weight = real.size / (chosen.size * self.branch_rollouts)
        out = th.zeros(n, self.reward_model.feature_dim, device=self.device)
        current = self._snapshots.current()
        discrete = isinstance(self.action_space, spaces.Discrete)
        head_gradient = lambda o, a, s2: reward_head_gradient(self.reward_model, self._as_input(o), self._as_input(a), self._as_input(s2))  # noqa: E731
        for entry in chosen:
            m, rest = divmod(int(entry), len(batches) * h)
            i, t = divmod(rest, h)
            seg = batches[i]
            env_id = int(seg.env_ids[m])
            snap = self._snapshots.get(int(self._window_rows[seg.starts[m] + t]), env_id)
            act = seg.acts[m, t]
            first = int(np.asarray(act).reshape(-1)[0]) if discrete else np.asarray(act, dtype=np.float32)
            for _ in range(self.branch_rollouts):
                g = [
                    branch_rollout_gradient(self._snapshots, env_id, snap, seg.obs[m, t], a0, self._branch_action,
                                            head_gradient, self.gamma, self.branch_horizon, self._outer_rng)
                    for a0 in (first, None)
                ]
                out[m] += weight * (g[0] - g[1])
        self._snapshots.restore_all(current)
        return out / self._tau()

    def _as_input(self, x: np.ndarray) -> th.Tensor:
        x = np.asarray(x)
        return th.as_tensor(x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, device=self.device)

    def _branch_action(self, obs: np.ndarray):
        """One action of the current policy at a single raw observation, in env units."""
        obs_t = self._as_input(np.asarray(obs)[None])
        with th.no_grad():
            sample, probs = self._policy_tools(obs_t)
            if probs is not None:
                return int(th.multinomial(probs, 1).item())
            return self._env_actions(sample(obs_t).cpu().numpy())[0]

    def _myopic_directions(self, batches: Sequence[SegmentBatch]) -> th.Tensor:
        """``(1/tau) sum_i sum_h [r(s,a) - E_pi r(s,.)]`` ``[N]``, differentiable in the reward
        parameters: the released paper code's one-step surrogate."""
        total = 0.0
        for seg in batches:
            n, h = seg.acts.shape[:2]
            obs, act, nxt = self._segment_inputs(seg)
            total = total + ((self.reward_model(obs, act, nxt) - self._expected_reward(obs, nxt)).reshape(n, h) * self._alive(seg)).sum(1)
        return total / self._tau()

    def _expected_reward(self, obs: th.Tensor, next_obs: Optional[th.Tensor], reward_fn=None) -> th.Tensor:
        """``E_{a ~ pi(.|s)} r(s, a[, s'])`` (``s'`` of the data, a one-step approximation)."""
        reward_fn = reward_fn or self.reward_model
        with th.no_grad():
            sample, probs = self._policy_tools(obs)
        if probs is not None:
            A = probs.shape[1]
            rep = lambda t: None if t is None else t.repeat_interleave(A, 0)  # noqa: E731
            acts = th.arange(A, device=obs.device).repeat(obs.shape[0])
            r = reward_fn(rep(obs), acts, rep(next_obs)).reshape(-1, A)
            return (probs * r).sum(1)
        total = 0.0
        for _ in range(self.n_action_samples):
            with th.no_grad():
                a = self._env_actions_t(sample(obs))
            total = total + reward_fn(obs, a, next_obs)
        return total / self.n_action_samples

    def _hyper_surrogate(self, on_policy, score_dirs) -> th.Tensor:
        """The term whose gradient is the second part of the hypergradient (zero when off)."""
        if on_policy is None or len(on_policy[2]) < 2 or self.estimator == "none":
            return th.zeros((), device=self.device)
        if self.num_timesteps < self.hypergrad_warmup:
            return th.zeros((), device=self.device)
        s1, s2, y = on_policy
        l = bradley_terry_nll(
            segment_returns(self.reward_model, s1), segment_returns(self.reward_model, s2), y,
            label_smoothing=self.label_smoothing, reduction="none",
        )
        centred = leave_one_out(l.detach())
        if self.estimator in ("successor", "branch"):
            G = (centred[:, None] * score_dirs).mean(0)
            return self.hypergrad_coef * (self.reward_model.head.weight.reshape(-1) * G).sum()
        return self.hypergrad_coef * (centred * self._myopic_directions([s1, s2])).mean()

    def _demo_surrogate(self, idx: np.ndarray) -> th.Tensor:
        """ML-IRL on expert transitions ``idx``: gradient ``-(1/tau) E_D[grad(Q - V)(s, a)]`` (module docstring)."""
        data = self._demo_data
        obs, act, nxt = (th.as_tensor(data[k][idx], device=self.device) for k in ("obs", "acts", "next_obs"))
        if self.estimator != "successor":
            return -self._one_step_advantage(obs, act, nxt).mean() / self._tau()
        with th.no_grad():
            sample, probs = self._policy_tools(obs)
            adv = self.successor.advantage(obs, th.as_tensor(self._buffer_actions(data["acts"][idx]), device=self.device), sample, probs, self.n_action_samples)
        G = -adv.mean(0) / self._tau()
        # the feature network gets the one-step surrogate, the last layer the successor estimate
        frozen_head = {"head.weight": self.reward_model.head.weight.detach()}
        reward_fn = lambda o, a, n: functional_call(self.reward_model, frozen_head, (o, a, n), strict=False)  # noqa: E731
        one_step = self._one_step_advantage(obs, act, nxt, reward_fn)
        return (self.reward_model.head.weight.reshape(-1) * G).sum() - one_step.mean() / self._tau()

    def _one_step_advantage(self, obs, act, nxt, reward_fn=None) -> th.Tensor:
        """``r(s, a) - E_pi r(s, .)`` for expert transitions (one-step ML-IRL surrogate)."""
        reward_fn = reward_fn or self.reward_model
        return reward_fn(obs, act, nxt) - self._expected_reward(obs, nxt, reward_fn)

    def _outer_step(self) -> None:
        """One outer iteration: feedback, hypergradient, reward update, replay relabelling.

        Non-finite values (segment true rewards, feedback labels, reward-model outputs, losses,
        hypergradients, relabelled rewards) skip the iteration: the reward model, its optimiser,
        the STORM state and the replay rewards are put back as they were (labels already stored
        are valid and kept), ``outer/skipped_nonfinite`` is logged with a warning, and training
        goes on; ``max_nonfinite_steps`` consecutive skips raise ``FloatingPointError``."""
        self._last_outer_step = self.num_timesteps
        self.reward_model.train()
        saved = self._outer_snapshot()
        try:
            self._outer_update()
        except _NonFinite as err:
            self._outer_restore(saved)
            self._n_outer += 1  # the query schedule follows time; its catch-up asks what was missed
            self._skip_nonfinite(err.what)
            return
        self._n_nonfinite_consecutive = 0

    def _outer_update(self) -> None:
        """The body of :meth:`_outer_step`; raises ``_NonFinite`` on a non-finite value."""
        on_policy, score_dirs = None, None
        if self.uses_preferences:
            on_policy = self._query()
            if len(self.preferences) == 0 and not self.uses_demonstrations:
                self._n_outer += 1
                return
            if on_policy is not None and len(on_policy[2]) >= 2 and self.num_timesteps >= self.hypergrad_warmup:
                if self.estimator == "successor":
                    score_dirs = self._score_directions([on_policy[0], on_policy[1]])
                elif self.estimator == "branch":
                    score_dirs = self._branch_directions([on_policy[0], on_policy[1]])
                if score_dirs is not None:
                    _require_finite(f"hypergradient directions ({self.estimator} estimator)", score_dirs)
        if self.uses_demonstrations and self._demo_data is None:
            self._demo_data = self.demonstrations.transitions()

        losses, norms = [], []
        self._term_norms = (float("nan"), float("nan"))
        for step in range(self.reward_steps):
            objective = self._reward_objective(on_policy, score_dirs)
            surrogate, direct = objective()
            _require_finite("outer loss (reward-model outputs on the feedback)", direct)
            _require_finite("hypergradient surrogate", surrogate)
            if step == 0:
                self._term_norms = self._gradient_norms(direct, surrogate - direct)
            self.reward_optimizer.zero_grad()
            surrogate.backward()
            if self.storm_mu is not None:
                self._storm_correct(objective)
            norm = float(th.nn.utils.clip_grad_norm_(self.reward_model.parameters(), max_norm=10.0))
            _require_finite("hypergradient (reward-model gradient)", norm)
            norms.append(norm)
            self.reward_optimizer.step()
            losses.append(float(direct.detach()))
        _require_finite("reward-model parameters after the update", *[p.detach() for p in self.reward_model.parameters()])
        self._n_outer += 1
        self._relabel()
        for rewards in self._relabelled_rewards():
            _require_finite("relabelled rewards (reward-model outputs on the replay buffer)", rewards)
        self._log_outer(losses, norms)

    def _relabelled_rewards(self) -> list:
        """The reward arrays that :meth:`_relabel` rewrites (snapshotted, checked after relabelling)."""
        arrays = [self.replay_buffer.rewards]
        model_buffer = getattr(self, "model_buffer", None)  # M-SoBiRL's model transitions
        if model_buffer is not None:
            arrays.append(model_buffer.rewards)
        return arrays

    def _outer_snapshot(self) -> Dict[str, Any]:
        """What a skipped outer step puts back (the model's and optimiser's states, STORM, rewards)."""
        return {
            "model": copy.deepcopy(self.reward_model.state_dict()),
            "optimizer": copy.deepcopy(self.reward_optimizer.state_dict()),
            "storm": self._storm_state,
            "rewards": [a.copy() for a in self._relabelled_rewards()],
            "n_outer": self._n_outer,
            "rms": self.inner_reward.rms.clone() if self.reward_scaling else None,
        }

    def _outer_restore(self, saved: Dict[str, Any]) -> None:
        self.reward_model.load_state_dict(saved["model"])
        self.reward_optimizer.load_state_dict(saved["optimizer"])
        self.reward_optimizer.zero_grad()
        self._storm_state = saved["storm"]
        for array, old in zip(self._relabelled_rewards(), saved["rewards"]):
            array[...] = old
        self._n_outer = saved["n_outer"]
        if saved["rms"] is not None:
            self.inner_reward.rms.copy_(saved["rms"])

    def _skip_nonfinite(self, what: str) -> None:
        """Count, log and warn about a skipped outer step; stop after too many in a row."""
        self._n_skipped_nonfinite = getattr(self, "_n_skipped_nonfinite", 0) + 1
        self._n_nonfinite_consecutive = getattr(self, "_n_nonfinite_consecutive", 0) + 1
        limit = getattr(self, "max_nonfinite_steps", 5)
        self.logger.record("outer/skipped_nonfinite", self._n_skipped_nonfinite)
        if self._n_nonfinite_consecutive >= limit:
            raise FloatingPointError(
                f"{self._n_nonfinite_consecutive} consecutive outer steps had non-finite values (last: {what}) at "
                f"step {self.num_timesteps}; stopping (max_nonfinite_steps={limit})"
            )
        warnings.warn(
            f"outer step at env step {self.num_timesteps} skipped: non-finite {what} "
            f"({self._n_nonfinite_consecutive} in a row, max_nonfinite_steps={limit})",
            RuntimeWarning,
            stacklevel=2,
        )

    def _reward_objective(self, on_policy, score_dirs) -> Callable[[], Tuple[th.Tensor, th.Tensor]]:
        """One reward step's objective on a fixed sample ``D_k``: returns ``() -> (surrogate, direct)``
        evaluated at the reward model's current parameters (STORM re-evaluates it at old ones).

        With both feedback kinds it is the AIHF joint loss (seed 002, "Extension"; the joint
        :class:`birl.losses.JointLoss` of the tabular core) ``L_demo + pref_weight * L_pref``, each
        term with its own SoBiRL hypergradient surrogate."""
        parts = []
        if self.uses_preferences and len(self.preferences) > 0:
            s1, s2, y = self.preferences.sample(self.reward_batch_size, rng=self._outer_rng)

            def pref_objective():
                direct = bradley_terry_nll(
                    segment_returns(self.reward_model, s1), segment_returns(self.reward_model, s2), y,
                    label_smoothing=self.label_smoothing,
                )
                return direct + self._hyper_surrogate(on_policy, score_dirs), direct

            parts.append((pref_objective, self.pref_weight if self.uses_demonstrations else 1.0))
        if self.uses_demonstrations:
            idx = self._outer_rng.integers(0, self._demo_data["obs"].shape[0], size=self.demo_batch_size)

            def demo_objective():
                loss = self._demo_surrogate(idx)
                return loss, loss

            parts.append((demo_objective, 1.0))
        if len(parts) == 1:
            return parts[0][0]

        def joint_objective():
            terms = [(weight, fn()) for fn, weight in parts]
            return sum(w * t[0] for w, t in terms), sum(w * t[1] for w, t in terms)

        return joint_objective

    def _storm_correct(self, objective: Callable[[], Tuple[th.Tensor, th.Tensor]]) -> None:
        """STORM momentum (Stoc-SoBiRL, seed 003 "Stochastic extension") on the reward parameters:
        ``h_k = g(D_k; x_k) + (1 - mu)(h_{k-1} - g(D_k; x_{k-1}))``, with ``g(D_k; x_{k-1})`` the
        same sample's objective re-evaluated at the previous parameters.  The critics (``pi_{k-1}``
        in the slide) are not kept: the current score directions stand in for the old ones."""
        params = list(self.reward_model.parameters())
        grads = [th.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        state = self._storm_state
        if state is None:
            h = grads
        else:
            current = [p.detach().clone() for p in params]
            with th.no_grad():
                for p, old in zip(params, state["x"]):
                    p.copy_(old)
            self.reward_optimizer.zero_grad()
            objective()[0].backward()
            at_old = [th.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
            with th.no_grad():
                for p, cur in zip(params, current):
                    p.copy_(cur)
            h = [g + (1.0 - self.storm_mu) * (h_prev - g_old) for g, h_prev, g_old in zip(grads, state["h"], at_old)]
        for p, direction in zip(params, h):
            p.grad = direction.clone()
        self._storm_state = {"x": [p.detach().clone() for p in params], "h": h}

    def _relabel(self) -> None:
        self.replay_buffer.relabel(self.reward_model, self._env_actions, self.relabel_batch_size)
        if self.reward_scaling:
            self._rescale_rewards()

    def _rescale_rewards(self) -> None:
        """``reward_scaling``: refit ``rms`` on the freshly relabelled replay rewards and divide them
        by it (the env wrapper pays ``r / rms`` with the same ``rms`` until the next outer step)."""
        buffer = self.replay_buffer
        rewards = buffer.rewards[: buffer.size()]
        if rewards.size == 0:
            return
        _require_finite("relabelled rewards (reward-model outputs on the replay buffer)", rewards)
        rewards /= self.inner_reward.fit(rewards)

    def _gradient_norms(self, *terms: th.Tensor) -> Tuple[float, ...]:
        """The reward-model gradient norm of each term (the graph is kept for the real backward)."""
        params = [p for p in self.reward_model.parameters() if p.requires_grad]
        norms = []
        for term in terms:
            grads = th.autograd.grad(term, params, retain_graph=True, allow_unused=True) if term.requires_grad else ()
            norms.append(float(th.sqrt(sum(((g.detach() ** 2).sum() for g in grads if g is not None), th.zeros(())))))
        return tuple(norms)

    def _log_outer(self, losses, norms) -> None:
        self.logger.record("outer/skipped_nonfinite", getattr(self, "_n_skipped_nonfinite", 0))
        self.logger.record("outer/loss", float(np.mean(losses)))
        self.logger.record("outer/hypergrad_norm", float(np.mean(norms)))
        # at the first reward step: the direct (feedback-loss) gradient against the second term's;
        # a second term far larger than the first pulls the reward model off its feedback
        direct_norm, second_norm = getattr(self, "_term_norms", (float("nan"), float("nan")))
        self.logger.record("outer/direct_grad_norm", direct_norm)
        self.logger.record("outer/second_term_grad_norm", second_norm)
        self.logger.record("outer/tau", self._tau())
        if self.reward_scaling:
            self.logger.record("outer/reward_rms", float(self.inner_reward.rms))
        self.logger.record("outer/n_updates", self._n_outer)
        if self.uses_preferences:
            self.logger.record("feedback/n_labels", len(self.preferences))
            self.logger.record("outer/pref_accuracy", self.preference_accuracy())
        if len(self.ep_info_buffer) > 0:
            self.logger.record("rollout/true_ep_rew_mean", float(np.mean([ep["r"] for ep in self.ep_info_buffer])))

    def preference_accuracy(self, max_pairs: int = 2000) -> float:
        """Agreement of the reward model with the stored labels (most recent ``max_pairs``)."""
        n = len(self.preferences)
        if n == 0:
            return float("nan")
        s1, s2, y = self.preferences[np.arange(max(0, n - max_pairs), n)]
        with th.no_grad():
            r1, r2 = segment_returns(self.reward_model, s1), segment_returns(self.reward_model, s2)
        return preference_accuracy(r1, r2, y)

    # ------------------------------------------------------------------ persistence
    def _excluded_save_params(self):
        # ``preferences`` is stored as raw arrays next to SB3's members (agents.archive), not pickled into ``data``
        # ``inner_reward`` is the reward model itself or wraps it: rebuilt by ``_setup_bilevel``, only
        # its ``rms`` saved (a torch variable of ``_get_torch_save_params``)
        return super()._excluded_save_params() + ["_reward_model_init", "_outer_rng", "_storm_state", "_demo_data", "_snapshots",
                                                  "preferences", "_term_norms", "inner_reward"]

    def save(self, path: Union[str, os.PathLike, io.BufferedIOBase], exclude: Optional[Sequence[str]] = None,
             include: Optional[Sequence[str]] = None) -> None:
        """SB3's :meth:`~stable_baselines3.common.base_class.BaseAlgorithm.save`, with the
        preference dataset appended to the archive as raw arrays (:mod:`agents.archive`) and a
        file name replaced atomically (an interrupted save leaves the previous file)."""
        def write(f):
            super(BilevelMixin, self).save(f, exclude=exclude, include=include)

        save_agent_archive(path, write, self.preferences)

    @classmethod
    def load(cls, path: Union[str, os.PathLike, io.BufferedIOBase], env: Optional[GymEnv] = None, device: Union[th.device, str] = "auto",
             custom_objects: Optional[Dict[str, Any]] = None, print_system_info: bool = False, force_reset: bool = True, **kwargs: Any):
        """SB3's :meth:`~stable_baselines3.common.base_class.BaseAlgorithm.load`, plus the
        preference dataset stored by :meth:`save` (files saved before that layout carry it in
        SB3's ``data`` and load as they are; ``custom_objects={"preferences": ...}`` replaces it)."""
        model = super().load(path, env=env, device=device, custom_objects=custom_objects, print_system_info=print_system_info,
                             force_reset=force_reset, **kwargs)
        if "preferences" in (custom_objects or {}):
            model.preferences = custom_objects["preferences"]
        else:
            stored = read_stored_preferences(path)
            if stored is not None:
                model.preferences = stored
        return model

    def _get_torch_save_params(self):
        state_dicts, variables = super()._get_torch_save_params()
        state_dicts = state_dicts + ["reward_model", "reward_optimizer"]
        if self.reward_scaling:  # the model's weights are saved once, as ``reward_model``
            variables = variables + ["inner_reward.rms"]
        if self.needs_successor:
            state_dicts += ["successor", "successor_target", "successor_optimizer"]
        return state_dicts, variables


_BILEVEL_DEFAULTS = dict(
    reward_model=None,
    estimator=None,
    n_queries=1000,
    query_schedule="front_loaded",
    query_selection="uniform",
    n_candidates=1,
    segment_length=25,
    outer_freq=1000,
    reward_lr=3e-4,
    reward_batch_size=64,
    reward_steps=200,
    label_smoothing=0.0,
    hypergrad_warmup=0,
    hypergrad_coef=1.0,
    storm_mu=None,
    successor_lr=3e-4,
    successor_net_arch=(128, 128),
    n_action_samples=4,
    demo_batch_size=256,
    relabel_batch_size=8192,
    branch_states=32,
    branch_horizon=100,
    branch_rollouts=1,
    max_nonfinite_steps=5,
    pref_weight=1.0,
    absorbing_states=True,
    reward_scaling=False,
)


def _split_kwargs(kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    bilevel = {k: kwargs.pop(k, v) for k, v in _BILEVEL_DEFAULTS.items()}
    return bilevel, kwargs


class SoBiRL(BilevelMixin, SAC):
    """Soft bilevel RL with SB3's SAC as the inner learner (``Box`` action spaces).

    Args:
        policy: SAC policy (``"MlpPolicy"``, ``"CnnPolicy"``, ...).
        env: environment (id string, gymnasium env or VecEnv) returning TRUE rewards; the agent
            wraps it so that the inner learner sees the learned reward.
        feedback: :class:`birl.feedback.SyntheticTeacher` or :class:`birl.feedback.HumanTeacher`
            (preferences), :class:`birl.feedback.Demonstrations` (ML-IRL), or a list of one of
            each: the AIHF joint loss ``L_demo + pref_weight * L_pref`` (seed 002).  Required.
        reward_model: a :class:`birl.reward_models.RewardModel` (default: ``MlpReward`` with two
            hidden layers of 64 from the spaces, ``CnnReward`` for images).
        estimator: ``"successor"`` (default), ``"myopic"``, ``"branch"`` (clonable envs:
            tabular, MuJoCo, ALE; :mod:`agents.branching`) or ``"none"`` (DRLHF).
        n_queries: total preference budget of the agent (spent over the first ``learn`` call;
            later calls ask only what is left of it).
        query_schedule: ``"front_loaded"`` (a quarter at the first outer step, the rest evenly),
            ``"budgeted"`` (evenly), a mapping of :class:`birl.feedback.BudgetedSchedule` options
            (``{"initial_fraction": 0.25, "decay": 10.0}``: a quarter first, the rest at a
            hyperbolically falling rate; YAML- and ``-params``-friendly) or a
            :class:`birl.feedback.QuerySchedule` over outer steps.
        query_selection: ``"uniform"``, ``"disagreement"`` or ``"entropy"`` (the last two need a
            :class:`birl.reward_models.RewardEnsemble`), picking among ``n_candidates`` per query.
        segment_length: fragment length ``H``.
        outer_freq: environment steps between outer steps.
        reward_lr, reward_batch_size, reward_steps: Adam step size, pairs per step and steps per
            outer iteration of the reward model (default 200: on Pendulum-v1 it raised held-out
            preference accuracy from 0.77 / 0.91 with 50 to 0.82 / 0.95, ``benchmark/pendulum.md``).
        label_smoothing: Bradley-Terry label smoothing.
        hypergrad_warmup: environment steps before the second hypergradient term is switched on.
        hypergrad_coef: multiplier of the second term (1 is the hypergradient).
        storm_mu: STORM momentum parameter (Stoc-SoBiRL); ``None`` for plain steps.
        successor_lr, successor_net_arch: successor critic optimiser and architecture.
        n_action_samples: actions sampled to estimate ``E_pi`` for continuous actions.
        demo_batch_size: expert transitions per ML-IRL step.
        relabel_batch_size: batch size of the replay relabelling pass.
        branch_states, branch_horizon, branch_rollouts: ``branch`` estimator: visited pairs
            restarted per outer step (uniform subsample, reweighted), rollout truncation length and
            rollouts per pair and action.
        max_nonfinite_steps: consecutive outer steps with non-finite values (true rewards,
            labels, reward-model outputs, losses, hypergradients) that are skipped, each with a
            warning and ``outer/skipped_nonfinite`` logged, before training stops with
            ``FloatingPointError`` (positive integer, default 5).
        pref_weight: ``lambda`` of the joint loss (with both feedback kinds; ignored otherwise).
            The ML-IRL term's gradient carries a factor ``1/tau``, so with a small entropy
            coefficient it dominates at ``lambda = 1``; on Pendulum-v1 ``lambda = 10`` balanced
            the two (``benchmark/joint.md``).
        absorbing_states: preference fragments may run past a termination into an absorbing
            state of reward 0 (DAC, Kostrikov et al. 2019; :mod:`birl.feedback.segments`), so the
            reward model learns whether ending an episode is good or bad (``True``, the default;
            no effect on envs that never terminate).  ``False`` keeps fragments inside episodes,
            where a Bradley-Terry reward is only known up to a constant and that constant alone
            decides whether the learner seeks or avoids termination.
        reward_scaling: pay the inner learner ``r / rms`` instead of ``r``, ``rms`` the root mean
            square of the learned reward over the replay buffer, refitted at every relabelling
            (:class:`birl.reward_models.ScaledReward`; default ``False``).  The hypergradient then
            uses the temperature ``tau = alpha * rms`` of the soft MDP of ``r`` that the learner
            solves.  For rewards whose scale jumps between outer steps (Atari CNN rewards: replay
            mean -0.04, 86.5, then 0.05 over Pong's first two outer steps), which otherwise drive
            the discrete SAC to a collapsed, one-action policy.
        **kwargs: every other argument of :class:`stable_baselines3.SAC`.

    An unseeded :class:`birl.feedback.SyntheticTeacher` is seeded with the agent's ``seed``, so
    that one seed fixes the whole run.
    """

    def __init__(self, policy: Union[str, Type], env: Union[GymEnv, str], feedback=None, **kwargs: Any) -> None:
        if isinstance(env, str):
            env = gym.make(env)
        if env is not None and not isinstance(env.action_space, spaces.Box):
            raise ValueError(
                f"{type(self).__name__} needs a Box action space, got {env.action_space}; "
                "use DiscreteSoBiRL / DiscreteDRLHF for Discrete actions"
            )
        super().__init__(policy, env, feedback=feedback, **kwargs)

    def _ent_coef_float(self) -> float:
        if self.ent_coef_optimizer is not None:
            return float(th.exp(self.log_ent_coef.detach()))
        return float(self.ent_coef_tensor)

    def _policy_tools(self, obs):
        return (lambda o: self.actor.action_log_prob(o)[0]), None

    def _env_actions(self, buffer_actions: np.ndarray) -> np.ndarray:
        return self.policy.unscale_action(np.asarray(buffer_actions, dtype=np.float32))

    def _buffer_actions(self, env_actions: np.ndarray) -> np.ndarray:
        return self.policy.scale_action(np.asarray(env_actions, dtype=np.float32))


class DiscreteSoBiRL(BilevelMixin, DiscreteSAC):
    """Soft bilevel RL with our discrete SAC as the inner learner (``Discrete`` action spaces).

    Same arguments as :class:`SoBiRL`; ``**kwargs`` go to :class:`agents.discrete_sac.DiscreteSAC`.
    """

    def _ent_coef_float(self) -> float:
        return float(self.alpha)

    def _policy_tools(self, obs):
        with th.no_grad():
            probs, _ = self.actor.action_probs(obs)
        return None, probs


class DRLHF(SoBiRL):
    """DRLHF baseline (Christiano et al. 2017): :class:`SoBiRL` with the hypergradient's second
    term off, i.e. alternating fits of the reward (on the outer loss alone) and SAC."""

    default_estimator = "none"

    def __init__(self, policy, env, feedback=None, **kwargs):
        if kwargs.get("estimator") not in (None, "none"):
            raise ValueError("DRLHF has no hypergradient estimator: leave estimator unset")
        super().__init__(policy, env, feedback=feedback, **kwargs)


class DiscreteDRLHF(DiscreteSoBiRL):
    """:class:`DRLHF` for ``Discrete`` action spaces."""

    default_estimator = "none"

    def __init__(self, policy, env, feedback=None, **kwargs):
        if kwargs.get("estimator") not in (None, "none"):
            raise ValueError("DRLHF has no hypergradient estimator: leave estimator unset")
        super().__init__(policy, env, feedback=feedback, **kwargs)
