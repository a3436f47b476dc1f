"""LangGraph's checkpoint serializer, with a fast path for the types a checkpoint here holds.

LangGraph's msgpack hook tries a long chain of ``isinstance`` checks on every object it does not
know natively (among them one against a runtime ``Protocol``, which walks the protocol's
attributes each time) before it reaches its dataclass branch; on this project's states that was
most of a checkpoint's cost. ``FastStateSerializer`` recognises the state's own dataclasses and
LangGraph's ``Send`` by exact type first and writes *the same bytes* LangGraph would (the
extension codes and layouts of ``langgraph.checkpoint.serde.jsonplus``), so what it writes is
read back by LangGraph's own loader, allow-list included, and any other object goes through
LangGraph's hook unchanged. (It uses two private names of that module, its hook and its packing
options: ``tests/test_checkpoint_cost.py`` checks byte for byte that the output is LangGraph's.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Send


class FastStateSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` (same settings, same loader) whose ``dumps_typed`` encodes
    ``dataclass_types`` and ``Send`` without LangGraph's generic lookup."""

    def __init__(self, *, dataclass_types: Iterable[type], **settings: Any) -> None:
        super().__init__(**settings)
        self._fields: dict[type, tuple[str, str, tuple[str, ...]]] = {
            t: (t.__module__, t.__name__, tuple(f.name for f in dataclasses.fields(t)))
            for t in dataclass_types
        }

    def _default(self, obj: Any) -> Any:
        known = self._fields.get(type(obj))
        if known is not None:
            module, name, fields = known
            payload = (module, name, {f: getattr(obj, f) for f in fields})
            return ormsgpack.Ext(jsonplus.EXT_CONSTRUCTOR_KW_ARGS, self._pack(payload))
        if type(obj) is Send:
            args: tuple[Any, ...] = (obj.node, obj.arg)
            if (timeout := getattr(obj, "timeout", None)) is not None:
                args = (obj.node, obj.arg, timeout)
            payload = (type(obj).__module__, type(obj).__name__, args)
            return ormsgpack.Ext(jsonplus.EXT_CONSTRUCTOR_POS_ARGS, self._pack(payload))
        return jsonplus._msgpack_default(obj)

    def _pack(self, data: Any) -> bytes:
        return ormsgpack.packb(data, default=self._default, option=jsonplus._option)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if obj is None or isinstance(obj, bytes | bytearray):
            return super().dumps_typed(obj)
        try:
            return "msgpack", self._pack(obj)
        except ormsgpack.MsgpackEncodeError:
            return super().dumps_typed(obj)  # LangGraph's own path and its own error
