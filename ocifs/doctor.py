"""``ocifs doctor [s3://BUCKET[/PREFIX]]``: will a mount work here, and what to fix if not.

Each check does the real thing rather than guessing from configuration: it opens /dev/fuse,
mounts a probe FUSE filesystem (:mod:`ocifs.fuseprobe`), resolves credentials with botocore's
own chain, asks the endpoint, and makes every kind of S3 request a mount makes on a temporary
key ``<prefix>.ocifs-doctor-<uuid>/...`` that is always cleaned up. A mount fails at its first
write, often minutes later on a CI runner; the doctor shows all the reasons at once, each with
its fix. Exit 0 when nothing failed, 1 otherwise (2 for usage errors, as every command).
"""

from __future__ import annotations

import email.utils
import os
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from ocifs import fuseprobe
from ocifs.checks import FAIL, INFO, OK, SKIP, WARN, Result  # noqa: F401 (re-exported)
from ocifs.config import Config

CONTAINER_FIX = "in a container: --device /dev/fuse --cap-add SYS_ADMIN (and --security-opt apparmor=unconfined on AppArmor hosts)"
# SigV4 signatures are refused beyond 15 minutes of skew; far less already skews mtimes that
# `ocifs gc --grace` and zot's GC compare with the clock.
SKEW_FAIL, SKEW_WARN = 900.0, 30.0


# --- the machine ----------------------------------------------------------------------------
def check_dev_fuse(path: str = "/dev/fuse") -> Result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Result("/dev/fuse", FAIL, "missing", f"modprobe fuse; {CONTAINER_FIX}")
    if not stat.S_ISCHR(st.st_mode):
        return Result("/dev/fuse", FAIL, "not a character device", "recreate it: mknod -m 0666 /dev/fuse c 10 229")
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return Result("/dev/fuse", FAIL, f"cannot open it read/write: {exc.strerror}", "chmod 0666 /dev/fuse (Debian's fuse3 package sets this up)")
    return Result("/dev/fuse", OK, f"character device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}, opens read/write")


def check_fusermount(uid: int) -> Result:
    exe = shutil.which("fusermount3")
    if exe is None:
        return Result("fusermount3", FAIL, "not on PATH (ocifs umount and non-root mounts need it)", "apt-get install fuse3")
    st = os.stat(exe)
    if uid != 0 and not (st.st_uid == 0 and st.st_mode & stat.S_ISUID):
        return Result("fusermount3", FAIL, f"{exe} is not setuid root: users cannot mount", f"chown root {exe} && chmod u+s {exe}")
    return Result("fusermount3", OK, exe + (" (setuid root)" if st.st_mode & stat.S_ISUID else ""))


def user_allow_other(fuse_conf: str) -> bool:
    """Does this /etc/fuse.conf text enable ``user_allow_other`` (a line of its own)?"""
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in fuse_conf.splitlines())


def check_allow_other(options: list[str], uid: int, fuse_conf: Path = Path("/etc/fuse.conf")) -> Result:
    if "allow_other" not in options:
        return Result("allow_other", SKIP, "not asked for (-o allow_other)")
    if uid == 0:
        return Result("allow_other", OK, "root may use it without user_allow_other")
    try:
        enabled = user_allow_other(fuse_conf.read_text())
    except OSError:
        enabled = False
    if enabled:
        return Result("allow_other", OK, f"user_allow_other is set in {fuse_conf}")
    return Result("allow_other", FAIL, f"user_allow_other is not set in {fuse_conf}: fusermount3 refuses -o allow_other for users", f"echo user_allow_other >> {fuse_conf}")


def check_fuse_mount() -> list[Result]:
    """A real probe mount: it works, and what the kernel's FUSE offers."""
    release = os.uname().release
    uring = _read("/sys/module/fuse/parameters/enable_uring")
    extra = f"; fuse.enable_uring={uring}" if uring else ""
    try:
        k = fuseprobe.probe()
    except fuseprobe.ProbeError as exc:
        return [
            Result("fuse mount", FAIL, f"a probe mount failed: {exc}", CONTAINER_FIX),
            Result("kernel", INFO, f"Linux {release}; FUSE protocol unknown (no mount){extra}"),
        ]
    offers = ", ".join(k.features) or "none of " + ", ".join(fuseprobe.FEATURES)
    return [
        Result("fuse mount", OK, "a probe FUSE filesystem mounted and unmounted"),
        Result("kernel", INFO, f"Linux {release}; FUSE protocol {k.protocol}; offers {offers}{extra}"),
    ]


def check_pyfuse3() -> Result:
    try:
        import pyfuse3
    except ImportError as exc:
        return Result("pyfuse3", FAIL, f"cannot import: {exc}", "apt-get install fuse3 libfuse3-3, then reinstall ocifs")
    return Result("pyfuse3", OK, f"pyfuse3 {getattr(pyfuse3, '__version__', '?')}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def local_checks(options: list[str]) -> list[Result]:
    uid = os.geteuid()
    return [check_dev_fuse(), check_fusermount(uid), *check_fuse_mount(), check_allow_other(options, uid), check_pyfuse3()]


# --- credentials and endpoint ---------------------------------------------------------------
CREDENTIAL_SOURCES = {
    "env": "environment (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "shared credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)",
    "config-file": "config file (AWS_CONFIG_FILE or ~/.aws/config)",
    "iam-role": "instance role (EC2 instance metadata)",
    "container-role": "container role (ECS/EKS credentials endpoint)",
    "assume-role": "assumed role (role_arn in the profile)",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "AWS SSO (run `aws sso login` when it expires)",
    "custom-process": "credential_process in the profile",
}


def check_credentials(cfg: Config) -> Result:
    """Where botocore's chain (the one the mount uses) finds credentials, if anywhere."""
    import botocore.exceptions
    import botocore.session

    try:
        creds = botocore.session.Session(profile=cfg.profile).get_credentials()
    except botocore.exceptions.ProfileNotFound:
        return Result("credentials", FAIL, f"profile {cfg.profile!r} is not defined", "define it in ~/.aws/config or ~/.aws/credentials, or drop --profile")
    except botocore.exceptions.BotoCoreError as exc:
        return Result("credentials", FAIL, f"resolving them failed: {exc}", "fix the profile, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if creds is None:
        return Result("credentials", FAIL, "none found", "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, use --profile, or run on a host with an instance role")
    frozen = creds.get_frozen_credentials()
    key = frozen.access_key or ""
    shown = f"{key[:4]}...{key[-4:]}" if len(key) > 12 else "****"
    temporary = ", temporary (session token)" if frozen.token else ""
    source = CREDENTIAL_SOURCES.get(creds.method, creds.method)
    profile = f" [profile {cfg.profile}]" if cfg.profile else ""
    return Result("credentials", OK, f"{shown} from {source}{profile}{temporary}")


def endpoint_url(cfg: Config) -> str:
    """The endpoint the mount would talk to (botocore's choice when no --endpoint-url)."""
    if cfg.endpoint_url:
        return cfg.endpoint_url.rstrip("/")
    import botocore.session

    client = botocore.session.Session(profile=cfg.profile).create_client("s3", region_name=cfg.region or "us-east-1")
    return str(client.meta.endpoint_url).rstrip("/")


def check_endpoint(cfg: Config, timeout: float = 10.0) -> tuple[Result, Result]:
    """Reachability (any HTTP answer will do) and clock skew from the answer's Date header."""
    try:
        url = endpoint_url(cfg)
    except Exception as exc:  # botocore's own checks of region/endpoint
        return Result("endpoint", FAIL, f"no usable endpoint: {exc}", "check --endpoint-url / --region"), Result("clock", SKIP, "needs the endpoint")
    req = urllib.request.Request(f"{url}/{cfg.bucket}", method="HEAD")
    sent = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, date = r.status, r.headers.get("Date")
    except urllib.error.HTTPError as exc:  # 403 for an unsigned request is still an answer
        status, date = exc.code, exc.headers.get("Date")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return (
            Result("endpoint", FAIL, f"{url}: {reason}", "check --endpoint-url (scheme, host, port), DNS, proxies and firewalls"),
            Result("clock", SKIP, "needs the endpoint"),
        )
    now = time.time()
    ep = Result("endpoint", OK, f"{url} answered HTTP {status} in {(now - sent) * 1000:.0f} ms")
    return ep, clock_result(date, (sent + now) / 2)


def clock_result(date_header: str | None, local: float) -> Result:
    if not date_header:
        return Result("clock", WARN, "the endpoint's answer has no Date header: skew unknown")
    try:
        remote = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Result("clock", WARN, f"unreadable Date header {date_header!r}: skew unknown")
    skew = local - remote
    detail = f"local clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the endpoint's"
    if abs(skew) >= SKEW_FAIL:
        return Result("clock", FAIL, detail + " (S3 refuses signatures beyond 15 min)", "sync the clock: timedatectl set-ntp true (or chrony/ntpd)")
    if abs(skew) >= SKEW_WARN:
        return Result("clock", WARN, detail + " (mtimes and gc --grace are compared with it)", "sync the clock with NTP")
    return Result("clock", OK, detail)


# --- output ---------------------------------------------------------------------------------
def render(results: list[Result], out: TextIO) -> None:
    width = max(len(r.check) for r in results) + 2
    out.write(f"{'CHECK':<{width}}{'RESULT':<8}DETAIL\n")
    for r in results:
        out.write(f"{r.check:<{width}}{r.status:<8}{r.detail}\n")
        if r.fix and r.status in (FAIL, WARN):
            out.write(f"{'':<{width + 8}}fix: {r.fix}\n")
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    out.write(f"\n{len(results)} checks: {failed} failed, {warned} warnings\n")


def run(cfg: Config | None, options: list[str], read_only: bool = False, out: TextIO = sys.stdout) -> int:
    results = local_checks(options)
    if cfg is not None:
        creds = check_credentials(cfg)
        endpoint, clock = check_endpoint(cfg)
        results += [creds, endpoint, clock]
        if creds.status == FAIL or endpoint.status == FAIL:
            results.append(Result("bucket", SKIP, "needs credentials and a reachable endpoint"))
        else:
            from ocifs.doctor_s3 import bucket_checks

            results += bucket_checks(cfg, read_only)
    render(results, out)
    return 1 if any(r.status == FAIL for r in results) else 0
