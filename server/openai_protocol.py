"""The OpenAI-compatible completions protocol (`POST /v1/completions`) as pydantic models: the request, the answer
and each streamed chunk.

The shape is OpenAI's legacy completions API as vLLM, llama.cpp's server and
TGI speak it, so the official `openai` client and evaluation harnesses work
unchanged. A *token* is a word as Reach predicts it, with the whitespace
before it (lm/infer/echo.py); its log-probability is Reach's exact word
log-probability. Reach's own fields are extensions that clients ignore:
`top_k`, `reach` and `text_cache` in the request; `logprobs.reach`, each
choice's `seed` and the answer's `text_cache` in the response.

Fields OpenAI clients may send that Reach cannot honour are accepted only
at the value that means "off" (`n` and `best_of` 1, `frequency_penalty` and
`presence_penalty` 0, an empty `logit_bias`, no `suffix`), and refused
otherwise (422 `invalid_value`, naming the field), never silently ignored.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from server.operations import Limits
from server.protocol import MAX_SEED, MAX_TEMPERATURE, TEXT_PATTERN, RequestModel, Whole, clean_text

__all__ = ["CompletionChoice", "CompletionChunk", "CompletionChunkChoice", "CompletionLogprobs", "CompletionResponse",
           "CompletionUsage", "MAX_PROMPTS", "MAX_STOPS", "StreamOptions", "TextCacheUse", "TokenReach",
           "completion_request_model"]

MAX_PROMPTS = 32  # prompts in one request (each is generated and scored in turn)
MAX_STOPS = 4  # stop sequences, as OpenAI allows
MAX_STOP_CHARS = 200


def _clean_prompt(text: str) -> str:
    """`clean_text` with the error naming the prompt."""
    try:
        return clean_text(text)
    except PydanticCustomError as error:
        raise PydanticCustomError("invalid_text", "'prompt' has a control character U+{code} at position {position}",
                                  {key: value for key, value in (error.context or {}).items() if key != "field"}) from None


def _prompt(max_chars: int) -> Any:
    return Annotated[str, Field(max_length=max_chars, json_schema_extra={"pattern": TEXT_PATTERN}),
                     AfterValidator(_clean_prompt)]


def _one_or_many(item: Any, min_items: int, max_items: int) -> Any:
    """A string or a list of such strings, told apart by the JSON type first, so that an error names only the branch
    the value took (a bad character in a list's item is invalid_text, not "must be a string")."""
    return Annotated[Annotated[item, Tag("str")] | Annotated[list[item], Field(min_length=min_items, max_length=max_items),
                                                                Tag("list[str]")],
                     Discriminator(lambda value: "list[str]" if isinstance(value, list) else "str")]


def _only(value: Any, allowed: Any, what: str) -> Any:
    if value is not None and value != allowed:
        raise ValueError(f"only {allowed!r} is supported ({what})")
    return value


def _no_penalty(value: float | None) -> float | None:
    return _only(value, 0, "Reach samples from its exact word distribution; no penalties")


def _no_bias(value: dict | None) -> dict | None:
    if value:
        raise ValueError("only an empty logit_bias is supported (a Reach token is a word, not a vocabulary id)")
    return value


def _no_suffix(value: str | None) -> str | None:
    if value:
        raise ValueError("only an empty suffix is supported (Reach continues a text, it does not fill in)")
    return value


class StreamOptions(RequestModel):
    """OpenAI's stream options."""

    include_usage: bool = Field(False, description="send a last chunk with the usage and no choices")
    include_obfuscation: bool = Field(True, description="accepted and ignored: Reach adds no obfuscation field")


@lru_cache(maxsize=16)
def completion_request_model(limits: Limits) -> type[RequestModel]:
    """/v1/completions's body under `limits`."""
    prompt_text = _prompt(limits.max_text_chars)
    stop_text = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]

    class CompletionRequest(RequestModel):
        """Continue each prompt word by word (OpenAI's legacy completions API); tokens are Reach's words."""

        model: str | None = Field(None, description="a served model's name (null or \"\": the first)")
        prompt: _one_or_many(prompt_text, 1, MAX_PROMPTS) = Field(
            description="the text to continue, or a list of texts (one choice each); token arrays are not accepted")
        max_tokens: Whole(0, limits.max_generate_words) | None = Field(
            min(16, limits.max_generate_words), description="words to generate (0: none, to score the prompt with echo)")
        temperature: Annotated[float, Field(ge=0, le=MAX_TEMPERATURE)] | None = Field(
            1.0, description="sampling weights p ** (1 / temperature); 0: greedy (the most probable word each time)")
        top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(1.0, description="nucleus sampling: among the most "
                                                                                   "probable reaching this share")
        top_k: Whole(1, limits.max_k) | None = Field(
            min(20, limits.max_k), description="Reach: sample among the k most probable words (1: greedy)")
        seed: Whole(0, MAX_SEED) | None = Field(
            None, description="seed of the sampling (default: a random one, returned as each choice's seed)")
        stop: _one_or_many(stop_text, 0, MAX_STOPS) | None = Field(
            None, description="stop before the first of these strings in the generated text (not returned)")
        logprobs: Whole(0, limits.max_k) | None = Field(
            None, description="return each token's log-probability and the top logprobs alternatives (0: none)")
        echo: bool | None = Field(False, description="return the prompt before the completion (with logprobs: its "
                                                     "tokens scored, the first one null)")
        stream: bool | None = Field(False, description="send server-sent events, one chunk per token, then [DONE]")
        stream_options: StreamOptions | None = None
        n: Whole(1, 1) | None = Field(1, description="choices per prompt: 1 only")
        best_of: Whole(1, 1) | None = Field(None, description="1 only")
        # What the server accepts, the schema says too (const, maxProperties, maxLength), so that they judge alike.
        frequency_penalty: Annotated[float, Field(json_schema_extra={"const": 0}), AfterValidator(_no_penalty)] | None = \
            Field(None, description="0 only")
        presence_penalty: Annotated[float, Field(json_schema_extra={"const": 0}), AfterValidator(_no_penalty)] | None = \
            Field(None, description="0 only")
        logit_bias: Annotated[dict[str, float], Field(json_schema_extra={"maxProperties": 0}),
                              AfterValidator(_no_bias)] | None = Field(None, description="empty only")
        suffix: Annotated[str, Field(json_schema_extra={"maxLength": 0}), AfterValidator(_no_suffix)] | None = Field(
            None, description="empty only")
        user: str | None = Field(None, description="accepted and ignored")
        reach: bool = Field(False, description="Reach: each generated token's gradient reach in logprobs.reach "
                                               "(one attribution per token: costly)")
        text_cache: bool | None = Field(None, description="Reach: mix the continuous cache over the text in; default: "
                                        "the prompt's scores as /v1/predict (on when the model's settings are tuned by "
                                        "prompt length), the generated words as /v1/generate (off)")

        def prompts(self) -> list[str]:
            return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

        def stops(self) -> list[str]:
            if self.stop is None:
                return []
            return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    return CompletionRequest


def _absent_when_none(value: Any) -> bool:
    return value is None


class Reply(BaseModel):
    """An answer's part: no field beyond those declared."""

    model_config = ConfigDict(extra="forbid")


class TokenReach(Reply):
    """Reach: how far back the gradient of the token's log-probability reaches (the threshold reach at 0.01, as
    /v1/predict's `reach`; widened by the text cache's deletion reach when it is mixed in)."""

    tokens: int = Field(ge=0, description="in units (characters or subword pieces)")
    words: int = Field(ge=0)
    chars: int = Field(ge=0)


class CompletionLogprobs(Reply):
    """Per token: its text, exact log-probability, top alternatives and offset."""

    tokens: list[str] = Field(description="Reach's words, each with the whitespace before it")
    token_logprobs: list[float | None] = Field(description="exact log P(word | all the text before it); null for the "
                                               "prompt's first token (echo) and a trailing whitespace token")
    top_logprobs: list[dict[str, float] | None] = Field(description="the `logprobs` most probable tokens at that point "
                                                        "and the token itself")
    text_offset: list[int] = Field(description="offset of each token in the normalised prompt followed by the completion")
    reach: list[TokenReach | None] | None = Field(None, exclude_if=_absent_when_none, description=(
        "Reach, with \"reach\": true: each generated token's gradient reach (null for prompt tokens, punctuation right "
        "after a word, a word right after punctuation, and a text over REACH_MAX_CONTEXT_UNITS units)"))


class CompletionChoice(Reply):
    text: str = Field(description="the completion (with echo: the normalised prompt, then the completion)")
    index: int = Field(ge=0, description="the prompt's index")
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] = Field(description="length: max_tokens words; stop: a stop sequence, "
                                                     "or no word left")
    seed: int | None = Field(None, exclude_if=_absent_when_none, description="Reach: the sampling seed used")


class CompletionUsage(Reply):
    prompt_tokens: int = Field(ge=0, description="words of the prompts")
    completion_tokens: int = Field(ge=0, description="words generated")
    total_tokens: int = Field(ge=0)


class TextCacheUse(Reply):
    """Reach: whether the continuous cache over the text was mixed into the prompt's scores and the completion."""

    prompt: bool
    completion: bool


class CompletionResponse(Reply):
    """The completions (OpenAI's `text_completion` object)."""

    id: str = Field(description="cmpl-...")
    object: Literal["text_completion"]
    created: int = Field(description="Unix seconds")
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
    text_cache: TextCacheUse


class CompletionChunkChoice(Reply):
    text: str = Field(description="the text this chunk adds")
    index: int = Field(ge=0)
    logprobs: CompletionLogprobs | None = Field(description="the tokens this chunk adds")
    finish_reason: Literal["stop", "length"] | None = Field(description="null until the choice's last chunk")
    seed: int | None = Field(None, exclude_if=_absent_when_none)


class CompletionChunk(Reply):
    """One server-sent event of a streamed completion: the same object, with what the chunk adds."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: CompletionUsage | None = Field(None, exclude_if=_absent_when_none,
                                          description="only in the last chunk, with stream_options.include_usage")
