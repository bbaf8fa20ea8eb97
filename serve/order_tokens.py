"""Who may order a style: bearer tokens, kept as secrets, compared in constant time.

Tokens come from the environment variable STYLE_FACTORY_ORDER_TOKENS (comma-separated) and from the
file orders.tokens_file names (one a line, optionally "label token"; # starts a comment), never from
the serving YAML, which is copied into Serve's config and the dashboard. The file is read again
when it changes, so tokens are added or revoked without a deploy.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path

from factory.orders import token_fingerprint

TOKENS_VARIABLE = "STYLE_FACTORY_ORDER_TOKENS"
MIN_TOKEN_LENGTH = 16
MAX_HEADER_TOKEN = 512
RECHECK_S = 2.0


class TokenFileError(ValueError):
    pass


def parse_tokens(text: str, where: str) -> list[str]:
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        token = line.split()[-1]
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(f"{where} line {number}: a token must be at least {MIN_TOKEN_LENGTH} characters "
                                 "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        tokens.append(token)
    return tokens


class OrderTokens:
    """The tokens allowed to order, re-read from their file when it changes (checked at most every RECHECK_S)."""

    def __init__(self, tokens_file: str = ""):
        self.tokens_file = tokens_file
        self.lock = threading.Lock()
        self.file_stamp: tuple | None = None
        self.checked_at = 0.0
        self.from_file: list[str] = []
        self.file_problem = self.environment_problem = ""

    def _from_environment(self) -> list[str]:
        try:
            return parse_tokens(os.environ.get(TOKENS_VARIABLE, "").replace(",", "\n"), TOKENS_VARIABLE)
        except TokenFileError as error:  # refused, and said why (a log line); never a server error
            self.environment_problem = str(error)
            return []

    def _reload_file(self) -> None:
        if not self.tokens_file or time.monotonic() - self.checked_at < RECHECK_S:
            return
        self.checked_at = time.monotonic()
        try:
            stat = Path(self.tokens_file).stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self.file_stamp:
                self.from_file, self.file_stamp, self.file_problem = parse_tokens(Path(self.tokens_file).read_text(), self.tokens_file), stamp, ""
        except (OSError, TokenFileError) as error:  # keep the tokens last read: an edit in progress must not lock everyone out
            self.file_problem = f"orders.tokens_file: {error}"

    def tokens(self) -> list[str]:
        with self.lock:
            self.environment_problem = ""
            self._reload_file()
            return self._from_environment() + self.from_file

    @property
    def problem(self) -> str:
        """What is wrong with the tokens as configured ("" when nothing is)."""
        return "; ".join(problem for problem in (self.environment_problem, self.file_problem) if problem)

    def owner(self, authorization: str | None) -> str | None:
        """The fingerprint of the request's bearer token when it is one of ours, else None. Every known
        token is compared, each in constant time, so the time taken tells nothing of which came close."""
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given or len(given) > MAX_HEADER_TOKEN:
            return None
        matched = False
        for token in self.tokens():
            matched |= hmac.compare_digest(given.encode(), token.encode())
        return token_fingerprint(given) if matched else None
