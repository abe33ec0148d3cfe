"""examples/ci: the mount / push / unmount shell of each CI recipe, run for real against MinIO.

The YAML is read with a small subset parser (PyYAML is not in the venv). The recipes run in
the ocifs runner image (Containerfile); here the steps run on this machine, which has the same
tools: ocifs (.venv) and the pinned oras (.tools/bin) on PATH. Secrets reach the steps exactly
as the CI system would give them: through the ``env:`` / ``variables:`` mappings of the recipe.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, force_unmount, is_mounted, oras_bin, ocifs_bin
from ocifs.runtime import mount_table

from .opslib import EXAMPLES_DIR, MiniYAML, tools_path

pytestmark = pytest.mark.timeout(150)

GHA = EXAMPLES_DIR / "ci" / "github-actions.yml"
GITLAB = EXAMPLES_DIR / "ci" / "gitlab-ci.yml"
SHA = "0123456789abcdef0123456789abcdef01234567"


def base_env(tmp_path: Path, fail_oras: bool) -> dict[str, str]:
    oras_bin()
    ocifs_bin()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    path = tools_path()
    if fail_oras:  # a push that fails half-way through the job
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "oras").write_text("#!/bin/sh\necho 'oras: simulated failure' >&2\nexit 1\n")
        (shim / "oras").chmod(0o755)
        path = f"{shim}:{path}"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "CI": "true"}


def secrets_for(s3, bucket) -> dict[str, str]:
    return {
        "url": f"s3://{bucket.name}/{bucket.prefix}ci" if bucket.prefix else f"s3://{bucket.name}/ci",
        "endpoint": s3.endpoint,
        "key": s3.access_key,
        "secret": s3.secret_key,
    }


def bash(script: str, env: dict, cwd: Path, log: list[str], name: str) -> int:
    res = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    log.append(f"--- {name}: exit {res.returncode}\n{res.stdout}{res.stderr}")
    return res.returncode


# --------------------------------------------------------------------------- GitHub Actions


def gha_expr(text: str, ctx: dict[str, str]) -> str:
    def sub(m):
        expr = m.group(1).strip()
        if expr not in ctx:
            pytest.fail(f"{GHA}: expression ${{{{ {expr} }}}} is not known to this test", pytrace=False)
        return ctx[expr]

    return re.sub(r"\$\{\{(.*?)\}\}", sub, text)


def run_github_job(secrets: dict, tmp_path: Path, fail_oras=False):
    wf = MiniYAML.load(GHA.read_text())
    assert set(wf) >= {"name", "on", "jobs"}
    [job] = wf["jobs"].values()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    ctx = {
        "secrets.OCIFS_S3_URL": secrets["url"],
        "secrets.OCIFS_ENDPOINT_URL": secrets["endpoint"],
        "secrets.OCIFS_ACCESS_KEY_ID": secrets["key"],
        "secrets.OCIFS_SECRET_ACCESS_KEY": secrets["secret"],
        "github.sha": SHA,
        "runner.temp": str(runner_temp),
    }
    env0 = base_env(tmp_path, fail_oras)
    env0.update(GITHUB_SHA=SHA, GITHUB_WORKSPACE=str(workspace), RUNNER_TEMP=str(runner_temp), GITHUB_ACTIONS="true")
    for k, v in (wf.get("env") or {}).items():
        env0[k] = gha_expr(v, ctx)
    for k, v in (job.get("env") or {}).items():
        env0[k] = gha_expr(v, ctx)
    log: list[str] = []
    failed = False
    ran = []
    for step in job["steps"]:
        if "run" not in step:
            assert str(step.get("uses", "")).startswith("actions/"), step
            continue
        name = step.get("name", "")
        if name.lower().startswith("install"):
            continue  # see the module docstring
        cond = step.get("if", "success()")
        if not ({"always()": True, "success()": not failed, "failure()": failed}[cond]):
            continue
        env = dict(env0)
        for k, v in (step.get("env") or {}).items():
            env[k] = gha_expr(v, ctx)
        cwd = workspace / step.get("working-directory", ".")
        ran.append(name)
        if bash(gha_expr(step["run"], ctx), env, cwd, log, name) != 0:
            failed = True
    return failed, ran, log, runner_temp / "oci", workspace


# --------------------------------------------------------------------------- GitLab CI


def gl_expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def run_gitlab_pipeline(secrets: dict, tmp_path: Path, fail_oras=False):
    ci = MiniYAML.load(GITLAB.read_text())
    project = tmp_path / "project"
    project.mkdir()
    env0 = base_env(tmp_path, fail_oras)
    env0.update(
        CI_PROJECT_DIR=str(project), CI_COMMIT_SHA=SHA, CI_COMMIT_SHORT_SHA=SHA[:8], GITLAB_CI="true",
        OCIFS_S3_URL=secrets["url"], OCIFS_ENDPOINT_URL=secrets["endpoint"],
        S3_PUSH_ACCESS_KEY_ID=secrets["key"], S3_PUSH_SECRET_ACCESS_KEY=secrets["secret"],
    )
    log: list[str] = []
    results = {}
    mnt = None
    for stage in ci["stages"]:
        for name, job in ci.items():
            if not isinstance(job, dict) or job.get("stage") != stage:
                continue
            env = dict(env0)
            for k, v in (ci.get("variables") or {}).items():
                env[k] = gl_expand(v, env)
            for k, v in (job.get("variables") or {}).items():
                env[k] = gl_expand(v, env)
            mnt = env.get("MNT", mnt)
            # before_script only installs (skipped, see the module docstring)
            for line in job.get("before_script") or []:
                assert re.match(r"(apt-get|pip|curl) ", line), f"before_script does more than install: {line!r}"
            ok = bash("\n".join(job["script"]), env, project, log, f"{name}: script") == 0
            if job.get("after_script"):
                bash("\n".join(job["after_script"]), env, project, log, f"{name}: after_script")
            results[name] = ok
            if not ok:
                return results, log, Path(mnt) if mnt else None, project
    return results, log, Path(mnt), project


# --------------------------------------------------------------------------- checks


def assert_pushed(bucket, tmp_path: Path, dist: Path, tags: list[str]):
    index = json.loads(bucket.get("ci/myapp/index.json"))
    names = {m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]}
    assert set(tags) <= names, f"tags {tags} not in index.json: {names}"
    digest = hashlib.sha256((dist / "app.tar.gz").read_bytes()).hexdigest()
    assert bucket.get(f"ci/myapp/blobs/sha256/{digest}") == (dist / "app.tar.gz").read_bytes()
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(bucket.get(f"ci/myapp/blobs/sha256/{manifest_digest}"))
    assert manifest["layers"][0]["digest"] == f"sha256:{digest}"
    assert bucket.get("ci/myapp/oci-layout")


def no_ocifs_mounts_under(path: Path) -> list[str]:
    """Mountpoints of ocifs under ``path`` (the mount table as ``ocifs umount`` reads it)."""
    return [e.mountpoint for e in mount_table() if e.fstype == "fuse.ocifs" and e.mountpoint.startswith(str(path))]


@pytest.fixture
def cleanup(tmp_path):
    yield
    for mountpoint in no_ocifs_mounts_under(tmp_path):
        force_unmount(mountpoint)


def test_github_actions_recipe(s3, bucket, tmp_path, cleanup):
    failed, ran, log, mnt, workspace = run_github_job(secrets_for(s3, bucket), tmp_path)
    text = "\n".join(log)
    assert not failed, text
    assert ran == ["Build artifact", "Mount the bucket", "Push", "Unmount"], ran
    assert_pushed(bucket, tmp_path, workspace / "dist", [SHA[:12], "latest"])
    assert not is_mounted(mnt) and not no_ocifs_mounts_under(tmp_path), text


def test_github_actions_recipe_unmounts_when_the_push_fails(s3, bucket, tmp_path, cleanup):
    failed, ran, log, mnt, _ = run_github_job(secrets_for(s3, bucket), tmp_path, fail_oras=True)
    text = "\n".join(log)
    assert failed, text
    assert ran[-2:] == ["Unmount", "ocifs log"], ran
    assert "simulated failure" in text
    assert not is_mounted(mnt) and not no_ocifs_mounts_under(tmp_path), text


def test_gitlab_ci_recipe(s3, bucket, tmp_path, cleanup):
    results, log, mnt, project = run_gitlab_pipeline(secrets_for(s3, bucket), tmp_path)
    text = "\n".join(log)
    assert results == {"build": True, "push-oci": True}, text
    assert_pushed(bucket, tmp_path, project / "dist", [SHA[:8], "latest"])
    assert not is_mounted(mnt) and not no_ocifs_mounts_under(tmp_path), text


def test_gitlab_ci_recipe_unmounts_when_the_push_fails(s3, bucket, tmp_path, cleanup):
    results, log, mnt, _ = run_gitlab_pipeline(secrets_for(s3, bucket), tmp_path, fail_oras=True)
    text = "\n".join(log)
    assert results == {"build": True, "push-oci": False}, text
    assert "push-oci: after_script" in text
    assert not is_mounted(mnt) and not no_ocifs_mounts_under(tmp_path), text


def test_recipes_parse_and_keep_secrets_out_of_the_scripts():
    for path in (GHA, GITLAB):
        text = path.read_text()
        MiniYAML.load(text)
        assert "AKIA" not in text and "secret_access_key =" not in text
    gha = MiniYAML.load(GHA.read_text())
    [job] = gha["jobs"].values()
    for step in job["steps"]:
        # secrets only through env:, never pasted into a shell script
        assert "secrets." not in step.get("run", ""), step.get("name")


def test_recipes_run_in_the_runner_image_with_what_fuse_needs():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    [job] = MiniYAML.load(GHA.read_text())["jobs"].values()
    assert job["container"]["image"].endswith(f"/ocifs-runner:{version}"), job["container"]
    for flag in ("--device /dev/fuse", "--cap-add SYS_ADMIN", "--security-opt apparmor=unconfined"):
        assert flag in job["container"]["options"], job["container"]
    installs = [s.get("name") for s in job["steps"] if re.search(r"apt-get|pip install|curl", s.get("run", ""))]
    assert not installs, f"the image has the tools; steps still install: {installs}"
    gitlab = MiniYAML.load(GITLAB.read_text())
    assert gitlab["push-oci"]["image"].endswith(f"/ocifs-runner:{version}") and "before_script" not in gitlab["push-oci"]
    # GitLab takes container flags from the runner's config, not the job: the recipe says which
    text = GITLAB.read_text()
    assert 'devices = ["/dev/fuse"]' in text and 'cap_add = ["SYS_ADMIN"]' in text and "apparmor:unconfined" in text
