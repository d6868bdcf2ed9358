"""The naming pass of issue 27: the prefix cache, the text cache and the token cache each have their own names,
and every old flag, environment variable and setting still works, with one deprecation line naming the new one."""

import logging

import pytest

import train
from lm.__main__ import build_parser
from lm.__main__ import main as lm_main
from lm.config import apply_preset
from server import create_app
from server.__main__ import parse_args as server_args
from server.settings import settings_from_environment


@pytest.mark.parametrize("old, new, value", [("--tune-cache", "--tune-text-cache", True),
                                             ("--no-tune-cache", "--no-tune-text-cache", False)])
def test_train_py_keeps_the_old_tune_cache_flags_with_a_deprecation_line(capsys, old, new, value):
    assert train.parse_args(["--preset", "tiny", old]).tune_text_cache is value
    assert capsys.readouterr().err.strip() == f"train.py: warning: {old} is deprecated; use {new}"
    assert train.parse_args(["--preset", "tiny", new]).tune_text_cache is value
    assert capsys.readouterr().err == ""


def test_train_py_help_shows_only_the_new_flag(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--tune-text-cache" in shown and "--tune-cache" not in shown


def test_an_old_setting_name_still_configures_a_run_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        train_config = apply_preset("tiny", {"tune_cache": True})[2]
    assert train_config.tune_text_cache is True
    assert "the setting tune_cache is deprecated; use tune_text_cache" in caplog.messages


@pytest.mark.parametrize("command, old, new, dest, value", [
    (["evaluate", "--model", "m"], ["--cache", "tune"], "--text-cache", "text_cache", "tune"),
    (["evaluate", "--model", "m"], ["--no-cache"], "--no-text-cache", "no_text_cache", True),
    (["evaluate", "--model", "m"], ["--predict-cache", "300,2,0.05"], "--predict-text-cache", "predict_text_cache", None),
    (["predict", "--model", "m", "a "], ["--no-cache"], "--no-text-cache", "text_cache", False),
    (["attribute", "--model", "m", "a "], ["--no-cache"], "--no-text-cache", "text_cache", False),
    (["generate", "--model", "m", "a "], ["--no-cache"], "--no-text-cache", "text_cache", False),
])
def test_lm_keeps_the_old_text_cache_flags_with_a_deprecation_line(capsys, command, old, new, dest, value):
    args = build_parser().parse_args(command + old)
    given = getattr(args, dest)
    assert given == value if value is not None else given.window == 300 and given.weight == 0.05
    assert capsys.readouterr().err.strip() == f"python -m lm {command[0]}: warning: {old[0]} is deprecated; use {new}"
    assert getattr(build_parser().parse_args(command + [new] + old[1:]), dest) == given
    assert capsys.readouterr().err == ""


def test_lm_tune_cache_is_a_deprecated_name_of_tune_text_cache(capsys, tmp_path):
    assert lm_main(["tune-cache", "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "python -m lm: warning: tune-cache is deprecated; use tune-text-cache"
    assert "no model at" in err[1]
    assert lm_main(["tune-text-cache", "--model", str(tmp_path / "none")]) == 1
    assert "deprecated" not in capsys.readouterr().err


@pytest.mark.parametrize("old, new", [("--cache-size", "--prefix-cache-size"), ("--cache-mb", "--prefix-cache-mb")])
def test_the_development_server_keeps_the_old_prefix_cache_flags_hidden_with_a_deprecation_line(capsys, old, new):
    args = server_args(["--model", "m", old, "5"])
    assert getattr(args, new[2:].replace("-", "_")) == 5
    assert capsys.readouterr().err.strip() == f"python -m server: warning: {old} is deprecated; use {new}"
    with pytest.raises(SystemExit):
        server_args(["--model", "m", old, "-1"])  # checked as the new flag is
    capsys.readouterr()
    with pytest.raises(SystemExit):
        server_args(["--help"])
    shown = capsys.readouterr().out
    assert new in shown and old + " " not in shown


@pytest.mark.parametrize("old, new", [("REACH_CACHE_SIZE", "REACH_PREFIX_CACHE_SIZE"), ("REACH_CACHE_MB", "REACH_PREFIX_CACHE_MB")])
def test_the_old_prefix_cache_environment_variables_still_work_with_a_deprecation_line(caplog, old, new):
    with caplog.at_level(logging.WARNING):
        assert settings_from_environment({old: "3"}) == {new: 3}
    assert caplog.messages == [f"environment variable {old} is deprecated; use {new}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert settings_from_environment({old: "3", new: "4"}) == {new: 4}  # the new name wins
    assert caplog.messages == [f"environment variable {old} is deprecated; use {new} (ignored: {new} is set too)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert settings_from_environment({new: "4"}) == {new: 4}
    assert caplog.messages == []


def test_the_old_prefix_cache_keys_given_to_create_app_still_work_with_a_deprecation_line(caplog, monkeypatch):
    for name in ("REACH_CACHE_SIZE", "REACH_CACHE_MB", "REACH_PREFIX_CACHE_SIZE", "REACH_PREFIX_CACHE_MB"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING):
        app = create_app({"TESTING": True, "REACH_MODELS": {}, "REACH_CACHE_SIZE": 3, "REACH_CACHE_MB": 5})
    assert (app.config["REACH_PREFIX_CACHE_SIZE"], app.config["REACH_PREFIX_CACHE_MB"]) == (3, 5)
    assert "REACH_CACHE_SIZE" not in app.config and "REACH_CACHE_MB" not in app.config
    assert "setting REACH_CACHE_SIZE is deprecated; use REACH_PREFIX_CACHE_SIZE" in caplog.messages
    assert "setting REACH_CACHE_MB is deprecated; use REACH_PREFIX_CACHE_MB" in caplog.messages
    with pytest.raises(ValueError, match="REACH_PREFIX_CACHE_SIZE"):
        create_app({"TESTING": True, "REACH_MODELS": {}, "REACH_CACHE_SIZE": -1})
