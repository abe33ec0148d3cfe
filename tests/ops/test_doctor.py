"""``ocifs doctor`` against the real MinIO, with real credentials of each kind, on this machine.

Read-only credentials are MinIO STS AssumeRole credentials with a session policy, as in
tests/reliability: S3 itself refuses their writes, so the FAIL rows and their fixes are what
a user with such credentials would see.
"""

from __future__ import annotations

import re

import pytest

from conftest import ocifs_bin, run

from testkit import assume_role
from reliability.test_hostile import read_only_policy

pytestmark = pytest.mark.timeout(180)

S3_ROWS = ["credentials", "endpoint", "clock", "list", "put", "get", "copy", "multipart", "abort", "conditional", "delete", "cleanup"]


def doctor(*args, env=None, check_exit: int | None = None):
    res = run([*ocifs_bin(), "doctor", *args], env=env, timeout=120, check=False)
    assert "Traceback" not in res.stdout + res.stderr, res.describe()
    if check_exit is not None:
        assert res.returncode == check_exit, res.describe()
    return res


def table(stdout: str) -> dict[str, tuple[str, str, str]]:
    """CHECK -> (RESULT, DETAIL, fix or '') from the doctor's table."""
    lines = stdout.splitlines()
    head = lines[0]
    at_result, at_detail = head.index("RESULT"), head.index("DETAIL")
    rows: dict[str, tuple[str, str, str]] = {}
    last = None
    for line in lines[1:]:
        if not line.strip() or re.match(r"^\d+ checks:", line):
            continue
        if line[:at_result].strip():
            last = line[:at_result].strip()
            rows[last] = (line[at_result:at_detail].strip(), line[at_detail:], "")
        else:
            assert last and line.strip().startswith("fix: "), f"unexpected line {line!r}"
            rows[last] = (*rows[last][:2], line.strip()[5:])
    return rows


def leftovers(bucket) -> tuple[list[str], list[str]]:
    keys = [k for k in bucket.list() if ".ocifs-doctor-" in k]
    uploads = bucket.s3.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
    return keys, [u["Key"] for u in uploads if ".ocifs-doctor-" in u["Key"]]


def test_full_credentials_pass_every_check_and_leave_nothing(s3, bucket):
    bucket.put("repo/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    res = doctor(bucket.url, "--endpoint-url", s3.endpoint, "-o", "allow_other", env=s3.env(), check_exit=0)
    rows = table(res.stdout)
    assert list(rows)[-len(S3_ROWS):] == S3_ROWS, res.stdout
    for name in ["/dev/fuse", "fusermount3", "fuse mount", "allow_other", "pyfuse3", *S3_ROWS]:
        # abort: a warning on MinIO when a prefix is used (its ListMultipartUploads does not
        # match prefixes), never a failure
        allowed = ("ok", "warn") if name == "abort" and bucket.prefix else ("ok",)
        assert rows[name][0] in allowed, f"{name}: {rows[name]}\n{res.stdout}"
    assert re.search(r"FUSE protocol 7\.\d+", rows["kernel"][1]), rows["kernel"]
    assert "from environment (AWS_ACCESS_KEY_ID)" in rows["credentials"][1]
    assert rows["conditional"][1].startswith("If-None-Match: * and a wrong If-Match are both refused")
    assert leftovers(bucket) == ([], []), "the doctor left keys or uploads behind"
    assert re.search(r"^\d+ checks: 0 failed, ", res.stdout, re.M), res.stdout


def test_read_only_credentials_fail_writes_with_fixes(s3, bucket):
    bucket.put("repo/blob", b"readable")
    try:
        ak, sk, token = assume_role(s3.endpoint, s3.access_key, s3.secret_key, read_only_policy(bucket.name))
    except Exception as e:  # an external S3 endpoint may not offer STS
        pytest.fail(f"cannot make read-only credentials with STS AssumeRole on {s3.endpoint}: {e}", pytrace=False)
    env = s3.env(ak, sk)
    env["AWS_SESSION_TOKEN"] = token
    res = doctor(bucket.url, "--endpoint-url", s3.endpoint, env=env, check_exit=1)
    rows = table(res.stdout)
    assert "temporary (session token)" in rows["credentials"][1]
    assert rows["list"][0] == "ok" and rows["get"][0] == "ok", res.stdout
    for name, action in [("put", "s3:PutObject"), ("multipart", "s3:PutObject"), ("abort", "s3:AbortMultipartUpload"), ("delete", "s3:DeleteObject")]:
        status, detail, fix = rows[name]
        assert status == "FAIL" and "access denied" in detail, f"{name}: {rows[name]}"
        assert fix.startswith(f"allow {action}") and f"arn:aws:s3:::{bucket.name}/" in fix, f"{name}: {fix!r}"
    assert rows["copy"][0] == rows["conditional"][0] == "skip"
    assert rows["cleanup"][0] == "ok"
    assert re.search(r"^\d+ checks: 4 failed, 0 warnings$", res.stdout, re.M), res.stdout
    # the same credentials are right for a --read-only mount: nothing to fix then
    res = doctor(bucket.url, "--endpoint-url", s3.endpoint, "--read-only", env=env, check_exit=0)
    assert table(res.stdout)["put"][0] == "skip"
    assert leftovers(bucket) == ([], [])


def test_credentials_from_a_profile_in_a_shared_file(s3, bucket, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[ci]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n")
    env = s3.env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    res = doctor(bucket.url, "--endpoint-url", s3.endpoint, "--profile", "ci", env=env, check_exit=0)
    assert "from shared credentials file" in table(res.stdout)["credentials"][1] and "[profile ci]" in res.stdout
    res = doctor(bucket.url, "--endpoint-url", s3.endpoint, "--profile", "nope", env=env, check_exit=1)
    status, detail, fix = table(res.stdout)["credentials"]
    assert (status, detail) == ("FAIL", "profile 'nope' is not defined") and fix, res.stdout
    assert table(res.stdout)["bucket"][0] == "skip"


def test_unreachable_endpoint_is_one_fail_with_its_fix(s3, bucket):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    res = doctor(bucket.url, "--endpoint-url", url, env=s3.env(), check_exit=1)
    status, detail, fix = table(res.stdout)["endpoint"]
    assert status == "FAIL" and "Connection refused" in detail and "--endpoint-url" in fix


def test_machine_only_without_a_url():
    res = doctor(check_exit=0)
    rows = table(res.stdout)
    assert list(rows) == ["/dev/fuse", "fusermount3", "fuse mount", "kernel", "allow_other", "pyfuse3"]


@pytest.mark.parametrize("args", [["s3://X"], ["s3://bucket", "--bogus"], ["ftp://bucket"]])
def test_usage_errors_exit_2_with_one_line(args):
    res = doctor(*args, check_exit=2)
    assert res.stdout == "" and res.stderr.startswith("ocifs: ") and res.stderr.count("\n") == 1, res.describe()
