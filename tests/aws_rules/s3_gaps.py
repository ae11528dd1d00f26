"""What S3 does and moto 5.2.5 does not, added to its S3 responses: the bucket owner condition,
and ListParts' answer as S3 sends it.

Amazon S3 user guide, "Verifying bucket ownership with bucket owner condition": a request that
sets `x-amz-expected-bucket-owner` (the SDKs' `ExpectedBucketOwner`) to an account that does not
own the bucket "fails with an HTTP 403 (Access Denied) error". moto ignores the header and serves
the object, so a reader that trusted a bucket by name alone would pass locally.

Here: GetObject compares the header with the bucket's account and answers 403 AccessDenied when
they differ. Shown firing (and not firing for the owner) by
`tests/tests/sigstore_bundles.rs` (`a_trusted_root_in_s3_is_read_only_from_...`). Imported by
strict_moto.py, so every moto the tests start has it.

ListParts: the Amazon S3 API reference ("ListParts", Response Syntax) names the answer's root
element `ListPartsResult`; moto answers `ListPartsResponse`, which boto3 reads and the Rust SDK
refuses ("expected ListPartsResult"). The root is renamed here, nothing else; what reads it is
the workflow's export of a layout (`tests/tests/suite/layout_export_uploads.rs`).
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


_list_parts = S3Response.list_parts


def _list_parts_as_s3_names_it(self):
    status, headers, body = _list_parts(self)
    if isinstance(body, bytes):
        body = body.decode()
    body = body.replace("<ListPartsResponse", "<ListPartsResult", 1).replace(
        "</ListPartsResponse>", "</ListPartsResult>", 1
    )
    return status, headers, body


S3Response.list_parts = _list_parts_as_s3_names_it
