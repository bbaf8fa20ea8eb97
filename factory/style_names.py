"""Style names: they become URL paths (/styles/<name>) and object keys, so they are validated once, here."""

import re

# Lower-case letters, digits, '_' and '-', starting with a letter or digit: safe in a URL path segment,
# an S3 key and a file name on every OS, and immune to '..', '/', '\\' and hidden-file tricks.
STYLE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def validate_style_name(name: object) -> str:
    """Return `name` if it is a valid style name, else raise ValueError saying what is allowed."""
    if not isinstance(name, str) or not STYLE_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid style name {name!r}: use 1-64 characters of lower-case letters, digits, '_' "
            "and '-', starting with a letter or digit (for example 'starry_night'); the name "
            "becomes a URL path and a storage key"
        )
    return name


def is_style_name(name: object) -> bool:
    """Whether `name` is a valid style name (for names found in storage, skipped rather than refused)."""
    return isinstance(name, str) and STYLE_NAME_PATTERN.fullmatch(name) is not None
