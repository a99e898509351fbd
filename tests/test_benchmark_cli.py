"""The benchmark front end: every suite is wired to an argument parser and a run function."""

import inspect
from importlib import import_module

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
    args = build_parser().parse_args(["model-based", "--msobirl-params", "gradient_steps=10"])
    assert parse_params(args.msobirl_params) == {"gradient_steps": 10}
    with pytest.raises(ValueError, match="--params: estimator"):
        parse_params(["estimator=none"])  # a bare name is not a Python literal
