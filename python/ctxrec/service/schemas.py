"""Request bodies of the HTTP service (pydantic), with the limits every string obeys.

Every string a client sends (an id, a context key or value, free text, a filter, an item
field, a JSON object key anywhere) is checked here, before any route code runs: a lone
surrogate (U+D800..U+DFFF, which JSON can carry as ``"\\ud800"`` but UTF-8 cannot) or a string
over its limit is a 422 naming the field, and nothing changes. The limits:

==========================  ================================================
:data:`MAX_ID_CHARS`        user, item, session and question ids (256)
:data:`MAX_KEY_CHARS`       context keys, filter attributes, field names (128)
:data:`MAX_TEXT_CHARS`      a context value, an answer, a filter value (8 KiB)
:data:`MAX_ITEM_TEXT_CHARS` an item's text in ``PUT /items`` (64 KiB)
:data:`MAX_CONTEXT_KEYS`    keys of one context or filter (64)
==========================  ================================================
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ctxrec.errors import InputError

__all__ = ["echo", "MAX_ID_CHARS", "MAX_KEY_CHARS", "MAX_TEXT_CHARS", "MAX_ITEM_TEXT_CHARS", "MAX_CONTEXT_KEYS",
           "IdStr", "Key", "Text", "Id", "Number", "Scalar", "FilterValue", "Filter", "Context", "check_value",
           "RecommendRequest", "BatchRequest", "FeedbackRequest", "SessionRequest", "AnswerRequest",
           "ExplainRequest", "ItemIn", "ItemsRequest", "ReloadRequest"]

#: Longest id (user, item, session, question), in characters.
MAX_ID_CHARS = 256
#: Longest context key, filter attribute or item field name.
MAX_KEY_CHARS = 128
#: Longest free-text value: a context value, an answer, a filter value.
MAX_TEXT_CHARS = 8192
#: Longest item text in ``PUT /items``.
MAX_ITEM_TEXT_CHARS = 65536
#: Most keys in one context (or filter).
MAX_CONTEXT_KEYS = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(s: str) -> str:
    """``s`` itself; ValueError (pydantic: a 422 naming the field) when it holds a lone surrogate."""
    if not s.isascii() and _SURROGATE.search(s):
        raise ValueError("a lone surrogate (U+D800..U+DFFF) is not valid text")
    return s


def _str(max_chars: int) -> Any:
    return Annotated[str, StringConstraints(max_length=max_chars), AfterValidator(_no_surrogates)]


IdStr = _str(MAX_ID_CHARS)
Key = _str(MAX_KEY_CHARS)
Text = _str(MAX_TEXT_CHARS)
ItemText = _str(MAX_ITEM_TEXT_CHARS)
Id = Union[int, IdStr]
#: A number of a request: NaN and the infinities (which Python's JSON parser accepts) are refused.
Number = Annotated[float, Field(allow_inf_nan=False)]
Scalar = Union[Text, int, Number, bool, None]
FilterValue = Union[Text, int, Number, bool, list[Union[Text, int, Number, bool]]]
Filter = Annotated[dict[Key, FilterValue], Field(max_length=MAX_CONTEXT_KEYS)]
Context = Annotated[dict[Key, Scalar], Field(max_length=MAX_CONTEXT_KEYS)]


def echo(v: Any) -> Any:
    """An echoed input as something JSON can always carry.

    A NaN, an infinity or a lone surrogate would otherwise make the error response itself fail.

    Parameters
    ----------
    v : object
        The input value.

    Returns
    -------
    object
        ``v`` itself for a finite number, a bool or None; a string with lone surrogates
        backslash-escaped; ``repr(v)`` for an infinity or NaN and for any other value
        (also escaped); strings cut to 200 characters plus ``"..."``.
    """
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, str):
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "..."
    text = repr(v).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 200 else text[:200] + "..."


def check_value(v: Any, field: str, max_chars: int = MAX_TEXT_CHARS) -> None:
    """Check a value no schema types (an item's extra column): strings as :data:`Text`.

    Parameters
    ----------
    v : Any
        A scalar or a list of scalars.
    field : str
        The request field, for the error.
    max_chars : int
        The longest string allowed.

    Raises
    ------
    InputError
        A string with a lone surrogate or over ``max_chars``, or a NaN / infinite number
        (``field`` set).
    """
    for x in v if isinstance(v, list) else (v,):
        if isinstance(x, float) and not math.isfinite(x):
            raise InputError(f"{field}: {x!r} is not a finite number", field=field)
        if isinstance(x, str) and (len(x) > max_chars or (not x.isascii() and _SURROGATE.search(x))):
            why = f"longer than {max_chars} characters" if len(x) > max_chars else "a lone surrogate (U+D800..U+DFFF)"
            raise InputError(f"{field}: {why} is not valid text", field=field)


class RerankFields(BaseModel):
    """The re-ranking options a /recommend request and a /session take (``Recommender.recommend``)."""
    diversity: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                             description="re-rank for variety (maximal marginal relevance); 0 = plain top-k")
    calibrate: float = Field(0.0, ge=0.0, le=1e6, allow_inf_nan=False,
                             description="pull the list's category mix towards the user's history mix; 0 = off")
    calibrate_by: Key | None = Field(None, description='the item attribute calibrated on, e.g. "genres"')
    exposure: float = Field(0.0, ge=0.0, le=1e6, allow_inf_nan=False,
                            description="penalise items by their recorded exposure (long tail); 0 = off")

    def rerank(self) -> dict[str, Any]:
        """dict: the re-ranking options as ``Recommender.recommend`` keywords."""
        return {"diversity": self.diversity, "calibrate": self.calibrate, "calibrate_by": self.calibrate_by,
                "exposure": self.exposure}


class ExploreFields(BaseModel):
    """The exploration options a /recommend request and a /session take (``Recommender.recommend``)."""
    explore: Literal["thompson", "ucb"] | None = Field(
        None, description="rank by the model's uncertainty about the user as well (Thompson draw or UCB bonus); "
                          "null = off")
    explore_scale: float = Field(1.0, ge=0.0, le=1e6, allow_inf_nan=False,
                                 description="multiplies the posterior's standard deviation; 0 = off")
    seed: int | None = Field(None, ge=0, lt=2 ** 63, description="fixes the draw (with the user); null = fresh")

    def exploration(self) -> dict[str, Any]:
        """dict: the exploration options as ``Recommender.recommend`` keywords."""
        return {"explore": self.explore, "explore_scale": self.explore_scale, "seed": self.seed}


class RecommendRequest(RerankFields, ExploreFields):
    """Body of ``POST /recommend`` (and each request of a batch)."""
    model_config = ConfigDict(extra="forbid")
    user: Id = Field(description="original user id; unknown users get the cold-start path")
    context: Context = Field(default_factory=dict,
                             description='context fields, e.g. {"time": "2024-05-01T21:30", "query": "..."}')
    k: int = Field(10, ge=1, le=1000, description="number of items to return")
    exclude_seen: bool = Field(True, description="leave out items the user interacted with")
    exclude: list[Id] = Field(default_factory=list, max_length=100_000, description="item ids never to return")
    allow: list[Id] | None = Field(None, max_length=100_000, description="if given, only these items may be returned")
    filter: Filter | None = Field(
        None, description='named item filters: attribute -> value or list of values, e.g. {"genres": ["Comedy"]}')
    fields: list[Key] = Field(default_factory=list, max_length=64,
                              description='item fields to include with each item, e.g. ["title"]')


class BatchRequest(BaseModel):
    """Body of ``POST /recommend/batch``: up to 1,000 requests."""
    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendRequest] = Field(min_length=1, max_length=1000)


class FeedbackRequest(BaseModel):
    """Body of ``POST /feedback``: one interaction."""
    model_config = ConfigDict(extra="forbid")
    user: Id
    item: Id
    context: Context = Field(default_factory=dict)
    label: float = Field(1.0, description="1 = positive (click, watch, buy), 0 = negative; a rating for MSE models")


class SessionRequest(RerankFields, ExploreFields):
    """Body of ``POST /session``: who, in which context, and how the session ranks."""
    model_config = ConfigDict(extra="forbid")
    user: Id | None = Field(None, description="original user id; unknown or null = cold start")
    context: Context = Field(default_factory=dict,
                             description='context fields; a free-text field (e.g. "query") opens the talk')
    k: int = Field(10, ge=1, le=1000)
    exclude_seen: bool = True
    max_questions: int | None = Field(None, ge=0, le=100, description="ask at most this many questions")


class AnswerRequest(BaseModel):
    """Body of ``POST /session/{id}/answer``."""
    model_config = ConfigDict(extra="forbid")
    answer: int | Text | None = Field(description="option index, option label, free text, or null to skip")
    question: IdStr | None = Field(None, description="question id (default: the pending question)")


class ExplainRequest(BaseModel):
    """Body of ``POST /session/{id}/explain``."""
    model_config = ConfigDict(extra="forbid")
    item: Id


class ItemIn(BaseModel):
    """One catalog item: its id, its text and any item-table columns (attributes: a value or a list)."""
    model_config = ConfigDict(extra="allow")
    id: Id = Field(description="original item id (new: added; existing: updated, absent fields kept)")
    text: ItemText | None = Field(None, description="the item text the model reads (encoded by the served encoder)")


class ItemsRequest(BaseModel):
    """Body of ``PUT /items``: up to 10,000 items."""
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=10_000)


class ReloadRequest(BaseModel):
    """Body of ``POST /admin/reload`` (optional)."""
    model_config = ConfigDict(extra="forbid")
    path: Text | None = Field(None, description="model directory to load (default: the one being served)")
