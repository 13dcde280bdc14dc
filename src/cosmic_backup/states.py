"""The one vocabulary for how things ended and how things stand.

`Outcome` is how one piece of work ended: a backup (its manifest's status too), one
component of a run, a whole `all` run, a doctor check. `Health` is what `status` says of a
component. `Trust` is what the catalog could check of a manifest. Each is a `StrEnum`, so
what reaches JSON, manifests and logs is the plain word, unchanged.

Like errors.py, this imports nothing of ours: every layer, the format included, may use it.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    WARNING = "warning"  # done, with something the operator should look at (doctor)
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing to do: the component is not configured
    PARTIAL = "partial"  # a run of several components where some failed


class Health(StrEnum):
    OK = "OK"
    OVERDUE = "OVERDUE"  # no good backup within the expected interval plus grace
    FAILING = "FAILING"  # the latest attempt failed
    NEVER = "NEVER"  # no good backup at all
    NOT_CONFIGURED = "NOT CONFIGURED"  # nothing to back up, and never backed up
    RESTORE_INTERRUPTED = "RESTORE INTERRUPTED"  # a files restore's folders are not settled
    OFFSITE_MISSING = "OFFSITE-MISSING"  # an upload failed and `sync` has not completed it
    UNTESTED = "UNTESTED"  # no passing restore test within BACKUP_RESTORE_TEST_INTERVAL_DAYS

    @property
    def healthy(self) -> bool:
        return self in (Health.OK, Health.NOT_CONFIGURED)


class Trust(StrEnum):
    VERIFIED = "verified"  # its MAC checks out under a key at hand
    UNVERIFIED = "unverified"  # its key is not at hand: unchecked, not refused
    TAMPERED = "tampered"  # unreadable, edited, or naming another backup
    UNSIGNED = "unsigned"  # a failure record written before any key existed
