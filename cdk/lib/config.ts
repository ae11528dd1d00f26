/** Deployment configuration: from the file named by CDK context `ecrReplicator:configFile`. */
import { createPublicKey } from 'crypto';
import { readFileSync } from 'fs';
import * as path from 'path';

export interface DestinationConfig {
  /** Destination account id. */
  account: string;
  /** Destination region. */
  region: string;
  /** External ID the target role requires (another account only; same-account destinations use no role). */
  externalId?: string;
  /** Prefix put before repository names in this destination. */
  repositoryPrefix?: string;
  /** Customer managed KMS keys (ARNs) repositories here may be created with, besides the
   * `kmsKeyMapping` values (which are granted too). */
  kmsKeys?: string[];
  /** The job's `kmsKeyMapping` for this destination: source key ARN (or `"*"`) to a key of this
   * destination's region. Every trigger's input carries it. */
  kmsKeyMapping?: Record<string, string>;
  /** The job's `repositoryMapping` for this destination (rename rules). Every trigger's input carries it. */
  repositoryMapping?: { match: string; replace: string }[];
  /** Globs on the repository names jobs may write here (after `repositoryPrefix` and
   * `repositoryMapping`), at most 50: `*` stays within one path segment, `**` as a whole segment
   * crosses `/` (`team/**`). Default: every name under `repositoryPrefix`. The functions refuse
   * any other name; the IAM policies follow the globs as far as IAM can (its `*` crosses `/`).
   * Each must start with `targetRepositoryPrefix` when that is set. */
  repositories?: string[];
  /** The job `repositorySettings` values allowed here (`copy`, `create`, `mirror`, `none`), and
   * `copyRepositoryPolicy` to allow jobs with `"copyRepositoryPolicy": true` (default: `copy`,
   * `create`, `none`: `mirror` and the policy only where listed). */
  settingsModes?: string[];
  /** One of `trustPolicies`: every image written here must pass it, whatever the job says.
   * Destinations in the same registry (account and region) must name the same policy, or none. */
  requireSignature?: string;
  /** Jobs with `"prune": true` may remove stale tags here (default: `allowPrune`). */
  prune?: boolean;
  /** The AWS Signer signing profiles (ARNs, `arn:PARTITION:signer:REGION:ACCOUNT:/signing-profiles/NAME`,
   * at most 10) this destination registry's ECR managed signing configuration names: ECR signs
   * each pushed image as the principal that pushed it, so the role that pushes here (the target
   * role in this account; the copier role in the workflow's) may `signer:SignPayload` with
   * exactly these profiles. */
  signingProfileArns?: string[];
}

/** A named signature policy: an image passes when signed with any one of its keys or identities. */
export interface TrustPolicyConfig {
  /** PEM public keys (`-----BEGIN PUBLIC KEY-----`, as `cosign generate-key-pair` writes
   * `cosign.pub`), at most 10. */
  publicKeys?: string[];
  /** Keyless signers (Sigstore bundles whose certificate chains to the trusted root), at most 10:
   * the OIDC issuer and exactly one of `subject` (exact) or `subjectRegExp`. */
  identities?: { issuer: string; subject?: string; subjectRegExp?: string }[];
}

/** An OCI image layout in S3 the workflow imports from, exports into, or both (the allowlist's
 * `layouts[]` entry). */
export interface LayoutConfig {
  /** The bucket (S3 bucket name: 3 to 63 lowercase letters, digits, `.` and `-`). */
  bucket: string;
  /** The layout's prefix in the bucket (`/`-separated names; none: the whole bucket). A
   * trailing `/` is dropped. */
  prefix?: string;
  /** Jobs may import from it (`"source": {"layout": ...}`; needs `transferKey`). An entry allows
   * import, export or both. */
  import?: boolean;
  /** Jobs may export into it (`"destinations": [{"layout": ...}]`; needs the config's
   * `receiptKeyArn`, which signs the layout's transfer statement). The functions that open an
   * export (`LAYOUT_WRITERS`) may get and put the layout's objects, list its prefix, and abort,
   * list the parts of and delete the uploads they stage under `PREFIX/uploads/`; `summarise`
   * (which seals the export: `index.json`, the statement) may get and put its objects and list
   * its prefix. The deployment does not own the bucket, so it sets no lifecycle rule there: its
   * owner should add one that aborts incomplete multipart uploads (for the whole prefix: a
   * blob over 5 GB is copied to `blobs/sha256/` in parts too) and expires `PREFIX/uploads/`
   * after a few days, as an export killed mid-blob leaves its staged upload. */
  export?: boolean;
  /** The account that must own the bucket (S3 `ExpectedBucketOwner`, and the IAM grants'
   * `s3:ResourceAccount`; default: the workflow's account). */
  bucketOwner?: string;
  /** The KMS key the layout's objects are encrypted with (SSE-KMS), a key of the workflow's
   * region: the functions that read it may `kms:Decrypt` with it, and those that export into it
   * write every object under it (`kms:GenerateDataKey` and `kms:Decrypt`), through S3 only. */
  kmsKeyArn?: string;
  /** One of `trustPolicies`: every image imported from it or exported into it must pass it,
   * whatever the job says. */
  requireSignature?: string;
  /** (Import) the exporting deployment's statement key (PEM, ECDSA P-256): every import
   * verifies the layout's signed transfer statement with it, and with no other key. Required
   * with `import`, refused without it. */
  transferKey?: string;
}

export interface UpstreamConfig {
  /** The registry's API host (Docker Hub: `registry-1.docker.io`). */
  registry: string;
  /** The secret with its credentials (anonymous without one). */
  credentialArn?: string;
  /** The customer managed KMS key the secret is encrypted with (none: the AWS managed key). */
  kmsKeyArn?: string;
}

export interface ReplicatorConfig {
  /** Scopes every named resource (roles, state machine, dashboard, stacks), so two deployments
   * can share an account: lowercase letters, digits and dashes (default `ecr-replicator`). */
  deploymentName?: string;
  /** The account and region whose registry is replicated. */
  sourceAccount: string;
  sourceRegion: string;
  /** Where the workflow runs (default: the source account and region). Another account reads the source through a source role. */
  workflowAccount?: string;
  workflowRegion?: string;
  /** External ID of the source role (required when the workflow runs in another account). */
  sourceExternalId?: string;
  destinations: DestinationConfig[];
  /** Name of the role created in each destination account. */
  targetRoleName: string;
  /** Name of the role created in the source account when the workflow runs elsewhere (default ecr-replicator-source). */
  sourceRoleName?: string;
  /** The target role may only create/configure repositories starting with this ('' = any). */
  targetRepositoryPrefix?: string;
  /** Job fields every trigger sends (filters, settings mode, signatures...; not source,
   * destinations or images): the schedule's `input` is laid over them, and the push trigger
   * sends those that apply to one image (repository and tag name filters included). */
  job?: Record<string, unknown>;
  /** Scheduled runs: an EventBridge schedule expression and the job fields besides source/destinations;
   * `source` names one of `upstreams` to mirror it instead of the source registry. */
  schedule?: { expression: string; input?: Record<string, unknown>; source?: string };
  /** Registries that are not ECR (Docker Hub's `registry-1.docker.io`, `ghcr.io`, Quay, ...) a
   * job may read from, each with the Secrets Manager secret holding its credentials
   * (`{"username", "accessToken"}`, as ECR pull-through cache rules use) and the customer
   * managed KMS key encrypting the secret, if any. The functions may read exactly these secrets,
   * and a job may name each only for its registry. */
  upstreams?: UpstreamConfig[];
  /** Runs on ECR pushes (PUSH, SUCCESS, tagged), optionally only for repositories with this
   * prefix. Without a `schedule`, a push trigger also gets a daily reconciling run over what the
   * pushes cover (a push whose run was throttled or lost in a burst is copied by the next one),
   * unless `reconcileSchedule` is false. */
  pushTrigger?: { repositoryPrefix?: string; reconcileSchedule?: boolean };
  /** Reserved concurrency of each copying function (copy-blobs, put-manifests): what all runs
   * together may use of the account's concurrent executions (unset: no reservation). Both
   * reserve it, and Lambda keeps 100 of `accountConcurrency` unreserved: at most
   * (accountConcurrency - 100) / 2. A job's `maxConcurrency` may not exceed it. */
  copyConcurrency?: number;
  /** The workflow account's Lambda concurrent executions in its region that this deployment may
   * reserve from: the account's quota less what other functions already reserve (default 1000,
   * the default quota). */
  accountConcurrency?: number;
  /** Alarm (to the failure topic) when a destination's ReplicationLag p99 over 15 minutes is
   * above this many seconds (unset: no alarm; the dashboard shows the lag either way). */
  lagAlarmSeconds?: number;
  /** Let the target roles remove stale tags for jobs with `"prune": true` (default false). */
  allowPrune?: boolean;
  /** Subscribed to failed executions. */
  notificationEmail?: string;
  /** Prices the runs' reports estimate their cost with (US dollars; defaults: us-east-1,
   * arm64, on demand), any of PRICE_FIELDS; the functions get them as ECR_REPLICATOR_PRICES. */
  prices?: Record<string, number>;
  /** The Sigstore trusted root (`trusted_root.json`) that `requireSignature` verifies bundles
   * against, as `s3://bucket/key` (default: Sigstore's public-good root, built into the
   * functions). The functions may read exactly this object; a run never calls TUF, Fulcio or
   * Rekor. */
  trustedRoot?: string;
  /** The sha256 of the trusted root's bytes (`sha256:<hex>` or the hex): a root that differs is
   * refused, naming both digests (pin it; update it with each rotation). */
  trustedRootSha256?: string;
  /** The account that owns `trustedRoot`'s bucket (default: the workflow's account): the
   * functions read the object only from a bucket that account owns (S3 ExpectedBucketOwner). */
  trustedRootBucketOwner?: string;
  /** Accept a `trustedRoot` that lists no certificate transparency log (a private Fulcio without
   * CT): keyless certificates are then not checked for an SCT. Default false: such a root is
   * refused. */
  trustedRootAllowNoCtLogs?: boolean;
  /** A KMS key (ECC_NIST_P256, SIGN_VERIFY) in the workflow's account and region: every image a
   * run promotes under `requireSignature` gets a receipt signed with it, and every export into a
   * layout (`layouts[]` with `export`, which require it) a transfer statement signed with it.
   * put-manifests (and, with export layouts, summarise, which seals an export) may `kms:Sign`
   * with exactly this key and algorithm. */
  receiptKeyArn?: string;
  /** Named signature policies (names: 1 to 32 lowercase letters, digits and dashes, starting with
   * a letter), each at least one key or identity: a destination's `requireSignature` names one,
   * and so may a job (`"requireSignature": {"policy": "release"}`). */
  trustPolicies?: Record<string, TrustPolicyConfig>;
  /** Let jobs bring their own keys and identities in `requireSignature` instead of naming one of
   * `trustPolicies` (default false). */
  allowJobTrustPolicies?: boolean;
  /** OCI image layouts in S3 jobs may import from (`"source": {"layout": "s3://BUCKET/PREFIX"}`),
   * each with the key its transfer statement must be signed with, or export into
   * (`"destinations": [{"layout": "s3://BUCKET/PREFIX"}]`, the statement signed with
   * `receiptKeyArn`). The functions that read a job's source may read exactly the import
   * layouts' objects, those that export may write exactly the export layouts' (and, with
   * `kmsKeyArn`, decrypt or encrypt them). */
  layouts?: LayoutConfig[];
}

/** The bucket and key of `trustedRoot` (`s3://bucket/key`). */
export function trustedRootObject(config: ReplicatorConfig): { bucket: string; key: string } | undefined {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\/(.+)$/.exec(config.trustedRoot ?? '');
  return match ? { bucket: match[1], key: match[2] } : undefined;
}

/** What `prices` may set (the functions' `CostModel`, README "Cost"). */
export const PRICE_FIELDS = [
  'lambdaRequest', 'lambdaGbSecond', 'standardTransition', 'expressRequest', 'expressGbSecond',
  'crossRegionGb', 'internetGb', 'callSeconds', 'callMemoryMb', 'copyMegabytesPerSecond',
];

const ACCOUNT = /^\d{12}$/;
/** Destinations one job may have (the functions' `MAX_DESTINATIONS`). */
export const MAX_DESTINATIONS = 10;
const DEPLOYMENT_NAME = /^[a-z][a-z0-9-]{0,27}[a-z0-9]$/;

/** The default deployment name (and the prefix of every named resource). */
export const DEFAULT_DEPLOYMENT_NAME = 'ecr-replicator';

/** The deployment's name: what every named resource starts with. */
export function deploymentName(config: ReplicatorConfig): string {
  return config.deploymentName ?? DEFAULT_DEPLOYMENT_NAME;
}
const REGION = /^[a-z]{2}(-[a-z]+)+-\d$/;
const UPSTREAM_HOST = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:\d{1,5})?$/;

export function loadConfig(file: string): ReplicatorConfig {
  const config = JSON.parse(readFileSync(path.resolve(__dirname, '..', '..', file), 'utf8')) as ReplicatorConfig;
  return validateConfig(config, file);
}

/** Checks a configuration, naming the file and field of each problem. */
export function validateConfig(config: ReplicatorConfig, file: string): ReplicatorConfig {
  const fail = (field: string, problem: string) => { throw new Error(`${file}: ${field} ${problem}`); };
  if (config.deploymentName !== undefined && !DEPLOYMENT_NAME.test(config.deploymentName)) {
    fail('deploymentName', 'must be 2 to 29 lowercase letters, digits or dashes, starting with a letter (it prefixes role names)');
  }
  for (const [field, value] of Object.entries(config.prices ?? {})) {
    if (!PRICE_FIELDS.includes(field)) fail(`prices.${field}`, `is not a price; known: ${PRICE_FIELDS.join(', ')}`);
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) fail(`prices.${field}`, 'must be a number of at least 0');
  }
  validateConcurrency(config, fail);
  if (config.lagAlarmSeconds !== undefined && !(typeof config.lagAlarmSeconds === 'number' && Number.isFinite(config.lagAlarmSeconds) && config.lagAlarmSeconds > 0)) {
    fail('lagAlarmSeconds', 'must be a number of seconds above 0');
  }
  for (const field of ['source', 'destinations', 'images'] as const) {
    if (config.job && field in config.job) fail(`job.${field}`, 'is set by the deployment: remove it');
    if (config.schedule?.input && field in config.schedule.input) fail(`schedule.input.${field}`, 'is set by the deployment: remove it');
  }
  if (config.trustedRoot !== undefined && !trustedRootObject(config)) {
    fail('trustedRoot', 'must be an S3 object as s3://bucket/key (a Sigstore trusted_root.json)');
  }
  if (config.trustedRootSha256 !== undefined && !/^(sha256:)?[0-9a-f]{64}$/.test(config.trustedRootSha256)) {
    fail('trustedRootSha256', 'must be a sha256 digest (64 lowercase hex digits, optionally after sha256:)');
  }
  if (config.trustedRootBucketOwner !== undefined && !(ACCOUNT.test(config.trustedRootBucketOwner) && config.trustedRoot !== undefined)) {
    fail('trustedRootBucketOwner', 'must be a 12-digit account id, given with trustedRoot');
  }
  if (config.trustedRootAllowNoCtLogs !== undefined && typeof config.trustedRootAllowNoCtLogs !== 'boolean') {
    fail('trustedRootAllowNoCtLogs', 'must be true or false');
  }
  if (config.receiptKeyArn !== undefined) {
    const key = /^arn:(aws|aws-cn|aws-us-gov):kms:([a-z0-9-]+):(\d{12}):key\/[A-Za-z0-9-]+$/.exec(config.receiptKeyArn);
    if (!key) fail('receiptKeyArn', 'must be a KMS key ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID; not an alias)');
  }
  validateTrustPolicies(config, fail);
  if (!ACCOUNT.test(config.sourceAccount)) fail('sourceAccount', 'must be a 12-digit account id');
  if (!REGION.test(config.sourceRegion ?? '')) fail('sourceRegion', 'must be a region such as us-east-1');
  if (config.workflowAccount !== undefined && !ACCOUNT.test(config.workflowAccount)) fail('workflowAccount', 'must be a 12-digit account id');
  if (config.workflowRegion !== undefined && !REGION.test(config.workflowRegion)) fail('workflowRegion', 'must be a region such as us-east-1');
  if (crossAccountSource(config) && !(config.sourceExternalId && config.sourceExternalId.length >= 2)) {
    fail('sourceExternalId', 'is required when the workflow runs in another account than the source');
  }
  if (!config.destinations?.length) fail('destinations', 'needs at least one entry');
  // A job carries every destination, and the functions take at most MAX_DESTINATIONS
  // (crates/replication/src/job/mod.rs): more would deploy, then fail every run.
  if (config.destinations.length > MAX_DESTINATIONS) {
    fail('destinations', `has ${config.destinations.length} entries; a job takes at most ${MAX_DESTINATIONS}: split them over several deployments (deploymentName)`);
  }
  const ROLE_NAME = /^[\w+=,.@-]{1,64}$/;
  if (typeof config.targetRoleName !== 'string' || !ROLE_NAME.test(config.targetRoleName)) {
    fail('targetRoleName', 'is required: the name of the role created in each destination account (IAM role name: 1 to 64 of letters, digits and +=,.@_-), e.g. "ecr-replicator-target"');
  }
  (config.upstreams ?? []).forEach((u, i) => {
    if (!UPSTREAM_HOST.test(u.registry ?? '') || /\.dkr[.-]ecr/.test(u.registry)) {
      fail(`upstreams[${i}].registry`, 'must be a registry host that is not ECR, such as registry-1.docker.io or ghcr.io');
    }
    const partition = partitionOf(config.workflowRegion ?? config.sourceRegion);
    if (u.credentialArn !== undefined && !new RegExp(`^arn:${partition}:secretsmanager:[a-z0-9-]+:\\d{12}:secret:[A-Za-z0-9/_+=.@-]+$`).test(u.credentialArn)) {
      fail(`upstreams[${i}].credentialArn`, `must be a Secrets Manager secret ARN (arn:${partition}:secretsmanager:REGION:ACCOUNT:secret:NAME)`);
    }
    if (u.kmsKeyArn !== undefined && !new RegExp(`^arn:${partition}:kms:[a-z0-9-]+:\\d{12}:key/[A-Za-z0-9-]+$`).test(u.kmsKeyArn)) {
      fail(`upstreams[${i}].kmsKeyArn`, 'must be the ARN of a KMS key');
    }
    if (u.kmsKeyArn !== undefined && u.credentialArn === undefined) fail(`upstreams[${i}].kmsKeyArn`, 'is given without a credentialArn');
  });
  if (config.schedule?.source !== undefined && !(config.upstreams ?? []).some((u) => u.registry === config.schedule?.source)) {
    fail('schedule.source', 'must name one of upstreams[].registry');
  }
  const partitions = new Set([partitionOf(config.sourceRegion), ...config.destinations.map((d) => partitionOf(d.region))]);
  if (partitions.size > 1) fail('destinations', `span partitions (${[...partitions].join(', ')}): one deployment stays in one partition`);
  if (config.workflowRegion !== undefined && partitionOf(config.workflowRegion) !== partitionOf(config.sourceRegion)) {
    fail('workflowRegion', `(${config.workflowRegion}) is in another partition than sourceRegion (${config.sourceRegion}): one deployment stays in one partition`);
  }
  config.destinations.forEach((d, i) => {
    if (!ACCOUNT.test(d.account)) fail(`destinations[${i}].account`, 'must be a 12-digit account id');
    if (!REGION.test(d.region ?? '')) fail(`destinations[${i}].region`, 'must be a region such as eu-west-1');
    const sameAccount = d.account === workflowAccount(config);
    if (!sameAccount && !(d.externalId && d.externalId.length >= 2)) fail(`destinations[${i}].externalId`, 'is required for another account');
    if (d.account === config.sourceAccount && d.region === config.sourceRegion && !d.repositoryPrefix) {
      fail(`destinations[${i}].repositoryPrefix`, 'is required when the destination is the source registry itself (it would copy each repository onto itself)');
    }
    const key = new RegExp(`^arn:${partitionOf(d.region)}:kms:${d.region}:\\d{12}:key/[A-Za-z0-9-]+$`);
    (d.kmsKeys ?? []).forEach((k, j) => {
      if (!key.test(k)) fail(`destinations[${i}].kmsKeys[${j}]`, `must be the ARN of a KMS key in ${d.region} (keys are regional)`);
    });
    Object.entries(d.kmsKeyMapping ?? {}).forEach(([from, to]) => {
      if (!key.test(to)) fail(`destinations[${i}].kmsKeyMapping[${JSON.stringify(from)}]`, `must be the ARN of a KMS key in ${d.region} (keys are regional)`);
    });
    validateDestinationScope(config, d, `destinations[${i}]`, fail);
    validateSigningProfiles(d, `destinations[${i}]`, fail);
  });
  validatePushForwarding(config, fail);
  validateLayouts(config, fail);
  if (config.pushTrigger?.reconcileSchedule !== undefined && typeof config.pushTrigger.reconcileSchedule !== 'boolean') {
    fail('pushTrigger.reconcileSchedule', 'must be true or false');
  }
  if (reconcilesPushes(config)) reconcileRepositories(config, fail);
  // The functions hold one allowlist entry per registry: destinations sharing one share its policy.
  config.destinations.forEach((d, i) => {
    const first = config.destinations.findIndex((e) => registryHost(e.account, e.region) === registryHost(d.account, d.region));
    const other = config.destinations[first];
    if (first < i && other.requireSignature !== d.requireSignature) {
      fail(`destinations[${i}].requireSignature`, `(${JSON.stringify(d.requireSignature ?? null)}) differs from destinations[${first}]'s `
        + `(${JSON.stringify(other.requireSignature ?? null)}): both write to ${registryHost(d.account, d.region)}, and a registry has one required policy`);
    }
  });
  // The allowlist is an environment variable: Lambda takes at most 4 KB of them per function.
  const others = ENVIRONMENT_RESERVE + JSON.stringify({ copyMemoryMb: 0, ...config.prices }).length
    + (config.trustedRoot?.length ?? 0) + (config.receiptKeyArn?.length ?? 0);
  const size = Buffer.byteLength(JSON.stringify(allowlist(config)));
  if (size + others > LAMBDA_ENVIRONMENT_MAX) {
    // Named by what fills it: the layouts (an import's transfer key is about 180 bytes) when there are some.
    const [field, rest] = config.layouts?.length ? ['layouts', '(with trustPolicies and destinations[].repositories)'] : ['trustPolicies', 'and destinations[].repositories'];
    fail(field, `${rest} make the allowlist (ECR_REPLICATOR_ALLOWED_REGISTRIES) ${size} bytes; `
      + `with the functions' other variables (${others}) that passes Lambda's ${LAMBDA_ENVIRONMENT_MAX} bytes of environment: fewer ${config.layouts?.length ? 'layouts, ' : ''}keys, identities or globs`);
  }
  // coalesce-pushes pins the push job in its environment, beside RUST_LOG and the state machine's ARN.
  if (config.pushTrigger) {
    const size = Buffer.byteLength(PUSH_JOB_VARIABLE + JSON.stringify(pushJobTemplate(config)));
    if (size + COALESCER_ENVIRONMENT_RESERVE > LAMBDA_ENVIRONMENT_MAX) {
      fail('job', `and destinations make the push job coalesce-pushes pins (${PUSH_JOB_VARIABLE}) ${size} bytes; with its other variables `
        + `(${COALESCER_ENVIRONMENT_RESERVE}) that passes Lambda's ${LAMBDA_ENVIRONMENT_MAX} bytes of environment: fewer mapping rules, keys or filters`);
    }
  }
  return config;
}

/** What coalesce-pushes' other variables take at most: RUST_LOG and the state machine's ARN. */
const COALESCER_ENVIRONMENT_RESERVE = 256;

/** Lambda's limit on a function's environment variables, all names and values together (4 KB). */
export const LAMBDA_ENVIRONMENT_MAX = 4096;
/** What the functions' other variables' names and fixed values take at most (namespace, work bucket). */
const ENVIRONMENT_RESERVE = 512;

/** Policy names: 1 to 32 lowercase letters, digits and dashes, starting with a letter. */
const POLICY_NAME = /^[a-z][a-z0-9-]{0,31}$/;
/** Keys and identities a trust policy may hold at most, each. */
export const MAX_POLICY_SIGNERS = 10;
/** One PEM public key block (what `cosign generate-key-pair` writes to `cosign.pub`). */
const PEM_PUBLIC_KEY = /^-----BEGIN PUBLIC KEY-----\r?\n(?:[A-Za-z0-9+/=]+\r?\n)+-----END PUBLIC KEY-----\r?\n?$/;
/** What a destination's `settingsModes` may list. */
export const SETTINGS_MODES = ['copy', 'create', 'mirror', 'none', 'copyRepositoryPolicy'];
/** A destination's `settingsModes` when it gives none: `mirror` and `copyRepositoryPolicy` are opt-in. */
export const DEFAULT_SETTINGS_MODES = ['copy', 'create', 'none'];
/** Globs a destination's `repositories` may hold at most. */
export const MAX_REPOSITORY_GLOBS = 50;

/** What the functions accept as a public key: one ECDSA P-256 key in PEM, surrounding whitespace aside. */
function isP256PublicKey(key: unknown): boolean {
  if (typeof key !== 'string' || !PEM_PUBLIC_KEY.test(key.trim() + '\n')) return false;
  try { return createPublicKey(key.trim()).asymmetricKeyDetails?.namedCurve === 'prime256v1'; } catch { return false; }
}

/** `trustPolicies`, `allowJobTrustPolicies` and the policies the config's jobs name. */
function validateTrustPolicies(config: ReplicatorConfig, fail: (field: string, problem: string) => void) {
  const policies = config.trustPolicies;
  if (policies !== undefined && (typeof policies !== 'object' || policies === null || Array.isArray(policies))) {
    fail('trustPolicies', 'must be an object of named policies');
  }
  for (const [name, policy] of Object.entries(policies ?? {})) {
    const at = `trustPolicies.${name}`;
    if (!POLICY_NAME.test(name)) fail(at, 'is not a policy name: 1 to 32 lowercase letters, digits and dashes, starting with a letter');
    const keys = policy?.publicKeys ?? [];
    const identities = policy?.identities ?? [];
    if (!Array.isArray(keys)) fail(`${at}.publicKeys`, 'must be a list of PEM public keys');
    if (!Array.isArray(identities)) fail(`${at}.identities`, 'must be a list of {issuer, subject or subjectRegExp}');
    if (!keys.length && !identities.length) fail(at, 'names no signer: give publicKeys, identities or both');
    if (keys.length > MAX_POLICY_SIGNERS) fail(`${at}.publicKeys`, `has ${keys.length} keys; at most ${MAX_POLICY_SIGNERS}`);
    if (identities.length > MAX_POLICY_SIGNERS) fail(`${at}.identities`, `has ${identities.length} identities; at most ${MAX_POLICY_SIGNERS}`);
    keys.forEach((k, j) => {
      if (!isP256PublicKey(k)) fail(`${at}.publicKeys[${j}]`, 'must be one ECDSA P-256 public key in PEM: a -----BEGIN PUBLIC KEY----- block, as cosign.pub holds (newlines written \\n in JSON)');
    });
    identities.forEach((id, j) => {
      const field = `${at}.identities[${j}]`;
      const text = (v: unknown) => typeof v === 'string' && v.length > 0;
      if (!text(id?.issuer)) fail(`${field}.issuer`, 'is required: the OIDC issuer, such as https://token.actions.githubusercontent.com');
      const given = [id?.subject, id?.subjectRegExp].filter((v) => v !== undefined);
      if (given.length !== 1 || !given.every(text)) fail(field, 'needs exactly one of subject (the exact certificate identity) and subjectRegExp');
    });
  }
  if (config.allowJobTrustPolicies !== undefined && typeof config.allowJobTrustPolicies !== 'boolean') {
    fail('allowJobTrustPolicies', 'must be true or false');
  }
  // A job naming a policy (`"requireSignature": {"policy": "release"}`) names one of these.
  const jobs: [string, Record<string, unknown> | undefined][] = [['job', config.job], ['schedule.input', config.schedule?.input]];
  for (const [at, job] of jobs) {
    const named = (job?.requireSignature as { policy?: unknown } | undefined)?.policy;
    if (named !== undefined && !(typeof named === 'string' && Object.hasOwn(policies ?? {}, named))) {
      fail(`${at}.requireSignature.policy`, `must name one of trustPolicies (${Object.keys(policies ?? {}).join(', ') || 'none defined'})`);
    }
  }
}

/** A destination's `repositories`, `settingsModes`, `requireSignature` and `prune`. */
function validateDestinationScope(config: ReplicatorConfig, d: DestinationConfig, at: string, fail: (field: string, problem: string) => void) {
  if (d.repositories !== undefined) {
    if (!Array.isArray(d.repositories) || !d.repositories.length) fail(`${at}.repositories`, 'needs at least one glob (leave it out for any name)');
    if (d.repositories.length > MAX_REPOSITORY_GLOBS) fail(`${at}.repositories`, `has ${d.repositories.length} globs; at most ${MAX_REPOSITORY_GLOBS}`);
    d.repositories.forEach((glob, j) => {
      if (typeof glob !== 'string' || !glob.length) fail(`${at}.repositories[${j}]`, 'must be a non-empty glob such as mirror/**');
      // The functions' globs (globset): `**` between anything but `/` (or `{`, `,`, `}`) is `*`.
      for (const stars of glob.matchAll(/\*{2,}/g)) {
        const [before, after] = [glob[stars.index! - 1], glob[stars.index! + stars[0].length]];
        if (stars[0].length > 2 || !(before === undefined || '/{,'.includes(before)) || !(after === undefined || '/,}'.includes(after))) {
          fail(`${at}.repositories[${j}]`, `(${JSON.stringify(glob)}): ** crosses / only as a whole path segment (team/**, **/api), elsewhere it is *: `
            + 'for every name under team-, write team-* and team-*/**');
        }
      }
      const prefix = config.targetRepositoryPrefix;
      if (prefix && !glob.startsWith(prefix)) {
        fail(`${at}.repositories[${j}]`, `(${JSON.stringify(glob)}) must start with targetRepositoryPrefix ${JSON.stringify(prefix)}: `
          + 'the roles may only write there, so IAM would refuse what the allowlist allows');
      }
    });
  }
  if (d.settingsModes !== undefined) {
    if (!Array.isArray(d.settingsModes) || !d.settingsModes.length) fail(`${at}.settingsModes`, `needs at least one of ${SETTINGS_MODES.join(', ')} (leave it out for ${DEFAULT_SETTINGS_MODES.join(', ')})`);
    d.settingsModes.forEach((mode, j) => {
      if (!SETTINGS_MODES.includes(mode)) fail(`${at}.settingsModes[${j}]`, `(${JSON.stringify(mode)}) is not one of ${SETTINGS_MODES.join(', ')}`);
    });
  }
  if (d.requireSignature !== undefined && !Object.hasOwn(config.trustPolicies ?? {}, d.requireSignature)) {
    fail(`${at}.requireSignature`, `(${JSON.stringify(d.requireSignature)}) must name one of trustPolicies (${Object.keys(config.trustPolicies ?? {}).join(', ') || 'none defined'})`);
  }
  if (d.prune !== undefined && typeof d.prune !== 'boolean') fail(`${at}.prune`, 'must be true or false');
}

/** What a `layouts[]` entry may hold. */
const LAYOUT_FIELDS = ['bucket', 'prefix', 'import', 'export', 'bucketOwner', 'kmsKeyArn', 'requireSignature', 'transferKey'];
/** An S3 bucket name, as the functions parse a layout location (ecr::S3Location). */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** A layout prefix's bytes at most (ecr::S3Location). */
export const MAX_LAYOUT_PREFIX_BYTES = 512;

/** A layout's prefix as the functions read it: without the trailing `/` (`''`: the whole bucket). */
export function layoutPrefix(layout: LayoutConfig): string {
  const prefix = layout.prefix ?? '';
  return prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
}

/** A layout's location as jobs and the allowlist name it: `s3://BUCKET/PREFIX` (`s3://BUCKET`). */
export function layoutLocation(layout: LayoutConfig): string {
  const prefix = layoutPrefix(layout);
  return prefix ? `s3://${layout.bucket}/${prefix}` : `s3://${layout.bucket}`;
}

/** The account that must own a layout's bucket: its `bucketOwner`, else the workflow's. */
export function layoutBucketOwner(config: ReplicatorConfig, layout: LayoutConfig): string {
  return layout.bucketOwner ?? workflowAccount(config);
}

/** `layouts[]`: each an import, an export or both, in a bucket and prefix the functions accept
 * (and IAM reads literally: no `*`, `?` or `$`); an import with a P-256 transfer key (an
 * export-only entry with none: the functions check it on imports only, and refuse it on a layout
 * that allows none), an export only with the config's `receiptKeyArn` (its statement is signed
 * with it); an owner, a KMS key of the workflow's region and partition and a trust policy of
 * `trustPolicies` where given; one entry per place, one owner per bucket. */
function validateLayouts(config: ReplicatorConfig, fail: (field: string, problem: string) => void) {
  const layouts = config.layouts;
  if (layouts === undefined) return;
  if (!Array.isArray(layouts)) fail('layouts', 'must be a list of {bucket, prefix?, import?, export?, transferKey?, bucketOwner?, kmsKeyArn?, requireSignature?}');
  const region = config.workflowRegion ?? config.sourceRegion;
  const partition = partitionOf(region);
  const key = new RegExp(`^arn:${partition}:kms:${region}:\\d{12}:key/[A-Za-z0-9-]{1,128}$`);
  layouts.forEach((l, i) => {
    const at = `layouts[${i}]`;
    if (typeof l !== 'object' || l === null || Array.isArray(l)) fail(at, 'must be an object: {bucket, prefix?, import?, export?, transferKey?, ...}');
    for (const field of Object.keys(l)) {
      if (!LAYOUT_FIELDS.includes(field)) fail(`${at}.${field}`, `is not a layout field (${LAYOUT_FIELDS.join(', ')})`);
    }
    if (typeof l.bucket !== 'string' || !BUCKET_NAME.test(l.bucket)) {
      fail(`${at}.bucket`, `(${JSON.stringify(l.bucket)}) must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit`);
    }
    if (l.prefix !== undefined) {
      const prefix = typeof l.prefix === 'string' ? layoutPrefix(l) : '';
      // As the functions parse it (ecr::S3Location); and IAM would read `*` and `?` as wildcards
      // and `${` as a policy variable in the granted ARN, so those are refused too.
      const bad = typeof l.prefix !== 'string' || !prefix
        || prefix.split('/').some((s) => s === '' || s === '.' || s === '..')
        || /[:*?$\u0000-\u001f\u007f-\u009f]/.test(prefix) || Buffer.byteLength(prefix) > MAX_LAYOUT_PREFIX_BYTES;
      if (bad) {
        fail(`${at}.prefix`, `(${JSON.stringify(l.prefix)}) must be '/'-separated names without empty, '.' or '..' segments, ':', '*', '?', '$' or control characters, `
          + `at most ${MAX_LAYOUT_PREFIX_BYTES} bytes (a trailing '/' is dropped; leave it out for the whole bucket)`);
      }
    }
    for (const field of ['import', 'export'] as const) {
      if (l[field] !== undefined && typeof l[field] !== 'boolean') fail(`${at}.${field}`, 'must be true or false');
    }
    if (!l.import && !l.export) {
      fail(at, 'allows neither import nor export: set "export": true (jobs may export into it), "import": true (jobs may import from it) or both');
    }
    if (l.export && config.receiptKeyArn === undefined) {
      fail(`${at}.export`, 'needs the config\'s receiptKeyArn: the transfer statement of an export is signed with the deployment\'s receipt key (an importing deployment pins its public key as its transferKey)');
    }
    if (l.import && !isP256PublicKey(l.transferKey)) {
      fail(`${at}.transferKey`, 'is required: the exporting deployment\'s statement key, one ECDSA P-256 public key in PEM (-----BEGIN PUBLIC KEY-----, newlines written \\n in JSON); '
        + 'every import verifies the layout\'s signed transfer statement with it, never unverified');
    }
    if (!l.import && l.transferKey !== undefined) {
      fail(`${at}.transferKey`, 'is given for a layout jobs may not import from: it checks imports only (the functions refuse it on a layout that allows none); leave it out, or set "import": true');
    }
    if (l.bucketOwner !== undefined && !ACCOUNT.test(l.bucketOwner)) fail(`${at}.bucketOwner`, 'must be a 12-digit account id');
    if (l.kmsKeyArn !== undefined && !key.test(l.kmsKeyArn)) {
      fail(`${at}.kmsKeyArn`, `must be the ARN of a KMS key in ${region} (arn:${partition}:kms:${region}:ACCOUNT:key/ID; not an alias): `
        + 'the functions read the layout through S3 in the workflow\'s region, and an SSE-KMS key is in its bucket\'s region');
    }
    if (l.requireSignature !== undefined && !Object.hasOwn(config.trustPolicies ?? {}, l.requireSignature)) {
      fail(`${at}.requireSignature`, `(${JSON.stringify(l.requireSignature)}) must name one of trustPolicies (${Object.keys(config.trustPolicies ?? {}).join(', ') || 'none defined'})`);
    }
    const first = layouts.findIndex((o) => o.bucket === l.bucket && layoutPrefix(o) === layoutPrefix(l));
    if (first < i) fail(at, `is the same place as layouts[${first}] (${layoutLocation(l)}): one entry per layout`);
    // A bucket has one owner: two entries expecting different ones would fail one of them.
    const sibling = layouts.findIndex((o) => o.bucket === l.bucket);
    if (sibling < i && layoutBucketOwner(config, layouts[sibling]) !== layoutBucketOwner(config, l)) {
      fail(`${at}.bucketOwner`, `(${layoutBucketOwner(config, l)}) differs from layouts[${sibling}]'s (${layoutBucketOwner(config, layouts[sibling])}) for the same bucket ${l.bucket}: a bucket has one owner`);
    }
  });
}

/** The copying functions: each reserves the config's `copyConcurrency`. */
export const COPY_FUNCTIONS = ['copy-blobs', 'put-manifests'];

/** What Lambda keeps unreserved of an account's concurrency: "You can reserve up to the
 * Unreserved account concurrency value that is shown, minus 100 for functions that don't have
 * reserved concurrency" (Lambda developer guide, "Configuring reserved concurrency for a
 * function", https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html). */
export const LAMBDA_UNRESERVED_MINIMUM = 100;

/** An account's concurrent executions per region unless raised (the same page; Lambda quotas). */
export const DEFAULT_ACCOUNT_CONCURRENCY = 1000;

/** `copyConcurrency` against `accountConcurrency` (both copy functions reserve it; Lambda keeps
 * 100 unreserved), and the configured jobs' `maxConcurrency` against `copyConcurrency`. */
function validateConcurrency(config: ReplicatorConfig, fail: (field: string, problem: string) => void) {
  const account = config.accountConcurrency ?? DEFAULT_ACCOUNT_CONCURRENCY;
  if (!(Number.isInteger(account) && account >= LAMBDA_UNRESERVED_MINIMUM)) {
    fail('accountConcurrency', `must be an integer of at least ${LAMBDA_UNRESERVED_MINIMUM}: the Lambda concurrent executions of the workflow's account and region this deployment may reserve from`);
  }
  const copy = config.copyConcurrency;
  if (copy === undefined) return;
  if (!(Number.isInteger(copy) && copy >= 1)) fail('copyConcurrency', 'must be an integer of at least 1');
  const reserved = COPY_FUNCTIONS.length * copy;
  if (account - reserved < LAMBDA_UNRESERVED_MINIMUM) {
    const most = Math.floor((account - LAMBDA_UNRESERVED_MINIMUM) / COPY_FUNCTIONS.length);
    fail('copyConcurrency', `(${copy}) is reserved by each of ${COPY_FUNCTIONS.join(' and ')}: ${reserved} of accountConcurrency ${account}, `
      + `leaving ${account - reserved} unreserved where Lambda keeps at least ${LAMBDA_UNRESERVED_MINIMUM}: `
      + `at most ${most}, or set accountConcurrency to the account's (raised) quota`);
  }
  const jobs: [string, Record<string, unknown> | undefined][] = [['job', config.job], ['schedule.input', config.schedule?.input]];
  for (const [at, job] of jobs) {
    const max = job?.maxConcurrency;
    if (typeof max === 'number' && max > copy) {
      fail(`${at}.maxConcurrency`, `(${max}) is above copyConcurrency (${copy}): the runs would start more copies at once than the copy functions may run, and Lambda throttles the rest; at most ${copy}`);
    }
  }
}

/** The signing profiles ECR managed signing may sign with, as the role that pushes: a Signer
 * signing profile ARN (ECR user guide, "Managed signing": "arn:partition:signer:region:account-id:/signing-profiles/profile-name";
 * a profile name is 2 to 64 of letters, digits and `_`, Signer API reference, SignPayload
 * `profileName`) in the destination's partition, at most 10 (an ECR signing configuration has
 * at most 10 rules, ECR API reference, PutSigningConfiguration). */
function validateSigningProfiles(d: DestinationConfig, at: string, fail: (field: string, problem: string) => void) {
  if (d.signingProfileArns === undefined) return;
  if (!Array.isArray(d.signingProfileArns) || !d.signingProfileArns.length) fail(`${at}.signingProfileArns`, 'needs at least one signing profile ARN (leave it out for none)');
  if (d.signingProfileArns.length > MAX_SIGNING_PROFILES) fail(`${at}.signingProfileArns`, `has ${d.signingProfileArns.length} profiles; an ECR signing configuration names at most ${MAX_SIGNING_PROFILES}`);
  const partition = partitionOf(d.region);
  const profile = new RegExp(`^arn:${partition}:signer:[a-z]{2}(-[a-z]+)+-\\d:\\d{12}:/signing-profiles/[A-Za-z0-9_]{2,64}$`);
  d.signingProfileArns.forEach((arn, j) => {
    if (typeof arn !== 'string' || !profile.test(arn)) {
      fail(`${at}.signingProfileArns[${j}]`, `(${JSON.stringify(arn)}) must be a Signer signing profile ARN in ${partition}: arn:${partition}:signer:REGION:ACCOUNT:/signing-profiles/NAME (no version)`);
    }
  });
}

/** Signing profiles a destination may name at most. */
export const MAX_SIGNING_PROFILES = 10;

/** Partitions where a rule may target an event bus in another Region: every commercial Region
 * since 2021 "except AWS GovCloud (US) and China" (AWS Compute Blog, "Expanding cross-Region event
 * routing with Amazon EventBridge", https://aws.amazon.com/blogs/compute/expanding-cross-region-event-routing-with-amazon-eventbridge/),
 * and between the GovCloud (US) Regions since June 2022 (What's New, "Amazon EventBridge
 * cross-Region routing in AWS GovCloud (US) Regions"); not China. */
export const CROSS_REGION_EVENT_BUS_PARTITIONS = ['aws', 'aws-us-gov'];

/** A push trigger with the workflow in another Region than the source forwards pushes to the
 * workflow's bus across Regions: refused where EventBridge cannot. */
function validatePushForwarding(config: ReplicatorConfig, fail: (field: string, problem: string) => void) {
  const workflowRegion = config.workflowRegion ?? config.sourceRegion;
  if (!config.pushTrigger || workflowRegion === config.sourceRegion) return;
  const partition = partitionOf(config.sourceRegion);
  if (!CROSS_REGION_EVENT_BUS_PARTITIONS.includes(partition)) {
    fail('pushTrigger', `needs the source's pushes (${config.sourceRegion}) forwarded to the workflow's Region (workflowRegion ${workflowRegion}), `
      + `and EventBridge cannot target an event bus in another Region in ${partition}: run the workflow in ${config.sourceRegion}, or remove pushTrigger and use a schedule`);
  }
}

/** The expression of the reconciling schedule a push trigger gets (daily). */
export const RECONCILE_EXPRESSION = 'rate(1 day)';

/** The reconciling run of a push trigger without a `schedule` (unless `pushTrigger.reconcileSchedule`
 * is false): daily, the config's job over the repositories the pushes cover (`reconcileRepositories`),
 * so what a burst of pushes lost (a throttled StartExecution, a run that failed) is copied within
 * a day. `undefined` when there is none. */
export function reconcileSchedule(config: ReplicatorConfig): { expression: string; input: Record<string, unknown> } | undefined {
  if (!reconcilesPushes(config)) return undefined;
  const repositories = reconcileRepositories(config, (field, problem) => { throw new Error(`${field} ${problem}`); });
  const input = scheduleInput({ ...config, schedule: { expression: RECONCILE_EXPRESSION, input: repositories ? { repositories } : {} } });
  return { expression: RECONCILE_EXPRESSION, input };
}

/** Whether the deployment gets the reconciling schedule: a push trigger, no `schedule`, no opt-out. */
export function reconcilesPushes(config: ReplicatorConfig): boolean {
  return Boolean(config.pushTrigger) && !config.schedule && config.pushTrigger?.reconcileSchedule !== false;
}

/** The repositories a push trigger covers, as a job's `repositories`: the job's own, narrowed to
 * `pushTrigger.repositoryPrefix` (its include globs within the prefix; none: the prefix's
 * globs), and without the deployment's own copies in the source registry (as the push rule
 * excludes them). A job glob that may match within the prefix and outside it (`**`, `serv*`)
 * cannot be narrowed: refused, naming `pushTrigger.reconcileSchedule`. `undefined`: the job's as is. */
export function reconcileRepositories(config: ReplicatorConfig, fail: (field: string, problem: string) => void): { include: string[]; exclude: string[] } | undefined {
  const prefix = config.pushTrigger?.repositoryPrefix ?? '';
  const job = (config.job?.repositories ?? {}) as { include?: string[]; exclude?: string[] };
  const own = config.destinations
    .filter((d) => d.account === config.sourceAccount && d.region === config.sourceRegion && !prefix)
    .flatMap((d) => prefixGlobs(d.repositoryPrefix ?? ''));
  if (!prefix && !own.length) return undefined;
  let include = job.include ?? [];
  if (prefix) {
    // The part of a glob before its first wildcard: a glob whose literal start is within the
    // prefix matches only within it; one whose literal start is a start of the prefix may match both.
    const literal = (glob: string) => { const cut = glob.search(/[*?[{\\]/); return cut < 0 ? glob : glob.slice(0, cut); };
    const wild = (glob: string) => literal(glob) !== glob;
    const straddling = include.filter((g) => wild(g) && !literal(g).startsWith(prefix) && prefix.startsWith(literal(g)));
    if (straddling.length) {
      fail('pushTrigger.reconcileSchedule', `cannot narrow job.repositories.include ${JSON.stringify(straddling)} to pushTrigger.repositoryPrefix ${JSON.stringify(prefix)}: `
        + 'give a schedule (its input names the repositories), or set pushTrigger.reconcileSchedule to false');
    }
    const within = include.filter((g) => literal(g).startsWith(prefix));
    if (include.length && !within.length) {
      fail('pushTrigger.reconcileSchedule', `has nothing to reconcile: no job.repositories.include glob is within pushTrigger.repositoryPrefix ${JSON.stringify(prefix)}, so every push\'s run copies nothing`);
    }
    include = within.length ? within : prefixGlobs(prefix);
  }
  return { include, exclude: [...(job.exclude ?? []), ...own] };
}

/** The account the workflow runs in. */
export function workflowAccount(config: ReplicatorConfig): string {
  return config.workflowAccount ?? config.sourceAccount;
}

/** Whether the source registry is in another account than the workflow. */
export function crossAccountSource(config: ReplicatorConfig): boolean {
  return workflowAccount(config) !== config.sourceAccount;
}

/** The AWS partition of a region (ARNs and hosts differ in China and GovCloud). */
export function partitionOf(region: string): string {
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  return 'aws';
}

/** The ECR registry host of an account and region. */
export function registryHost(account: string, region: string): string {
  const suffix = partitionOf(region) === 'aws-cn' ? 'amazonaws.com.cn' : 'amazonaws.com';
  return `${account}.dkr.ecr.${region}.${suffix}`;
}

/** The role in a destination account (none for the workflow's own account). */
export function targetRoleArn(config: ReplicatorConfig, d: DestinationConfig): string | undefined {
  if (d.account === workflowAccount(config)) return undefined;
  return `arn:${partitionOf(d.region)}:iam::${d.account}:role/${config.targetRoleName}`;
}

/** The role in the source account, when the workflow runs in another account. */
export function sourceRoleArn(config: ReplicatorConfig): string | undefined {
  if (!crossAccountSource(config)) return undefined;
  return `arn:${partitionOf(config.sourceRegion)}:iam::${config.sourceAccount}:role/${sourceRoleName(config)}`;
}

/** Name of the source-account role (default `<deploymentName>-source`). */
export function sourceRoleName(config: ReplicatorConfig): string {
  return config.sourceRoleName ?? `${deploymentName(config)}-source`;
}

/** The job `source` for the execution input. */
export function jobSource(config: ReplicatorConfig): Record<string, unknown> {
  const roleArn = sourceRoleArn(config);
  return {
    registry: registryHost(config.sourceAccount, config.sourceRegion),
    ...(roleArn ? { roleArn, externalId: config.sourceExternalId } : {}),
  };
}

/** The schedule's source: an upstream it mirrors (with its secret), or the source registry. */
function scheduleSource(config: ReplicatorConfig): Record<string, unknown> {
  const upstream = (config.upstreams ?? []).find((u) => u.registry === config.schedule?.source);
  if (!upstream) return jobSource(config);
  return { registry: upstream.registry, ...(upstream.credentialArn ? { credentialArn: upstream.credentialArn } : {}) };
}

/** The job `destinations` array for the execution input. */
export function jobDestinations(config: ReplicatorConfig): Record<string, unknown>[] {
  return config.destinations.map((d) => {
    const roleArn = targetRoleArn(config, d);
    return {
      registry: registryHost(d.account, d.region),
      ...(roleArn ? { roleArn, externalId: d.externalId } : {}),
      ...(d.repositoryPrefix ? { repositoryPrefix: d.repositoryPrefix } : {}),
      ...(d.repositoryMapping?.length ? { repositoryMapping: d.repositoryMapping } : {}),
      ...(d.kmsKeyMapping && Object.keys(d.kmsKeyMapping).length ? { kmsKeyMapping: d.kmsKeyMapping } : {}),
    };
  });
}

/** The KMS keys a destination's repositories may be created with: its `kmsKeys` and its mapping's targets. */
export function destinationKeys(d: DestinationConfig): string[] {
  return [...new Set([...(d.kmsKeys ?? []), ...Object.values(d.kmsKeyMapping ?? {})])];
}

/** The signing profiles of some destinations (one account's), each once. */
export function destinationSigningProfiles(destinations: DestinationConfig[]): string[] {
  return [...new Set(destinations.flatMap((d) => d.signingProfileArns ?? []))];
}

/** The scheduled run's execution input: the config's `job`, the schedule's `input` over it (object
 * fields such as `tags` merged one level deep). */
export function scheduleInput(config: ReplicatorConfig): Record<string, unknown> {
  const job: Record<string, unknown> = { ...config.job };
  for (const [field, value] of Object.entries(config.schedule?.input ?? {})) {
    const base = job[field];
    const isObject = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);
    // One level deep: the schedule's `tags` adds to the config's tag filters, not replaces them.
    job[field] = isObject(base) && isObject(value) ? { ...(base as object), ...(value as object) } : value;
  }
  return { ...job, source: scheduleSource(config), destinations: jobDestinations(config) };
}

/** Tag filter fields that select among a repository's listing (age, count, untagged) and have no
 * meaning for one pushed image. */
const LISTING_TAG_FIELDS = ['latest', 'maxAgeDays', 'untagged'];

/** A push run's execution input, `image` standing for the pushed image (EventBridge fills it in):
 * the config's `job` without what needs a whole listing (`prune`, `tags.latest`...), so the
 * deployment's repository and tag exclusions hold for pushes too. */
export function pushInput(config: ReplicatorConfig, image: Record<string, unknown>): Record<string, unknown> {
  const { prune: _prune, tags, ...rest } = config.job ?? {};
  const nameFilters = Object.fromEntries(Object.entries((tags ?? {}) as Record<string, unknown>).filter(([k]) => !LISTING_TAG_FIELDS.includes(k)));
  return {
    repositorySettings: 'copy',
    ...rest,
    ...(Object.keys(nameFilters).length ? { tags: nameFilters } : {}),
    source: jobSource(config),
    destinations: jobDestinations(config),
    images: [image],
  };
}

/** The push job `coalesce-pushes` pins (`ECR_REPLICATOR_PUSH_JOB`): the push rule's input without
 * its image. A queued message whose job, its one image removed, is not this job is refused, so a
 * principal that can send to the push queue can ask for one image, as a push can, and nothing else. */
export function pushJobTemplate(config: ReplicatorConfig): Record<string, unknown> {
  const { images: _images, ...job } = pushInput(config, {});
  return job;
}

/** The environment variable `coalesce-pushes` reads the pinned push job from. */
export const PUSH_JOB_VARIABLE = 'ECR_REPLICATOR_PUSH_JOB';

/** Globs matching every repository name under a prefix: `**` crosses `/` only as a whole path
 * segment (elsewhere it is `*`), so a prefix not ending in `/` takes two. */
export function prefixGlobs(prefix: string): string[] {
  return prefix === '' || prefix.endsWith('/') ? [`${prefix}**`] : [`${prefix}*`, `${prefix}*/**`];
}

/** The repository names jobs may write in a destination (globs): its `repositories`, or anything
 * under its prefix. */
export function destinationScope(d: DestinationConfig): string[] {
  return d.repositories ?? prefixGlobs(d.repositoryPrefix ?? '');
}

/** Whether jobs may prune in a destination: its `prune`, else the deployment's `allowPrune`. */
export function destinationPrunes(config: ReplicatorConfig, d: DestinationConfig): boolean {
  return d.prune ?? config.allowPrune ?? false;
}

/** How the ECR permissions of one account's destinations are scoped (permissions.ts
 * `DestinationGrant`): by `targetRepositoryPrefix`, or, once any of them lists `repositories`,
 * by the globs of each (a destination without them: anything within the prefix); prune where any
 * of them allows it, on the repositories of those that do. */
export function repositoryGrant(config: ReplicatorConfig, destinations: DestinationConfig[]) {
  const scope = (d: DestinationConfig) => d.repositories ?? prefixGlobs(config.targetRepositoryPrefix ?? '');
  const scoped = destinations.some((d) => d.repositories);
  const pruning = destinations.filter((d) => destinationPrunes(config, d));
  return {
    repositoryPrefix: config.targetRepositoryPrefix,
    repositories: scoped ? [...new Set(destinations.flatMap(scope))] : undefined,
    allowPrune: pruning.length > 0,
    pruneRepositories: scoped ? [...new Set(pruning.flatMap(scope))] : undefined,
  };
}

/** The registries (and roles) the functions accept in a job, as `ECR_REPLICATOR_ALLOWED_REGISTRIES`
 * (JSON): the configured source and destinations only. An execution input naming any other
 * registry or role, or plain HTTP, is refused before any request. Each destination registry
 * carries what its destinations allow (several in one registry: the union of their repositories,
 * settings modes and prune) and the policy they require; the trust policies go along. */
export function allowlist(config: ReplicatorConfig): Record<string, unknown> {
  const entry = (job: Record<string, unknown>) => ({
    registry: job.registry,
    roleArns: job.roleArn ? [job.roleArn] : [],
  });
  const jobs = jobDestinations(config);
  const registries = new Map<unknown, { job: Record<string, unknown>; members: DestinationConfig[] }>();
  config.destinations.forEach((d, i) => {
    const group = registries.get(jobs[i].registry) ?? { job: jobs[i], members: [] };
    group.members.push(d);
    registries.set(jobs[i].registry, group);
  });
  const destinations = [...registries.values()].map(({ job, members }) => {
    const policies = new Set(members.map((d) => d.requireSignature));
    if (policies.size > 1) {
      throw new Error(`destinations[].requireSignature: the destinations writing to ${String(job.registry)} name different policies (${[...policies].map((p) => JSON.stringify(p ?? null)).join(', ')}); a registry has one`);
    }
    const [requireSignature] = policies;
    // The functions check prune and settings modes per registry: destinations of one registry
    // that differ in them would lend one's permissions to the other (prune in prod/ because
    // dev/ may), so they must agree.
    const prunes = new Set(members.map((d) => destinationPrunes(config, d)));
    const modes = new Set(members.map((d) => JSON.stringify([...(d.settingsModes ?? DEFAULT_SETTINGS_MODES)].sort())));
    if (prunes.size > 1 || modes.size > 1) {
      throw new Error(`destinations[].prune / destinations[].settingsModes: the destinations writing to ${String(job.registry)} differ in them; one registry has one prune setting and one set of settings modes (the functions could not tell which destination a job means): make them agree`);
    }
    return {
      ...entry(job),
      repositories: [...new Set(members.flatMap(destinationScope))],
      prune: members.some((d) => destinationPrunes(config, d)),
      settingsModes: SETTINGS_MODES.filter((mode) => members.some((d) => (d.settingsModes ?? DEFAULT_SETTINGS_MODES).includes(mode))),
      ...(requireSignature !== undefined ? { requireSignature } : {}),
    };
  });
  const upstreams = (config.upstreams ?? []).map((u) => ({
    registry: u.registry,
    roleArns: [],
    ...(u.credentialArn ? { credentialArns: [u.credentialArn] } : {}),
  }));
  // The layouts jobs may export into and import from, each with what the deployment pins for
  // it; what is false or absent left out (the functions' defaults: no export, no import, no
  // transfer key, which an export-only entry must not have).
  const layouts = (config.layouts ?? []).map((l) => ({
    location: layoutLocation(l),
    ...(l.export ? { export: true } : {}),
    ...(l.import ? { import: true } : {}),
    ...(l.bucketOwner !== undefined ? { bucketOwner: l.bucketOwner } : {}),
    ...(l.kmsKeyArn !== undefined ? { kmsKey: l.kmsKeyArn } : {}),
    ...(l.requireSignature !== undefined ? { requireSignature: l.requireSignature } : {}),
    ...(l.transferKey !== undefined ? { transferKey: l.transferKey } : {}),
  }));
  return {
    sources: [entry(jobSource(config)), ...upstreams],
    destinations,
    ...(layouts.length ? { layouts } : {}),
    insecure: [],
    ...(config.trustPolicies !== undefined ? { trustPolicies: config.trustPolicies } : {}),
    ...(config.allowJobTrustPolicies !== undefined ? { allowJobTrustPolicies: config.allowJobTrustPolicies } : {}),
  };
}

/** Destinations grouped by account (other than the workflow's): one target role per account. */
export function targetAccounts(config: ReplicatorConfig): Map<string, DestinationConfig[]> {
  const byAccount = new Map<string, DestinationConfig[]>();
  for (const d of config.destinations) {
    if (d.account === workflowAccount(config)) continue;
    byAccount.set(d.account, [...(byAccount.get(d.account) ?? []), d]);
  }
  return byAccount;
}
