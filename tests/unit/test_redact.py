"""Secrets never reach a log line or an error message."""

from __future__ import annotations

import logging

import pytest

from app.redact import RedactingFilter, redact
from app.types import GenerationRequest, Prompt, SamplingOptions

SECRETS = ["sk-live-0123456789abcdef", "hf_abcdefghijklmnopqrstuvwxyz12", "AKIAABCDEFGHIJKLMNOP",
           "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer sk-live-0123456789abcdef",
        '{"inputs": "hi", "parameters": {"api_token": "hf_abcdefghijklmnopqrstuvwxyz12"}}',
        "api_token='sk-live-0123456789abcdef' adapter=x",
        "download failed for token hf_abcdefghijklmnopqrstuvwxyz12",
        "aws_access_key_id=AKIAABCDEFGHIJKLMNOP aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "https://store/x?api_key=sk-live-0123456789abcdef&x=1",
    ],
)
def test_redact_masks_every_secret(text):
    clean = redact(text)
    assert "***" in clean
    assert not any(secret in clean for secret in SECRETS)


def test_redact_keeps_ordinary_text():
    text = "adapter demo-lora-a loaded (id 1) in 0.2 s; prompt tokens 9"
    assert redact(text) == text


def test_log_records_are_redacted(caplog):
    logger = logging.getLogger("loragate.test.redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="loragate.test.redact"):
        logger.info("request with %s", "Authorization: Bearer sk-live-0123456789abcdef")
        try:
            raise ValueError("bad api_token=hf_abcdefghijklmnopqrstuvwxyz12")
        except ValueError:
            logger.exception("failed")
    assert "sk-live-0123456789abcdef" not in caplog.text
    assert "hf_abcdefghijklmnopqrstuvwxyz12" not in caplog.text
    assert "***" in caplog.text


def test_a_generation_request_never_shows_its_token():
    request = GenerationRequest(request_id="r", prompt=Prompt(token_ids=[1]), sampling=SamplingOptions(),
                                api_token="hf_abcdefghijklmnopqrstuvwxyz12")
    assert "hf_" not in repr(request) and "hf_" not in str(request)
