/** The IAM statements of each side of a copy, shared by every role that does that side. */
import * as iam from 'aws-cdk-lib/aws-iam';

/** Reading the source registry: listings, manifests, blobs, repository settings. */
export function readSourceStatements(partition: string, account: string, region: string): iam.PolicyStatement[] {
  return [
    new iam.PolicyStatement({
      sid: 'ReadSourceRepositories',
      actions: [
        'ecr:DescribeRepositories', 'ecr:DescribeImages', 'ecr:ListImages', 'ecr:BatchGetImage',
        'ecr:GetDownloadUrlForLayer', 'ecr:BatchCheckLayerAvailability', 'ecr:GetLifecyclePolicy',
        'ecr:GetRepositoryPolicy', 'ecr:ListTagsForResource',
      ],
      resources: [`arn:${partition}:ecr:${region}:${account}:repository/*`],
    }),
    registryTokenStatement(),
  ];
}

/** What a role needs to create, configure and push to repositories of one account. */
export interface DestinationGrant {
  partition: string;
  account: string;
  /** Regions the role may write in (`*`: any). */
  regions: string[];
  /** Repositories the role may create and push to ('' = any). */
  repositoryPrefix?: string;
  /** Jobs with `"prune": true` may remove stale tags (ecr:BatchDeleteImage). */
  allowPrune?: boolean;
  /** Customer managed KMS keys destination repositories may be created with. */
  kmsKeys?: string[];
}

/** Create, configure and push within the prefix; prune and KMS keys only when configured. */
export function destinationStatements(grant: DestinationGrant): iam.PolicyStatement[] {
  const repositories = grant.regions.map(
    (region) => `arn:${grant.partition}:ecr:${region}:${grant.account}:repository/${grant.repositoryPrefix ?? ''}*`,
  );
  const statements = [
    new iam.PolicyStatement({
      sid: 'CreateAndConfigureRepositories',
      actions: [
        'ecr:CreateRepository', 'ecr:DescribeRepositories', 'ecr:PutImageTagMutability', 'ecr:PutImageScanningConfiguration',
        'ecr:PutLifecyclePolicy', 'ecr:DeleteLifecyclePolicy', 'ecr:GetLifecyclePolicy', 'ecr:SetRepositoryPolicy',
        'ecr:DeleteRepositoryPolicy', 'ecr:GetRepositoryPolicy', 'ecr:TagResource', 'ecr:UntagResource', 'ecr:ListTagsForResource',
      ],
      resources: repositories,
    }),
    new iam.PolicyStatement({
      sid: 'PushImages',
      actions: [
        'ecr:BatchCheckLayerAvailability', 'ecr:InitiateLayerUpload', 'ecr:UploadLayerPart', 'ecr:CompleteLayerUpload',
        'ecr:PutImage', 'ecr:BatchGetImage', 'ecr:DescribeImages', 'ecr:ListImages',
      ],
      resources: repositories,
    }),
  ];
  if (grant.allowPrune) {
    statements.push(new iam.PolicyStatement({ sid: 'PruneStaleTags', actions: ['ecr:BatchDeleteImage'], resources: repositories }));
  }
  if (grant.kmsKeys?.length) {
    // Creating a repository encrypted with a customer managed key: ECR calls DescribeKey and
    // creates grants on the key as the caller (ECR user guide, "Encryption at rest": required
    // IAM permissions kms:CreateGrant, kms:RetireGrant, kms:DescribeKey), only through ECR.
    statements.push(new iam.PolicyStatement({
      sid: 'EncryptedRepositories',
      actions: ['kms:CreateGrant', 'kms:RetireGrant', 'kms:DescribeKey'],
      resources: grant.kmsKeys,
      conditions: { StringLike: { 'kms:ViaService': 'ecr.*.amazonaws.com*' } },
    }));
  }
  return statements;
}

/** `ecr:GetAuthorizationToken`, which has no resource scope; once per role. */
export function registryTokenStatement(): iam.PolicyStatement {
  return new iam.PolicyStatement({ sid: 'RegistryToken', actions: ['ecr:GetAuthorizationToken'], resources: ['*'] });
}
