"""A hand-checked fast path for the common, well-formed event: the schema's verdict
without building a pydantic model.

`well_formed` answers only "certainly valid" (the validated fields, as the pydantic schema
would give them) or "not sure" (None). On None the caller runs the full pydantic schema,
which then decides and words the rejection; so every reason text still comes from one
place, and this module only has to be conservative: anything it does not recognise as
plainly valid (an int where a float is expected, a non-canonical UUID, an unknown key, a
type it has no check for) goes the long way. `tests/unit/core/test_event_shape.py`
checks both paths agree on generated and near-miss inputs.

The known nested fields and their types are read from the schema's TypedDicts, so the
two cannot drift apart; the top-level checks mirror `WireEvent` field by field.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Final, Union, cast, get_args, get_origin, get_type_hints

from audit_service.core.chain import TENANT_ID_PATTERN
from audit_service.core.event_schema import (
    CANONICAL_UUID,
    ContextFields,
    DecisionFields,
    OutcomeFields,
    WireEvent,
)

Check = Callable[[Any], bool]

_TENANT_ID: Final = re.compile(TENANT_ID_PATTERN)
_SEVERITIES: Final = ("info", "warning", "critical")
_ACTOR_TYPES: Final = ("agent", "human", "system", "scheduler")
_STR: Final = frozenset({str})
_STRING_FIELDS: Final = ("investigation_id", "alert_id", "source_service")
_LIST_FIELDS: Final = ("actor_permissions", "entity_ids")
_NESTED_FIELDS: Final = ("context", "decision", "outcome")

_REQUIRED: Final = frozenset(
    name for name, field in WireEvent.model_fields.items() if field.is_required()
)
_KNOWN: Final = frozenset(WireEvent.model_fields)
_DEFAULTS: Final = {
    name: field.default for name, field in WireEvent.model_fields.items()
    if not field.is_required() and field.default_factory is None
}
_FACTORIES: Final = tuple(
    (name, cast(Callable[[], Any], field.default_factory))
    for name, field in WireEvent.model_fields.items() if field.default_factory is not None
)
"""`list` and `dict`, called directly: `FieldInfo.get_default` inspects the factory's
signature on every call, which costs more than validating the event."""


def _is_str_list(value: Any) -> bool:
    return type(value) is list and (not value or set(map(type, value)) == _STR)


def _exact(kind: type) -> Check:
    """Strict mode takes exactly this JSON type (bool is not an int here); a float field
    also takes an int, which this fast path leaves to pydantic."""
    return lambda value: type(value) is kind


def _bounded(check: Check, bounds: list[Any]) -> Check:
    low = next((b.ge for b in bounds if hasattr(b, "ge")), None)
    high = next((b.le for b in bounds if hasattr(b, "le")), None)
    if low is None or high is None:
        raise TypeError(f"no fast check for the constraints {bounds!r}")
    return lambda value: check(value) and low <= value <= high


def _check_for(annotation: Any) -> type | Check:
    """The fast check for one TypedDict annotation: the one type a value must have, or a
    predicate; unknown shapes fail at import."""
    if annotation in (str, int, float, bool):
        return cast(type, annotation)
    if annotation == dict[str, Any]:
        return dict
    if annotation == list[str]:
        return _is_str_list
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extras = get_args(annotation)
        return _bounded(_exact(base), [m for info in extras for m in info.metadata])
    if origin in (Union, types.UnionType):
        choices = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(choices) == 1:
            inner = _check_for(choices[0])
            check = _exact(inner) if isinstance(inner, type) else inner
            return lambda value: value is None or check(value)
    raise TypeError(f"no fast check for the annotation {annotation!r}")


class _Predicate:
    """Marks a known key whose check is a predicate (never the type of a JSON value)."""


def _known_keys(fields: type) -> tuple[dict[str, type], dict[str, Check]]:
    """A TypedDict's keys with the one type their value must have (or `_Predicate`), and
    the predicates: the loop then does one dict lookup and one `is` for most keys."""
    checks = {key: _check_for(hint)
              for key, hint in get_type_hints(fields, include_extras=True).items()}
    return ({key: check if isinstance(check, type) else _Predicate
             for key, check in checks.items()},
            {key: check for key, check in checks.items() if not isinstance(check, type)})


_NESTED: Final = tuple(
    (name, *_known_keys(fields))
    for name, fields in zip(_NESTED_FIELDS, (ContextFields, DecisionFields, OutcomeFields),
                            strict=True)
)
"""Per nested object, its known keys and their checks; other keys are kept as sent."""


def _nested_ok(value: dict[str, Any], kinds: dict[str, type], checks: dict[str, Check]) -> bool:
    for key, item in value.items():
        kind = kinds.get(key)
        if kind is None or type(item) is kind:
            continue
        if kind is not _Predicate or not checks[key](item):
            return False
    return True


def well_formed(document: dict[str, Any]) -> dict[str, Any] | None:
    """The validated fields with defaults filled in, exactly as `WireEvent` would give
    them (event_category None when absent), or None when the full schema must decide.

    Each test implies what `WireEvent` (strict) checks for that field; written out in one
    function because it runs for every event."""
    keys = document.keys()
    if not (keys >= _REQUIRED and keys <= _KNOWN):
        return None
    get = document.get
    audit_id, tenant_id = document["audit_id"], document["tenant_id"]
    actor_id, record_version = document["actor_id"], get("record_version", "1.0")
    if not (
        type(audit_id) is str and CANONICAL_UUID.fullmatch(audit_id) is not None
        and type(tenant_id) is str and _TENANT_ID.fullmatch(tenant_id) is not None
        and type(document["timestamp"]) is str and type(document["event_type"]) is str
        and type(get("event_category", "")) is str  # None is valid too, but rare
        and get("severity", "info") in _SEVERITIES and document["actor_type"] in _ACTOR_TYPES
        and type(actor_id) is str and actor_id != ""
        and type(record_version) is str and record_version != ""
        and all(type(get(name, "")) is str for name in _STRING_FIELDS)
        and all(_is_str_list(get(name, [])) for name in _LIST_FIELDS)
    ):
        return None
    for name, kinds, checks in _NESTED:
        nested = get(name, {})
        if type(nested) is not dict or not _nested_ok(nested, kinds, checks):
            return None
    event = _DEFAULTS | document
    for name, factory in _FACTORIES:
        if name not in keys:
            event[name] = factory()
    return event
