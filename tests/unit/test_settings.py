"""Where settings come from (flags > OCIFS_* > TOML > defaults), and the mount.ocifs translation."""

from __future__ import annotations

import pytest

from ocifs import config, settings
from ocifs.mount_helper import translate


def resolve(flags=None, env=None, toml: str | None = None, tmp_path=None):
    path = None
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
    return settings.resolve(flags or {}, env or {}, path)


def test_flags_beat_env_beat_file_beat_defaults(tmp_path):
    values, sources = resolve(
        {"cache_size": "64"}, {"OCIFS_CACHE_SIZE": "128", "OCIFS_PART_SIZE": "16"},
        'cache_size = 256\npart_size = 32\nchunk_size = 4\n', tmp_path,
    )
    assert (values["cache_size"], sources["cache_size"]) == (64, "flag")
    assert (values["part_size"], sources["part_size"]) == (16, "env OCIFS_PART_SIZE")
    assert values["chunk_size"] == 4 and sources["chunk_size"].startswith("file ")
    assert (values["concurrency"], sources["concurrency"]) == (16, "default")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"part_size": "4"}, "part_size"),
        ({"cache_size": "lots"}, "whole number"),
        ({"file_mode": "0999"}, "octal"),
        ({"log_level": "loud"}, "one of"),
    ],
)
def test_bad_values_are_one_line_naming_the_setting(flags, message):
    with pytest.raises(settings.SettingsError) as exc:
        settings.resolve(flags, {}, None)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    with pytest.raises(settings.SettingsError, match="unknown setting 'cache'"):
        resolve(toml="cache = 1\n", tmp_path=tmp_path)


def test_modes_are_octal_everywhere(tmp_path):
    values, sources = resolve({"dir_mode": "0750"}, {"OCIFS_FILE_MODE": "640"}, tmp_path=tmp_path)
    assert (values["dir_mode"], values["file_mode"]) == (0o750, 0o640)
    text = settings.render(values, sources)
    assert 'file_mode = "0640"' in text and 'dir_mode = "0750"' in text
    again, _ = resolve(toml="\n".join(l.split("#")[0] for l in text.splitlines() if not l.startswith("#")), tmp_path=tmp_path)
    assert (again["dir_mode"], again["file_mode"]) == (0o750, 0o640)  # --print-config round-trips


def test_config_defaults_are_the_tables():
    c = config.Config(bucket="b")
    assert c.cache_size == settings.BY_NAME["cache_size"].default * settings.MiB
    assert c.part_size == settings.default("part_size") and c.op_timeout == settings.default("op_timeout")
    assert c.file_mode == 0o644 and c.dir_mode == 0o755


def test_bucket_commands_resolve_endpoint_and_region_like_a_mount(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    values, _ = resolve({}, {"OCIFS_ENDPOINT_URL": "http://127.0.0.1:9000"}, 'profile = "ci"\n', tmp_path)
    c = config.for_bucket("s3://bucket/team/", values)
    assert (c.bucket, c.prefix, c.endpoint_url, c.region, c.profile) == ("bucket", "team/", "http://127.0.0.1:9000", "us-east-1", "ci")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"url": None, "mountpoint": "/m"}, "no s3://"),
        ({"url": "s3://bucket", "mountpoint": None}, "no mountpoint"),
        ({"url": "s3://bucket", "mountpoint": "/m", "endpoint_url": "ftp://x"}, "endpoint_url"),
        ({"url": "s3://bucket", "mountpoint": "/m", "metrics_addr": "nowhere"}, "metrics_addr"),
    ],
)
def test_a_mount_config_refuses_what_cannot_work(values, message):
    full = {s.name: s.default for s in settings.SETTINGS} | values
    with pytest.raises(settings.SettingsError, match=message):
        config.from_values(full)


def test_mount_helper_translates_fstab_options():
    argv, env = translate(
        "s3://b/p", "/srv/oci",
        ["_netdev", "noauto", "x-systemd.automount", "endpoint_url=http://e:9000", "cache_size=64", "ro", "allow_other", "verify_reads", "zero_copy=off"],
    )
    assert argv[:3] == ["mount", "s3://b/p", "/srv/oci"]
    assert "--endpoint-url" in argv and argv[argv.index("--endpoint-url") + 1] == "http://e:9000"
    assert "--cache-size" in argv and "--read-only" in argv and "--verify-reads" in argv and "--no-zero-copy" in argv
    assert argv[-2:] == ["-o", "allow_other"]  # FUSE's own; mount(8)'s dropped
    assert env == {}


def test_mount_helper_refuses_a_setting_without_its_value():
    with pytest.raises(SystemExit, match="needs a value"):
        translate("s3://b", "/m", ["cache_size"])
