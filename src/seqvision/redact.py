"""Credentials out of what seqvision writes down or sends to a tracker: a tracking URI, a data URL.

``https://user:secret@host:5000/path?token=x#f`` -> ``https://user@host:5000/path``: the password and the
query and fragment (where signed URLs and tokens live) go; the user name, host, port and path stay, so the
text still says where it points. Anything that is not a network URL (a path, ``sqlite:///FILE``,
``file:///FILE``, a name) is left as it is.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

LOCAL_SCHEMES = ("sqlite", "file")  # a file on this machine: nothing secret in it, and its path is what matters


def without_password(uri: str) -> str:
    """``uri`` as it may be written down: no password, query or fragment (see the module's docstring)."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # "http://[bad" : not a URL we can read; nothing to keep of it but the scheme
        return uri.split("://", 1)[0] + "://" if "://" in uri else uri
    if not parts.netloc or parts.scheme.lower() in LOCAL_SCHEMES:
        return uri
    authority = parts.netloc
    try:
        parts.port
    except ValueError:
        # "https://user:a/b@host": a password holding an unescaped "/" ends urlsplit's netloc early (its
        # "port" is not a number); the authority then runs to the last "@" before the query
        before_query = re.split(r"[?#]", uri.split("://", 1)[1], maxsplit=1)[0]
        if "@" in before_query:
            userinfo, _, rest = before_query.rpartition("@")
            host, slash, path = rest.partition("/")
            return f"{parts.scheme}://{_user(userinfo)}{host}{slash}{path}"
    userinfo, _, host = authority.rpartition("@")  # the LAST "@": a password may hold one
    return f"{parts.scheme}://{_user(userinfo)}{host}{parts.path}"


def _user(userinfo: str) -> str:
    name = userinfo.partition(":")[0]
    return f"{name}@" if name else ""


def redacted(value: Any) -> Any:
    """``value`` with :func:`without_password` applied to every string in it (dicts and lists walked)."""
    if isinstance(value, str):
        return without_password(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value
