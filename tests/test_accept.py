"""The output format follows the Accept header's preferences, q-values and all."""

import pytest

from serve.http_input import format_from_accept


@pytest.mark.parametrize("accept, expected", [
    ("", "jpeg"),
    ("image/png", "png"),
    ("image/webp,image/png", "webp"),                      # a tie goes to the first listed
    ("image/png;q=0.5, image/webp;q=0.9", "webp"),
    ("image/webp;q=0, image/png", "png"),                   # q=0 means "not this"
    ("text/html, image/avif, */*;q=0.8", "jpeg"),           # a browser's default
    ("image/*;q=0.9, image/png;q=1", "png"),
    ("image/png;q=oops", "jpeg"),
])
def test_format_from_accept(accept, expected):
    assert format_from_accept(accept) == expected
