"""Interop tests: oras, skopeo and umoci on a real ocifs mount (a package, so its
conftest.py does not shadow the top-level ``conftest`` module that tests/integration imports)."""
