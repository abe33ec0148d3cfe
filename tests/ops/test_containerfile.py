"""The runner image's Containerfile, read (building needs a container engine this test
environment does not run): one Debian base, fuse3 in the final image, ocifs from this tree
only, oras at the version scripts/setup.sh pins, commands where mount(8) looks, and no
ENTRYPOINT that would stand between a CI system and its shell."""

from __future__ import annotations

import re

from conftest import REPO

CONTAINERFILE = REPO / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), re.sub(r"\s+", " ", rest)))
            pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_every_stage_builds_on_one_debian_base():
    ins = instructions()
    assert ins[0][0] == "ARG" and re.fullmatch(r"BASE=docker\.io/library/debian:\w+-slim", ins[0][1]), ins[0]
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 3 and all(f.split()[0] == "${BASE}" for f in froms), froms


def test_final_image_has_fuse3_ocifs_and_oras():
    final = stages()[-1]
    runs = " ".join(args for word, args in final if word == "RUN")
    assert re.search(r"apt-get install [^&]*\bfuse3\b", runs) and re.search(r"apt-get install [^&]*\bpython3\b", runs)
    copies = [args for word, args in final if word == "COPY"]
    assert "--from=ocifs /opt/ocifs /opt/ocifs" in copies and "--from=oras /out/oras /usr/local/bin/oras" in copies
    for link in ("/usr/local/bin/ocifs", "/usr/local/bin/mount.ocifs", "/sbin/mount.fuse.ocifs"):
        assert re.search(rf"ln -s /opt/ocifs/bin/\S+ {re.escape(link)}\b", runs), link
    # the build fails unless the commands run
    assert "ocifs --version" in runs and "oras version" in runs and "fusermount3 --version" in runs


def test_ocifs_is_installed_from_this_tree_without_tests_or_bench():
    ocifs_stage = stages()[1]
    copies = [args for word, args in ocifs_stage if word == "COPY"]
    assert copies == ["pyproject.toml README.md /src/", "ocifs /src/ocifs"], copies
    assert any("pip install" in args and "/src" in args for word, args in ocifs_stage if word == "RUN")


def test_oras_version_matches_the_setup_script_pin():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    pinned = re.search(r"^ORAS_VER=(\S+)$", setup, re.M).group(1)
    assert f"ORAS_VERSION={pinned}" in [args for word, args in stages()[0] if word == "ARG"]
    assert any("oras.land/oras/cmd/oras@${ORAS_VERSION}" in args for word, args in stages()[0] if word == "RUN")


def test_no_entrypoint_and_a_shell_by_default():
    ins = instructions()
    assert not [args for w, args in ins if w == "ENTRYPOINT"], "CI systems run their own shell in the image"
    assert ins[-1] == ("CMD", '["bash"]')
