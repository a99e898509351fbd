"""Feedback for the outer level: segments, a synthetic teacher, query selection, datasets, losses.

The pieces mirror a preference-learning pipeline (DESIGN.md section 5):
fragmenter (:mod:`.segments`) -> query selection and schedule (:mod:`.queries`) -> teacher
(:mod:`.teacher`, or a person through :mod:`.human`) -> dataset (:mod:`.datasets`) -> loss (:mod:`.losses`) on a reward model
(:mod:`birl.reward_models`).  numpy + torch only.
"""

from birl.feedback.datasets import Demonstrations, PreferenceDataset, validate_labels
from birl.feedback.human import HumanTeacher, LabelStore
from birl.feedback.losses import bradley_terry_nll, demonstration_nll, preference_accuracy, segment_returns
from birl.feedback.queries import (
    BudgetedSchedule,
    ConstantSchedule,
    HyperbolicSchedule,
    QuerySchedule,
    make_schedule,
    preference_probabilities,
    select_disagreement,
    select_entropy,
    select_queries,
    select_uniform,
)
from birl.feedback.segments import (
    Segment,
    SegmentBatch,
    Trajectory,
    sample_segments_from_buffer,
    sample_segments_from_rollouts,
    valid_window_starts,
)
from birl.feedback.teacher import SyntheticTeacher

__all__ = [
    "Segment",
    "SegmentBatch",
    "Trajectory",
    "sample_segments_from_buffer",
    "sample_segments_from_rollouts",
    "valid_window_starts",
    "SyntheticTeacher",
    "HumanTeacher",
    "LabelStore",
    "select_uniform",
    "select_disagreement",
    "select_entropy",
    "select_queries",
    "preference_probabilities",
    "QuerySchedule",
    "ConstantSchedule",
    "HyperbolicSchedule",
    "BudgetedSchedule",
    "make_schedule",
    "PreferenceDataset",
    "Demonstrations",
    "validate_labels",
    "bradley_terry_nll",
    "demonstration_nll",
    "preference_accuracy",
    "segment_returns",
]
