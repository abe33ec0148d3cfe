import pytest

from ocifs.cli import main
from ocifs.settings import SettingsError, parse_s3_url


def test_s3_url_with_prefix():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")


@pytest.mark.parametrize("url", ["http://bucket", "s3://", "s3://B", "bucket/x", "s3://bucket/a//b"])
def test_bad_s3_urls_are_rejected(url):
    with pytest.raises(SettingsError):
        parse_s3_url(url)


def test_usage_errors_are_one_line(capsys, tmp_path):
    assert main(["mount", "nope", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ocifs: ")
