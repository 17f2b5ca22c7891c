"""YAML as users mean it: a text field gets the text that was typed, other fields YAML's value.

YAML 1.1 turns many words into other types before the schema sees them: `no`/`off`/`yes`/`on`
into booleans, `007` into 7, `010` into 8, `1.0` into a float, `~`/`null` into None,
`2024-01-01` into a date. A text field then either refuses the value (`mixed_precision: no` was
"got False") or keeps something other than what was typed. So a document is read against the
schema: where the field takes text (``str``, a ``Literal`` of names, ``dict[str, str]`` values),
an unquoted scalar gives its own text; everywhere else (numbers, booleans, ranges, unknown keys)
it is read as YAML, with :class:`UserYAML` (only true/false are booleans, `010` is ten).

`null`, `~` or nothing, unquoted, still means "unset" where the field can be unset
(``Optional[str]``: data.dir, store, launch.region, ...); quoted (`'null'`) it is that text. A
text field that cannot be unset keeps the word (`description: null` is "null").

    read_typed("train: {mixed_precision: no, seed: 010}", Config)  # {"train": {"mixed_precision": "no", "seed": 10}}
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

NULL_WORDS = ("", "~", "null", "Null", "NULL")


class UserYAML(yaml.SafeLoader):
    """YAML for values that are not text: only true/false are booleans (YAML 1.2), so a word such as
    `yes` reaches a boolean field as the string pydantic reads (yes/no/on/off), and an integer with a
    leading zero is decimal (`--set train.seed=010` is 10, not YAML 1.1's octal 8; `0o10` is 8)."""


_BOOL = "tag:yaml.org,2002:bool"
UserYAML.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UserYAML.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")


def _decimal_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if _LEADING_ZERO.fullmatch(text):
        return int(text.replace("_", ""), 10)
    return int(loader.construct_yaml_int(node))


UserYAML.add_constructor("tag:yaml.org,2002:int", _decimal_int)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a (possibly Optional/Union) annotation allows."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for a in get_args(annotation) for m in _members(a))
    return (annotation,)


def takes_text(annotation: Any) -> bool:
    return any(m is str or (get_origin(m) is Literal and any(isinstance(a, str) for a in get_args(m)))
               for m in _members(annotation))


def may_be_unset(annotation: Any) -> bool:
    return type(None) in _members(annotation)


def field_type(annotation: Any, key: Any) -> Any:
    """The annotation of ``key`` inside a value of ``annotation`` (a section's field, a dict's values);
    None where the schema says nothing (an unknown key: read as YAML, then refused by name)."""
    for m in _members(annotation):
        if isinstance(m, type) and issubclass(m, BaseModel):
            field = m.model_fields.get(str(key))
            if field is not None:
                return field.annotation
        elif get_origin(m) is dict and len(get_args(m)) == 2:
            return get_args(m)[1]
    return None


def type_at(schema: Any, path: list[str]) -> Any:
    """The annotation at a dotted path (``--set train.mixed_precision=...``), None if the schema has no such key."""
    annotation = schema
    for key in path:
        annotation = field_type(annotation, key)
        if annotation is None:
            return None
    return annotation


def _construct(loader: UserYAML, node: yaml.Node, annotation: Any) -> Any:
    if isinstance(node, yaml.ScalarNode) and node.style is None and annotation is not None and takes_text(annotation):
        if node.value in NULL_WORDS and may_be_unset(annotation):
            return None
        return node.value
    if isinstance(node, yaml.MappingNode) and annotation is not None and node.tag == "tag:yaml.org,2002:map":
        loader.flatten_mapping(node)  # `<<: *anchor` merges
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            out[key] = _construct(loader, value_node, field_type(annotation, key))
        return out
    return loader.construct_object(node, deep=True)


def read_typed(text: str, schema: Any) -> Any:
    """One YAML document read against ``schema`` (a pydantic model class or an annotation); None if empty."""
    loader = UserYAML(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct(loader, node, schema)
    finally:
        loader.dispose()
