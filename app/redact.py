"""Keeping secrets out of logs: a ``logging.Filter`` that masks bearer tokens, ``api_token`` values,
Hugging Face tokens and AWS credentials in every record before any handler writes it.

Installed on the root logger's handlers by ``loragate serve``; the same :func:`redact` masks error
messages built from engine or store exceptions.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_PATTERNS = (
    # Authorization: Bearer <token> (also Basic), in headers, reprs and JSON
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{4,}"),
    # api_token / api_key / token / secret / password = value, in JSON, reprs and query strings
    re.compile(r"""(?i)(["']?\b(?:api[_-]?token|api[_-]?key|hf[_-]?token|access[_-]?token|secret[_-]?access[_-]?key|"""
               r"""aws[_-]?secret[_-]?access[_-]?key|aws[_-]?session[_-]?token|password|secret)\b["']?\s*[:=]\s*["']?)"""
               r"""[^"'\s,&}]{2,}"""),
    # Hugging Face user access tokens
    re.compile(r"\b()hf_[A-Za-z0-9]{20,}"),
    # AWS access key ids
    re.compile(r"\b()(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)


def redact(text: str) -> str:
    """``text`` with every recognised secret replaced by ``***`` (the name of the field is kept)."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts the fully formatted message (and any exception text) of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (default: the root logger) and of uvicorn's
    loggers, so records from any library are redacted whichever handler writes them."""
    loggers = [logger or logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.access"),
               logging.getLogger("uvicorn.error")]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
