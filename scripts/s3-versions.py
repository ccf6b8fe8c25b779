"""Every version of every object under a vault's prefix in an S3 bucket,
with its Object Lock retention, as one JSON list on stdout: the tests'
independent S3 client (boto3, with the vault's own credentials from the
environment). With --delete it also tries to delete each locked version
for good, as someone holding those credentials could, and says what S3
answered.

    python s3-versions.py ENDPOINT BUCKET PREFIX [--delete]

Run with the Python that scripts/s3server.sh names in VMB_S3_PYTHON.
"""

import json
import sys

import boto3
import botocore.exceptions

endpoint, bucket, prefix = sys.argv[1:4]
delete = "--delete" in sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint)
out = []
for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for v in page.get("Versions", []):
        # HEAD answers with the version's lock (moto has no GetObjectRetention).
        head = s3.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        until = head.get("ObjectLockRetainUntilDate")
        row = {
            "key": v["Key"][len(prefix) + 1 :],
            "latest": v["IsLatest"],
            "mode": head.get("ObjectLockMode"),
            "until": until.timestamp() if until else None,
        }
        if delete and row["mode"]:
            try:
                s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                row["deleted"] = "yes"
            except botocore.exceptions.ClientError as e:
                row["deleted"] = e.response["Error"]["Code"]
        out.append(row)
print(json.dumps(out))
