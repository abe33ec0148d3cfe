"""``mount.ocifs``: the helper mount(8) runs for ``-t fuse.ocifs`` (and so for fstab lines).

    s3://bucket/prefix  /srv/oci  fuse.ocifs  _netdev,endpoint_url=http://10.0.0.5:9000,allow_other  0 0

mount(8) calls ``/sbin/mount.fuse.ocifs SOURCE DIR -o OPTIONS``. Options that name an ocifs
setting (``endpoint_url=``, ``cache_size=``, ``config=``, ``ro``, ...) become ocifs flags;
``credentials_file=`` points botocore at a credentials file (boot has no AWS_* variables);
mount(8)'s own options (``_netdev``, ``noauto``, ``nofail``, ``x-systemd.*``, ...) are dropped;
everything else is passed to FUSE (``allow_other``, ``nosuid``, ...).
"""

from __future__ import annotations

import os
import sys

from ocifs.settings import BY_NAME

# Options for mount(8) / systemd, meaningless to the filesystem.
MOUNT_ONLY = {"_netdev", "noauto", "auto", "nofail", "user", "users", "nouser", "owner", "group", "defaults", "rw", "loop"}


def translate(source: str, target: str, options: list[str]) -> tuple[list[str], dict[str, str]]:
    """mount(8)-style arguments -> (``ocifs mount`` argv, extra environment)."""
    argv = ["mount", source, target]
    env: dict[str, str] = {}
    fuse: list[str] = []
    for opt in options:
        key, eq, value = opt.partition("=")
        name = key.replace("-", "_")
        if key in MOUNT_ONLY or key.startswith(("x-systemd.", "x-", "comment")):
            continue
        if key == "ro":
            argv.append("--read-only")
        elif name == "credentials_file" and eq:
            if not os.path.isfile(value):
                raise SystemExit(f"mount.ocifs: credentials_file {value} does not exist")
            env["AWS_SHARED_CREDENTIALS_FILE"] = value
        elif name == "config" and eq:
            argv += ["--config", value]
        elif name in BY_NAME and name not in ("url", "mountpoint", "options"):
            setting = BY_NAME[name]
            if setting.kind is bool:
                argv.append(setting.flag if value.lower() not in ("0", "false", "no", "off") else "--no-" + setting.flag[2:])
            elif eq:
                argv += [setting.flag, value]
            else:
                raise SystemExit(f"mount.ocifs: option {key} needs a value ({key}=...)")
        else:
            fuse.append(opt)
    if fuse:
        argv += ["-o", ",".join(fuse)]
    return argv, env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    positional: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" and i + 1 < len(args):
            options += [x for x in args[i + 1].split(",") if x]
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options += [x for x in a[2:].split(",") if x]
        elif a in ("-n", "-s", "-f", "-v", "--"):  # mount(8) flags: no mtab, sloppy, fake, verbose
            pass
        elif a.startswith("-t"):
            i += 1 if a == "-t" else 0
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        print("usage: mount.ocifs s3://BUCKET[/PREFIX] MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    ocifs_argv, env = translate(positional[0], positional[1], options)
    os.environ.update(env)
    from ocifs.cli import main as ocifs_main

    return ocifs_main(ocifs_argv)


if __name__ == "__main__":
    raise SystemExit(main())
