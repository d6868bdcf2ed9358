"""Held-out scoring on one scale for every tokenizer (`figures`), the text cache, a continuous cache over the text read (`cache`) and dynamic evaluation (`dynamic`).

Never imports `lm/infer`: evaluation reads streams with the portable model (see docs/ARCHITECTURE.md).
"""
