"""How nurture's values cross Temporal: pydantic JSON, with one type-adapter cache
shared by the whole process.

The stock pydantic converter caches type adapters per converter instance, and the
worker makes a converter per workflow instance, so every new lead's workflow rebuilt
the schema of `LeadState` (campaign and funnel included): about a tenth of a worker's
CPU. Types are stable objects (workflow messages live in nurture.messages, which the
sandbox passes through), so one cache serves them all.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import CompositePayloadConverter, DataConverter


@functools.lru_cache(maxsize=512)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


class _SharedCacheJSONConverter(PydanticJSONPlainPayloadConverter):
    def __init__(self) -> None:
        super().__init__()
        self._type_adapter = _adapter  # type: ignore[assignment]


class NurturePayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        stock = PydanticPayloadConverter()
        super().__init__(*(
            _SharedCacheJSONConverter() if isinstance(c, PydanticJSONPlainPayloadConverter) else c
            for c in stock.converters.values()
        ))


data_converter = DataConverter(payload_converter_class=NurturePayloadConverter)
