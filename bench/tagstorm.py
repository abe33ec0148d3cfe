"""tag-storm: many concurrent ``oras push --oci-layout`` of distinct tags into ONE repo, over N mounts.

What CI fleets do to one bucket: every runner mounts it and pushes its own tag of a shared repo
at the same time, so every push rewrites the same ``index.json``. ocifs must keep every tag
(README, "What ocifs guarantees", item 3). This measures, per (build, mounts, writers):

* **tags/s**: successful pushes / wall time from the release of all writers to the last exit;
* **failed** pushes (oras exited non-zero), how many failed on ``index.json`` (oras names the
  file; other failures, such as a blob's rename, are counted apart), and how many of their
  tags are in index.json anyway (a failed close must publish nothing of its own);
* **kept**: tags of successful pushes found in the final ``index.json`` (read from S3 directly),
  and whether that ``index.json`` is **valid** (an image index, each tag once, every
  descriptor's blob present with its size, no untagged leftovers of the pushes);
* **merges per publish**: ``ocifs_index_merges_total`` (races lost to other mounts, summed over
  the mounts) per index.json PUT that published (``ocifs_index_publishes_total``; a build
  without it publishes each close with its own PUT), and **closes per PUT**;
* **close p50/p95/max**: seconds the daemon spent on each close(2) of index.json (queueing
  included), timed by :mod:`bench.tagstorm_daemon`; **push p50/p95**: each oras push's wall
  time, as the runner sees it.

Builds: ``--build LABEL=REV`` runs the mounts on ``git archive REV ocifs`` (``worktree``: this
checkout's files as they are), so one run compares the code before and after a change with the
same harness; cells of different builds are interleaved.

    python -m bench.tagstorm --mounts 8 --writers 2,10,25,50,100 --build before=main --build after=worktree
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    CLEANUP, REPO, Endpoint, boto_client, force_unmount, is_mounted, log, make_workdir, start_minio,
    stop_process, tool, wait_mounted,
)
from bench.netem import PROFILES, start_toxiproxy

RESULTS = Path(__file__).resolve().parent / "results"
REF_NAME = "org.opencontainers.image.ref.name"
PUSH_TIMEOUT = 900.0  # one oras push; ocifs gives up on a close after --op-timeout (300 s) anyway
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 300.0


def quantile(xs: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``xs``; None when there is nothing to rank."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


# --------------------------------------------------------------------------- builds


@dataclass
class Build:
    label: str
    rev: str  # a git revision, or "worktree"
    src: Path  # the directory that holds the ocifs package the mounts import
    commit: str


def prepare_build(spec: str, work: Path) -> Build:
    """``LABEL=REV``: export ``ocifs/`` of REV (or use this checkout for ``worktree``)."""
    label, _, rev = spec.partition("=")
    if not label or not rev:
        raise SystemExit(f"--build wants LABEL=REV (e.g. before=main, after=worktree), not {spec!r}")
    if rev == "worktree":
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "ocifs"], capture_output=True, text=True).stdout
        return Build(label, rev, REPO, head + ("+uncommitted" if dirty.strip() else ""))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"--build {spec}: unknown git revision {rev!r}")
    dest = work / f"build-{label}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "ocifs"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return Build(label, rev, dest, commit.stdout.strip())


# --------------------------------------------------------------------------- mounts


@dataclass
class StormMount:
    """One ocifs daemon of a build, in the foreground as our child, timing index.json closes."""

    path: Path
    records: Path
    log_file: Path
    proc: subprocess.Popen
    cleanup: object = None  # what CLEANUP holds for it (pop_run needs the very same object)

    def stats(self, env: dict) -> dict[str, float]:
        from ocifs import metrics

        out = subprocess.run([tool("ocifs") or "ocifs", "stats", str(self.path)], env=env, capture_output=True,
                             text=True, timeout=30).stdout
        return metrics.parse(out)

    def close_times(self) -> list[tuple[float, bool]]:
        recs = [json.loads(line) for line in self.records.read_text().splitlines() if line.strip()]
        return [(r["s"], r["ok"]) for r in recs if "s" in r]

    def imported(self) -> str:
        first = self.records.read_text().splitlines()[:1]
        return json.loads(first[0])["ocifs"] if first else "?"

    def umount(self) -> None:
        """fusermount3 -u, then wait (bounded) for the daemon to publish what is pending and exit."""
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=60)
        try:
            self.proc.wait(timeout=UMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"[tag-storm] daemon of {self.path} still running {UMOUNT_TIMEOUT:.0f} s after unmount; stopping it")
            stop_process(self.proc)
        force_unmount(self.path)


def start_mount(build: Build, ep: Endpoint, url: str, d: Path, extra: list[str]) -> StormMount:
    for sub in ("mnt", "cache"):
        (d / sub).mkdir(parents=True)
    m = StormMount(d / "mnt", d / "closes.jsonl", d / "ocifs.log", None)  # type: ignore[arg-type]
    env = ep.env()
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(build.src), str(REPO)]))  # the build's ocifs first
    argv = [sys.executable, "-P", "-m", "bench.tagstorm_daemon", str(m.records), "mount", url, str(m.path), "-f",
            "--endpoint-url", ep.url, "--cache-dir", str(d / "cache"), "--log-file", str(m.log_file), *extra]
    with open(d / "daemon.out", "wb") as out:
        m.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    m.cleanup = CLEANUP.push(f"ocifs mount {m.path}", m.umount)
    if not wait_mounted(m.path, MOUNT_TIMEOUT, m.proc):
        CLEANUP.pop_run(m.cleanup)  # type: ignore[arg-type]
        tail = (d / "daemon.out").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"ocifs ({build.label}) did not mount {m.path}: {tail}")
    return m


# --------------------------------------------------------------------------- one cell


@dataclass
class Ctx:
    work: Path
    ep: Endpoint
    client: object  # botocore client straight to MinIO (checks bypass any proxy)
    bucket: str
    oras: str
    extra: list[str]
    blob_size: int
    out: Path  # the results directory


def oras_env(ctx: Ctx) -> dict:
    env = dict(os.environ, HOME=str(ctx.work / "oras-home"))
    env.pop("DOCKER_CONFIG", None)
    return env


def push(ctx: Ctx, mnt: Path, repo: str, tag: str, src: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([ctx.oras, "push", "--oci-layout", f"{mnt}/{repo}:{tag}", "blob.bin"], cwd=src,
                           env=oras_env(ctx), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=PUSH_TIMEOUT)
        rc, err = p.returncode, p.stderr.strip()
    except subprocess.TimeoutExpired:
        rc, err = -1, f"timed out after {PUSH_TIMEOUT:.0f} s"
    return rc, time.perf_counter() - t0, err


def check_index(ctx: Ctx, repo: str, ok_tags: set[str], failed_tags: set[str], seed: str = "v0") -> dict:
    """Read ``<repo>/index.json`` from S3 and judge it (see the module docstring); the seeding
    push's ``seed`` tag must be there too, but counts in no total."""
    problems: list[str] = []
    try:
        doc = json.loads(ctx.client.get_object(Bucket=ctx.bucket, Key=f"{repo}/index.json")["Body"].read())
    except Exception as exc:  # noqa: BLE001 - any failure to read or parse is the finding
        return {"valid": False, "problems": [f"index.json unreadable: {exc}"], "kept": 0, "lost": sorted(ok_tags),
                "failed_published": 0, "untagged": 0}
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2 or not isinstance(manifests, list):
        return {"valid": False, "problems": ["not an image index"], "kept": 0, "lost": sorted(ok_tags),
                "failed_published": 0, "untagged": 0}
    tags: list[str] = []
    untagged = 0
    for d in manifests:
        if not (isinstance(d, dict) and isinstance(d.get("mediaType"), str) and isinstance(d.get("size"), int)
                and re.fullmatch(r"sha256:[0-9a-f]{64}", str(d.get("digest")))):
            problems.append(f"bad descriptor {d!r:.200}")
            continue
        tag = (d.get("annotations") or {}).get(REF_NAME)
        if tag is None:
            untagged += 1
        else:
            tags.append(tag)
        try:
            head = ctx.client.head_object(Bucket=ctx.bucket, Key=f"{repo}/blobs/sha256/{d['digest'][7:]}")
            if head["ContentLength"] != d["size"]:
                problems.append(f"{d['digest']}: blob has {head['ContentLength']} bytes, descriptor says {d['size']}")
        except Exception:  # noqa: BLE001
            problems.append(f"{d['digest']} ({tag}): blob missing")
    dup = sorted({t for t in tags if tags.count(t) > 1})
    if dup:
        problems.append(f"tags listed twice: {dup}")
    if untagged:
        problems.append(f"{untagged} untagged descriptors left")
    lost = sorted((ok_tags | {seed}) - set(tags))
    failed_published = sorted(failed_tags & set(tags))
    if lost:
        problems.append(f"lost tags of successful pushes: {lost}")
    if failed_published:
        problems.append(f"tags of failed pushes published anyway: {failed_published}")
    return {"valid": not problems, "problems": problems, "kept": len(ok_tags & set(tags)), "lost": lost,
            "failed_published": len(failed_published), "untagged": untagged}


def run_cell(ctx: Ctx, build: Build, n_mounts: int, writers: int, rep: int) -> dict:
    cell = f"{build.label}-m{n_mounts}-w{writers}-r{rep}-{uuid.uuid4().hex[:6]}"
    d = ctx.work / cell
    repo = f"storm-{cell}"
    used = min(n_mounts, writers)
    rec: dict = {"bench": "tag-storm", "build": build.label, "rev": build.rev, "commit": build.commit,
                 "mounts": n_mounts, "writers": writers, "rep": rep, "repo": repo}
    mounts: list[StormMount] = []
    try:
        for i in range(used):
            mounts.append(start_mount(build, ctx.ep, f"s3://{ctx.bucket}", d / f"m{i}", ctx.extra))
        rec["imported"] = mounts[0].imported()
        seed = d / "seed"
        seed.mkdir()
        (seed / "blob.bin").write_bytes(os.urandom(ctx.blob_size))
        rc, _, err = push(ctx, mounts[0].path, repo, "v0", seed)
        if rc != 0:
            raise RuntimeError(f"seeding {repo}:v0 failed: {err}")
        env = ctx.ep.env()
        before = [m.stats(env) for m in mounts]  # the storm's counts exclude the seeding push
        skip = [len(m.close_times()) for m in mounts]
        srcs = []
        for i in range(writers):
            s = d / f"src{i}"
            s.mkdir()
            (s / "blob.bin").write_bytes(os.urandom(ctx.blob_size))
            srcs.append(s)
        results: list[tuple[int, float, str] | None] = [None] * writers
        go = threading.Event()

        def writer(i: int) -> None:
            go.wait(timeout=PUSH_TIMEOUT)
            results[i] = push(ctx, mounts[i % used].path, repo, f"t{i}", srcs[i])

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        go.set()
        for t in threads:
            t.join(timeout=PUSH_TIMEOUT + 60)
        wall = time.perf_counter() - t0
        counters = [{k: v - b.get(k, 0.0) for k, v in m.stats(env).items()} for m, b in zip(mounts, before)]
    finally:
        for m in mounts:
            CLEANUP.pop_run(m.cleanup)  # type: ignore[arg-type]
    ok_tags = {f"t{i}" for i, r in enumerate(results) if r is not None and r[0] == 0}
    failed = {f"t{i}": r[2][-300:] if r else "did not finish" for i, r in enumerate(results) if r is None or r[0] != 0}
    closes = [c for m, n in zip(mounts, skip) for c in m.close_times()[n:]]
    ok_closes = [s for s, ok in closes if ok]
    merges = sum(c.get("ocifs_index_merges_total", 0.0) for c in counters)
    puts = [c.get("ocifs_index_publishes_total") for c in counters]
    pushes = [r[1] for r in results if r is not None and r[0] == 0]
    rec.update(
        wall_s=round(wall, 3),
        ok=writers - len(failed),
        failed=len(failed),
        # oras names the file it failed on; index.json failures are this workload's subject,
        # others (a blob's rename, ...) are counted apart
        failed_index=sum(1 for err in failed.values() if "index.json" in err),
        failures=failed,
        tags_per_s=round((writers - len(failed)) / wall, 2),
        closes=len(ok_closes),
        failed_closes=len(closes) - len(ok_closes),
        merges=int(merges),
        index_puts=None if None in puts else int(sum(puts)),  # type: ignore[arg-type]
        close_p50_s=quantile(ok_closes, 0.5),
        close_p95_s=quantile(ok_closes, 0.95),
        close_max_s=max(ok_closes, default=None),
        push_p50_s=quantile(pushes, 0.5),
        push_p95_s=quantile(pushes, 0.95),
    )
    # Merges (lost races) per publish: per PUT that published, which is one close on builds
    # that do not count their PUTs (they publish every close on its own).
    publishes = rec["index_puts"] if rec["index_puts"] is not None else len(ok_closes)
    rec["merges_per_publish"] = round(merges / publishes, 2) if publishes else None
    rec["closes_per_put"] = round(len(ok_closes) / publishes, 2) if publishes else None
    rec.update(check_index(ctx, repo, ok_tags, set(failed)))
    if failed or not rec["valid"]:  # keep the daemons' logs of a cell that went wrong
        keep = ctx.out / cell
        keep.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(mounts):
            shutil.copy(m.log_file, keep / f"ocifs-m{i}.log")
    return rec


# --------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def table(recs: list[dict]) -> str:
    """Markdown: one row per cell, by build, mounts, writers."""
    head = ("| build | mounts | writers | tags/s | failed pushes (index.json) | tags kept | valid index | merges/publish "
            "| closes/PUT | close p50 / p95 / max s | push p50 / p95 s |\n|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    rows = []
    for r in sorted(recs, key=lambda r: (r["build"], r["mounts"], r["writers"], r["rep"])):
        if "error" in r:
            rows.append(f"| {r['build']} | {r['mounts']} | {r['writers']} | run failed: {r['error'][:120]} |||||||")
            continue
        valid = "yes" if r["valid"] else "**no**: " + "; ".join(r["problems"])[:160]
        rows.append(
            f"| {r['build']} | {r['mounts']} | {r['writers']} | {r['tags_per_s']:.1f} | {r['failed']} ({r['failed_index']}) "
            f"| {r['kept']}/{r['ok']} | {valid} | {_f(r['merges_per_publish'], '.2f')} | {_f(r['closes_per_put'], '.1f')} "
            f"| {_f(r['close_p50_s'], '.2f')} / {_f(r['close_p95_s'], '.2f')} / {_f(r['close_max_s'], '.2f')} "
            f"| {_f(r['push_p50_s'], '.2f')} / {_f(r['push_p95_s'], '.2f')} |"
        )
    return head + "\n" + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tagstorm", description=__doc__.split("\n\n")[0])
    p.add_argument("--mounts", default="8", help="mount counts, comma-separated (default 8)")
    p.add_argument("--writers", default="2,10,25,50,100", help="concurrent pushes per cell, comma-separated")
    p.add_argument("--build", action="append", default=[], metavar="LABEL=REV",
                   help="ocifs code to mount: a git revision or 'worktree' (repeatable; default this=worktree)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--profile", default="loopback", choices=sorted(PROFILES), help="network profile (bench/netem.py)")
    p.add_argument("--blob-size", type=int, default=1024, help="bytes of the one layer each push uploads")
    p.add_argument("--ocifs-arg", action="append", default=[], help="extra 'ocifs mount' flag (repeatable)")
    p.add_argument("--results", type=Path, help="output directory (default bench/results/tagstorm-<profile>-<date>)")
    a = p.parse_args(argv)
    oras = tool("oras")
    if oras is None:
        raise SystemExit("oras not found in .tools/bin: run scripts/setup.sh")
    out = a.results or RESULTS / f"tagstorm-{a.profile}-{dt.datetime.now():%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    CLEANUP.install()
    try:
        work = make_workdir("ocifs-tagstorm-")
        (work / "oras-home").mkdir()
        builds = [prepare_build(s, work) for s in (a.build or ["this=worktree"])]
        server = start_minio(work)
        ep = server.endpoint
        if PROFILES[a.profile]["toxics"] is not None:
            _, url = start_toxiproxy(work, ep.url.removeprefix("http://"), a.profile)
            ep = Endpoint(url, ep.access_key, ep.secret_key)
        client = boto_client(server.endpoint)
        client.create_bucket(Bucket="tagstorm")
        ctx = Ctx(work, ep, client, "tagstorm", oras, a.ocifs_arg, a.blob_size, out)
        cmdline = "python -m bench.tagstorm " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = {"cmd": cmdline, "profile": a.profile, "nproc": os.cpu_count(), "load_start": os.getloadavg(),
                "builds": [b.__dict__ | {"src": str(b.src)} for b in builds], "oras": oras}
        recs: list[dict] = []
        with open(out / "runs.jsonl", "a") as runs:
            for rep in range(a.reps):
                for n_mounts in ints(a.mounts):
                    for writers in ints(a.writers):
                        order = builds if (rep + writers) % 2 == 0 else builds[::-1]  # neither build always first
                        for b in order:
                            t0 = time.monotonic()
                            try:
                                rec = run_cell(ctx, b, n_mounts, writers, rep)
                            except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
                                rec = {"build": b.label, "mounts": n_mounts, "writers": writers, "rep": rep, "error": str(exc)}
                            rec["cell_s"] = round(time.monotonic() - t0, 1)
                            rec["load"] = os.getloadavg()
                            recs.append(rec)
                            runs.write(json.dumps(rec) + "\n")
                            runs.flush()
                            log(f"[tag-storm] {b.label} m={n_mounts} w={writers} rep={rep}: "
                                + (f"run failed: {rec['error']}" if "error" in rec else
                                   f"{rec['tags_per_s']} tags/s, failed {rec['failed']}, kept {rec['kept']}/{rec['ok']}, "
                                   f"valid={rec['valid']}, merges/publish {rec['merges_per_publish']}, closes/PUT {rec['closes_per_put']}, "
                                   f"close p50/p95/max {_f(rec['close_p50_s'], '.2f')}/{_f(rec['close_p95_s'], '.2f')}/{_f(rec['close_max_s'], '.2f')} s"))
        meta["load_end"] = os.getloadavg()
        (out / "machine.json").write_text(json.dumps(meta, indent=2))
        text = f"`{cmdline}` (profile {a.profile}, {os.cpu_count()} cores)\n\n" + table(recs)
        (out / "report.md").write_text(text)
        print(text)
        bad = [r for r in recs if "error" in r or r["failed"] or not r["valid"]]
        return 1 if bad else 0
    finally:
        CLEANUP.run_all()


if __name__ == "__main__":
    sys.exit(main())
