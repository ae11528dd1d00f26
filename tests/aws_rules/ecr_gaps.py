"""What ECR does and moto 5.2.5 does not, added to its ECR backend: the archive storage class,
and DescribeRepositories paging.

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
manifest. Imported by strict_moto.py, so every moto the tests start has both.
"""

import copy

from moto.core.responses import ActionResult
from moto.ecr.models import Image
from moto.ecr.responses import ECRResponse

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


ECRResponse.update_image_storage_class = _update_image_storage_class
ECRResponse.describe_repositories = _describe_repositories
ECRResponse.describe_images = _describe_images
