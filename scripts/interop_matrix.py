#!/usr/bin/env python3
"""Verb-by-verb interop matrix: oras, skopeo, umoci and zot on ocifs vs s3fs, goofys, geesefs.

Not a test (so not under tests/): a script that starts its own MinIO (and docker-registry, if
installed) with the test rig (``testkit/``),
mounts ONE bucket once per filesystem on the same MinIO — ocifs at s3://BUCKET/ocifs, s3fs
at BUCKET:/s3fs, goofys at BUCKET:goofys, geesefs at BUCKET:geesefs — runs the same sequence
of client commands on each mount (zot: with its storage root on the mount), and writes a
markdown table (tests/interop/RESULTS.md by default) with the exact commands.

    .venv/bin/python scripts/interop_matrix.py [--out FILE] [--only ocifs,s3fs,goofys,geesefs]

Every command has a timeout; a step fails on a non-zero exit or a failed check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test rig, testkit/

from testkit import (  # noqa: E402
    TOOLS, VENV_BIN, MinioServer, OcifsMount, Registry, RigError, Zot, force_unmount, is_mounted, require_tool,
    stop_process, storage_on_root, wait_mounted,
)

ORAS = TOOLS / "oras"
MINIO = TOOLS / "minio"
ZOT = TOOLS / "zot"
OCIFS = VENV_BIN / "ocifs"
BUCKET = "interop-matrix"
RESULTS = REPO / "tests" / "interop" / "RESULTS.md"
STEP_TIMEOUT = 300


class StepFail(Exception):
    pass


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(p) -> str:
    return sha256(Path(p).read_bytes())


def need(exe) -> str:
    try:
        return require_tool(exe)
    except RigError as e:
        sys.exit(str(e))


# --------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, name, mnt: Path, work: Path, img: Path, registry: str | None, remount,
                 s3=None, prefix=""):
        self.s3, self.prefix = s3, prefix
        self.name, self.mnt, self.work, self.img, self.registry = name, mnt, work, img, registry
        self.remount = remount
        self.zot_addr: str | None = None
        self.cmds: list[str] = []
        self.env = {**os.environ, "HOME": str(work / "home")}
        (work / "home").mkdir(parents=True, exist_ok=True)
        self.state: dict = {}

    def show(self, args) -> str:
        s = " ".join(str(a) for a in args)
        s = s.replace(str(self.mnt), "$MNT").replace(str(self.img), "$IMG")
        s = s.replace(str(self.work), "$WORK").replace(str(ORAS), "oras")
        if self.registry:
            s = s.replace(self.registry, "$REG")
        if self.zot_addr:
            s = s.replace(self.zot_addr, "$ZOT")
        return s

    def sh(self, *args, cwd=None, timeout=STEP_TIMEOUT, binary=False):
        args = [str(a) for a in args]
        self.cmds.append(self.show(args))
        try:
            p = subprocess.run(args, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepFail(f"timed out after {timeout}s: {self.show(args)}")
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise StepFail(f"exit {p.returncode}: {err[-1] if err else ''}")
        return p.stdout if binary else p.stdout.decode(errors="replace")

    def oras(self, *a, **kw):
        return self.sh(ORAS, *a, **kw)

    def skopeo(self, *a, **kw):
        return self.sh("skopeo", "--insecure-policy", *a, **kw)

    def umoci(self, *a, **kw):
        return self.sh("umoci", *a, **kw)


def check(cond, msg):
    if not cond:
        raise StepFail(msg)


def tagged(layout) -> dict:
    idx = json.loads((Path(layout) / "index.json").read_bytes())
    return {
        (d.get("annotations") or {}).get("org.opencontainers.image.ref.name"): d["digest"]
        for d in idx.get("manifests") or []
    }


def blob(layout, digest) -> Path:
    a, h = digest.split(":")
    return Path(layout) / "blobs" / a / h


def verify_layout(layout):
    """Every blob reachable from index.json exists and hashes to its name."""
    todo = list(tagged(layout).values())
    seen = set()
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        p = blob(layout, d)
        check(p.is_file(), f"{p.name[:12]} missing in {Path(layout).name}")
        data = p.read_bytes()
        check(sha256(data) == d, f"{p.name[:12]} does not hash to its name")
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict) and ("layers" in doc or "manifests" in doc):  # manifest/index
            for x in [doc.get("config")] + list(doc.get("layers") or []):
                if isinstance(x, dict) and "digest" in x:
                    todo.append(x["digest"])
            todo += [m["digest"] for m in doc.get("manifests") or []]
    return seen


# --------------------------------------------------------------------------- steps

STEPS: list[tuple[str, str, object]] = []  # (client, verb, fn)


def step(client, verb):
    def deco(fn):
        STEPS.append((client, verb, fn))
        return fn
    return deco


def src_files(c: Ctx) -> Path:
    s = c.work / "src"
    if not s.exists():
        s.mkdir()
        (s / "a.txt").write_bytes(b"hello\n")
        (s / "b.bin").write_bytes(random.Random(1).randbytes(3 * 1024 * 1024 + 5))
        (s / "c.json").write_bytes(b'{"k": 1}\n')
        (s / "sig.txt").write_bytes(b"signature\n")
    return s


@step("oras", "push (one file)")
def _(c):
    d = json.loads(c.oras("push", "--oci-layout", f"{c.mnt}/one:v1", "--format", "json", "a.txt",
                          cwd=src_files(c)))
    check(tagged(c.mnt / "one") == {"v1": d["digest"]}, "index.json lacks v1")
    c.state["one"] = d["digest"]


@step("oras", "push (several files, --annotation, --artifact-type)")
def _(c):
    d = json.loads(c.oras("push", "--oci-layout", f"{c.mnt}/hello:v1", "--format", "json",
                          "--artifact-type", "application/vnd.test", "--annotation", "team=storage",
                          "a.txt", "b.bin", "c.json", cwd=src_files(c)))
    m = json.loads(blob(c.mnt / "hello", d["digest"]).read_bytes())
    check(m["artifactType"] == "application/vnd.test", "artifactType lost")
    check(m["annotations"]["team"] == "storage", "annotation lost")
    verify_layout(c.mnt / "hello")
    c.state["hello"] = d["digest"]


@step("oras", "pull")
def _(c):
    out = c.work / "pull"
    out.mkdir()
    c.oras("pull", "--oci-layout", f"{c.mnt}/hello:v1", "-o", out, cwd=out)
    s = src_files(c)
    for n in ("a.txt", "b.bin", "c.json"):
        check(sha256_file(out / n) == sha256_file(s / n), f"{n} differs")


@step("oras", "tag")
def _(c):
    c.oras("tag", "--oci-layout", f"{c.mnt}/hello:v1", "v2", "latest")
    check(set(tagged(c.mnt / "hello")) == {"v1", "v2", "latest"}, "tags missing")


@step("oras", "repo tags")
def _(c):
    out = c.oras("repo", "tags", "--oci-layout", f"{c.mnt}/hello")
    check(sorted(out.split()) == ["latest", "v1", "v2"], f"got {out.split()}")


@step("oras", "manifest fetch (tag)")
def _(c):
    out = c.oras("manifest", "fetch", "--oci-layout", f"{c.mnt}/hello:v2", binary=True)
    check(sha256(out) == c.state["hello"], "digest differs")


@step("oras", "manifest fetch (digest)")
def _(c):
    out = c.oras("manifest", "fetch", "--oci-layout", f"{c.mnt}/hello@{c.state['hello']}", binary=True)
    check(sha256(out) == c.state["hello"], "digest differs")


@step("oras", "blob fetch --output file")
def _(c):
    d = sha256_file(src_files(c) / "b.bin")
    c.oras("blob", "fetch", "--oci-layout", f"{c.mnt}/hello@{d}", "--output", c.work / "blob.out")
    check(sha256_file(c.work / "blob.out") == d, "bytes differ")


@step("oras", "blob fetch --output - (stdout)")
def _(c):
    d = sha256_file(src_files(c) / "b.bin")
    out = c.oras("blob", "fetch", "--oci-layout", f"{c.mnt}/hello@{d}", "--output", "-", binary=True)
    check(sha256(out) == d, "bytes differ")


@step("oras", "attach")
def _(c):
    d = json.loads(c.oras("attach", "--oci-layout", f"{c.mnt}/hello:v1", "--artifact-type",
                          "application/vnd.sig", "--format", "json", "sig.txt", cwd=src_files(c)))
    m = json.loads(blob(c.mnt / "hello", d["digest"]).read_bytes())
    check(m["subject"]["digest"] == c.state["hello"], "subject wrong")
    c.state["sig"] = d["digest"]


@step("oras", "discover (referrers)")
def _(c):
    d = json.loads(c.oras("discover", "--oci-layout", f"{c.mnt}/hello:v1", "--format", "json"))
    check([r["digest"] for r in d.get("referrers") or []] == [c.state["sig"]], "referrer not listed")


@step("oras", "manifest delete")
def _(c):
    c.oras("manifest", "delete", "--force", "--oci-layout", f"{c.mnt}/hello@{c.state['sig']}")
    check(not blob(c.mnt / "hello", c.state["sig"]).exists(), "manifest blob still there")
    d = json.loads(c.oras("discover", "--oci-layout", f"{c.mnt}/hello:v1", "--format", "json"))
    check(not d.get("referrers"), "referrer still listed")


@step("oras", "blob delete")
def _(c):
    d = sha256_file(src_files(c) / "a.txt")
    out = c.oras("blob", "delete", "--force", "--oci-layout", f"{c.mnt}/one@{d}")
    check("Deleted" in out, out.strip())
    check(not blob(c.mnt / "one", d).exists(), "blob still there")


@step("oras", "push nested repo (team/app)")
def _(c):
    d = json.loads(c.oras("push", "--oci-layout", f"{c.mnt}/team/app:v1", "--format", "json",
                          "a.txt", cwd=src_files(c)))
    check(tagged(c.mnt / "team" / "app") == {"v1": d["digest"]}, "index.json wrong")
    check(c.oras("repo", "tags", "--oci-layout", f"{c.mnt}/team/app").split() == ["v1"], "tags")


@step("oras", "3 concurrent pushes (different repos)")
def _(c):
    s = src_files(c)
    procs = []
    for i in range(3):
        args = [str(ORAS), "push", "--oci-layout", f"{c.mnt}/par{i}:v1", "--format", "json",
                "a.txt", "b.bin", "c.json"]
        c.cmds.append(c.show(args) + " &")
        procs.append(subprocess.Popen(args, cwd=s, env=c.env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise StepFail("timed out")
        check(p.returncode == 0, f"push {i}: {err.decode().strip().splitlines()[-1:]}")
        check(tagged(c.mnt / f"par{i}") == {"v1": json.loads(out)["digest"]}, f"par{i} index")
        verify_layout(c.mnt / f"par{i}")


@step("oras", "cp --from-oci-layout (mount -> registry)")
def _(c):
    check(c.registry, "no docker-registry (apt-get install docker-registry)")
    c.oras("cp", "--from-oci-layout", f"{c.mnt}/hello:v1", "--to-plain-http",
           f"{c.registry}/{c.name}/hello:v1")
    out = c.oras("manifest", "fetch", "--plain-http", f"{c.registry}/{c.name}/hello:v1", binary=True)
    check(sha256(out) == c.state["hello"], "digest differs")


@step("oras", "cp -r --to-oci-layout (registry -> mount)")
def _(c):
    check(c.registry, "no docker-registry (apt-get install docker-registry)")
    c.oras("attach", "--plain-http", f"{c.registry}/{c.name}/hello:v1", "--artifact-type",
           "application/vnd.sig", "sig.txt", cwd=src_files(c))
    c.oras("cp", "-r", "--from-plain-http", f"{c.registry}/{c.name}/hello:v1",
           "--to-oci-layout", f"{c.mnt}/fromreg:v1")
    check(tagged(c.mnt / "fromreg").get("v1") == c.state["hello"], "digest differs")
    verify_layout(c.mnt / "fromreg")


@step("skopeo", "copy oci:local -> oci:mount")
def _(c):
    want = tagged(c.img)["v2"]
    (c.mnt / "sk").mkdir(exist_ok=True)  # skopeo lstat()s the parent of the layout
    c.skopeo("copy", f"oci:{c.img}:v2", f"oci:{c.mnt}/sk/img:v2")
    check(tagged(c.mnt / "sk/img") == {"v2": want}, "index.json wrong")
    out = c.skopeo("inspect", "--raw", f"oci:{c.mnt}/sk/img:v2", binary=True)
    check(sha256(out) == want, "manifest digest differs")
    verify_layout(c.mnt / "sk/img")


@step("skopeo", "copy second tag into same layout")
def _(c):
    want = tagged(c.img)
    c.skopeo("copy", f"oci:{c.img}:v1", f"oci:{c.mnt}/sk/img:v1")
    check(tagged(c.mnt / "sk/img") == {"v1": want["v1"], "v2": want["v2"]}, "tags lost")


@step("skopeo", "copy oci:mount -> oci-archive: (digest kept)")
def _(c):
    tar = c.work / "img.tar"
    c.skopeo("copy", f"oci:{c.mnt}/sk/img:v2", f"oci-archive:{tar}:v2")
    with tarfile.open(tar) as t:
        idx = json.load(t.extractfile("index.json"))
    check([d["digest"] for d in idx["manifests"]] == [tagged(c.img)["v2"]], "digest differs")


@step("skopeo", "copy oci:mount -> dir: (digest kept)")
def _(c):
    out = c.work / "dirout"
    c.skopeo("copy", f"oci:{c.mnt}/sk/img:v2", f"dir:{out}")
    check(sha256_file(out / "manifest.json") == tagged(c.img)["v2"], "digest differs")


@step("skopeo", "re-copy over 0444 blobs (manifest rewrite)")
def _(c):
    for p in (c.mnt / "sk/img/blobs/sha256").iterdir():
        os.chmod(p, 0o444)
    c.skopeo("copy", f"oci:{c.img}:v2", f"oci:{c.mnt}/sk/img:again")
    check(tagged(c.mnt / "sk/img").get("again") == tagged(c.img)["v2"], "tag missing")


@step("umoci", "unpack from mount")
def _(c):
    b = c.work / "bundle"
    c.umoci("unpack", "--image", f"{c.mnt}/sk/img:v2", b)
    check((b / "rootfs/opt/app/bin/run.sh").is_file(), "second layer missing")
    check(sha256_file(b / "rootfs/usr/share/data/blob.bin") == c.state.setdefault(
        "blobbin", sha256_file(c.img.parent / "check/rootfs/usr/share/data/blob.bin")), "differs")


@step("umoci", "init on mount")
def _(c):
    c.umoci("init", "--layout", f"{c.mnt}/um")
    check((c.mnt / "um/blobs/sha256").is_dir(), "blobs/sha256 missing")


@step("umoci", "new on mount")
def _(c):
    c.umoci("new", "--image", f"{c.mnt}/um:base")
    check("base" in tagged(c.mnt / "um"), "tag missing")


@step("umoci", "insert on mount")
def _(c):
    add = c.work / "add"
    add.mkdir()
    (add / "hello.txt").write_text("hello\n")
    c.umoci("insert", "--image", f"{c.mnt}/um:base", "--tag", "v1", add, "/srv")
    check("v1" in tagged(c.mnt / "um"), "tag missing")
    verify_layout(c.mnt / "um")


@step("umoci", "repack on mount")
def _(c):
    b = c.work / "bundle2"
    c.umoci("unpack", "--image", f"{c.mnt}/um:v1", b)
    (b / "rootfs/new.txt").write_text("new\n")
    c.umoci("repack", "--image", f"{c.mnt}/um:v2", b)
    out = c.work / "bundle3"
    c.umoci("unpack", "--image", f"{c.mnt}/um:v2", out)
    check((out / "rootfs/new.txt").read_text() == "new\n", "new file missing")
    check(not [p for p in (c.mnt / "um").iterdir() if p.name.startswith(".umoci-")], "temp dir left")


@step("umoci", "tag / rm (index.json rewrite)")
def _(c):
    c.umoci("tag", "--image", f"{c.mnt}/um:v2", "latest")
    c.umoci("rm", "--image", f"{c.mnt}/um:base")
    check(set(tagged(c.mnt / "um")) == {"v1", "v2", "latest"}, str(tagged(c.mnt / "um")))


@step("umoci", "gc (drops planted blob, keeps referenced)")
def _(c):
    layout = c.mnt / "um"
    planted = b"planted unreferenced blob\n"
    blob(layout, sha256(planted)).write_bytes(planted)
    c.umoci("gc", "--layout", layout)
    check(not blob(layout, sha256(planted)).exists(), "planted blob kept")
    names = {p.name for p in (layout / "blobs/sha256").iterdir()}
    check(names == {d.split(":")[1] for d in verify_layout(layout)}, "referenced blob lost")


@step("fs", "index.json never empty/torn while `oras tag` rewrites it (20 tags)")
def _(c):
    import threading
    layout = c.mnt / "hello"
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            data = b""
            try:
                data = (layout / "index.json").read_bytes()
                json.loads(data)["manifests"]
            except Exception as e:  # empty, truncated or half-written
                bad.append(f"{type(e).__name__} on {len(data)} bytes")
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(20):
            c.oras("tag", "--oci-layout", f"{c.mnt}/hello:v1", f"t{i}")
    finally:
        stop.set()
        t.join(timeout=30)
    c.cmds[:] = [c.cmds[0].replace("t0", "t{0..19}") + "   # while a thread re-reads index.json"]
    check(not bad, f"{len(bad)} of {reads[0]} reads saw a bad index.json, e.g. {bad[0] if bad else ''}")
    check({f"t{i}" for i in range(20)} <= set(tagged(layout)), "tags lost")


@step("fs", "pushed objects are in S3 when `oras push` returns (no umount, no sync)")
def _(c):
    d = json.loads(c.oras("push", "--oci-layout", f"{c.mnt}/durable:v1", "--format", "json",
                          "a.txt", "b.bin", cwd=src_files(c)))
    c.cmds.append("aws s3api list-objects-v2 / get-object on <prefix>/durable/ right after it returns")
    keys = set()
    for page in c.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=c.prefix + "durable/"):
        keys |= {o["Key"][len(c.prefix):] for o in page.get("Contents", [])}
    want = {f"durable/blobs/sha256/{x.split(':')[1]}" for x in
            [d["digest"], sha256_file(src_files(c) / "a.txt"), sha256_file(src_files(c) / "b.bin")]}
    want |= {"durable/index.json", "durable/oci-layout"}
    check(want <= keys, f"missing in S3: {sorted(k.split('/')[-1][:12] for k in want - keys)}")
    idx = c.s3.get_object(Bucket=BUCKET, Key=c.prefix + "durable/index.json")["Body"].read()
    check(json.loads(idx)["manifests"][0]["digest"] == d["digest"], "index.json in S3 is stale")


@step("fs", "256 MiB blob: oras push then pull (throughput)")
def _(c):
    big = c.work / "big"
    big.mkdir()
    with open(big / "big.bin", "wb") as f:
        base = random.Random(9).randbytes(1024 * 1024)
        for i in range(256):
            f.write(base[i:] + base[:i])
    t0 = time.monotonic()
    c.oras("push", "--oci-layout", f"{c.mnt}/big:v1", "big.bin", cwd=big)
    t1 = time.monotonic()
    out = c.work / "bigout"
    out.mkdir()
    c.oras("pull", "--oci-layout", f"{c.mnt}/big:v1", "-o", out, cwd=out)
    t2 = time.monotonic()
    check(sha256_file(out / "big.bin") == sha256_file(big / "big.bin"), "bytes differ")
    c.state["note"] = f"push {256 / (t1 - t0):.0f} MiB/s, pull {256 / (t2 - t1):.0f} MiB/s"
    (big / "big.bin").unlink()
    (out / "big.bin").unlink()


@step("fs", "2 oras processes push different tags into one layout at once (5 rounds): no tag lost")
def _(c):
    s = src_files(c)
    c.oras("push", "--oci-layout", f"{c.mnt}/race:base", "a.txt", cwd=s)
    lost = []
    for r in range(5):
        procs = []
        for i, f in enumerate(("a.txt", "c.json")):
            args = [str(ORAS), "push", "--oci-layout", f"{c.mnt}/race:r{r}w{i}", f]
            if r == 0:
                c.cmds.append(c.show(args) + " &")
            procs.append(subprocess.Popen(args, cwd=s, env=c.env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        errs = [p.communicate(timeout=STEP_TIMEOUT)[1] for p in procs]
        for i, p in enumerate(procs):
            check(p.returncode == 0, f"round {r} push {i}: {errs[i].decode().strip()[-150:]}")
        tags = tagged(c.mnt / "race")
        lost += [f"r{r}w{i}" for i in range(2) if f"r{r}w{i}" not in tags]
    c.cmds.append("# 5 rounds, then: oras repo tags --oci-layout $MNT/race")
    check(not lost, f"{len(lost)} of 10 tags lost")


@step("fs", "re-push to an existing tag: index.json as oras wrote it (same as local disk)")
def _(c):
    s = src_files(c)
    created = ["--annotation", "org.opencontainers.image.created=2020-01-01T00:00:00Z"]
    entries = {}
    for where in (c.work / "localdisk", c.mnt):
        c.oras("push", "--oci-layout", f"{where}/mv:v1", *created, "a.txt", cwd=s)
        c.oras("push", "--oci-layout", f"{where}/mv:v1", *created, "c.json", cwd=s)
        idx = json.loads((where / "mv" / "index.json").read_bytes())
        entries[where] = sorted(json.dumps(d, sort_keys=True) for d in idx["manifests"])
    got, want = entries[c.mnt], entries[c.work / "localdisk"]
    check(got == want, f"{len(got)} entries, local disk has {len(want)}")


# --------------------------------------------------------------------------- zot on the mount
# zot v2.1.9 with its storage root on the mount (testkit/zot.py; the config is
# README's: dedupe, gc and commit off). Started by the first zot step, stopped by the last.


def zot(c) -> Zot:
    z = c.state.get("zot")
    if z is None:
        z = Zot(storage_on_root(c.mnt), c.work / "zot")
        c.cmds.append(f"zot serve config.json   # {json.dumps({'storage': storage_on_root('$MNT')})}")
        try:
            z.start()
        except RigError as e:
            raise StepFail(str(e).splitlines()[0])
        c.state["zot"] = z
        c.zot_addr = z.addr
    return z


def zot_pull(c, ref, out: Path) -> dict:
    out.mkdir(parents=True)
    c.oras("pull", "--plain-http", f"{zot(c).addr}/{ref}", "-o", out, cwd=out)
    return {p.name: sha256_file(p) for p in out.iterdir()}


def zot_request(c, method, path, data=None, headers=None, want=(200,)):
    """One distribution-API request (shown as the equivalent curl line)."""
    shown = "".join(f" -H '{k}: {v}'" for k, v in (headers or {}).items() if k != "Content-Length")
    c.cmds.append(f"curl -X {method}{shown} $ZOT{path.split('?')[0]}")
    try:
        status, h, body = zot(c).request(method, path, data, headers)
    except OSError as e:  # zot closed the connection: it failed the request
        raise StepFail(f"{method} {path.split('?')[0]}: {e} (zot: {zot_error(zot(c))})")
    check(status in want, f"{method} {path.split('?')[0]}: HTTP {status} {body[:120]!r}")
    return h, body


def zot_error(z: Zot) -> str:
    """The error of zot's last error-level log line."""
    last = (z.errors_logged() or ["{}"])[-1]
    try:
        return str(json.loads(last).get("error", ""))[-200:]
    except ValueError:
        return last[-200:]


@step("zot", "oras push (3 files) to zot, pull back")
def _(c):
    s = src_files(c)
    d = json.loads(c.oras("push", "--plain-http", f"{zot(c).addr}/z/app:v1", "--format", "json",
                          "a.txt", "b.bin", "c.json", cwd=s))
    check(tagged(c.mnt / "z/app") == {"v1": d["digest"]}, "index.json on the mount lacks v1")
    got = zot_pull(c, "z/app:v1", c.work / "zpull")
    check(got == {n: sha256_file(s / n) for n in ("a.txt", "b.bin", "c.json")}, "pulled bytes differ")
    verify_layout(c.mnt / "z/app")


@step("zot", "chunked upload: POST, 3 PATCH (Content-Range), PUT ?digest=")
def _(c):
    data = random.Random(11).randbytes(6 * 1024 * 1024 + 3)
    parts = [data[:1024 * 1024], data[1024 * 1024:5 * 1024 * 1024], data[5 * 1024 * 1024:]]
    h, _ = zot_request(c, "POST", "/v2/z/chunked/blobs/uploads/", b"", {"Content-Length": "0"}, want=(202,))
    loc, sent = h["Location"], 0
    for p in parts:
        h, _ = zot_request(c, "PATCH", loc, p, {"Content-Range": f"{sent}-{sent + len(p) - 1}",
                                                "Content-Type": "application/octet-stream",
                                                "Content-Length": str(len(p))}, want=(202,))
        sent += len(p)
        check(h.get("Range") == f"0-{sent - 1}", f"zot reports {h.get('Range')} after {sent} bytes")
        loc = h["Location"]
    dg = sha256(data)
    zot_request(c, "PUT", f"{loc}{'&' if '?' in loc else '?'}digest={dg}", b"", {"Content-Length": "0"}, want=(201,))
    _, body = zot_request(c, "GET", f"/v2/z/chunked/blobs/{dg}")
    check(body == data, "blob bytes differ")
    check(blob(c.mnt / "z/chunked", dg).read_bytes() == data, "blob on the mount differs")


@step("zot", "ranged blob GET (Range header) returns the exact bytes")
def _(c):
    data = (src_files(c) / "b.bin").read_bytes()  # pushed by the first zot step
    dg = sha256(data)
    for a, b in [(0, 0), (1024 * 1024 - 3, 1024 * 1024 + 3), (len(data) - 5, len(data) - 1)]:
        h, body = zot_request(c, "GET", f"/v2/z/app/blobs/{dg}", headers={"Range": f"bytes={a}-{b}"}, want=(206,))
        check(body == data[a:b + 1], f"bytes {a}-{b} differ")


@step("zot", "attach + discover (referrers), _catalog, tag list")
def _(c):
    z = zot(c)
    d = json.loads(c.oras("attach", "--plain-http", f"{z.addr}/z/app:v1", "--artifact-type",
                          "application/vnd.sig", "--format", "json", "sig.txt", cwd=src_files(c)))
    c.state["zsig"] = d["digest"]
    found = json.loads(c.oras("discover", "--plain-http", f"{z.addr}/z/app:v1", "--format", "json"))
    check([r["digest"] for r in found.get("referrers") or []] == [d["digest"]], "referrer not listed")
    _, body = zot_request(c, "GET", "/v2/_catalog")
    check("z/app" in json.loads(body)["repositories"], "z/app not in _catalog")
    _, body = zot_request(c, "GET", "/v2/z/app/tags/list")
    check(json.loads(body)["tags"] == ["v1"], f"tags {json.loads(body)['tags']}")


@step("zot", "manifest delete (referrer, then a tag)")
def _(c):
    z = zot(c)
    c.oras("manifest", "delete", "--plain-http", "--force", f"{z.addr}/z/app@{c.state['zsig']}")
    found = json.loads(c.oras("discover", "--plain-http", f"{z.addr}/z/app:v1", "--format", "json"))
    check(not found.get("referrers"), "referrer still listed")
    check(not blob(c.mnt / "z/app", c.state["zsig"]).exists(), "referrer blob still on the mount")
    c.oras("push", "--plain-http", f"{z.addr}/z/app:gone", "c.json", cwd=src_files(c))
    c.oras("manifest", "delete", "--plain-http", "--force", f"{z.addr}/z/app:gone")
    check(set(tagged(c.mnt / "z/app")) == {"v1"}, f"index.json tags {set(tagged(c.mnt / 'z/app'))}")


@step("zot", "serves what `oras push --oci-layout` wrote; `oras pull --oci-layout` reads what zot wrote")
def _(c):
    s = src_files(c)
    out = zot_pull(c, "hello:v1", c.work / "zlayout")
    check(out["b.bin"] == sha256_file(s / "b.bin"), "zot serves different bytes")
    o2 = c.work / "zlayout2"
    o2.mkdir()
    c.oras("pull", "--oci-layout", f"{c.mnt}/z/app:v1", "-o", o2, cwd=o2)
    check(sha256_file(o2 / "b.bin") == sha256_file(s / "b.bin"), "oras reads different bytes")


@step("zot", "restart zot, pull again")
def _(c):
    z = zot(c)
    z.restart()
    c.cmds.append("(stop zot, start it again)")
    got = zot_pull(c, "z/app:v1", c.work / "zpull2")
    check(got["b.bin"] == sha256_file(src_files(c) / "b.bin"), "pulled bytes differ")
    z.stop()
    c.state.pop("zot")


@step("all", "remount, every layout verifies")
def _(c):
    c.remount()
    c.cmds.append("(unmount, mount again with an empty cache)")
    for repo in ("hello", "team/app", "par0", "par1", "par2", "sk/img", "um", "fromreg"):
        if (c.mnt / repo / "index.json").exists():
            verify_layout(c.mnt / repo)
        elif repo != "fromreg" or c.registry:
            raise StepFail(f"{repo}/index.json missing after remount")
    out = c.skopeo("inspect", "--raw", f"oci:{c.mnt}/sk/img:v2", binary=True)
    check(sha256(out) == tagged(c.img)["v2"], "manifest differs after remount")
    o = c.work / "pull2"
    o.mkdir()
    c.oras("pull", "--oci-layout", f"{c.mnt}/hello:v1", "-o", o, cwd=o)
    check(sha256_file(o / "b.bin") == sha256_file(src_files(c) / "b.bin"), "pull differs")


# --------------------------------------------------------------------------- servers


class OcifsMatrixMount:
    name = "ocifs"

    def __init__(self, minio: MinioServer, work: Path):
        mnt = work / "mnt-ocifs"
        mnt.mkdir()
        self.mnt = mnt
        self.m = OcifsMount(f"s3://{BUCKET}/ocifs", mnt, minio.endpoint, work, env=minio.env(),
                            log_file=work / "ocifs.log", extra_args=["--log-level", "debug"])
        self.mount_cmd = (f"ocifs mount s3://{BUCKET}/ocifs $MNT --endpoint-url http://127.0.0.1:PORT "
                          "--cache-dir DIR --log-file F")

    def mount(self):
        self.m.mount()

    def umount(self):
        self.m.umount()

    def cleanup(self):
        self.m.teardown()


class S3fsMount:
    name = "s3fs"

    def __init__(self, minio: MinioServer, work: Path):
        self.url, self.work, self.mnt = minio.endpoint, work, work / "mnt-s3fs"
        self.mnt.mkdir()
        self.passwd = work / "s3fs.passwd"
        self.passwd.write_text(f"{minio.access_key}:{minio.secret_key}\n")
        self.passwd.chmod(0o600)
        self.mount_cmd = (f"s3fs {BUCKET}:/s3fs $MNT -o url=http://127.0.0.1:PORT,"
                          "use_path_request_style,passwd_file=FILE")

    def mount(self):
        need("s3fs")
        subprocess.run(["s3fs", f"{BUCKET}:/s3fs", str(self.mnt), "-o",
                        f"url={self.url},use_path_request_style,passwd_file={self.passwd}"],
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
        if not wait_mounted(self.mnt, 30):
            raise RuntimeError("s3fs did not mount")

    def umount(self):
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True, timeout=300)
        deadline = time.monotonic() + 60
        while is_mounted(self.mnt) or subprocess.run(["pgrep", "-f", f"s3fs {BUCKET}:/s3fs {self.mnt}"],
                                                      capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)

    def cleanup(self):
        force_unmount(self.mnt)


def stop_zot(c: Ctx) -> None:
    z = c.state.pop("zot", None)
    if z is not None:
        z.stop()


class ForegroundMount:
    """A FUSE daemon kept in the foreground as our child (goofys, geesefs); unmounted with
    fusermount3, then waited for (it flushes what it holds)."""

    name = "?"

    def __init__(self, minio: MinioServer, work: Path):
        self.url, self.work, self.mnt = minio.endpoint, work, work / f"mnt-{self.name}"
        self.env = minio.env()
        self.mnt.mkdir()
        self.proc = None
        self.gen = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def mount(self):
        exe = TOOLS / self.name
        need(exe)
        self.gen += 1
        log = open(self.work / f"{self.name}-{self.gen}.log", "wb")
        self.proc = subprocess.Popen([str(exe), *self.argv()], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not wait_mounted(self.mnt, 30, self.proc):
            stop_process(self.proc, group=True)
            raise RuntimeError(f"{self.name} did not mount (see {self.work})")

    def umount(self):
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True, timeout=300)
        try:
            # goofys exits once it has flushed; geesefs 0.43.8 -f logs "Flushing all changes"
            # and then stays up, unmounted, until it is told to stop
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, group=True)

    def cleanup(self):
        force_unmount(self.mnt)
        if self.proc is not None:
            stop_process(self.proc, group=True)


class GoofysMount(ForegroundMount):
    name = "goofys"

    @property
    def mount_cmd(self):
        return f"goofys -f --endpoint http://127.0.0.1:PORT --region us-east-1 {BUCKET}:goofys $MNT"

    def argv(self):
        return ["-f", "--endpoint", self.url, "--region", "us-east-1", f"{BUCKET}:goofys", str(self.mnt)]


class GeesefsMount(ForegroundMount):
    """`-f`: in the background geesefs 0.43.8 crashes on this machine (bench/README.md)."""

    name = "geesefs"

    @property
    def mount_cmd(self):
        return f"geesefs -f --endpoint http://127.0.0.1:PORT --region us-east-1 {BUCKET}:geesefs $MNT"

    def argv(self):
        return ["-f", "--endpoint", self.url, "--region", "us-east-1", f"{BUCKET}:geesefs", str(self.mnt)]


MOUNTS = {m.name: m for m in (OcifsMatrixMount, S3fsMount, GoofysMount, GeesefsMount)}


def run_matrix(fs, img: Path, registry, work: Path, s3, prefix: str):
    results = []
    fs.mount()
    c = Ctx(fs.name, fs.mnt, work, img, registry, remount=lambda: (fs.umount(), fs.mount()),
            s3=s3, prefix=prefix)
    for client, verb, fn in STEPS:
        if client != "zot":
            stop_zot(c)
        c.cmds = []
        c.state.pop("note", None)
        t0 = time.monotonic()
        try:
            fn(c)
            ok, note = True, c.state.get("note", "")
        except StepFail as e:
            ok, note = False, str(e)
        except Exception as e:  # a check crashed: record it, keep going
            ok, note = False, f"{type(e).__name__}: {e}"
            traceback.print_exc()
        dt = time.monotonic() - t0
        results.append((client, verb, ok, dt, note, list(c.cmds)))
        print(f"[{fs.name}] {'PASS' if ok else 'FAIL'} {dt:6.2f}s {client}: {verb} {note}", flush=True)
    # what the bucket holds for this mount, once everything is flushed
    stop_zot(c)
    fs.umount()
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    markers = [k for k in keys if k.endswith("/")]
    return results, {"objects": len(keys), "dir_markers": len(markers),
                     "marker_examples": markers[:5]}


def render(all_results, stats, mounts, registry) -> str:
    names = list(all_results)
    lines = [
        "# ocifs interop matrix",
        "",
        "Produced by `.venv/bin/python scripts/interop_matrix.py` (not a test). One MinIO, one "
        f"bucket `{BUCKET}`; each filesystem mounts its own prefix of it (`ocifs/`, `s3fs/`, "
        "`goofys/`, `geesefs/`). The same commands run in the same order on each mount. Seconds are wall time of the "
        "whole step (commands + checks).",
        "",
        "Mount commands:",
        "",
    ]
    lines += [f"- {m.name}: `{m.mount_cmd}`" for m in mounts]
    lines += [
        "",
        "Tools: oras CLI 1.3.6 (`--oci-layout`), skopeo 1.9.3 (`oci:` transport), umoci 0.4.7, "
        f"docker-registry 2.8.2 (Debian) for `oras cp`: {'running' if registry else 'NOT installed'}.",
        "`$IMG` is a local multi-layer image layout built with umoci (tags base, v1, v2).",
        "zot v2.1.9 (minimal build, `.tools/bin/zot`) runs with its storage root on the mount "
        "(`$ZOT` is its 127.0.0.1 address); Debian s3fs 1.90, goofys 350ff312, geesefs 0.43.8.",
        "",
        "| client | verb | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    first = all_results[names[0]]
    for i, (client, verb, *_rest) in enumerate(first):
        cells = []
        for n in names:
            _c, _v, ok, dt, note, _cmds = all_results[n][i]
            cells.append(f"{'ok' if ok else '**FAIL**'} {dt:.2f}s" + (f" — {note}" if note else ""))
        lines.append(f"| {client} | {verb} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Rows marked `fs` probe what the clients rely on from the filesystem rather than a verb: "
        "a thread re-reading index.json while `oras tag` rewrites it in place (O_TRUNC); objects in "
        "S3 as soon as a command returns (oras never fsyncs); a 256 MiB blob; two oras processes "
        "racing to add different tags to one existing layout (on a local disk oras loses tags: "
        "no cross-process lock); and a re-push to an existing tag, whose index.json must equal "
        "the one oras writes on a local disk (compared as a multiset: oras-go writes in map order).",
        "",
        "Bucket contents after unmount:",
        "",
    ]
    for n in names:
        s = stats[n]
        lines.append(f"- {n}: {s['objects']} objects, {s['dir_markers']} directory-marker objects "
                     f"(keys ending in `/`){': e.g. ' + ', '.join('`'+k+'`' for k in s['marker_examples']) if s['marker_examples'] else ''}")
    lines += ["", "## Exact commands (identical for every mount; `$MNT` is the mount point)", ""]
    for client, verb, _ok, _dt, _note, cmds in first:
        lines.append(f"**{client}: {verb}**")
        lines.append("```")
        lines += cmds
        lines.append("```")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--only", default=",".join(MOUNTS), help="comma list of filesystems (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (ocifs debug log)")
    args = ap.parse_args()
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    if set(only) - set(MOUNTS):
        sys.exit(f"--only: unknown filesystem(s) {', '.join(sorted(set(only) - set(MOUNTS)))}; known: {', '.join(MOUNTS)}")
    for t in ("skopeo", "umoci", "fusermount3", ORAS, MINIO, OCIFS, ZOT):
        need(t)
    root = Path(tempfile.mkdtemp(prefix="ocifs-matrix-"))
    servers, mounts = [], []
    try:
        minio = MinioServer(root / "minio")
        servers.append(minio)
        minio.start()
        registry = None
        if shutil.which("docker-registry"):  # optional: the `oras cp` rows fail without it
            reg = Registry(root / "registry")
            servers.append(reg)
            registry = reg.start().addr
        s3 = minio.client()
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="s3fs/", Body=b"")  # s3fs needs its prefix to exist
        # the image both runs copy in
        imgwork = root / "image"
        imgwork.mkdir()
        img = imgwork / "layout"
        _build_image(img, imgwork)
        all_results, stats = {}, {}
        for cls in (MOUNTS[n] for n in only):
            work = root / cls.name
            work.mkdir()
            fs = cls(minio, work)
            mounts.append(fs)
            try:
                all_results[fs.name], stats[fs.name] = run_matrix(
                    fs, img, registry, work, s3, f"{cls.name}/")
            finally:
                fs.cleanup()
        Path(args.out).write_text(render(all_results, stats, mounts, registry))
        print(f"wrote {args.out}")
    except RigError as e:
        sys.exit(f"interop matrix: {e}")
    finally:
        for m in mounts:
            m.cleanup()
        for server in servers:
            server.stop()
        if args.keep:
            print(f"kept {root} (ocifs log: {root / 'ocifs' / 'ocifs.log'})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _build_image(layout: Path, work: Path):
    """Same image as the tests' umoci_image fixture, built with plain subprocess calls."""
    def u(*a):
        subprocess.run(["umoci", *map(str, a)], check=True, timeout=120, stdin=subprocess.DEVNULL,
                       capture_output=True)
    u("init", "--layout", layout)
    u("new", "--image", f"{layout}:base")
    b = work / "bundle"
    u("unpack", "--image", f"{layout}:base", b)
    r = b / "rootfs"
    (r / "etc").mkdir(parents=True, exist_ok=True)
    (r / "etc/motd").write_text("built by umoci for ocifs interop tests\n")
    (r / "usr/share/data").mkdir(parents=True)
    (r / "usr/share/data/blob.bin").write_bytes(random.Random(7).randbytes(300 * 1024))
    u("repack", "--image", f"{layout}:v1", b)
    extra = work / "extra"
    (extra / "app/bin").mkdir(parents=True)
    (extra / "app/bin/run.sh").write_text("#!/bin/sh\necho hello\n")
    u("insert", "--image", f"{layout}:v1", "--tag", "v2", extra / "app", "/opt/app")
    u("unpack", "--image", f"{layout}:v2", work / "check")


if __name__ == "__main__":
    main()
