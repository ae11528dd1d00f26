"""What S3 does and moto 5.2.5 does not, added to its S3 responses: the bucket owner condition.

Amazon S3 user guide, "Verifying bucket ownership with bucket owner condition": a request that
sets `x-amz-expected-bucket-owner` (the SDKs' `ExpectedBucketOwner`) to an account that does not
own the bucket "fails with an HTTP 403 (Access Denied) error". moto ignores the header and serves
the object, so a reader that trusted a bucket by name alone would pass locally.

Here: GetObject compares the header with the bucket's account and answers 403 AccessDenied when
they differ. Shown firing (and not firing for the owner) by
`tests/tests/sigstore_bundles.rs` (`a_trusted_root_in_s3_is_read_only_from_...`). Imported by
strict_moto.py, so every moto the tests start has it.
"""

from moto.s3.exceptions import S3AccessDeniedError
from moto.s3.responses import S3Response

_get_object = S3Response.get_object


def _get_object_of_the_expected_owner(self):
    expected = self.headers.get("x-amz-expected-bucket-owner")
    if expected and self.backend.get_bucket(self.bucket_name).account_id != expected:
        raise S3AccessDeniedError()
    return _get_object(self)


S3Response.get_object = _get_object_of_the_expected_owner
