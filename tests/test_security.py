"""Secrets stay out of the repository: credentials come from conf/local (gitignored) or the
environment, and nothing committed outside tests/ carries one."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

SECRET_PATTERNS = {
    "a password inside a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),
    "a private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "an AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "a literal password, secret, token or API key": re.compile(
        r"(?i)\b(?:password|passwd|secret|api_key|apikey|auth_token|access_token)\s*[:=]\s*['\"][^'\"\s${}]{6,}['\"]"
    ),
}
"""What a leaked credential looks like in a config file, a manifest or code."""


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"git ls-files failed in {ROOT}: {result.stderr}")
    return [name for name in result.stdout.splitlines() if not name.startswith("tests/")]


@pytest.mark.parametrize(("what", "pattern"), list(SECRET_PATTERNS.items()))
def test_the_patterns_catch_what_they_are_for(what: str, pattern: re.Pattern[str]) -> None:
    planted = {
        "a password inside a URL": "url: postgresql+psycopg://admin:hunter22@db.internal:5432/feast",
        "a private key": "-----BEGIN RSA PRIVATE KEY-----",
        "an AWS access key id": "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "a literal password, secret, token or API key": 'auth_token: "f00dfeedcafe"',
    }[what]
    assert pattern.search(planted)
    for harmless in ("postgresql+psycopg://postgres@127.0.0.1:5432/feast", "path: ${MLSD_FEAST_REGISTRY_URL}",
                     "auth_token_env: MLSD_API_TOKEN", "password: ${DB_PASSWORD}"):  # fmt: skip
        assert not pattern.search(harmless), harmless


def test_no_committed_file_outside_tests_carries_a_credential() -> None:
    found, names = [], _tracked_files()
    assert len(names) > 100  # the scan saw the repository, not an empty listing
    for name in names:
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {what}" for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert not found, found


def test_local_credentials_and_conf_local_are_gitignored() -> None:
    for name in ("conf/local/credentials.yml", "conf/local/parameters.yml", "conf/local/anything.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert ignored.returncode == 0, f"{name} would be committable"
    example = subprocess.run(["git", "check-ignore", "-q", "conf/local/credentials.example.yml"], cwd=ROOT)
    assert example.returncode == 1  # the example (no secrets in it) is committed on purpose
