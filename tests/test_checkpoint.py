"""Checkpoints: round trips, atomic writes, resume state, refusal of damaged or foreign directories."""

import json
import shutil

import pytest
import torch

from lm import checkpoint as checkpoint_module
from lm.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, restore_training, save_checkpoint
from dataclasses import replace

from lm.config import TokenizerConfig, TrainConfig
from lm.model import RNNLanguageModel
from lm.train.loop import TrainingState, build_optimizer


@pytest.fixture
def saved(tmp_path, char_tokenizer):
    from lm.config import ModelConfig

    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(cell="gru", vocab_size=char_tokenizer.vocab_size, embed_dim=16, hidden_dim=24, num_layers=2))
    config = TrainConfig()
    optimizer = build_optimizer(model, config)
    ids = torch.randint(0, char_tokenizer.vocab_size, (2, 9))
    model(ids)[0].sum().backward()
    optimizer.step()
    state = TrainingState(step=7, epoch=1, position=123, carried=torch.randn(2, 2, 24), python_rng=[3, [1, 2], None])
    directory = save_checkpoint(tmp_path / "run" / "last", model, char_tokenizer, TokenizerConfig(tokenizer="char"), config,
                                corpus={"name": "test"}, metrics={"valid": {"bpc": 2.0}}, optimizer=optimizer, state=state)
    return directory, model, optimizer, state


def test_round_trip_gives_the_same_predictions(saved, char_tokenizer):
    directory, model, _, _ = saved
    loaded = load_checkpoint(directory)
    ids = torch.tensor([char_tokenizer.encode("Hello there")])
    model.eval()
    torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0])
    assert loaded.tokenizer.encode("Hello") == char_tokenizer.encode("Hello")
    assert loaded.metrics["valid"]["bpc"] == 2.0
    assert not loaded.model.training
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "training.json", "training.safetensors"]


def test_tied_weights_stay_tied_after_loading(tmp_path, char_tokenizer):
    from lm.config import ModelConfig

    model = RNNLanguageModel(ModelConfig(cell="lstm", vocab_size=char_tokenizer.vocab_size, embed_dim=8, hidden_dim=8, num_layers=1))
    save_checkpoint(tmp_path / "c", model, char_tokenizer, TokenizerConfig(tokenizer="char"), TrainConfig(), corpus={})
    loaded = load_checkpoint(tmp_path / "c").model
    assert loaded.decoder.weight is loaded.embedding.weight
    torch.testing.assert_close(loaded.embedding.weight, model.embedding.weight)


def test_training_state_restores_optimizer_rng_and_carried_state(saved):
    directory, model, optimizer, state = saved
    expected_rng = torch.get_rng_state()
    torch.manual_seed(999)
    fresh = RNNLanguageModel(model.config)
    fresh_optimizer = build_optimizer(fresh, TrainConfig())
    resumed = restore_training(directory, fresh, fresh_optimizer)
    restored = TrainingState.from_json(resumed.state, resumed.carried)
    assert (restored.step, restored.epoch, restored.position) == (7, 1, 123)
    torch.testing.assert_close(restored.carried, state.carried)
    assert restored.python_rng == [3, [1, 2], None]
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for old, new in zip(model.parameters(), fresh.parameters()):
        torch.testing.assert_close(new, old)
        a, b = optimizer.state[old], fresh_optimizer.state[new]
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
        torch.testing.assert_close(a["step"], b["step"])


def test_a_crash_while_writing_leaves_the_previous_checkpoint(saved, monkeypatch, char_tokenizer):
    directory, model, _, _ = saved
    before = (directory / "model.safetensors").read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_model", explode)
    with pytest.raises(OSError):
        save_checkpoint(directory, model, char_tokenizer, TokenizerConfig(tokenizer="char"), TrainConfig(), corpus={})
    assert (directory / "model.safetensors").read_bytes() == before
    assert [p.name for p in directory.parent.iterdir()] == ["last"]  # no temporary left behind
    load_checkpoint(directory)


def test_a_crash_between_the_renames_is_recovered(saved):
    directory, _, _, _ = saved
    directory.rename(directory.with_name("last.old"))
    assert resolve_checkpoint(directory) == directory.with_name("last.old")
    assert resolve_checkpoint(directory.parent).name == "last.old"
    load_checkpoint(directory.parent)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 40), "damaged or mismatched weights"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]), "damaged or mismatched weights"),
    (lambda d: (d / "config.json").write_text("{not json"), "damaged config.json"),
    (lambda d: (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]})), "not a Reach checkpoint"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer files"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "format_version": 99})), "format 99"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "model": {"cell": "lstm", "vocab_size": 5, "hidden_dim": 3}})), "units but the model|weights"),
])
def test_damaged_or_foreign_checkpoints_are_refused_clearly(saved, damage, message):
    directory = saved[0]
    damage(directory)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(directory)
    assert "\n" not in str(caught.value)


def test_missing_and_empty_directories_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no Reach checkpoint"):
        load_checkpoint(tmp_path)


def test_a_run_directory_serves_its_best_checkpoint(tiny_run):
    assert resolve_checkpoint(tiny_run.out).name == "best"
    meta = json.loads((tiny_run.out / "best" / "config.json").read_text())
    assert meta["metrics"]["test"]["bpc"] == pytest.approx(tiny_run.test.bpc)
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["train"]["bptt"] == 32 and meta["model"]["cell"] == "lstm"


def test_loading_never_unpickles(saved, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_checkpoint(saved[0])
    restore_training(saved[0], saved[1], saved[2])


def test_a_model_moved_away_and_back_saves_float32_cpu_weights_without_touching_the_rng(tmp_path, char_tokenizer):
    """As a GPU run does: the weights live elsewhere (here float64), the checkpoint is the CPU float32 model."""
    from safetensors.torch import load_file

    from lm.config import ModelConfig

    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(cell="lstm", vocab_size=char_tokenizer.vocab_size, embed_dim=16, hidden_dim=16))
    expected = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.to(torch.float64)
    rng = torch.get_rng_state()
    directory = save_checkpoint(tmp_path / "moved", model, char_tokenizer, TokenizerConfig(tokenizer="char"), TrainConfig(),
                                corpus={"name": "test"})
    assert torch.equal(torch.get_rng_state(), rng)  # saving never changes what an exact resume replays
    assert {t.dtype for t in load_file(str(directory / "model.safetensors")).values()} == {torch.float32}
    loaded = load_checkpoint(directory)
    assert loaded.model.decoder.weight is loaded.model.embedding.weight  # still tied
    for name, p in loaded.model.named_parameters():
        assert p.device.type == "cpu"
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=0, msg=name)


def test_the_accelerator_rng_state_comes_back_for_its_rank_and_is_optional(saved, tmp_path, char_tokenizer):
    directory, model, optimizer, state = saved
    assert restore_training(directory, model, optimizer).accelerator_rng is None  # a CPU run's checkpoint
    generators = torch.arange(32, dtype=torch.uint8).view(2, 16)  # two ranks' GPU generator states
    both = save_checkpoint(tmp_path / "gpu", model, char_tokenizer, TokenizerConfig(tokenizer="char"), TrainConfig(),
                           corpus={"name": "test"}, optimizer=optimizer, state=state,
                           rng_states=torch.stack([torch.get_rng_state()] * 2), accelerator_rng=generators)
    assert torch.equal(restore_training(both, model, optimizer, rank=1, world_size=2).accelerator_rng, generators[1])
    assert restore_training(both, model, optimizer, rank=0, world_size=1).accelerator_rng is None  # another process count


def test_a_bf16_autocast_run_loads_and_serves_on_the_cpu(tmp_path, corpus):
    from conftest import train_tiny
    from lm.infer.predictor import Predictor

    result = train_tiny(tmp_path / "bf16", corpus, precision="bf16", max_steps=12, eval_interval=6, eval_max_chars=2000,
                        accuracy_positions=0)
    assert result.state.step == 12 and result.valid.bpc < 7
    loaded = load_checkpoint(tmp_path / "bf16")
    assert loaded.train_config.precision == "bf16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    predictions = Predictor(loaded.model, loaded.tokenizer).predict("The capital of ", k=3).predictions
    assert len(predictions) == 3 and all(0 < p.probability <= 1 for p in predictions)


def test_a_checkpoint_written_before_the_naming_pass_still_loads_and_resumes(saved, char_tokenizer):
    """Its config.json says "tune_cache" (now tune_text_cache) and stores the text cache as metrics "cache" (now
    "text_cache"): both are read under the new names, and the next metrics update writes the new names only."""
    from lm.checkpoint import TEXT_CACHE_METRIC, update_metrics
    from lm.config import TextCacheConfig
    from lm.train.run import resume_configs

    directory = saved[0]
    meta = json.loads((directory / "config.json").read_text())
    meta["train"]["tune_cache"] = meta["train"].pop("tune_text_cache")
    meta["train"]["tune_cache"] = False  # the default is True: a value that was lost would show
    meta["metrics"]["cache"] = {"window": 300, "theta": 2.0, "weight": 0.3, "size_weights": [[1, 0.0], [64, 0.2]],
                                "chosen": "tuned on the valid split"}
    (directory / "config.json").write_text(json.dumps(meta))

    loaded = load_checkpoint(directory)
    assert loaded.train_config.tune_text_cache is False
    assert loaded.text_cache_settings == TextCacheConfig(window=300, theta=2.0, weight=0.3, size_weights=((1, 0.0), (64, 0.2)))
    assert loaded.metrics[TEXT_CACHE_METRIC]["chosen"] == "tuned on the valid split" and "cache" not in loaded.metrics
    assert resume_configs(directory.parent, {})[2].tune_text_cache is False  # train.py --resume continues with it
    restore_training(directory, saved[1], saved[2])  # the training state is unchanged by the rename

    update_metrics(directory, {"accuracy": None})
    written = json.loads((directory / "config.json").read_text())
    assert written["metrics"]["text_cache"]["window"] == 300 and "cache" not in written["metrics"]
    assert load_checkpoint(directory).text_cache_settings.window == 300
