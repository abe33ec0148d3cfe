"""ocifs: an S3 bucket mounted as a directory of OCI image layouts."""

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    """The version pyproject.toml declares, as installed (wheel or editable): one place."""
    try:
        return version("ocifs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
