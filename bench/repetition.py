"""Does generation repeat itself more with the text cache? Seeded continuations with the cache on and off.

    python bench/repetition.py --model runs/base [--corpus DIR] [--prompts 40] [--prompt-words 12 100] [--words 50]

At seeded positions of the test split, the prompt is the N words before the
position (for each N of `--prompt-words`); the model continues it by
`--words` words (`lm generate`'s defaults: top-k 20, temperature 1, seed =
the prompt's index) with the text cache forced on and with the model alone,
and the test text's own next `--words` words are the reference. Each
continuation is cut into words as Reach predicts them (runs of letters and
digits, or one other character) and measured by

- repeated 3-grams: the share of its word trigrams that already occurred
  earlier in the same continuation (0 for text that never repeats itself);
- distinct-2: distinct word bigrams over all its bigrams (1 for no repeat);
- the share of its words that occur in the prompt (copying the prompt).

The figures are means over prompts, and the cache is compared with the
model alone prompt by prompt (how many prompts repeat more with it; exact
sign test). The last line is
`repeated 3-grams: cache C, alone A, text T (N words)` for the first N.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpora import CorpusError  # noqa: E402
from lm.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lm.infer.accuracy import prompt_of, prompt_positions, sign_test, word_positions  # noqa: E402
from lm.infer.generate import GenerationSettings, generate  # noqa: E402
from lm.infer.predictor import Predictor  # noqa: E402
from lm.train.run import set_threads  # noqa: E402
from lm.train.tokens import load_streamed_corpus  # noqa: E402

_WORDS = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


def words_of(text: str) -> list[str]:
    """`text` cut into words as Reach predicts them: runs of letters and digits, or one other non-space character."""
    return _WORDS.findall(text)


def repetition(words: list[str], prompt: list[str] | None = None) -> dict[str, float]:
    """Repeated-3-gram rate, distinct-2 and (with `prompt`) the share of words found in the prompt."""
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    seen, repeated = set(), 0
    for gram in trigrams:
        repeated += gram in seen
        seen.add(gram)
    bigrams = [tuple(words[i : i + 2]) for i in range(len(words) - 1)]
    figures = {"repeated_3grams": repeated / len(trigrams) if trigrams else 0.0,
               "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 1.0}
    if prompt is not None:
        known = set(prompt)
        figures["from_prompt"] = sum(word in known for word in words) / len(words) if words else 0.0
    return figures


def measure(predictor: Predictor, text: str, prompt_words: int, prompts: int, words: int, seed: int) -> dict:
    """Continuations of `prompts` seeded prompts of `prompt_words` words, with the cache and alone, and the text's own."""
    starts = word_positions(text)
    positions = prompt_positions(text, prompts, seed, min_words=prompt_words)
    rows = {"text_cache": [], "alone": [], "text": []}
    settings = GenerationSettings(words=words)
    for index, position in enumerate(positions):
        prompt = prompt_of(text, position, prompt_words, starts)
        prompt_words_list = words_of(prompt)
        following = words_of(text[position : position + 40 * words])[:words]
        rows["text"].append(repetition(following, prompt_words_list))
        for name, switch in (("text_cache", True), ("alone", False)):
            generation = generate(predictor, prompt, settings, seed=index, text_cache=switch)
            rows[name].append(repetition(words_of(generation.continuation), prompt_words_list))
    summary = {name: {key: statistics.mean(row[key] for row in values) for key in values[0]} for name, values in rows.items()}
    more = sum(c["repeated_3grams"] > a["repeated_3grams"] for c, a in zip(rows["text_cache"], rows["alone"]))
    fewer = sum(c["repeated_3grams"] < a["repeated_3grams"] for c, a in zip(rows["text_cache"], rows["alone"]))
    return {"prompt_words": prompt_words, "prompts": len(positions), "words": words, **summary,
            "cache_repeats_more": more, "cache_repeats_less": fewer, "p_value": sign_test(more, fewer)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run or checkpoint directory")
    parser.add_argument("--corpus", default=None, help="corpus (default: the name the checkpoint stores)")
    parser.add_argument("--prompts", type=int, default=40, help="seeded prompts per length (default: 40)")
    parser.add_argument("--prompt-words", type=int, nargs="+", default=[12, 100], help="prompt lengths in words")
    parser.add_argument("--words", type=int, default=50, help="words generated per prompt (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt positions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
        corpus = load_streamed_corpus(args.corpus or checkpoint.train_config.corpus)
    except (CheckpointError, CorpusError) as error:
        print(f"repetition: error: {error}", file=sys.stderr)
        return 1
    if checkpoint.text_cache_settings is None:
        print("repetition: error: the checkpoint stores no text-cache settings", file=sys.stderr)
        return 1
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings)
    results = [measure(predictor, corpus.test.text, n, args.prompts, args.words, args.seed) for n in args.prompt_words]
    if args.json:
        print(json.dumps({"model": str(checkpoint.directory), "results": results}, indent=2))
    for result in results:
        print(f"{result['prompt_words']}-word prompts, {result['prompts']} continuations of {result['words']} words:")
        for name in ("text_cache", "alone", "text"):
            figures = result[name]
            print(f"  {name:>10}: repeated 3-grams {figures['repeated_3grams']:.3f}  distinct-2 {figures['distinct_2']:.3f}  "
                  f"words from the prompt {figures['from_prompt']:.3f}")
        print(f"  the cache repeats more in {result['cache_repeats_more']} continuations, less in "
              f"{result['cache_repeats_less']} (sign test p = {result['p_value']:.2g})")
    first = results[0]
    print(f"repeated 3-grams: cache {first['text_cache']['repeated_3grams']:.3f}, alone {first['alone']['repeated_3grams']:.3f}, "
          f"text {first['text']['repeated_3grams']:.3f} ({first['prompt_words']} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
