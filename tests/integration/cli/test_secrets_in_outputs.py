"""No fragment of a database password reaches any output: stderr, the log, the failure
record, `list --json`, `status --json` or the webhook's body.

The passwords hold every URL delimiter, written as people do (unencoded) and properly
percent-encoded; their letter runs are distinctive, so any piece of them is easy to spot.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from tests.conftest import Project
from tests.unit.operations.webhook import webhook_server

KEY = "secrets-in-outputs-passphrase-0123"
ALL_DELIMITERS = (
    "Kq7v@Wx3:Zr2/Lm8?Ht9#Qe4%Bn5[Cj6]Dk1!Fg2$Hp3&Jt4'Mv5(Nw6)Px7*Ry8+Sz9,Tb1;Uc2=Vd3 Xf4"
)
PASSWORDS = [
    "p@ss:w/rd#1%x",  # the examples
    "hunter@2xyz",
    ALL_DELIMITERS,
]


def _fragments(password: str) -> list[str]:
    pieces = re.split(r"[^A-Za-z0-9]+", password)
    return [piece for piece in pieces if len(piece) >= 3] + [password]


def _everything_shown(project: Project, password: str, *, encode: bool) -> str:
    written = urllib.parse.quote(password, safe="") if encode else password
    url = f"postgresql://app:{written}@127.0.0.1:1/appdb"
    with webhook_server() as hook:
        env = {
            "DATABASE_URL": url,
            "BACKUP_KEY": KEY,
            "BACKUP_CONNECT_RETRIES": "1",
            "BACKUP_NOTIFY_URL": hook.url(),
        }
        backup = project.run("backup", "database", env=env)
        assert backup.returncode != 0
        [received] = hook.received
    listed = project.run("list", "--json", env=env)
    status = project.run("status", "--json", env=env)
    doctor = project.run("doctor", env=env)
    [record] = json.loads(listed.stdout)
    assert record["status"] == "failed" and "127.0.0.1" in record["error"]
    logs = [path.read_text() for path in (project.root / "logs").iterdir()]
    manifests = [path.read_text() for path in project.backups.rglob("*.manifest.json")]
    outputs = [backup.stdout, backup.stderr, listed.stdout, listed.stderr, status.stdout]
    outputs += [doctor.stdout, doctor.stderr, json.dumps(received.body), *logs, *manifests]
    return "\n".join(outputs)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("encode", [False, True], ids=["unencoded", "percent-encoded"])
def test_no_fragment_of_the_password_in_any_output(
    project: Project, password: str, encode: bool
) -> None:
    shown = _everything_shown(project, password, encode=encode)
    for fragment in _fragments(password):
        assert fragment not in shown, fragment
