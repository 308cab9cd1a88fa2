"""Server-side apply for the test API server: merging by list keys, and field ownership.

What a component relies on when it applies part of an object: its fields are set,
list items keyed as the schema says are merged by key (so another manager's items
stay), and a field it applied before but leaves out now is removed unless another
manager also owns it. Ownership is kept where the real server keeps it, in
``metadata.managedFields`` entries (``operation: Apply``, ``fieldsType: FieldsV1``),
per manager and subresource.

Field sets use the real ``fieldsV1`` tokens: ``f:<field>`` for a map field,
``k:{...}`` for a keyed list item (its key fields, compact JSON, sorted), and
``.`` for the item itself. Lists not named in :data:`LIST_MAP_KEYS` are atomic,
and so are the paths in :data:`ATOMIC`. Conflicts between managers are not
detected (every component here applies with ``force=true``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]
Path = tuple[str, ...]

LIST_MAP_KEYS: dict[Path, tuple[str, ...]] = {
    ("status", "devices"): ("driver", "device", "pool", "shareID"),
    ("status", "devices", "[]", "conditions"): ("type",),
    ("status", "reservedFor"): ("uid",),
}
"""List-maps by schema path (``[]`` stands for any item), with their key fields."""

ATOMIC: set[Path] = {("status", "devices", "[]", "data"), ("spec", "nodeSelector")}
IDENTITY = {"apiVersion", "kind"}
IDENTITY_METADATA = {"name", "namespace", "uid", "resourceVersion", "managedFields"}


def _key_token(item: Obj, keys: tuple[str, ...]) -> str:
    present = {k: item[k] for k in sorted(keys) if item.get(k) not in (None, "")}
    return "k:" + json.dumps(present, separators=(",", ":"), sort_keys=True)


def field_paths(obj: Any, schema: Path = (), tokens: Path = ()) -> Iterator[Path]:
    """The fieldsV1 paths ``obj`` sets (identity fields excluded at the top)."""
    if isinstance(obj, dict) and schema not in ATOMIC:
        for name, value in obj.items():
            if not schema and name in IDENTITY:
                continue
            if schema == ("metadata",) and name in IDENTITY_METADATA:
                continue
            yield from field_paths(value, (*schema, name), (*tokens, f"f:{name}"))
        return
    keys = LIST_MAP_KEYS.get(schema)
    if isinstance(obj, list) and keys is not None:
        for item in obj:
            token = _key_token(item, keys)
            yield (*tokens, token, ".")
            for name, value in item.items():
                if name not in keys:
                    yield from field_paths(
                        value, (*schema, "[]", name), (*tokens, token, f"f:{name}")
                    )
        return
    if tokens:
        yield tokens


def to_fields_v1(paths: set[Path]) -> Obj:
    """A path set as the nested ``fieldsV1`` object."""
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for token in path:
            node = node.setdefault(token, {})
    return root


def from_fields_v1(fields: Obj, prefix: Path = ()) -> set[Path]:
    """The path set of a ``fieldsV1`` object."""
    paths: set[Path] = set()
    for token, inner in fields.items():
        if inner:
            paths |= from_fields_v1(inner, (*prefix, token))
        else:
            paths.add((*prefix, token))
    return paths


def merge(live: Any, applied: Any, schema: Path = ()) -> Any:
    """``applied`` over ``live``: maps field by field, list-maps item by key."""
    if isinstance(live, dict) and isinstance(applied, dict) and schema not in ATOMIC:
        merged = dict(live)
        for name, value in applied.items():
            merged[name] = merge(live.get(name), value, (*schema, name))
        return merged
    keys = LIST_MAP_KEYS.get(schema)
    if isinstance(live, list) and isinstance(applied, list) and keys is not None:
        index = {_key_token(item, keys): i for i, item in enumerate(live)}
        merged_list = list(live)
        for item in applied:
            at = index.get(_key_token(item, keys))
            if at is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[at] = merge(live[at], item, (*schema, "[]"))
        return merged_list
    return copy.deepcopy(applied)


def _remove(obj: Any, path: Path, schema: Path, keep: set[Path], done: Path = ()) -> None:
    """Delete ``path`` from ``obj`` unless another manager owns something under it."""
    if not path or not isinstance(obj, dict | list):
        return
    token, rest = path[0], path[1:]
    if isinstance(obj, dict) and token.startswith("f:"):
        name = token[2:]
        if name not in obj:
            return
        if not rest:
            if not any(p[: len(done) + 1] == (*done, token) for p in keep):
                del obj[name]
            return
        _remove(obj[name], rest, (*schema, name), keep, (*done, token))
        return
    keys = LIST_MAP_KEYS.get(schema)
    if isinstance(obj, list) and token.startswith("k:") and keys is not None:
        for i, item in enumerate(obj):
            if _key_token(item, keys) != token:
                continue
            if rest == (".",):
                if not any(p[: len(done) + 1] == (*done, token) for p in keep):
                    del obj[i]
            else:
                _remove(item, rest, (*schema, "[]"), keep, (*done, token))
            return


def apply(live: Obj, applied: Obj, *, manager: str, subresource: str | None, now: str) -> Obj:
    """The object after ``manager`` applies ``applied`` to ``live``."""
    entries = list((live.get("metadata") or {}).get("managedFields") or [])
    mine = [
        e
        for e in entries
        if e.get("manager") == manager
        and e.get("operation") == "Apply"
        and e.get("subresource") == subresource
    ]
    others = [e for e in entries if e not in mine]
    before = set().union(*(from_fields_v1(e.get("fieldsV1") or {}) for e in mine))
    owned_by_others = set().union(*(from_fields_v1(e.get("fieldsV1") or {}) for e in others))
    body = {k: v for k, v in applied.items() if k not in IDENTITY and k != "metadata"}
    metadata = {
        k: v for k, v in (applied.get("metadata") or {}).items() if k not in IDENTITY_METADATA
    }
    if metadata:
        body["metadata"] = metadata
    now_paths = set(field_paths(applied))
    result = merge(live, body)
    for path in sorted(before - now_paths, key=len, reverse=True):
        _remove(result, path, (), owned_by_others | now_paths)
    entry = {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied.get("apiVersion", ""),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(now_paths),
    }
    if subresource:
        entry["subresource"] = subresource
    result.setdefault("metadata", {})["managedFields"] = [*others, entry]
    return result
