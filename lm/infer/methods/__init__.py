"""Attribution methods, one module per method, and the registry that attribution, the server and the CLI ask.

Adding a method is adding one module here: every module of this package that
defines a module-level `METHOD` (a `Method`, lm/infer/methods/base.py) is
imported and registered when the package is imported, in `Method.order`.
`method` over HTTP, `--method` in `lm attribute`, the page's menu and
/openapi.json then offer it (they read `method_names()`); add its name to
lm/config.py's ATTRIBUTION_METHODS too (the bottom floor's list of names,
which tests/test_methods.py checks against this registry).

The contract, for a module `lm/infer/methods/<name>.py`:

    from lm.infer.methods.base import Method, MethodContext, MethodFigures, MethodOutput

    def compute(ctx: MethodContext) -> MethodOutput: ...

    METHOD = Method("<name>", "one line: what a unit's influence is", compute, order=30)

`compute` gets one `MethodContext` per attributed text:
- `ctx.predictor`: the Predictor (its public reading methods: `trace`,
  `backward`, `differentiable_step`, `differentiable_cells`, `output_from_state`, `context_from`,
  `reads_after`, `score_word` ...; `predictor.model`, `predictor.tokenizer`);
- `ctx.trace`: the one read of the text that the prediction used
  (lm/infer/context_grad.py ContextTrace: `ids` (n + 1,) with the leading
  line break, each layer's `inputs` (the embeddings for layer 0) and
  `outputs`, `final` state (L, 1, S));
- `ctx.result`: the PredictionResult with the k predictions to attribute
  (each WordPrediction's `word`, `logprob` and spelling `paths`;
  `result.text_cache`: the words were predicted mixed with the text cache);
- `ctx.query`, `ctx.spans` (each of the n context units' (start, end) in
  `query.context`), `ctx.units` (the n unit ids), `ctx.temperature`;
- `ctx.options`: MethodOptions (`steps`, `baseline` "zero"/"pad" for
  integrated gradients; `rungs` for occlusion): read those that apply;
- `ctx.foil`: None, or the foil word as a scored WordPrediction. With a
  foil the objective is log P(word) - log P(foil) instead of log P(word):
  every method must honour it (gradient methods get both from
  `lm/infer/methods/gradients.py: objective_gradients`, which adds the foil
  as one more row of `prediction_gradients`); `ctx.foil.logprob` may be
  `lm.infer.scoring.NEG` (probability 0: no contrast exists; return zeros).

It returns a `MethodOutput`: `influence` (k, n) float64, non-negative, one
row per prediction in `ctx.result.predictions` order, one column per context
unit in text order; and optionally `figures`, one `MethodFigures` per
prediction (`completeness` for integrated gradients, `ladder` and
`exact_reach` for occlusion). Everything else (reach figures, aggregation to
words and sentences, the cost in milliseconds, the text cache's pointer,
faithfulness, the answer's JSON) is done by lm/infer/attribution.py and
lm/answers.py, the same way for every method. `compute` must not touch
parameter `.grad` (requests share the model) and should raise ValueError
for an input it cannot attribute.
"""

from __future__ import annotations

import importlib
import pkgutil

from lm.infer.methods.base import (BASELINES, MAX_RUNGS, MAX_STEPS, Completeness, Method, MethodContext, MethodFigures,
                                   MethodOptions, MethodOutput, Rung)

__all__ = ["BASELINES", "Completeness", "MAX_RUNGS", "MAX_STEPS", "Method", "MethodContext", "MethodFigures",
           "MethodOptions", "MethodOutput", "Rung", "get_method", "method_names", "register", "unregister"]

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` available under `method.name`."""
    if method.name in _REGISTRY:
        raise ValueError(f"an attribution method named {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Forget the method called `name` (for tests that register a method of their own)."""
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in their `order`."""
    return tuple(sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].order, name)))


def get_method(name: str) -> Method:
    """The registered method called `name`; ValueError naming the others when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(method_names())}, not {name!r}") from None


for _module in pkgutil.iter_modules(__path__):
    _loaded = importlib.import_module(f"{__name__}.{_module.name}")
    if isinstance(getattr(_loaded, "METHOD", None), Method):
        register(_loaded.METHOD)
