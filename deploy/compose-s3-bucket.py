"""compose.yaml's `s3-bucket` step: create the bucket ``RECEIVER_STORAGE_URL`` names, if missing.

Reads the receiver's own settings (``RECEIVER_STORAGE_URL=s3://bucket/prefix`` and the
``RECEIVER_S3_*`` endpoint, region and keys), so the bucket it makes is the one the worker
writes to. Idempotent: an existing bucket is left as it is. Exit 2 with one line when the
settings do not name an S3 bucket or have no keys; never prints a key.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions


def main() -> int:
    url = urlsplit(os.environ.get("RECEIVER_STORAGE_URL", ""))
    key = os.environ.get("RECEIVER_S3_ACCESS_KEY_ID")
    secret = os.environ.get("RECEIVER_S3_SECRET_ACCESS_KEY")
    if url.scheme != "s3" or not url.netloc or not key or not secret:
        print(
            "s3-bucket: set RECEIVER_STORAGE_URL=s3://BUCKET/PREFIX, RECEIVER_S3_ACCESS_KEY_ID "
            "and RECEIVER_S3_SECRET_ACCESS_KEY in deploy/.env for the s3 profile",
            file=sys.stderr,
        )
        return 2
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ.get("RECEIVER_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("RECEIVER_S3_REGION") or "us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        # "path" for servers without per-bucket host names (the bundled SeaweedFS)
        config=botocore.config.Config(
            s3={"addressing_style": os.environ.get("RECEIVER_S3_ADDRESSING_STYLE") or "auto"}
        ),
    )
    bucket = url.netloc
    try:
        s3.head_bucket(Bucket=bucket)
        print(f"s3-bucket: {bucket} exists")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            print(f"s3-bucket: {bucket}: {exc}", file=sys.stderr)
            return 1
        s3.create_bucket(Bucket=bucket)
        print(f"s3-bucket: {bucket} created")
    return 0


if __name__ == "__main__":
    sys.exit(main())
