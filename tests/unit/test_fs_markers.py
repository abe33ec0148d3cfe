"""Directory markers and rmdir, driven through the FUSE operations without a kernel.

umoci removes its ``.umoci-*`` temp directory at the end of every command (unlink the files,
then rmdir), zot and oras ``mkdir -p`` directories that may be removed again at once. The
marker of such a directory is only *scheduled* (``markers.RECONCILE_DELAY`` later), so an rmdir
must not wait for that delay, and must leave no marker behind once it has passed.
"""

from __future__ import annotations

import trio

from fsrig import Ctx, Rig, run
from ocifs.markers import RECONCILE_DELAY


async def timed_rmdir(rig: Rig, path: str) -> float:
    parent, name = await rig.parent_and_name(path)
    t0 = trio.current_time()
    await rig.ops.rmdir(parent, name, Ctx(1))
    return trio.current_time() - t0


def test_rmdir_of_a_just_emptied_directory_does_not_wait_for_its_pending_marker(tmp_path):
    async def t(rig: Rig) -> None:
        await rig.mkdir("lay/.umoci-1")
        await rig.write_file("lay/.umoci-1/blob-1", b"x" * 100)
        await trio.sleep(RECONCILE_DELAY * 1.5)  # settled: no marker beside the file
        await rig.unlink("lay/.umoci-1/blob-1")  # now empty: a marker is scheduled
        took = await timed_rmdir(rig, "lay/.umoci-1")
        assert took < RECONCILE_DELAY / 2, f"rmdir took {took:.2f}s"
        await trio.sleep(RECONCILE_DELAY * 1.5)
        assert rig.obj("lay/.umoci-1/") is None, "a marker was written for a removed directory"
        assert rig.obj("lay/") == b"", "the emptied parent lost its marker"

    run(t, tmp_path)


def test_rmdir_right_after_mkdir_does_not_wait_and_a_new_mkdir_gets_its_marker(tmp_path):
    async def t(rig: Rig) -> None:
        await rig.mkdir("a/b")
        took = await timed_rmdir(rig, "a/b")
        assert took < RECONCILE_DELAY / 2, f"rmdir took {took:.2f}s"
        await rig.mkdir("a/b")  # the same name again, while the first reconcile still sleeps
        await trio.sleep(RECONCILE_DELAY * 2.5)
        assert rig.obj("a/b/") == b"", "the re-created empty directory has no marker"
        assert rig.obj("a/") is None, "a marker beside a key"

    run(t, tmp_path)
