"""Job secrets (spec §7), one module per part:

* `provide.py` (worker): resolves a job's refs, tells the writer what to redact, delivers the values;
* `broker.py` (the per-run secrets broker process): opens each vault once, answers each job its refs;
* `aliases.py`, `keepass.py` (the only `pykeepass` import), `op.py` (the `OpClient` Protocol and the
  op:// resolution), `onepassword.py` (the only `onepassword` import), `fake_op.py` (a 1Password
  account in a JSON file, for tests): used by the broker and by `loom secrets`;
* `errors.py`: the SECRETS_* codes.

Nothing here is imported by a run whose jobs declare no secrets.
"""

from workers.secrets.provide import provide, remove

__all__ = ["provide", "remove"]
