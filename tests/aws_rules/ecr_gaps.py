"""What ECR does and moto 5.2.5 does not, added to its ECR backend: the archive storage class,
DescribeRepositories paging, and SetRepositoryPolicy refusing a principal IAM does not have.

DescribeRepositories (ECR API reference): `maxResults` 1-1000; without it "DescribeRepositories
returns up to 100 results and a nextToken value, if applicable"; moto returns every repository
at once, so a caller that ignored the token would pass locally and miss repositories on AWS.
Here: pages of `maxResults` (100 by default), the token the index of the next repository.

Amazon ECR user guide, "Archiving an image": an archived image moves to the archival storage
class; it "cannot be pulled. Requests to pull the archived image will fail with a 404 error";
it "can still be described using the describe-images command, or listed using the list-images
command. The image status will be shown as ARCHIVED"; it is restored by UpdateImageStorageClass
(or a push). ECR API reference, DescribeImagesFilter.imageStatus: "If not specified, only images
with ACTIVE status are returned"; UpdateImageStorageClass: targetStorageClass STANDARD | ARCHIVE.

Here: UpdateImageStorageClass sets an image's status (ARCHIVE -> ARCHIVED, STANDARD -> ACTIVE;
restores complete at once, never ACTIVATING); DescribeImages reports `imageStatus` and applies
the filter (ACTIVE by default, or ARCHIVED, ACTIVATING, ANY). The pull side is the rig's ECR
data-plane profile (`tests/src/ecr_plane.rs`), which answers 404 for an archived image's
manifest. Imported by strict_moto.py, so every moto the tests start has all three.

SetRepositoryPolicy (ECR API reference: `InvalidParameterException`, "The specified parameter is
invalid"): ECR checks that every AWS principal a policy names exists, and refuses the policy with
"Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Principal not found'" when one
does not (hashicorp/terraform-provider-aws#39064: a role named before IAM had it). moto checks
only the document's grammar. Here: an IAM role or user ARN principal (`arn:aws:iam::ACCOUNT:role/…`
or `…:user/…`) must exist in moto's IAM of that account (tests create the roles they grant;
`Moto::create_role`); account ids, `:root` and `*` always exist.
"""

import copy
import json
import re

from moto.core.responses import ActionResult
from moto.ecr.exceptions import InvalidParameterException
from moto.ecr.models import ECRBackend, Image
from moto.ecr.responses import ECRResponse
from moto.iam.models import iam_backends

# Every image is ACTIVE until archived.
Image.image_status = "ACTIVE"


def _update_image_storage_class(self) -> ActionResult:
    repository_name = self._get_param("repositoryName")
    registry_id = self._get_param("registryId")
    image_id = self._get_param("imageId") or {}
    target = self._get_param("targetStorageClass")
    repository = self.ecr_backend._get_repository(repository_name, registry_id)
    image = repository._get_image(image_id.get("imageTag"), image_id.get("imageDigest"))
    image.image_status = "ARCHIVED" if target == "ARCHIVE" else "ACTIVE"
    return ActionResult(
        {
            "registryId": repository.registry_id,
            "repositoryName": repository_name,
            "imageId": {"imageDigest": image.get_image_digest()},
            "imageStatus": image.image_status,
        }
    )


def _describe_images(self) -> ActionResult:
    repository_str = self._get_param("repositoryName")
    registry_id = self._get_param("registryId")
    image_ids = self._get_param("imageIds")
    wanted = (self._get_param("filter") or {}).get("imageStatus", "ACTIVE")
    images = self.ecr_backend.describe_images(repository_str, registry_id, image_ids)
    dto_images = []
    for image in images:
        if wanted != "ANY" and image.image_status != wanted:
            continue
        dto_image = copy.copy(image)
        if not dto_image.image_tags:
            del dto_image.image_tags
        dto_images.append(dto_image)
    return ActionResult({"imageDetails": dto_images})


def _describe_repositories(self) -> ActionResult:
    names = self._get_param("repositoryNames")
    registry_id = self._get_param("registryId")
    repositories = self.ecr_backend.describe_repositories(
        repository_names=names, registry_id=registry_id
    )
    if names:
        return ActionResult({"repositories": repositories, "failures": []})
    size = int(self._get_param("maxResults") or 100)
    start = int(self._get_param("nextToken") or 0)
    page = repositories[start : start + size]
    result = {"repositories": page, "failures": []}
    if start + size < len(repositories):
        result["nextToken"] = str(start + size)
    return ActionResult(result)


_IAM_PRINCIPAL = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):(role|user)/(?:.*/)?([^/]+)$")


def _principal_exists(principal: str) -> bool:
    match = _IAM_PRINCIPAL.match(principal)
    if not match:
        return True
    partition, account, kind, name = match.groups()
    if account not in iam_backends:
        return False
    iam = iam_backends[account][partition]
    try:
        if kind == "role":
            iam.get_role(name)
        else:
            iam.get_user(name)
    except Exception:
        return False
    return True


def _aws_principals(policy_text: str):
    try:
        statements = json.loads(policy_text).get("Statement", [])
    except (ValueError, AttributeError):
        return []
    if isinstance(statements, dict):
        statements = [statements]
    found = []
    for statement in statements:
        principal = statement.get("Principal") if isinstance(statement, dict) else None
        entries = principal.get("AWS", []) if isinstance(principal, dict) else []
        found.extend([entries] if isinstance(entries, str) else entries)
    return found


_moto_set_repository_policy = ECRBackend.set_repository_policy


def _set_repository_policy(self, registry_id, repository_name, policy_text):
    if not all(_principal_exists(p) for p in _aws_principals(policy_text)):
        self._get_repository(repository_name, registry_id)
        raise InvalidParameterException(
            "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Principal not found'"
        )
    return _moto_set_repository_policy(self, registry_id, repository_name, policy_text)


ECRBackend.set_repository_policy = _set_repository_policy
ECRResponse.update_image_storage_class = _update_image_storage_class
ECRResponse.describe_repositories = _describe_repositories
ECRResponse.describe_images = _describe_images
