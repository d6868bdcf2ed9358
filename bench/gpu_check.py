"""Check training on an accelerator against the CPU, in one prepared run (under 8 minutes on one GPU).

Without an accelerator it only says so and exits 0. On one (`--device auto`,
the default, or `cuda`, `cuda:N`, `mps`):

1. agreement: 50 seeded updates of the default preset's network (dropout off,
   since the devices' random streams differ) on the CPU and on the device,
   fp32, from the same initial weights: every step's loss within
   LOSS_TOLERANCE nats;
2. speed: the default preset (its dropouts on) in units/s on the device in
   fp32 and bf16 against the CPU in the same run (the issue's aim: 100x);
3. resume on the device (close, not bit-exact): a run stopped after 11 updates and resumed
   repeats the uninterrupted run's 24 losses within RESUME_TOLERANCE
   (relative; the GPU's atomic adds in the embedding's backward are not
   bit-reproducible);
4. the device-trained checkpoint served on the CPU: it loads there, predicts
   words, and scores the test split as the run did on the device.

`--device cpu` is a dry run of every part with the CPU standing in for the
device (short budgets), to check the script itself on a machine without one.

    python bench/gpu_check.py [--corpus DIR] [--device auto|cpu|cuda|cuda:N|mps] [--seconds 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import load_corpus  # noqa: E402
from lm.checkpoint import load_checkpoint  # noqa: E402
from lm.config import ModelConfig, TrainConfig, apply_preset  # noqa: E402
from lm.eval.figures import evaluate_text  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.model import RNNLanguageModel  # noqa: E402
from lm.tokenizers import build_tokenizer  # noqa: E402
from lm.train.devices import autocast, describe_device, resolve_device  # noqa: E402
from lm.train.loop import batchify, build_optimizer, iterate_windows, train_step  # noqa: E402
from lm.train.run import seed_everything, train_run  # noqa: E402

LOSS_TOLERANCE = 0.02  # nats, at each of the 50 steps (cuDNN may use TF32 and fused kernels: not the CPU's sums)
RESUME_TOLERANCE = 1e-4  # relative, per logged loss
AGREEMENT_STEPS = 50


def _default_corpus() -> str:
    local = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "wiki-subset"
    return str(local) if (local / "train.txt").is_file() else "wiki-subset"


def _losses(model_config: ModelConfig, train_config: TrainConfig, data: torch.Tensor, device: torch.device, steps: int | None,
            seconds: float | None, precision: str = "fp32") -> tuple[list[float], float]:
    """Train from seed 0 on `device` for `steps` updates or `seconds`; the losses and the units per second (after 3 warm-up updates)."""
    seed_everything(0)
    model = RNNLanguageModel(model_config).to(device)
    optimizer = build_optimizer(model, train_config)
    data = data.to(device)
    state = model.init_state(data.size(0))
    losses, units, begun = [], 0, None
    for window in iterate_windows(data, 0, train_config.stride, train_config.bptt):
        if len(losses) == 3:
            begun, units = time.perf_counter(), 0
        result, state = train_step(model, optimizer, window, state, 0.5, None, lambda: autocast(device, precision))
        losses.append(result.loss)  # .item() inside: the step has finished on the device
        units += result.scored * data.size(0)
        if steps is not None and len(losses) >= steps:
            break
        if seconds is not None and begun is not None and time.perf_counter() - begun >= seconds:
            break
    rate = units / (time.perf_counter() - begun) if begun is not None else math.nan
    return losses, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=_default_corpus())
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps; cpu: a dry run on the CPU")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per speed measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.device == "auto" and not torch.accelerator.is_available():
        print(f"gpu_check: no accelerator here (torch {torch.__version__}: torch.accelerator.is_available() is False); "
              "nothing to check. `--device cpu` dry-runs the script.")
        return 0
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    dry = device.type == "cpu"
    seconds = min(args.seconds, 3.0) if dry else args.seconds
    cpu = torch.device("cpu")
    report: dict = {"device": describe_device(device), "torch": torch.__version__, "dry_run": dry}
    print(f"gpu_check on {report['device']} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)"
          + (" -- dry run: the CPU stands in for the device" if dry else ""))
    checks: dict[str, bool] = {}
    begun = time.perf_counter()

    # The default preset's tokenizer and network on the real corpus.
    corpus = load_corpus(args.corpus)
    tokenizer_config, model_config, train_config = apply_preset("base", {})
    tokenizer = build_tokenizer(tokenizer_config.tokenizer, corpus.train.text, tokenizer_config.vocab_size,
                                tokenizer_config.subword_type, tokenizer_config.char_min_count)
    model_config = replace(model_config, vocab_size=tokenizer.vocab_size)
    ids = torch.tensor(tokenizer.encode(corpus.train.text[: 2_000_000]), dtype=torch.long)
    data = batchify(ids, train_config.batch_size)
    print(f"default preset: {tokenizer.describe()['kind']} {tokenizer.vocab_size} units, {model_config.cell} "
          f"{model_config.embed_dim}/{model_config.hidden_dim}, B={train_config.batch_size}, bptt {train_config.bptt} "
          f"({time.perf_counter() - begun:.0f} s to tokenize)")

    # 1. The same 50 updates on the CPU and on the device.
    quiet = replace(model_config, dropout=0.0, input_dropout=0.0, embed_dropout=0.0, weight_dropout=0.0)
    steps = 10 if dry else AGREEMENT_STEPS
    on_cpu, _ = _losses(quiet, train_config, data, cpu, steps, None)
    on_device, _ = _losses(quiet, train_config, data, device, steps, None)
    gap = max(abs(a - b) for a, b in zip(on_cpu, on_device))
    checks["agreement"] = len(on_cpu) == len(on_device) == steps and gap <= LOSS_TOLERANCE
    report["agreement"] = {"steps": steps, "max_loss_gap": gap, "tolerance": LOSS_TOLERANCE,
                           "first": [on_cpu[0], on_device[0]], "last": [on_cpu[-1], on_device[-1]]}
    print(f"1. agreement: {steps} steps, largest loss gap {gap:.2e} nats (tolerance {LOSS_TOLERANCE}); "
          f"last loss cpu {on_cpu[-1]:.4f} device {on_device[-1]:.4f}: {'ok' if checks['agreement'] else 'FAILED'}")

    # 2. Units per second: the default preset as it trains, on the CPU and on the device in fp32 and bf16.
    rates = {"cpu": _losses(model_config, train_config, data, cpu, None, seconds)[1]}
    for precision in ("fp32", "bf16"):
        rates[f"device {precision}"] = _losses(model_config, train_config, data, device, None, seconds, precision)[1]
    report["units_per_s"] = rates
    print("2. speed (units/s): " + "  ".join(f"{name} {rate:,.0f}" + (f" ({rate / rates['cpu']:.1f}x cpu)" if name != "cpu" else "")
                                                for name, rate in rates.items()))

    # 3. Resume on the device, within RESUME_TOLERANCE (tiny preset with dropout: the GPU's random state must come back too).
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        root = Path(scratch)
        settings = {"max_steps": 24, "max_minutes": None, "eval_interval": 8, "eval_max_chars": 20_000, "dropout": 0.2,
                    "input_dropout": 0.1, "weight_dropout": 0.2, "variable_bptt": True, "accuracy_positions": 0}
        tiny = apply_preset("tiny", {**settings, "device": str(device)})  # train_run trains on its config's device
        seed_everything(tiny[2].seed)
        whole = train_run(*tiny, root / "whole", corpus=corpus)
        stops = iter(range(10**6))
        seed_everything(tiny[2].seed)
        train_run(*tiny, root / "split", corpus=corpus, should_stop=lambda: next(stops) >= 11)
        seed_everything(4321)
        resumed = train_run(*tiny, root / "split", corpus=corpus, resume=True)
        read = lambda run: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                            if json.loads(line)["kind"] == "step"]
        a, b = read(root / "whole"), read(root / "split")
        worst = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=math.inf)
        checks["resume"] = len(a) == len(b) == 24 and resumed.state.step == 24 and worst <= RESUME_TOLERANCE
        report["resume"] = {"steps": len(b), "max_relative_gap": worst, "tolerance": RESUME_TOLERANCE}
        print(f"3. resume on the device: {len(b)} steps, largest relative loss gap {worst:.1e} "
              f"(tolerance {RESUME_TOLERANCE}): {'ok' if checks['resume'] else 'FAILED'}")

        # 4. The device-trained checkpoint on the CPU.
        served = load_checkpoint(root / "whole")
        on_cpu_test = evaluate_text(served.model, served.tokenizer, corpus.test.text, corpus.test.raw_words)
        words = Predictor(served.model, served.tokenizer).predict("The capital of ", k=3).predictions
        relative = abs(on_cpu_test.nll - whole.test.nll) / whole.test.nll
        checks["served_on_cpu"] = (next(served.model.parameters()).device.type == "cpu" and len(words) == 3
                                   and relative <= 1e-3)
        report["served_on_cpu"] = {"test_bpc_device": whole.test.bpc, "test_bpc_cpu": on_cpu_test.bpc,
                                   "relative_gap": relative, "words": [w.word for w in words]}
        print(f"4. served on the CPU: test {on_cpu_test.bpc:.4f} bpc (on the device {whole.test.bpc:.4f}), "
              f"predicts {', '.join(repr(w.word) for w in words)}: {'ok' if checks['served_on_cpu'] else 'FAILED'}")

    report["checks"] = checks
    report["seconds"] = time.perf_counter() - begun
    print(f"{sum(checks.values())}/{len(checks)} checks passed in {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
