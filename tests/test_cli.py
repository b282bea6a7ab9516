"""User mistakes become one line each."""
from __future__ import annotations

from hydra.errors import MissingConfigException

from framework.cli import describe
from framework.config import ConfigError


def test_describe_config_error_and_missing_option():
    assert describe(ConfigError(["a=1: bad", "b=2: worse"])) == ["a=1: bad", "b=2: worse"]
    exc = MissingConfigException("Could not find 'optimizer/adamm'", "optimizer/adamm", ["adam"])
    [line] = describe(exc)
    assert line.startswith("optimizer=adamm: no such option (did you mean adam")
    assert "adamw" in line and "sgd" in line


def test_other_exceptions_are_not_user_mistakes():
    assert describe(RuntimeError("boom")) is None
