"""The CPU inference engine and what is built on it: next-word prediction, next-word accuracy and gradient reach.

`engine` steps a model on the CPU; `predictor` (with `query`, `units`, `reads`, `search` and `scoring`) predicts
next words; `accuracy` measures them along a text; `context_grad` and `attribution` give each prediction's reach
(see docs/ARCHITECTURE.md).
"""
