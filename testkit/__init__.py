"""The one test rig of ocifs: what tests/, bench/ and scripts/ start, mount and check with.

Not part of ocifs (the wheel holds ``ocifs*`` only). Everything is real and bounded in time:

* :mod:`testkit.paths` - the pinned tools (``.tools/bin``, ``.venv/bin``) and :class:`RigError`
* :mod:`testkit.procs` - ``run`` with a timeout, free ports, stopping and watching processes
* :mod:`testkit.server` - the base of every server: own session, log, readiness, stop/kill/pause
* :mod:`testkit.minio`, :mod:`testkit.minio_metrics` - a private MinIO and its request counters
* :mod:`testkit.s3` - credentials for subprocesses and a botocore client for direct checks
* :mod:`testkit.toxiproxy` - toxiproxy-server, proxies and toxics
* :mod:`testkit.zot`, :mod:`testkit.registry` - zot and docker-registry
* :mod:`testkit.mounts` - is it mounted (``ocifs.runtime``'s parser), daemon pid, lazy unmount
* :mod:`testkit.ocifs_mount` - mounts made by the real ``ocifs`` CLI, with daemon log tails

The rig raises :class:`RigError` and never decides how a failure is reported: pytest turns it
into a failed test (tests/conftest.py), the benchmark into a failed step, a script into its
exit status.
"""

from testkit.minio import MinioServer
from testkit.minio_metrics import minio_counters
from testkit.mounts import daemon_pid, force_unmount, is_mounted, mount_entries, wait_mounted
from testkit.ocifs_mount import MOUNT_TIMEOUT, UMOUNT_TIMEOUT, MountFailed, OcifsMount
from testkit.paths import REPO, SETUP_HINT, TOOLS, VENV_BIN, RigError, find_tool, ocifs_cmd, require_tool
from testkit.procs import CommandFailed, CommandTimeout, Result, alive, free_port, run, stop_process, wait_dead
from testkit.registry import Registry
from testkit.s3 import REGION, S3, assume_role, get_or_none, incomplete_uploads, list_keys, s3_client, s3_env
from testkit.server import Server
from testkit.toxiproxy import Proxy, Toxiproxy
from testkit.zot import Zot, storage_on_root, storage_on_s3

__all__ = [
    "MOUNT_TIMEOUT", "REGION", "REPO", "SETUP_HINT", "TOOLS", "UMOUNT_TIMEOUT", "VENV_BIN",
    "CommandFailed", "CommandTimeout", "MinioServer", "MountFailed", "OcifsMount", "Proxy", "Registry",
    "Result", "RigError", "S3", "Server", "Toxiproxy", "Zot",
    "alive", "assume_role", "daemon_pid", "find_tool", "force_unmount", "free_port", "get_or_none",
    "incomplete_uploads", "is_mounted", "list_keys", "minio_counters", "mount_entries", "ocifs_cmd",
    "require_tool", "run", "s3_client", "s3_env", "stop_process", "storage_on_root", "storage_on_s3",
    "wait_dead", "wait_mounted",
]
