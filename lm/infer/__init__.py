"""The CPU inference engine and what is built on it: next-word prediction, next-word accuracy and gradient reach.

`engine` steps a model on the CPU; `predictor` (with `query`, `units`, `reads`, `textcache`, `search` and `scoring`)
predicts next words and is the one way the modules above it read the model; `generate` continues a text; `accuracy`
measures predictions along a text; `attribution` gives each prediction's reach (`attributed`: its results,
`word_gradients` and `context_grad`: the gradients, `reach` and `pointer`: the figures, `faithfulness`: the check)
(see docs/ARCHITECTURE.md).
"""
