"""langchain-tests' standard suites for ChatReAttention, on CPU with the real default model.

Skipped by design (the model has no such features): tool calling and tool choice, image/audio/
PDF/video inputs, Anthropic-format inputs. Structured output and JSON mode run: decoding is
constrained to the suite's schemas (``runtime/structured.py``), with the suite's small max_tokens. Unavoidable:
``test_serdes`` (LangChain only deserializes classes on its own allowlist, so the class does not
claim to be serializable).
"""

from __future__ import annotations

from typing import Any

from conftest import SMALL_CONFIG_KWARGS
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from reattn_llm import ChatReAttention, ReAttentionConfig
from reattn_llm.runtime.models import DEFAULT_MODEL, default_model_dir

_PARAMS: dict[str, Any] = {"config": ReAttentionConfig(**SMALL_CONFIG_KWARGS), "progress": False}


class _Features:
    """What ChatReAttention does and does not support, for both suites."""

    @property
    def chat_model_class(self) -> type[ChatReAttention]:
        return ChatReAttention

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(_PARAMS)

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        # Another model for one call: the default model's weights read from their local folder,
        # which is a separate engine whose reported name is that folder.
        return str(default_model_dir())


class TestChatReAttentionUnit(_Features, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite's defaults less api_key, timeout and max_retries: a local model has none of
        # them, and the wrapper refuses constructor arguments it would otherwise ignore.
        return {"temperature": 0, "max_tokens": 100, "stop": []}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"REATTN_LLM_MODEL": DEFAULT_MODEL}, dict(_PARAMS), {"model": DEFAULT_MODEL}


class TestChatReAttentionIntegration(_Features, ChatModelIntegrationTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # Short answers keep the CPU time low (test_stop_sequence builds one without these).
        return {"max_tokens": 40, "temperature": 0}

    @property
    def enable_vcr_tests(self) -> bool:
        # Nothing goes over the network; the cassette stays empty and test_stream_time times a real stream.
        return True
