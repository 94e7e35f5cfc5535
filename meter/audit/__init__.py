"""The audit log (SPEC section 10): every change made with an admin key, the CLI or the scheduler.

An entry is `{id, at, actor, action, target, details}`, appended by `record` in the same
transaction as the change it describes, so that a change and its entry commit or roll back
together. A long operation (a reprice) writes `<action>.start` in a transaction of its own,
then `<action>.finish` with its change, or `<action>.abort` when it fails. Nothing in meter
updates or deletes an entry.

`actor` is a string, one of:

- `key:<id>:<name>` (`key:<id>` for a key without a name): an admin key stored in api_keys;
- `admin-env`: METER_ADMIN_KEY;
- `open`: open mode (no key exists at all, so meter serves loopback only, without auth);
- `cli`: a `meter` command run against the database;
- `scheduler`: a job of `meter serve`.

`details` is the change without any secret: never a key, never a webhook secret (a budget says
`has_webhook_secret` instead); `record` refuses details naming such a field.
"""

from meter.audit.actors import ADMIN_ENV, CLI, OPEN, SCHEDULER, actor_of, key_actor
from meter.audit.operations import LongOperation, long_operation
from meter.audit.repository import AuditEntry, list_entries, record

__all__ = [
    "ADMIN_ENV",
    "CLI",
    "OPEN",
    "SCHEDULER",
    "AuditEntry",
    "LongOperation",
    "actor_of",
    "key_actor",
    "list_entries",
    "long_operation",
    "record",
]
