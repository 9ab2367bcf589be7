"""LoRAX request bodies: ``GenerateRequest``/``CompatGenerateRequest`` and ``TokenizeRequest``.

Source: LoRAX ``router/src/lib.rs`` (``GenerateParameters``, ``GenerateRequest``,
``CompatGenerateRequest``, ``AdapterParameters``, ``ResponseFormat``, ``TokenizeRequest``) at
a7394ba3 (shared/reference/lorax-api.md §2). Only JSON types are checked here (LoRAX's serde
deserialization, e.g. unsigned integers); value rules and their exact messages are in
:mod:`native_api.validation`. Unknown fields are ignored, as serde does.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class MergedAdapters(_Lenient):
    """``merged_adapters`` (``AdapterParameters`` in LoRAX's Rust)."""

    ids: list[str]
    weights: list[float] = Field(default_factory=list)
    merge_strategy: str | None = None
    density: float = 0.0
    majority_sign_method: str | None = None


class NativeResponseFormat(_Lenient):
    """``{"type": "json_object" | "json_schema" | "text", "schema": {...} | null}``."""

    type: str = Field(default="json_object")
    schema_: dict[str, Any] | None = Field(default=None, validation_alias=AliasChoices("schema"))

    @property
    def schema_given(self) -> bool:
        """Whether the body had a ``schema`` key at all (absent and ``null`` differ in LoRAX)."""
        return "schema_" in self.model_fields_set


class GenerateParameters(_Lenient):
    """Every LoRAX generation parameter; ``None`` means "not set" (LoRAX's ``Option``)."""

    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: MergedAdapters | None = None
    api_token: str | None = None
    best_of: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = Field(default=None, ge=-(2**31), lt=2**31)  # LoRAX: i32
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = Field(default=None, ge=0, lt=2**32)
    ignore_eos_token: bool = False
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: int | None = Field(default=None, ge=0)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_k_alternatives: int | None = Field(default=None, ge=-(2**31), lt=2**31)  # LoRAX: i32
    apply_chat_template: bool = False
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    response_format: NativeResponseFormat | None = None


class GenerateRequest(_Lenient):
    """``POST /generate`` and ``/generate_stream`` (``stream`` only counts on ``POST /``)."""

    inputs: str
    # LoRAX rejects an explicit `null` here; accepting it as "all defaults" harms no one.
    parameters: GenerateParameters | None = None
    stream: bool = False

    @property
    def params(self) -> GenerateParameters:
        return self.parameters or GenerateParameters()


class TokenizeRequest(_Lenient):
    """``POST /tokenize``."""

    inputs: str
    add_special_tokens: bool = True
