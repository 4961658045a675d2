"""The SECRETS_* codes of spec §7.2 and the error that carries one. Imported by every process that
resolves or manages secrets (worker, secrets broker, `loom secrets`).

A message names what to fix (which variable is unset, which file is missing, which credentials
were refused) and never holds a secret value, a master password or a token.
"""

from __future__ import annotations

PROVIDER_UNAVAILABLE = "SECRETS_PROVIDER_UNAVAILABLE"
REF_INVALID = "SECRETS_REF_INVALID"
REF_NOT_FOUND = "SECRETS_REF_NOT_FOUND"
REQUIRED_MISSING = "SECRETS_REQUIRED_MISSING"
UNSAFE_DEBUG_TRACE = "SECRETS_UNSAFE_DEBUG_TRACE"

EXTRAS = {"keepass": ("pykeepass", "KeePass"), "op": ("onepassword-sdk", "1Password")}


class SecretError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def missing_extra(extra: str) -> SecretError:
    package, what = EXTRAS[extra]
    return SecretError(PROVIDER_UNAVAILABLE, f"the {what} provider needs the {package} package, which is not "
                                             f"installed: pip install 'loomrun[{extra}]'")


def scrub(text: str, *secrets: str | None) -> str:
    """`text` without any of `secrets` (a library's error message may quote what it was given)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text
