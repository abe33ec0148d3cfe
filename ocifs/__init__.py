"""ocifs: an S3 bucket mounted as a directory of OCI image layouts."""

__version__ = "0.1.0"
