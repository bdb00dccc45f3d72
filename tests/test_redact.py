"""Credentials out of what is written down or sent to a tracker: passwords, tokens in queries."""

from __future__ import annotations

import pytest

from seqvision.redact import redacted, without_password


@pytest.mark.parametrize("uri, shown", [
    ("https://user:secret@host", "https://user@host"),
    ("https://user:p@ss@host", "https://user@host"),  # the netloc ends at the LAST "@"
    ("https://user:a/b@host", "https://user@host"),  # an unescaped "/" in the password
    ("https://user:a/b@host:5000/api?x=1", "https://user@host:5000/api"),
    ("https://:tok@host", "https://host"),  # a token as the password, no user name
    ("https://host/?token=abc", "https://host/"),  # a token in the query
    ("https://host:5000/path#frag", "https://host:5000/path"),
    ("http://user:pw@127.0.0.1:5000", "http://user@127.0.0.1:5000"),
    ("http://user:pw@[::1]:5000/x", "http://user@[::1]:5000/x"),
    ("https://user@Host.example:443/a", "https://user@Host.example:443/a"),  # nothing secret: unchanged
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/runs/mlflow.db", "sqlite:////tmp/runs/mlflow.db"),  # local files: unchanged
    ("sqlite:///runs/mlflow.db", "sqlite:///runs/mlflow.db"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ("/data/clips", "/data/clips"),
    ("lstm", "lstm"),
])
def test_without_password_keeps_user_host_port_and_path_only(uri, shown):
    assert without_password(uri) == shown


def test_redacted_walks_configs_and_leaves_other_values_alone():
    config = {"data": {"data": "https://u:token@host/d.csv?sig=s3cret", "cache": "auto", "sizes": [1, 2]},
              "model": {"head": "lstm", "urls": ["https://:k@h/x"], "lr": 0.01, "frozen": True}}
    clean = redacted(config)
    assert clean == {"data": {"data": "https://u@host/d.csv", "cache": "auto", "sizes": [1, 2]},
                     "model": {"head": "lstm", "urls": ["https://h/x"], "lr": 0.01, "frozen": True}}
    assert config["data"]["data"].endswith("sig=s3cret")  # the original is untouched
