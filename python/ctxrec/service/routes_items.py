"""The catalog: ``GET /items/{item_id}``, ``GET /items/{item_id}/similar``, ``PUT /items``, ``DELETE /items/{item_id}``."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from ctxrec.errors import InputError, UnknownIdError
from ctxrec.service.deps import context, require_admin, run
from ctxrec.service.schemas import Filter, IdStr, ItemsRequest, check_value, echo

router = APIRouter()
_FILTER = TypeAdapter(Filter)


def _json(raw: str | bytes, field: str) -> Any:
    """``raw`` parsed as JSON; InputError naming ``field`` when it is not JSON or is nested past
    the parser's recursion limit (a RecursionError would otherwise answer 500)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        text = echo(raw if isinstance(raw, str) else raw[:256].decode("utf-8", "backslashreplace"))
        raise InputError(f"{field}: not valid JSON ({e}): {text!r}", field=field) from None
    except RecursionError:
        raise InputError(f"{field}: nested too deeply", field=field) from None


@router.put("/items", summary="add or update catalog items (admin; batch upsert, live at once)")
async def put_items(request: Request) -> Any:
    """``PUT /items``: add or update catalog items (admin; batch upsert, live at once)."""
    require_admin(request, "catalog writes")  # before the body is read, as for /admin
    import pandas as pd
    raw = await request.body()
    # the stdlib reader, as FastAPI's for the other bodies: a lone surrogate reaches the schema, named
    data = _json(raw, "body")
    try:
        req = ItemsRequest.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    except RecursionError:
        raise InputError("body: nested too deeply", field="body") from None
    rows = []
    for j, it in enumerate(req.items):
        row = {"item_id": it.id, "text": it.text}
        for name, v in (it.model_extra or {}).items():
            check_value(name, f"items.{j}", max_chars=128)  # the key itself
            ok = isinstance(v, (str, int, float, bool)) or v is None or (
                isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v))
            if not ok or name == "item_id":
                why = "use 'id'" if name == "item_id" else "expected a value or a list of values"
                raise InputError(f"items.{j}.{name}: {why}, got {echo(v)}", field=f"items.{j}.{name}")
            check_value(v, f"items.{j}.{name}")
            row[name] = v
        rows.append(row)
    frame = pd.DataFrame(rows)
    state = context(request).state
    try:
        return await run(lambda: state.feedback(
            lambda model: {**model.upsert_items(frame), "n_items": int(model.engine_.n_items_)}))
    except TypeError as e:
        raise InputError(str(e), field="items") from e


@router.delete("/items/{item_id}", summary="remove an item from the catalog (admin; live at once)")
async def delete_item(request: Request, item_id: IdStr) -> Any:
    """``DELETE /items/{id}``: remove an item from the catalog (admin; live at once)."""
    require_admin(request, "catalog writes")
    state = context(request).state
    try:
        await run(lambda: state.feedback(lambda model: model.remove_items([item_id])))
    except KeyError:
        raise UnknownIdError(f"unknown item id {item_id!r}", field="item_id") from None
    return {"status": "removed", "item_id": item_id}


@router.get("/items/{item_id}/similar", summary="items most similar to an item")
async def similar(request: Request, item_id: IdStr, k: int = Query(10, ge=1, le=1000), by: str = "vectors",
                  filter: str | None = Query(None, description='JSON object, e.g. {"genres": ["Comedy"]}')) -> Any:
    """``GET /items/{id}/similar``: items most similar to an item."""
    filt = None if filter in (None, "") else _json(filter, "filter")
    if filt is not None and not isinstance(filt, dict):
        raise InputError(f"filter: expected a JSON object of attribute -> value(s), got {filter[:200]!r}",
                         field="filter")
    if filt is not None:
        try:
            filt = _FILTER.validate_python(filt)
        except ValidationError as e:
            raise InputError(f"filter: {e.errors()[0]['msg']}", field="filter") from None
    if by not in ("vectors", "both", "text"):
        raise InputError(f"by: expected 'vectors', 'both' or 'text', got {by!r}", field="by")
    model = context(request).state.model
    try:
        return await run(lambda: model.similar_items(item_id, k, by=by, filter=filt))
    except KeyError:
        raise UnknownIdError(f"unknown item id {item_id!r}", field="item_id") from None
    except ValueError as e:
        if getattr(e, "field", None) is None and by != "vectors" and "text" in str(e):
            raise InputError(str(e), field="by") from e
        raise


@router.get("/items/{item_id}", summary="an item's stored attributes and text")
async def item(request: Request, item_id: IdStr) -> Any:
    """``GET /items/{id}``: an item's stored attributes and text."""
    try:
        return context(request).state.model.item_info(item_id)
    except (KeyError, ValueError):
        raise UnknownIdError(f"unknown item id {item_id!r}", field="item_id") from None
