"""The OpenAPI 3.0 document of the API, with the configured limits filled in."""

from __future__ import annotations

__all__ = ["openapi_document"]

_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_STRING = {"type": "string"}
_BOOLEAN = {"type": "boolean"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _schemas(limits: dict) -> dict:
    reach = {
        "type": "object",
        "required": ["tokens", "words", "chars", "mass90_tokens", "mass99_tokens", "threshold"],
        "properties": {name: _INTEGER for name in ("tokens", "words", "chars", "mass90_tokens", "mass99_tokens",
                                                   "mass90_words", "mass99_words", "mass90_chars", "mass99_chars")}
        | {"threshold": _NUMBER},
        "description": "How far back influence reaches from the prediction point (the last unit read is at distance 1).",
    }
    distance = {"type": "object", "required": ["tokens", "words", "chars"],
                "properties": {"tokens": _INTEGER, "words": _INTEGER, "chars": _INTEGER}}
    pointer = {
        "type": "object", "nullable": True,
        "required": ["reach", "copy_probability", "entries", "own_share", "deletion_reach"],
        "properties": {
            "reach": {"type": "object", "required": ["tokens", "words", "chars", "threshold"],
                      "properties": {"tokens": _INTEGER, "words": _INTEGER, "chars": _INTEGER, "threshold": _NUMBER},
                      "description": "distance back to the farthest position whose share of the copies is at least "
                                    "threshold times the largest share (0: the cache copies from nowhere in the text)"},
            "copy_probability": {"type": "number", "minimum": 0, "maximum": 1,
                                 "description": "the probability, given the word, that the mixture copied at least "
                                                "one of its units (or the boundary after it) from the cache's memory"},
            "entries": {"type": "integer", "minimum": 0,
                        "description": "memory entries of the text that vote for one of the word's units"},
            "own_share": {"type": "number", "minimum": 0, "maximum": 1,
                          "description": "share of the copies made from the word's own earlier units"},
            "deletion_reach": {
                "type": "object", "required": ["99", "90"],
                "properties": {level: {"allOf": [{"$ref": "#/components/schemas/Distance"}],
                                       "properties": {"tolerance": _NUMBER}} for level in ("99", "90")},
                "description": "exact: cutting the text to its last `tokens` units moves log P(word) through the cache "
                               "by at most `tolerance` nats (0.01 for 99, 0.105 for 90), the model's own "
                               "distributions held fixed"},
            "positions": {"type": "array", "description": "only with attribution full; in text order: each unit the "
                                                          "cache copies (at least 0.1% of the copies) with its share; "
                                                          "offsets index into the response's text",
                          "items": {"type": "object", "required": ["text", "start", "end", "share"],
                                    "properties": {"text": _STRING, "start": _INTEGER, "end": _INTEGER,
                                                   "share": {"type": "number", "minimum": 0, "maximum": 1}}}},
        },
        "description": "The continuous cache's pointer: where in the text the cache copies the word from, how "
                       "likely it copied, and how far back cutting the text would change it; null when the cache "
                       "is not mixed in.",
    }
    unit = {"type": "object", "required": ["text", "start", "end", "score", "word"],
            "description": "a unit read, with its character offsets into the response's text",
            "properties": {"text": _STRING, "start": _INTEGER, "end": _INTEGER, "score": _NUMBER,
                           "word": {"type": "integer", "description": "index into word_influence"}}}
    word = {"type": "object", "required": ["text", "start", "end", "score"],
            "description": "a word read, with its character offsets into the response's text",
            "properties": {"text": _STRING, "start": _INTEGER, "end": _INTEGER, "score": _NUMBER}}
    prediction = {
        "type": "object",
        "required": ["word", "probability", "logprob", "remainder"],
        "properties": {
            "word": _STRING,
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "logprob": _NUMBER,
            "remainder": {"type": "string", "description": "what is still to type when completing a word"},
            "reach": {"allOf": [{"$ref": "#/components/schemas/Reach"}],
                      "description": "what holds for the prediction as served: the gradient's reach, widened by the "
                                     "cache's exact deletion reach when the cache is mixed in"},
            "gradient_reach": {"allOf": [{"$ref": "#/components/schemas/Reach"}],
                               "description": "the gradient's reach alone"},
            "pointer": {"$ref": "#/components/schemas/Pointer"},
            "faithfulness": {"type": "object", "description": "replaced_chars and removed_chars count from the "
                             "start of the text read (context.dropped_chars)", "properties": {
                "replaced_chars": _INTEGER, "logprob": _NUMBER, "logprob_change": _NUMBER,
                "cut": {"type": "object", "properties": {"removed_chars": _INTEGER, "logprob": _NUMBER,
                                                         "logprob_change": _NUMBER}}}},
            "influence": {"type": "array", "items": {"$ref": "#/components/schemas/UnitInfluence"}},
            "word_influence": {"type": "array", "items": {"$ref": "#/components/schemas/WordInfluence"}},
            "profile": {"type": "array", "items": _NUMBER, "description": "influence by distance 1, 2, ... divided by its maximum"},
        },
    }
    return {
        "PredictRequest": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {
                "text": {"type": "string", "maxLength": limits["max_text_chars"],
                         "description": "the text so far; a trailing space asks for the next word, none for completions"},
                "k": {"type": "integer", "minimum": 1, "maximum": limits["max_k"], "default": min(5, limits["max_k"])},
                "model": {"type": "string", "nullable": True, "description": "a served model's name (default: the first)"},
                "attribution": {"type": "string", "enum": ["summary", "full", "none"], "default": "summary"},
                "threshold": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                              "maximum": 1, "default": 0.01},
                "method": {"type": "string", "enum": ["saliency", "grad_x_input"], "default": "saliency"},
                "verify": {"type": "boolean", "default": False,
                           "description": "replace the text beyond the 99% mass reach by filler and report the change"},
                "cache": {"type": "boolean", "description": "mix the continuous cache over the text into the predictions "
                          "and their attribution (default: on when the model's cache settings are tuned by prompt length)"},
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["model", "text", "context", "completing", "predictions"],
            "properties": {
                "model": _STRING,
                "text": {"type": "string", "description": "the whole text as normalised, also when its start was not "
                                                          "read (context.dropped_chars); every offset indexes into it"},
                "context": {"type": "object",
                            "required": ["tokens", "words", "chars", "truncated", "dropped_chars", "dropped_units"],
                            "description": "what the model read: the same in every attribution mode, so predictions "
                                           f"are too. A context over {limits['max_context_units']} units "
                                           "(REACH_MAX_CONTEXT_UNITS) is read from the start of its last that many "
                                           "units, from a zero state",
                            "properties": {"tokens": _INTEGER, "words": _INTEGER, "chars": _INTEGER,
                                           "truncated": {"type": "boolean", "description": "whether the input limit "
                                                         "left the start of the text unread"},
                                           "dropped_chars": {"type": "integer", "minimum": 0, "description": "characters "
                                                             "of text not read, from its start: the read text is "
                                                             "text[dropped_chars:]"},
                                           "dropped_units": {"type": "integer", "minimum": 0, "description": "units of "
                                                             "the whole text's context not read"},
                                           "unknown_units": {"type": "integer", "description": "units of the context read as "
                                                             "the unknown unit or spelled as UTF-8 byte pieces"},
                                           "unknown_chars": {"type": "integer", "description": "characters of text the model "
                                                             "never saw in training"}}},
                "completing": _BOOLEAN,
                "partial": _STRING,
                "attribution": {"type": "object", "properties": {"method": _STRING, "threshold": _NUMBER, "model_mode": _STRING,
                                                                  "initial_state": _STRING, "gradient_of": _STRING}},
                "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                "cache": {"type": "boolean", "description": "whether the continuous cache over the text was mixed in"},
            },
        },
        "GenerateRequest": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {
                "text": {"type": "string", "maxLength": limits["max_text_chars"],
                         "description": "the text to continue; ending inside a word, that word is completed first"},
                "max_words": {"type": "integer", "minimum": 1, "maximum": limits["max_generate_words"],
                              "default": min(20, limits["max_generate_words"])},
                "temperature": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 100, "default": 1,
                                "description": "sampling weights p ** (1 / temperature)"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": limits["max_k"], "default": min(20, limits["max_k"]),
                          "description": "sample among the k most probable words (1: greedy)"},
                "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1, "default": 1,
                          "description": "then among the most probable reaching this share of the weight"},
                "seed": {"type": "integer", "nullable": True, "minimum": 0, "maximum": 2**63 - 1,
                         "description": "seed of the sampling (default: a random one, returned)"},
                "stop_at_newline": {"type": "boolean", "default": False, "description": "stop before a line break"},
                "model": {"type": "string", "nullable": True, "description": "a served model's name (default: the first)"},
                "cache": {"type": "boolean", "description": "mix the continuous cache over the text (the prompt and the "
                          "words generated so far) into every word's distribution (default: off, the model alone: with "
                          "the cache a continuation repeats its own words several times as often)"},
            },
        },
        "GenerateResponse": {
            "type": "object",
            "required": ["model", "text", "continuation", "seed", "stopped", "words", "cache"],
            "properties": {
                "model": _STRING,
                "text": {"type": "string", "description": "the text as normalised and read by the model"},
                "continuation": {"type": "string", "description": "the generated text, to append to `text`"},
                "seed": {"type": "integer", "description": "the seed used"},
                "stopped": {"type": "string", "enum": ["words", "newline", "no_words"]},
                "words": {"type": "array", "items": {"$ref": "#/components/schemas/GeneratedWord"}},
                "cache": {"type": "boolean", "description": "whether the continuous cache over the text was mixed in"},
            },
        },
        "GeneratedWord": {
            "type": "object",
            "required": ["word", "text", "probability", "logprob"],
            "properties": {
                "word": _STRING,
                "text": {"type": "string", "description": "what this word appended: the whitespace before it and the word"},
                "probability": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "exact P(this word, then a boundary | the text before it), untempered; "
                                               "the mixed model's when the response's cache is true"},
                "logprob": _NUMBER,
            },
        },
        "Prediction": prediction,
        "Reach": reach,
        "Pointer": pointer,
        "Distance": distance,
        "UnitInfluence": unit,
        "WordInfluence": word,
        "ModelCard": {"type": "object", "required": ["name", "cell", "tokenizer", "parameters"],
                      "properties": {"name": _STRING, "cell": _STRING, "tokenizer": {"type": "object"}, "parameters": _INTEGER,
                                     "training_tokens": {"type": "integer", "nullable": True}, "bptt": {"type": "object"},
                                     "clipping": {"type": "object"}, "heldout": {"type": "object"},
                                     "cache": {"type": "object", "nullable": True,
                                               "description": "the continuous cache's settings tuned on the valid split "
                                                              "(window, theta, weight) and the valid/test bpc and per-word "
                                                              "perplexity with it; null: predictions use the model alone"}}},
        "ModelsResponse": {"type": "object", "required": ["models"],
                           "properties": {"default": {"type": "string", "nullable": True},
                                          "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelCard"}}}},
        "Status": {"type": "object", "required": ["status"], "properties": {"status": _STRING, "models": {"type": "array", "items": _STRING}}},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "object", "required": ["code", "message"],
                                           "properties": {"code": _STRING, "message": _STRING}}}},
    }


def openapi_document(limits: dict, max_body: int) -> dict:
    """The API as OpenAPI 3.0.3."""
    json_body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Reach", "version": "1",
                 "description": "Next-word predictions from recurrent language models, each with how far back its gradient "
                                "influence reaches. Errors are {\"error\": {\"code\", \"message\"}}."},
        "paths": {
            "/v1/predict": {"post": {
                "summary": "The next words after a text, with gradient reach and the cache's pointer reach",
                "requestBody": json_body,
                "responses": {
                    "200": {"description": "predictions", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                    "400": _error("malformed JSON, a wrong type, an unknown or missing field"),
                    "404": _error("unknown model"),
                    "405": _error("method not allowed"),
                    "413": _error(f"body over {max_body} bytes or text over {limits['max_text_chars']} characters"),
                    "415": _error("the body is not JSON"),
                    "422": _error("a value out of range, or text with control characters"),
                    "500": _error("unexpected error (logged, no internals returned)"),
                },
            }},
            "/v1/generate": {"post": {
                "summary": "Continue a text word by word, sampled from the model",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}},
                "responses": {
                    "200": {"description": "the continuation", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}}}},
                    "400": _error("malformed JSON, a wrong type, an unknown or missing field"),
                    "404": _error("unknown model"),
                    "405": _error("method not allowed"),
                    "413": _error(f"body over {max_body} bytes or text over {limits['max_text_chars']} characters"),
                    "415": _error("the body is not JSON"),
                    "422": _error(f"a value out of range (max_words over {limits['max_generate_words']}, ...), or text with control characters"),
                    "500": _error("unexpected error (logged, no internals returned)"),
                },
            }},
            "/v1/models": {"get": {"summary": "Served models and their cards", "responses": {
                "200": {"description": "models", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelsResponse"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: models loaded", "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                "503": _error("no model loaded")}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document",
                                                                                          "content": {"application/json": {}}}}}},
            "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}}},
        },
        "components": {"schemas": _schemas(limits)},
    }
