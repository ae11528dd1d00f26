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
  /** Globs on the repository names the role may create and push to, instead of the prefix: one
   * IAM pattern each (`iamRepositoryPattern`). */
  repositories?: string[];
  /** Jobs with `"prune": true` may remove stale tags (ecr:BatchDeleteImage). */
  allowPrune?: boolean;
  /** The globs prune is limited to (default: every repository the role may push to). */
  pruneRepositories?: string[];
  /** Customer managed KMS keys destination repositories may be created with. */
  kmsKeys?: string[];
  /** Signer signing profiles (ARNs) the registries' managed signing signs this role's pushes with. */
  signingProfileArns?: string[];
}

/** A repository glob as an IAM resource pattern: `**` and `*` both IAM's `*`, which crosses `/`
 * (IAM is the coarser check, the functions' allowlist the exact one); what IAM cannot express
 * (`[...]`, `{a,b}`, escapes) widens to `*` from there. */
export function iamRepositoryPattern(glob: string): string {
  const cut = glob.search(/[[{\\]/);
  return (cut < 0 ? glob : `${glob.slice(0, cut)}*`).replace(/\*+/g, '*');
}

/** The IAM patterns of some globs, without those another one (`prefix*`) already covers. */
function iamRepositoryPatterns(globs: string[]): string[] {
  const patterns = [...new Set(globs.map(iamRepositoryPattern))];
  const covers = (p: string, q: string) => p !== q && p.endsWith('*') && !/[*?]/.test(p.slice(0, -1)) && q.startsWith(p.slice(0, -1));
  return patterns.filter((q) => !patterns.some((p) => covers(p, q)));
}

/** Create, configure and push within the prefix (or the globs); prune and KMS keys only when configured. */
export function destinationStatements(grant: DestinationGrant): iam.PolicyStatement[] {
  const arns = (patterns: string[]) => grant.regions.flatMap((region) => patterns.map(
    (pattern) => `arn:${grant.partition}:ecr:${region}:${grant.account}:repository/${pattern}`,
  ));
  const repositories = arns(grant.repositories ? iamRepositoryPatterns(grant.repositories) : [`${grant.repositoryPrefix ?? ''}*`]);
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
    const prunable = grant.pruneRepositories ? arns(iamRepositoryPatterns(grant.pruneRepositories)) : repositories;
    statements.push(new iam.PolicyStatement({ sid: 'PruneStaleTags', actions: ['ecr:BatchDeleteImage'], resources: prunable }));
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
  if (grant.signingProfileArns?.length) {
    // ECR managed signing signs a pushed image "using the identity of the entity pushing the
    // image": the pusher needs signer:SignPayload on the signing profile, whose ARN is
    // arn:partition:signer:region:account-id:/signing-profiles/profile-name (ECR user guide,
    // "Managed signing", https://docs.aws.amazon.com/AmazonECR/latest/userguide/managed-signing.html;
    // the signature is pushed with the ecr: upload actions PushImages already holds).
    statements.push(new iam.PolicyStatement({
      sid: 'ManagedSigning',
      actions: ['signer:SignPayload'],
      resources: grant.signingProfileArns,
    }));
  }
  return statements;
}

/** `ecr:GetAuthorizationToken`, which has no resource scope; once per role. */
export function registryTokenStatement(): iam.PolicyStatement {
  return new iam.PolicyStatement({ sid: 'RegistryToken', actions: ['ecr:GetAuthorizationToken'], resources: ['*'] });
}

/** One layout bucket the functions import from or export into: its prefixes (`''`: the whole
 * bucket), the account that must own it, and the KMS keys its objects may be encrypted with. */
export interface LayoutGrant {
  bucket: string;
  prefixes: string[];
  owner: string;
  kmsKeys: string[];
}

/** What `layoutStatements` grants on the layouts, each statement's Sid stem, actions and the
 * objects under each layout's prefix it holds for (`''`: all of them): reads, writes and the
 * staged uploads (none: no statement), the listing, and with their KMS keys. */
interface LayoutAccess {
  objects: [string, string[]];
  writes?: [string, string[], string[]];
  uploads?: [string, string[], string[]];
  list: string;
  keys: [string, string[]];
}

/** Reading the layouts a deployment imports from. */
const READ_LAYOUTS: LayoutAccess = {
  objects: ['ReadLayoutObjects', ['s3:GetObject']],
  list: 'ListLayoutObjects',
  keys: ['DecryptLayoutObjects', ['kms:Decrypt']],
};

/** The transfer statement's files at a layout's root (`transfer_statement::STATEMENT_FILE`,
 * `SIGNATURE_FILE`), beside `index.json` and `oci-layout`: what only the seal writes. */
export const LAYOUT_ROOT_FILES = ['index.json', 'oci-layout', 'ecr-replicator-transfer.json', 'ecr-replicator-transfer.dsse.json'];

/** Exporting into layouts: every read (a HEAD, a GET, a copy's source) is an `s3:GetObject` on
 * the layout; the writes go only to `blobs/` (a blob moved from staging, a manifest) and
 * `uploads/` (a multipart upload, its parts and its completion, a copy's destination: each an
 * `s3:PutObject`), never to `index.json` or the statement, which only the seal writes; the
 * uploads they stage (`PREFIX/uploads/<32 hex>`) are also listed (ListParts), aborted and
 * deleted once copied, and a multipart copy into `blobs/sha256/` (a blob over 5 GB) aborted when
 * it fails (Amazon S3 User Guide, "Multipart upload API and permissions": CreateMultipartUpload,
 * UploadPart, UploadPartCopy and CompleteMultipartUpload need s3:PutObject, AbortMultipartUpload
 * s3:AbortMultipartUpload, ListParts s3:ListMultipartUploadParts, and under SSE-KMS the requester
 * kms:GenerateDataKey and kms:Decrypt on the key; Amazon S3 API Reference, CopyObject:
 * s3:GetObject on the source, s3:PutObject on the destination). */
const WRITE_LAYOUTS: LayoutAccess = {
  objects: ['ReadExportObjects', ['s3:GetObject']],
  writes: ['WriteLayoutBlobs', ['s3:PutObject', 's3:AbortMultipartUpload'], ['blobs/*', 'uploads/*']],
  uploads: ['StagedLayoutUploads', ['s3:ListMultipartUploadParts', 's3:DeleteObject'], ['uploads/*']],
  list: 'ListExportLayouts',
  keys: ['EncryptLayoutObjects', ['kms:GenerateDataKey', 'kms:Decrypt']],
};

/** Sealing an export: it reads the layout (the manifests it names, the earlier statement) and
 * writes only `index.json`, `oci-layout` and the statement's two files; no staged upload. */
const SEAL_LAYOUTS: LayoutAccess = {
  ...WRITE_LAYOUTS,
  writes: ['WriteLayoutIndex', ['s3:PutObject'], LAYOUT_ROOT_FILES],
  uploads: undefined,
};

/** What `access` grants on the layouts of `buckets`, to the functions `functionArns` only (they
 * share their role with functions that open no layout: `lambda:SourceFunctionArn`, which Lambda
 * puts in the credentials' context of every call the function's code makes): per bucket, its
 * object actions on exactly its layouts' objects (`BUCKET/PREFIX/*`), its upload actions on
 * exactly their staged uploads (`BUCKET/PREFIX/uploads/*`), and `s3:ListBucket` on the bucket
 * for those prefixes only (`s3:prefix`; S3 answers a missing key 404, not 403, only to a caller
 * that may list the bucket: Amazon S3 API Reference, HeadObject and GetObject, Permissions), all
 * only in a bucket of the expected account (`s3:ResourceAccount`); and its key actions with the
 * layouts' keys, only through S3 in the workflow's region (`s3Service`). */
function layoutStatements(access: LayoutAccess, partition: string, s3Service: string, buckets: LayoutGrant[], functionArns: string[]): iam.PolicyStatement[] {
  const caller = { 'lambda:SourceFunctionArn': functionArns };
  const statements = buckets.flatMap((b, i) => {
    const bucket = `arn:${partition}:s3:::${b.bucket}`;
    const conditions = { ArnEquals: caller, StringEquals: { 's3:ResourceAccount': b.owner } };
    const whole = b.prefixes.includes('');
    const under = (p: string) => (p ? `${p}/` : '');
    const on = ([sid, actions]: [string, string[]], resources: string[]) => new iam.PolicyStatement({ sid: `${sid}${i}`, actions, resources, conditions });
    return [
      on(access.objects, whole ? [`${bucket}/*`] : b.prefixes.map((p) => `${bucket}/${p}/*`)),
      ...[access.writes, access.uploads].filter((a) => a !== undefined).map(([sid, actions, objects]) => on(
        [sid, actions], b.prefixes.flatMap((p) => objects.map((o) => `${bucket}/${under(p)}${o}`)))),
      new iam.PolicyStatement({
        sid: `${access.list}${i}`,
        actions: ['s3:ListBucket'],
        resources: [bucket],
        conditions: { ...conditions, ...(whole ? {} : { StringLike: { 's3:prefix': b.prefixes.map((p) => `${p}/*`) } }) },
      }),
    ];
  });
  const keys = [...new Set(buckets.flatMap((b) => b.kmsKeys))];
  if (keys.length) {
    // S3 decrypts (and, writing, asks for a data key) with an SSE-KMS object's key for the
    // caller. No lambda:SourceFunctionArn here: that call is S3's, made on the caller's behalf,
    // and the objects it is for are only those the statements above let the functions use.
    statements.push(new iam.PolicyStatement({
      sid: access.keys[0],
      actions: access.keys[1],
      resources: keys,
      conditions: { StringEquals: { 'kms:ViaService': s3Service } },
    }));
  }
  return statements;
}

/** Reading the layouts a deployment imports from, by the functions `functionArns` only:
 * `s3:GetObject` on their objects, `s3:ListBucket` for their prefixes, `kms:Decrypt` with their
 * keys (`layoutStatements`). */
export function layoutReadStatements(partition: string, s3Service: string, buckets: LayoutGrant[], functionArns: string[]): iam.PolicyStatement[] {
  return layoutStatements(READ_LAYOUTS, partition, s3Service, buckets, functionArns);
}

/** Exporting into the layouts of `buckets`, by the functions `functionArns` only (`WRITE_LAYOUTS`;
 * `seal`: the function that seals the export, which stages no upload, `SEAL_LAYOUTS`). */
export function layoutWriteStatements(partition: string, s3Service: string, buckets: LayoutGrant[], functionArns: string[], seal = false): iam.PolicyStatement[] {
  return layoutStatements(seal ? SEAL_LAYOUTS : WRITE_LAYOUTS, partition, s3Service, buckets, functionArns);
}
