"""Settings precedence (flags > OCIFS_* env > --config file > defaults) and config-file errors."""

from __future__ import annotations

import os
import re

import pytest

from conftest import force_unmount, is_mounted, ocifs_bin, run

from .opslib import wait_unmounted

pytestmark = pytest.mark.timeout(120)


def print_config(args, env_extra=None, tmp_path=None) -> dict[str, tuple[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCIFS_")}
    env.update(env_extra or {})
    res = run([*ocifs_bin(), "mount", *args, "--print-config"], env=env, timeout=30)
    out = {}
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"#?\s*(\w+) = (.*?)  # (.*)", line)
        assert m, f"unexpected --print-config line {line!r}"
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def test_precedence_flags_env_file_defaults(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        'url = "s3://from-file/prefix"\n'
        f'mountpoint = "{tmp_path}/mnt"\n'
        "cache_size = 100\n"  # file, env and flag
        "concurrency = 4\n"  # file and env
        "chunk_size = 2\n"  # file only
        'log_level = "warning"\n'  # file and flag
        'options = ["allow_other"]\n'
    )
    env = {"OCIFS_CACHE_SIZE": "200", "OCIFS_CONCURRENCY": "5", "OCIFS_METADATA_TTL": "2.5"}
    got = print_config(["--config", str(cfg), "--cache-size", "300", "--log-level", "error", "--op-timeout", "60"], env)
    assert got["cache_size"] == ("300", "flag")  # flag beats env and file
    assert got["log_level"] == ('"error"', "flag")  # flag beats file
    assert got["op_timeout"] == ("60.0", "flag")  # flag beats default
    assert got["concurrency"] == ("5", "env OCIFS_CONCURRENCY")  # env beats file
    assert got["metadata_ttl"] == ("2.5", "env OCIFS_METADATA_TTL")  # env beats default
    assert got["chunk_size"] == ("2", f"file {cfg}")  # file beats default
    assert got["url"] == ('"s3://from-file/prefix"', f"file {cfg}")
    assert got["options"] == ('["allow_other"]', f"file {cfg}")
    assert got["part_size"] == ("8", "default")
    assert got["max_readahead"] == ("128", "default")


def test_config_from_env_var_and_positional_args_win(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text('url = "s3://from-file"\nmountpoint = "/nowhere"\n')
    got = print_config(["s3://from-args/p", str(tmp_path)], {"OCIFS_CONFIG": str(cfg), "OCIFS_READ_ONLY": "true"})
    assert got["url"] == ('"s3://from-args/p"', "flag")
    assert got["mountpoint"] == (f'"{tmp_path}"', "flag")
    assert got["read_only"] == ("true", "env OCIFS_READ_ONLY")


def test_print_config_output_is_a_config_file(tmp_path):
    """What --print-config prints can be saved and used as the config file."""
    env = {"OCIFS_CACHE_SIZE": "64"}
    first = print_config(["s3://b/p", str(tmp_path), "--concurrency", "3"], env)
    saved = tmp_path / "saved.toml"
    res = run([*ocifs_bin(), "mount", "s3://b/p", str(tmp_path), "--concurrency", "3", "--print-config"],
              env={**os.environ, **env}, timeout=30)
    saved.write_text(res.stdout)
    again = print_config(["--config", str(saved)])
    assert {k: v[0] for k, v in again.items()} == {k: v[0] for k, v in first.items()}


@pytest.mark.parametrize(
    "content, words",
    [
        ("cache_sise = 64\n", ["unknown setting", "cache_sise"]),
        ("cache_size = 1\n", ["cache_size", "at least 16"]),
        ('cache_size = "lots"\n', ["cache_size"]),
        ('log_level = "loud"\n', ["log_level", "debug"]),
        ("read_only = 3\n", ["read_only", "true or false"]),
        ("concurrency = = 3\n", []),
        ('url = "s3://x"\n[section]\nkey = 1\n', ["unknown setting", "section"]),
    ],
)
def test_bad_config_file_is_one_clear_line(tmp_path, content, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCIFS_")}
    for extra in ([], ["--print-config"]):
        res = run([*ocifs_bin(), "mount", "s3://bucket-x", str(mp), "--config", str(cfg), *extra], env=env, timeout=30, check=False)
        assert res.returncode == 2, res.describe()
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ocifs: "), res.describe()
        assert str(cfg) in lines[0], "the error should name the file\n" + res.describe()
        assert all(w in lines[0] for w in words), res.describe()
        assert res.stdout == "" and not is_mounted(mp)


def test_missing_config_file(tmp_path):
    res = run([*ocifs_bin(), "mount", "--config", str(tmp_path / "nope.toml")], timeout=30, check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "does not exist" in res.stderr, res.describe()


def test_mount_from_config_file_alone(s3, bucket, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    cfg = tmp_path / "only.toml"
    cfg.write_text(
        f'url = "{bucket.url}"\n'
        f'mountpoint = "{mp}"\n'
        f'endpoint_url = "{s3.endpoint}"\n'
        f'cache_dir = "{tmp_path / "cache"}"\n'
        f'log_file = "{tmp_path / "ocifs.log"}"\n'
        "cache_size = 32\n"
    )
    env = {k: v for k, v in s3.env().items() if not k.startswith("OCIFS_")}
    try:
        res = run([*ocifs_bin(), "mount", "--config", cfg], env=env, timeout=60, check=False)
        assert res.returncode == 0, res.describe()
        assert is_mounted(mp)
        (mp / "cfg.txt").write_text("from a config file\n")
        assert bucket.get("cfg.txt") == b"from a config file\n"
        run([*ocifs_bin(), "umount", mp], env=env, timeout=60)
        assert wait_unmounted(mp, 10)
        assert (tmp_path / "ocifs.log").exists(), "log_file from the config file was not used"
    finally:
        force_unmount(mp)


def test_read_only_deploy_host_recipe(s3, bucket, tmp_path):
    """The deploy.toml of docs/operations.md ("Read-only deploy hosts"), with this test's bucket."""
    import errno

    from conftest import REPO

    doc = (REPO / "docs" / "operations.md").read_text()
    m = re.search(r"`/etc/ocifs/deploy.toml`:\s*```toml\n(.*?)```", doc, re.S)
    assert m, "docs/operations.md has no deploy.toml block"
    toml = "\n".join(l.strip() for l in m.group(1).splitlines())
    mp = tmp_path / "mnt"
    mp.mkdir()
    for key, value in {"url": bucket.url, "mountpoint": str(mp), "endpoint_url": s3.endpoint, "cache_dir": str(tmp_path / "cache")}.items():
        toml, n = re.subn(rf"(?m)^{key} = .*$", f'{key} = "{value}"', toml)
        assert n == 1, key
    assert re.search(r"(?m)^read_only = true", toml)
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(toml)
    bucket.put("app/index.json", b'{"schemaVersion": 2, "manifests": []}')
    env = {k: v for k, v in s3.env().items() if not k.startswith("OCIFS_")}
    try:
        run([*ocifs_bin(), "mount", "--config", cfg, "--log-file", tmp_path / "ocifs.log"], env=env, timeout=60)
        assert (mp / "app" / "index.json").read_bytes().startswith(b'{"schemaVersion": 2')
        with pytest.raises(OSError) as exc:
            (mp / "app" / "new.txt").write_text("nope")
        assert exc.value.errno == errno.EROFS
        st = run([*ocifs_bin(), "stats", mp], timeout=30).stdout
        assert 'op="PutObject"' not in st and 'op="DeleteObject"' not in st, st
        run([*ocifs_bin(), "umount", mp], env=env, timeout=60)
        assert wait_unmounted(mp, 10)
        assert sorted(bucket.list()) == ["app/index.json"]
    finally:
        force_unmount(mp)
