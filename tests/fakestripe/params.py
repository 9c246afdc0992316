"""Request parameters as the installed ``stripe`` SDK types them, decoded and checked.

The allowed keys of every endpoint come from the SDK's own ``stripe.params.*Params``
TypedDicts (recursively for nested dicts and lists of dicts), so the fake refuses any
parameter the real API would not know, and cannot drift from the SDK we ship with.
The keys of :class:`stripe.RequestOptions` (api_key, idempotency_key, ...) travel as
headers, never as parameters, so they are not allowed in a request body.

Form decoding follows the SDK's encoder: ``metadata[k]=v`` for dicts, ``expand[0]=x``
for lists, ``discounts[0][coupon]=c`` for lists of dicts. Values are coerced by their
declared type (``amount`` to int, ``auto_advance`` to bool); a value that does not fit
is an error in Stripe's shape (``parameter_invalid_integer`` ...).
"""

from __future__ import annotations

import re
import sys
import types
import typing
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

from stripe._request_options import RequestOptions

REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)


class ParamError(Exception):
    """A parameter the real API would refuse: rendered as a 400 invalid_request_error."""

    def __init__(self, code: str | None, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# --------------------------------------------------------------------------- form decoding

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("metadata[a]", "1"), ("expand[0]", "x")]`` -> ``{"metadata": {"a": "1"}, ...}``.

    Lists stay dicts keyed by index here; :func:`check` turns them into lists where the
    declared type is a list (a metadata key may legitimately be ``"0"``).
    """
    out: dict[str, Any] = {}
    for raw_key, value in pairs:
        m = _KEY_RE.match(raw_key)
        if not m:
            raise ParamError("parameter_unknown", f"Invalid parameter name: {raw_key}", raw_key)
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                if isinstance(node.get(part), dict):
                    raise ParamError("parameter_invalid_string", f"Invalid {raw_key}", raw_key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ParamError("parameter_invalid_string", f"Invalid {raw_key}", raw_key)
                node = child
    return out


# --------------------------------------------------------------------------- types


def _resolve(tp: Any, namespace: dict[str, Any]) -> Any:
    """Evaluate string / ForwardRef annotations in the SDK module that declared them."""
    if isinstance(tp, typing.ForwardRef):
        tp = tp.__forward_arg__
    if isinstance(tp, str):
        tp = eval(tp, namespace)  # noqa: S307 - SDK-declared annotation text, not input
    return tp


def _strip_required(tp: Any) -> Any:
    while get_origin(tp) in (NotRequired, Required):
        tp = get_args(tp)[0]
    return tp


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__required_keys__")


@dataclass(frozen=True)
class Shape:
    """The allowed keys of one TypedDict, their declared types and the required ones."""

    name: str
    fields: dict[str, Any]
    required: frozenset[str]


@cache
def shape_of(td: type) -> Shape:
    """The keys and types of a ``stripe.params`` TypedDict, request options left out."""
    module = sys.modules[td.__module__]
    namespace = {**vars(typing), **vars(module)}
    fields: dict[str, Any] = {}
    for key, ann in td.__annotations__.items():
        if key in REQUEST_OPTION_KEYS and _is_request_options_child(td):
            continue
        fields[key] = _resolve(_strip_required(_resolve(ann, namespace)), namespace)
    required = frozenset(k for k in getattr(td, "__required_keys__", ()) if k in fields)
    return Shape(td.__name__, fields, required)


def _is_request_options_child(td: type) -> bool:
    return any(base is RequestOptions for base in getattr(td, "__orig_bases__", ()))


def _deep_resolve(tp: Any, namespace_of: type | None) -> Any:
    if namespace_of is None:
        return tp
    module = sys.modules[namespace_of.__module__]
    return _resolve(tp, {**vars(typing), **vars(module)})


def check(params: dict[str, Any], td: type) -> dict[str, Any]:
    """Validate and coerce decoded ``params`` against the TypedDict ``td``."""
    return _check_dict(params, td, prefix="")


def _check_dict(value: Any, td: type, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParamError(
            "parameter_invalid_string" if not prefix else "parameter_invalid_string",
            f"Invalid object{f' for {prefix}' if prefix else ''}",
            prefix,
        )
    shape = shape_of(td)
    out: dict[str, Any] = {}
    for key, raw in value.items():
        path = f"{prefix}[{key}]" if prefix else key
        if key not in shape.fields:
            raise ParamError("parameter_unknown", f"Received unknown parameter: {path}", path)
        out[key] = _coerce(raw, shape.fields[key], path, td)
    for key in sorted(shape.required - value.keys()):
        path = f"{prefix}[{key}]" if prefix else key
        raise ParamError("parameter_missing", f"Missing required param: {path}.", path)
    return out


def _coerce(raw: Any, tp: Any, path: str, owner: type) -> Any:
    tp = _deep_resolve(tp, owner)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors: list[ParamError] = []
        # Try the structured alternatives before plain strings, so "" means "unset" only
        # where a Literal[''] is declared.
        for alt in get_args(tp):
            try:
                return _coerce(raw, alt, path, owner)
            except ParamError as e:
                errors.append(e)
        raise errors[-1]
    if origin is Literal:
        if raw in get_args(tp):
            return raw
        allowed = ", ".join(repr(a) for a in get_args(tp))
        raise ParamError(
            "parameter_invalid_string", f"Invalid {path}: must be one of {allowed}", path
        )
    if origin in (list, typing.List):  # noqa: UP006 - the SDK declares typing.List
        (item_tp,) = get_args(tp)
        if not isinstance(raw, dict) or not all(k.isdigit() for k in raw):
            raise ParamError("parameter_invalid_array", f"Invalid array: {path}", path)
        return [_coerce(raw[k], item_tp, f"{path}[{k}]", owner) for k in sorted(raw, key=int)]
    if origin in (dict, typing.Dict, typing.Mapping) or _is_untyped_object(tp):  # noqa: UP006
        if not isinstance(raw, dict):
            raise ParamError("parameter_invalid_string", f"Invalid hash: {path}", path)
        args = get_args(tp)
        value_tp = args[1] if len(args) == 2 else (args[0] if args else str)
        return {k: _coerce(v, value_tp, f"{path}[{k}]", owner) for k, v in raw.items()}
    if _is_typeddict(tp):
        return _check_dict(raw, tp, path)
    if tp is Any:
        return raw
    if not isinstance(raw, str):
        raise ParamError("parameter_invalid_string", f"Invalid string: {path}", path)
    if tp is bool:
        if raw in ("true", "false"):
            return raw == "true"
        raise ParamError("parameter_invalid_boolean", f"Invalid boolean: {raw}", path)
    if tp is int:
        if re.fullmatch(r"-?\d+", raw):
            return int(raw)
        raise ParamError("parameter_invalid_integer", f"Invalid integer: {raw}", path)
    if tp is Decimal or tp is float:
        try:
            return Decimal(raw)
        except InvalidOperation:
            raise ParamError("parameter_invalid_decimal", f"Invalid decimal: {raw}", path) from None
    if tp is str:
        return raw
    raise ParamError("parameter_invalid_string", f"Unsupported value for {path}", path)


def _is_untyped_object(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return getattr(origin, "__name__", "") == "UntypedStripeObject"
