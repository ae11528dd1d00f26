/** The source-account stack: the step functions, the state machine, triggers, notifications. */
import { existsSync, readFileSync } from 'fs';
import * as path from 'path';
import { Annotations, CfnParameter, CfnRule, Duration, Fn, RemovalPolicy, Stack, StackProps } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import {
  allowlist, COPY_FUNCTIONS, crossAccountSource, DEFAULT_DEPLOYMENT_NAME, deploymentName, destinationKeys, destinationSigningProfiles, jobDestinations, layoutBucketOwner, layoutPrefix, pushInput, pushJobTemplate, PUSH_JOB_VARIABLE, ReplicatorConfig, repositoryGrant,
  reconcileSchedule, scheduleInput, sourceRoleArn, targetAccounts, targetRoleArn, trustedRootObject, workflowAccount,
} from './config';
import { checkTriggerInputs } from './inputs';
import { destinationStatements, LayoutGrant, layoutReadStatements, layoutWriteStatements, readSourceStatements, registryTokenStatement } from './permissions';

/** The function that turns batches of the push queue into runs (not a step of the definition). */
export const COALESCER = 'coalesce-pushes';
/** Messages one batch of the push queue holds at most (Lambda: up to 10,000 for a standard queue,
 * with a batching window; and at most 6 MB of event). */
export const PUSH_BATCH_SIZE = 1000;
/** Seconds the event source mapping gathers pushes before invoking (at most 300). */
export const PUSH_BATCH_WINDOW_SECONDS = 20;
/** Batches coalesced at once (the event source mapping's MaximumConcurrency, 2 at least). */
export const PUSH_BATCH_CONCURRENCY = 2;
/** Deliveries of a push message before it goes to the dead-letter queue. */
export const PUSH_RECEIVES = 5;
/** The coalescing function's timeout (it validates a batch and starts a few executions). */
export const COALESCER_TIMEOUT_SECONDS = 60;

/** The committed state machine definition (its `${<Name>FunctionArn}` placeholders name the functions). */
export const DEFINITION_PATH = path.resolve(__dirname, '..', '..', '..', 'statemachine', 'replicate.asl.json');

/** A step's function: its binary, its placeholder in the definition, its size and its role. */
export interface FunctionSpec {
  name: string;
  placeholder: string;
  /** Uses the copier role (registries, destinations, the work bucket); else the reader role,
   * which reads no registry (it holds no ECR, secret or trusted-root access). */
  copier: boolean;
  memory: number;
  minutes: number;
  /** Gets the work bucket's name (`ECR_REPLICATOR_WORK_BUCKET`). */
  workBucket: boolean;
}

/** What a function gets unless `FUNCTION_NEEDS` says otherwise. */
const FUNCTION_DEFAULTS = { copier: true, memory: 256, minutes: 5, workBucket: false };

/** The functions whose needs differ from the defaults. */
const FUNCTION_NEEDS: Record<string, Partial<FunctionSpec>> = {
  // It checks each selected repository for work in the destinations (reading only) and keeps
  // the selection of one with work for its child.
  'enumerate-repositories': { workBucket: true },
  'enumerate-images': { memory: 512, minutes: 10, workBucket: true },
  'copy-blobs': { memory: 3008, minutes: 15 },
  // Runs in an EXPRESS child (5 minutes at most): a page's manifests take seconds.
  'put-manifests': { minutes: 2 },
  summarise: { copier: false, memory: 128, minutes: 1 },
};

/** The functions the definition names, in order: `${CopyBlobsFunctionArn}` is `copy-blobs`. */
export function functionsOf(definition: string): FunctionSpec[] {
  const placeholders = [...new Set([...definition.matchAll(/\$\{([A-Za-z]+)FunctionArn\}/g)].map((m) => m[1]))];
  return placeholders.map((pascal) => {
    const name = pascal.replace(/[A-Z]/g, (c, at) => (at ? '-' : '') + c.toLowerCase());
    return { name, placeholder: `${pascal}FunctionArn`, ...FUNCTION_DEFAULTS, ...FUNCTION_NEEDS[name] };
  });
}

/** Each step's function, from the committed definition. */
export const FUNCTIONS = functionsOf(readFileSync(DEFINITION_PATH, 'utf8'));

/** The names a deployment gives its resources, all from its deployment name, so two deployments
 * can live in one account and region. */
export interface DeploymentNames {
  /** The state machine (Distributed Map children are its executions) and the dashboard. */
  stateMachine: string;
  /** The role the copying functions use; destination roles trust exactly this role. */
  copierRole: string;
  /** The role of the functions that only read the source. */
  readerRole: string;
  /** The managed policy for callers that start runs and wait for them. */
  callerPolicy: string;
  /** The functions' CloudWatch metrics namespace. */
  metricsNamespace: string;
}

/** The names of the deployment called `name`. */
export function deploymentNames(name: string = DEFAULT_DEPLOYMENT_NAME): DeploymentNames {
  return {
    stateMachine: name,
    copierRole: `${name}-copier`,
    readerRole: `${name}-reader`,
    callerPolicy: `${name}-caller`,
    metricsNamespace: name === DEFAULT_DEPLOYMENT_NAME ? METRICS_NAMESPACE : `${METRICS_NAMESPACE}/${name}`,
  };
}

/** Where `enumerate-images` keeps a repository's selected images between the pages of one run. */
export const SELECTIONS_PREFIX = 'selections/';
/** Where enumerate-repositories keeps the newest statement imported from each layout (no expiry). */
export const NEWEST_STATEMENTS_PREFIX = 'layout-statements/';
/** Where an export's names (tags, referrers) wait for the seal that writes them into the
 * layout's `index.json` (`layout-names/<sha256 of the layout's place>/...`; no expiry). */
export const EXPORT_NAMES_PREFIX = 'layout-names/';
/** Where what admitted each exported image waits for the seal that states it
 * (`layout-provenance/<sha256 of the layout's place>/<digest hex>.json`; no expiry). */
export const EXPORT_PROVENANCE_PREFIX = 'layout-provenance/';

/** Days a run's selection is kept; a repository whose pages take longer is listed again. */
export const SELECTION_DAYS = 7;

/** The CloudWatch namespace of the functions' metrics (embedded metric format in their logs). */
export const METRICS_NAMESPACE = 'EcrReplicator';

/** The copying functions: their reserved concurrency is the config's `copyConcurrency`. */
export { COPY_FUNCTIONS } from './config';

/** The functions that read a job's source, and so an imported layout (each opens it through
 * `Connections::source`, which verifies the layout's statement and serves it): they list it,
 * select and plan its images, copy their blobs and put their manifests, and ensure-repository
 * opens it too before creating a repository (to learn the source has no settings, and with
 * `images` whether the repository is there). Not verify-repository (a layout job cannot verify:
 * refused as the job is validated) or summarise (it reads no registry). */
export const LAYOUT_READERS = ['enumerate-repositories', 'enumerate-images', 'ensure-repository', 'plan-image', 'copy-blobs', 'put-manifests'];

/** The functions that open a job's destination layout, and so an export (each through
 * `Connections::export_layout`, with the work bucket its names wait in): enumerate-images asks it
 * for the images already there, plan-image plans their copy, copy-blobs uploads their blobs
 * (staged under `uploads/`), put-manifests puts their manifests and records their names and
 * admissions, and summarise seals the export (`index.json`, the signed statement). Not
 * enumerate-repositories, ensure-repository or verify-repository (a layout destination has no
 * repository to list, create or verify). summarise runs under the reader role, the rest under
 * the copier role. */
export const LAYOUT_WRITERS = ['enumerate-images', 'plan-image', 'copy-blobs', 'put-manifests', 'summarise'];

/** The function of `LAYOUT_WRITERS` that seals an export. */
export const LAYOUT_SEALER = 'summarise';

/** Whether jobs may export into some layout of the deployment. */
export function exportsLayouts(config: ReplicatorConfig): boolean {
  return (config.layouts ?? []).some((l) => l.export);
}

/** The deployment's `layouts` that allow `use`, grouped by bucket (in the order first named):
 * the grants `layoutReadStatements` (imports) and `layoutWriteStatements` (exports) make. */
export function layoutGrants(config: ReplicatorConfig, use: 'import' | 'export'): LayoutGrant[] {
  const buckets = new Map<string, LayoutGrant>();
  for (const l of (config.layouts ?? []).filter((l) => l[use])) {
    const grant = buckets.get(l.bucket) ?? { bucket: l.bucket, prefixes: [], owner: layoutBucketOwner(config, l), kmsKeys: [] };
    grant.prefixes.push(layoutPrefix(l));
    if (l.kmsKeyArn) grant.kmsKeys.push(l.kmsKeyArn);
    buckets.set(l.bucket, grant);
  }
  return [...buckets.values()];
}

/** `secretsmanager:GetSecretValue` on the upstreams' secrets, and `kms:Decrypt` through Secrets
 * Manager on the keys that encrypt them. */
export function upstreamSecretStatements(config: ReplicatorConfig): iam.PolicyStatement[] {
  const upstreams = (config.upstreams ?? []).filter((u) => u.credentialArn);
  if (!upstreams.length) return [];
  const secrets = upstreams.flatMap((u) => [u.credentialArn!, `${u.credentialArn}-??????`]);
  const statements = [new iam.PolicyStatement({ sid: 'ReadUpstreamSecrets', actions: ['secretsmanager:GetSecretValue'], resources: secrets })];
  const keys = upstreams.filter((u) => u.kmsKeyArn);
  if (keys.length) {
    statements.push(new iam.PolicyStatement({
      sid: 'DecryptUpstreamSecrets',
      actions: ['kms:Decrypt'],
      resources: keys.map((u) => u.kmsKeyArn!),
      conditions: { StringLike: { 'kms:ViaService': [...new Set(keys.map((u) => `secretsmanager.${u.credentialArn!.split(':')[3]}.amazonaws.com`))] } },
    }));
  }
  return statements;
}

/** The copy function's memory (MB): what the reports' cost counts a copy's GB-seconds at. */
export function copyMemoryMb(): number {
  return FUNCTIONS.find((f) => f.name === 'copy-blobs')?.memory ?? FUNCTION_DEFAULTS.memory;
}

export interface WorkflowStackProps extends StackProps {
  config: ReplicatorConfig;
  /** Deploy a placeholder where a function binary is not built (synth checks and tests only). */
  allowPlaceholderCode?: boolean;
}

/** The built binary of a function, or `undefined` when `target/lambda/<name>/bootstrap` is missing. */
function builtCode(root: string, name: string): lambda.Code | undefined {
  const built = path.join(root, 'target', 'lambda', name);
  return existsSync(path.join(built, 'bootstrap')) ? lambda.Code.fromAsset(built) : undefined;
}

export class WorkflowStack extends Stack {
  public readonly stateMachine: sfn.StateMachine;
  public readonly functions: Record<string, lambda.Function> = {};
  /** What a caller needs to start runs and wait for them (`startExecution.sync:2`, pipelines). */
  public readonly callerPolicy: iam.ManagedPolicy;
  public readonly names: DeploymentNames;
  /** The push queue's dead-letter queue (with a push trigger). */
  public pushDeadLetters?: sqs.Queue;
  /** Push messages coalesce-pushes found malformed (with a push trigger). */
  public malformedPushes?: cloudwatch.Metric;

  constructor(scope: Construct, id: string, props: WorkflowStackProps) {
    super(scope, id, props);
    const config = props.config;
    const names = deploymentNames(deploymentName(config));
    this.names = names;
    const root = path.resolve(__dirname, '..', '..', '..');

    // Reading the source: directly, or through the source account's role.
    const sourceRole = sourceRoleArn(config);
    const readSource = sourceRole
      ? [
        new iam.PolicyStatement({ sid: 'AssumeSourceRole', actions: ['sts:AssumeRole'], resources: [sourceRole] }),
        registryTokenStatement(),
      ]
      : readSourceStatements(this.partition, config.sourceAccount, config.sourceRegion);
    const basicLogs = (role: iam.Role, group: logs.LogGroup) =>
      role.addToPolicy(new iam.PolicyStatement({ actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [group.logGroupArn, `${group.logGroupArn}:*`] }));

    // The functions that read no registry (summarise adds up reports): their logs, nothing else.
    const readerRole = new iam.Role(this, 'ReaderRole', {
      roleName: names.readerRole,
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'ecr-replicator functions that read no registry',
    });
    const copierRole = new iam.Role(this, 'CopierRole', {
      roleName: names.copierRole,
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'ecr-replicator functions that read the source and write to destinations',
    });
    readSource.forEach((s) => copierRole.addToPolicy(s));
    // Upstream registries' secrets: each function that reads a registry may read exactly these
    // (an ARN without Secrets Manager's 6-character suffix matches it with `-??????`).
    upstreamSecretStatements(config).forEach((s) => copierRole.addToPolicy(s));
    const crossAccount = config.destinations.filter((d) => targetRoleArn(config, d));
    if (crossAccount.length) {
      copierRole.addToPolicy(new iam.PolicyStatement({
        sid: 'AssumeDestinationRoles',
        actions: ['sts:AssumeRole'],
        resources: [...targetAccounts(config).keys()].map((account) => `arn:${this.partition}:iam::${account}:role/${config.targetRoleName}`),
      }));
    }
    // Destinations in the workflow's own account take no role: the copier role writes there.
    const sameAccount = config.destinations.filter((d) => !targetRoleArn(config, d));
    if (sameAccount.length) {
      destinationStatements({
        partition: this.partition,
        account: workflowAccount(config),
        regions: [...new Set(sameAccount.map((d) => d.region))],
        ...repositoryGrant(config, sameAccount),
        kmsKeys: sameAccount.flatMap(destinationKeys),
        signingProfileArns: destinationSigningProfiles(sameAccount),
      }).forEach((s) => copierRole.addToPolicy(s));
    }

    // The run's work bucket: enumerate-images lists and resolves a repository once per run and
    // keeps the selection here for the repository's later pages (never public, TLS only, expired).
    // An export's names and provenance (EXPORT_NAMES_PREFIX, EXPORT_PROVENANCE_PREFIX) do not
    // expire: they are kept per layout, not per run, and the seal that states them deletes them;
    // a run that fails before its seal leaves its names (whose images are already in the layout)
    // for the next export's seal, which an expiry would lose. Nothing here is a multipart upload
    // (the functions put whole objects), so no rule aborts one.
    const workBucket = new s3.Bucket(this, 'WorkBucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      lifecycleRules: [{ prefix: SELECTIONS_PREFIX, expiration: Duration.days(SELECTION_DAYS) }],
    });
    copierRole.addToPolicy(new iam.PolicyStatement({
      sid: 'RunSelections',
      actions: ['s3:PutObject', 's3:GetObject'],
      resources: [workBucket.arnForObjects(`${SELECTIONS_PREFIX}*`)],
    }));
    // Listing, never used to list: S3 answers a GetObject of a missing key (an expired
    // selection) 404 only to a caller allowed to list the bucket,
    // else 403 ("HeadObject"/"GetObject" permissions, Amazon S3 API Reference), which the
    // functions would take for a failure.
    copierRole.addToPolicy(new iam.PolicyStatement({
      sid: 'ListWorkBucket',
      actions: ['s3:ListBucket'],
      resources: [workBucket.bucketArn],
      conditions: { StringLike: { 's3:prefix': [`${SELECTIONS_PREFIX}*`] } },
    }));

    // requireSignature's trusted root: exactly this object, for every function that selects.
    const rootObject = trustedRootObject(config);
    if (rootObject) {
      copierRole.addToPolicy(new iam.PolicyStatement({
        sid: 'SigstoreTrustedRoot',
        actions: ['s3:GetObject'],
        resources: [`arn:${this.partition}:s3:::${rootObject.bucket}/${rootObject.key}`],
      }));
    }

    // An export opens the layout with the work bucket its names wait in, and its seal signs the
    // statement with the receipt key: only for a deployment that exports.
    const exporting = exportsLayouts(config);
    const missing: string[] = [];
    for (const f of FUNCTIONS) {
      const built = builtCode(root, f.name);
      if (!built) missing.push(f.name);
      const code = built ?? lambda.Code.fromAsset(path.join(__dirname, '..', '..', 'assets', 'placeholder'));
      const logGroup = new logs.LogGroup(this, `${f.name}-logs`, {
        retention: logs.RetentionDays.ONE_MONTH,
        removalPolicy: RemovalPolicy.DESTROY,
      });
      const role = f.copier ? copierRole : readerRole;
      basicLogs(role, logGroup);
      this.functions[f.name] = new lambda.Function(this, f.name, {
        description: `ecr-replicator step ${f.name}`,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        architecture: lambda.Architecture.ARM_64,
        handler: 'bootstrap',
        code,
        memorySize: f.memory,
        reservedConcurrentExecutions: COPY_FUNCTIONS.includes(f.name) ? config.copyConcurrency : undefined,
        timeout: Duration.minutes(f.minutes),
        role,
        logGroup,
        loggingFormat: lambda.LoggingFormat.JSON,
        environment: {
          RUST_LOG: 'info',
          ECR_REPLICATOR_METRICS_NAMESPACE: names.metricsNamespace,
          ECR_REPLICATOR_ALLOWED_REGISTRIES: JSON.stringify(allowlist(config)),
          // The copy function's memory is this app's; the rest the config's or the defaults.
          ECR_REPLICATOR_PRICES: JSON.stringify({ copyMemoryMb: copyMemoryMb(), ...config.prices }),
          ...(f.workBucket || (exporting && LAYOUT_WRITERS.includes(f.name)) ? { ECR_REPLICATOR_WORK_BUCKET: workBucket.bucketName } : {}),
          ...(config.trustedRoot ? { ECR_REPLICATOR_TRUSTED_ROOT: config.trustedRoot } : {}),
          ...trustedRootChecks(config),
          ...(config.receiptKeyArn && (f.name === 'put-manifests' || (exporting && f.name === LAYOUT_SEALER)) ? { ECR_REPLICATOR_RECEIPT_KEY: config.receiptKeyArn } : {}),
          // The copying functions' reservation: enumerate-repositories cuts a run's maxConcurrency to it.
          ...(config.copyConcurrency !== undefined && f.name === 'enumerate-repositories' ? { ECR_REPLICATOR_COPY_CONCURRENCY: String(config.copyConcurrency) } : {}),
        },
      });
    }

    if (config.pushTrigger && !builtCode(root, COALESCER)) missing.push(COALESCER);
    if (missing.length && !props.allowPlaceholderCode) this.refuseDeployWithout(missing);

    // Promotion receipts: only put-manifests signs, with exactly this key, ECDSA only. It shares
    // the copier role, so the grant names the function (Lambda puts the calling function's ARN
    // in its credentials' context); a policy of its own, as the functions depend on the role's.
    if (config.receiptKeyArn) {
      new iam.Policy(this, 'ReceiptSigning', {
        roles: [copierRole],
        statements: [new iam.PolicyStatement({
          sid: 'SignPromotionReceipts',
          actions: ['kms:Sign'],
          resources: [config.receiptKeyArn],
          conditions: {
            StringEquals: { 'kms:SigningAlgorithm': 'ECDSA_SHA_256' },
            ArnEquals: { 'lambda:SourceFunctionArn': this.functions['put-manifests'].functionArn },
          },
        })],
      });
    }

    // Layout imports: the functions that read a job's source may read exactly the configured
    // layouts (and decrypt them through S3). They share the copier role with functions that read
    // no layout, so the grant names them (`lambda:SourceFunctionArn`); a policy of its own, as
    // the functions depend on the role's.
    const s3Service = `s3.${this.region}.${this.urlSuffix}`;
    const functionArns = (names: string[]) => names.map((name) => {
      const fn = this.functions[name];
      if (!fn) throw new Error(`${id}: the layout grants name ${name}, which the state machine definition has no step for`);
      return fn.functionArn;
    });
    const layouts = layoutGrants(config, 'import');
    if (layouts.length) {
      const readers = functionArns(LAYOUT_READERS);
      // The newest statement a run imported from each layout, read and recorded by the first
      // step (enumerate-repositories) so a later run refuses an older one: a rollback.
      const marks = new iam.PolicyStatement({
        sid: 'NewestLayoutStatements',
        actions: ['s3:GetObject', 's3:PutObject'],
        resources: [workBucket.arnForObjects(`${NEWEST_STATEMENTS_PREFIX}*`)],
        conditions: { ArnEquals: { 'lambda:SourceFunctionArn': [this.functions['enumerate-repositories'].functionArn] } },
      });
      // A layout never imported from has no mark: S3 answers 404 (not 403) to a caller that may
      // list that prefix.
      const listMarks = new iam.PolicyStatement({
        sid: 'ListNewestLayoutStatements',
        actions: ['s3:ListBucket'],
        resources: [workBucket.bucketArn],
        conditions: {
          ArnEquals: { 'lambda:SourceFunctionArn': [this.functions['enumerate-repositories'].functionArn] },
          StringLike: { 's3:prefix': [`${NEWEST_STATEMENTS_PREFIX}*`] },
        },
      });
      new iam.Policy(this, 'LayoutImports', {
        roles: [copierRole],
        statements: [...layoutReadStatements(this.partition, s3Service, layouts, readers), marks, listMarks],
      });
    }
    if (exporting) this.layoutExports(config, workBucket, copierRole, readerRole, s3Service, functionArns);

    const definition = readFileSync(DEFINITION_PATH, 'utf8');
    const substitutions: Record<string, string> = {};
    for (const f of FUNCTIONS) substitutions[f.placeholder] = this.functions[f.name].functionArn;
    // Service integrations name the partition the state machine runs in; a literal
    // `arn:aws:states:::events:putEvents` fails them in China and GovCloud.
    substitutions[PUT_EVENTS_PLACEHOLDER] = `arn:${this.partition}:states:::events:putEvents`;
    substitutions[START_EXECUTION_PLACEHOLDER] = `arn:${this.partition}:states:::states:startExecution.sync:2`;

    const stateMachineLogs = new logs.LogGroup(this, 'StateMachineLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const workflowRole = new iam.Role(this, 'WorkflowRole', {
      assumedBy: new iam.ServicePrincipal('states.amazonaws.com'),
      description: 'ecr-replicator state machine: invokes only its functions',
    });
    workflowRole.addToPolicy(new iam.PolicyStatement({
      sid: 'InvokeStepFunctions',
      actions: ['lambda:InvokeFunction'],
      resources: FUNCTIONS.map((f) => this.functions[f.name].functionArn),
    }));
    workflowRole.addToPolicy(new iam.PolicyStatement({
      sid: 'LogDelivery',
      actions: [
        'logs:CreateLogDelivery', 'logs:GetLogDelivery', 'logs:UpdateLogDelivery', 'logs:DeleteLogDelivery',
        'logs:ListLogDeliveries', 'logs:PutResourcePolicy', 'logs:DescribeResourcePolicies', 'logs:DescribeLogGroups',
      ],
      resources: ['*'],
    }));
    this.stateMachine = new sfn.StateMachine(this, 'Replicate', {
      stateMachineName: names.stateMachine,
      stateMachineType: sfn.StateMachineType.STANDARD,
      definitionBody: sfn.DefinitionBody.fromString(definition),
      definitionSubstitutions: substitutions,
      role: workflowRole,
      tracingEnabled: true,
      logs: { destination: stateMachineLogs, level: sfn.LogLevel.ALL, includeExecutionData: false },
    });
    // The run's event (and, with imageEvents, each image's) goes to this account's default bus.
    workflowRole.addToPolicy(new iam.PolicyStatement({
      sid: 'ReplicationEvents',
      actions: ['events:PutEvents'],
      resources: [`arn:${this.partition}:events:${this.region}:${this.account}:event-bus/default`],
    }));
    // Distributed Map child executions run in this state machine: STANDARD ones per repository
    // with work and per large range, EXPRESS ones per image and per page of small ranges.
    workflowRole.addToPolicy(new iam.PolicyStatement({
      sid: 'DistributedMapChildren',
      actions: ['states:StartExecution', 'states:DescribeExecution', 'states:StopExecution'],
      // By name, not by reference: the state machine already depends on this role's policy.
      resources: [
        `arn:${this.partition}:states:${this.region}:${this.account}:stateMachine:${names.stateMachine}`,
        ...executionArns(this.partition, this.region, this.account, names.stateMachine),
      ],
    }));

    // ContinueAsNew starts this state machine again and waits for it (`startExecution.sync:2`:
    // StartExecution is above; the wait needs the rule Step Functions manages for it).
    workflowRole.addToPolicy(new iam.PolicyStatement({
      sid: 'ContinueAsNew',
      actions: ['events:PutTargets', 'events:PutRule', 'events:DescribeRule'],
      resources: [`arn:${this.partition}:events:${this.region}:${this.account}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule`],
    }));

    this.callerPolicy = new iam.ManagedPolicy(this, 'CallerPolicy', {
      managedPolicyName: names.callerPolicy,
      description: 'ecr-replicator: start runs and wait for them (a pipeline, or a Task with startExecution.sync:2)',
      statements: callerStatements(this.partition, this.region, this.account, names.stateMachine),
    });

    const destinations = jobDestinations(config);
    const triggers: events.Rule[] = [];
    if (config.schedule) {
      triggers.push(new events.Rule(this, 'Schedule', {
        description: 'ecr-replicator: scheduled sync',
        schedule: events.Schedule.expression(config.schedule.expression),
        targets: [new targets.SfnStateMachine(this.stateMachine, {
          input: events.RuleTargetInput.fromObject(scheduleInput(config)),
        })],
      }));
    }
    // A push trigger without a schedule: a daily run over what the pushes cover catches what a
    // burst of pushes lost (pushTrigger.reconcileSchedule false: none).
    const reconcile = reconcileSchedule(config);
    if (reconcile) {
      triggers.push(new events.Rule(this, 'ReconcilePushes', {
        description: 'ecr-replicator: daily run over what the push trigger covers',
        schedule: events.Schedule.expression(reconcile.expression),
        targets: [new targets.SfnStateMachine(this.stateMachine, {
          input: events.RuleTargetInput.fromObject(reconcile.input),
        })],
      }));
    }
    if (config.pushTrigger) {
      const detail = pushEventDetail(config);
      if (crossAccountSource(config)) {
        // The source account forwards its pushes (SourceRoleStack) to this account's default bus;
        // in the same account but another region, PushForwardingStack does (no policy needed).
        const sid = `${names.stateMachine}-pushes-from-${config.sourceAccount}`;
        new events.CfnEventBusPolicy(this, 'SourceAccountPushes', {
          statementId: sid,
          eventBusName: 'default',
          statement: {
            Sid: sid,
            Effect: 'Allow',
            Principal: { AWS: `arn:${this.partition}:iam::${config.sourceAccount}:root` },
            Action: 'events:PutEvents',
            Resource: `arn:${this.partition}:events:${this.region}:${this.account}:event-bus/default`,
          },
        });
      }
      triggers.push(new events.Rule(this, 'OnPush', {
        description: 'ecr-replicator: replicate a pushed image',
        eventPattern: {
          source: ['aws.ecr'],
          detailType: ['ECR Image Action'],
          account: [config.sourceAccount],
          region: [config.sourceRegion],
          detail,
        },
        // Each push is one message of the push queue; coalesce-pushes starts one run per batch
        // of them (a burst of pushes would otherwise start a run, and its Map Runs, per push).
        targets: [new targets.SqsQueue(this.pushQueue(root, names, config), {
          // The pushed digest travels with the tag: a run that finds the tag moved on since
          // reports the image superseded and leaves the newer push's run to copy it.
          message: events.RuleTargetInput.fromObject(pushInput(config, {
            repository: events.EventField.fromPath('$.detail.repository-name'),
            tag: events.EventField.fromPath('$.detail.image-tag'),
            digest: events.EventField.fromPath('$.detail.image-digest'),
          })),
        })],
      }));
    }
    // Every trigger's input must be a valid job and fit EventBridge's 8,192 characters.
    const problems = checkTriggerInputs(this, triggers);
    if (problems.length) throw new Error(`${id}: ${problems.join('; ')}`);

    const key = new kms.Key(this, 'NotificationsKey', { enableKeyRotation: true, description: 'ecr-replicator notifications' });
    key.grantEncryptDecrypt(new iam.ServicePrincipal('events.amazonaws.com'));
    key.grantEncryptDecrypt(new iam.ServicePrincipal('cloudwatch.amazonaws.com'));
    const topic = new sns.Topic(this, 'Failures', { displayName: 'ecr-replicator failures', masterKey: key, enforceSSL: true });
    if (config.notificationEmail) topic.addSubscription(new subscriptions.EmailSubscription(config.notificationEmail));
    new events.Rule(this, 'OnFailure', {
      description: 'ecr-replicator: an execution did not succeed',
      eventPattern: {
        source: ['aws.states'],
        detailType: ['Step Functions Execution Status Change'],
        detail: { status: ['FAILED', 'TIMED_OUT', 'ABORTED'], stateMachineArn: [this.stateMachine.stateMachineArn] },
      },
      targets: [new targets.SnsTopic(topic)],
    });
    new cloudwatch.Alarm(this, 'ExecutionsFailed', {
      alarmDescription: 'ecr-replicator: a replication run failed',
      metric: this.stateMachine.metricFailed({ period: Duration.minutes(5), statistic: 'Sum' }),
      threshold: 1,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    }).addAlarmAction(new cwActions.SnsAction(topic));

    const registries = [...new Set(destinations.map((d) => String(d.registry)))];
    if (config.lagAlarmSeconds !== undefined) {
      for (const registry of registries) {
        replicationLagAlarm(this, names, registry, config.lagAlarmSeconds).addAlarmAction(new cwActions.SnsAction(topic));
      }
    }

    if (this.pushDeadLetters) {
      new cloudwatch.Alarm(this, 'PushesNotStarted', {
        alarmDescription: `ecr-replicator: pushes whose run could not be started after ${PUSH_RECEIVES} tries are in the push dead-letter queue (the daily reconciling run covers them; redrive them to start their runs)`,
        metric: this.pushDeadLetters.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5), statistic: 'Maximum' }),
        threshold: 1,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }).addAlarmAction(new cwActions.SnsAction(topic));
    }
    if (this.malformedPushes) {
      new cloudwatch.Alarm(this, 'PushesMalformed', {
        alarmDescription: 'ecr-replicator: coalesce-pushes received push messages that are no valid push (its log names each message ID and the field at fault); they were not replicated',
        metric: this.malformedPushes,
        threshold: 1,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }).addAlarmAction(new cwActions.SnsAction(topic));
    }

    this.dashboard(registries, names);

    NagSuppressions.addStackSuppressions(this, [
      { id: 'AwsSolutions-IAM5', reason: 'ecr:GetAuthorizationToken has no resource scope; reads cover every source repository by design (filters are in the job); log delivery APIs need *; Distributed Map children are executions of this state machine, whose ids are not known in advance; a configured layout is read as BUCKET/PREFIX/* (its blobs are named by digest), by the source-reading functions only; an export layout is read and written as BUCKET/PREFIX/* and its staged uploads (random names) aborted, listed and deleted as BUCKET/PREFIX/uploads/*, by the exporting functions only; an export\'s names and provenance in the work bucket are kept per layout under layout-names/* and layout-provenance/* (keys named by the layout\'s hash, tags and digests).' },
      { id: 'AwsSolutions-L1', reason: 'provided.al2023 is the current OS-only runtime for Rust binaries.' },
      { id: 'AwsSolutions-S1', reason: 'The work bucket holds only short-lived lists of image digests and tags the functions write and read; its API calls are in CloudTrail.' },
    ]);
  }

  /** Layout exports: the functions that open an export (`LAYOUT_WRITERS`) may write exactly the
   * export layouts (`layoutWriteStatements`) and keep the export's names and provenance in the
   * work bucket; they share their roles with functions that open no export, so every grant names
   * them (`lambda:SourceFunctionArn`), in a policy of its own per role (the functions depend on
   * their role's). The copier role's (`LayoutExports`): enumerate-images, plan-image, copy-blobs
   * and put-manifests read and write the layouts and stage uploads there; they read the names
   * (a tag is answered from its record), and put-manifests records them and what admitted each
   * image. The reader role's (`LayoutExportSeal`): summarise seals (no staged upload): it reads
   * the names and provenance, writes `index.json` and the statement, deletes what it stated,
   * and signs the statement with the receipt key (reading its public key first). A missing
   * record is answered 404 only to a caller that may list its prefix (Amazon S3 API Reference,
   * GetObject, Permissions). */
  private layoutExports(config: ReplicatorConfig, workBucket: s3.Bucket, copierRole: iam.Role, readerRole: iam.Role, s3Service: string, functionArns: (names: string[]) => string[]) {
    const layouts = layoutGrants(config, 'export');
    const writers = LAYOUT_WRITERS.filter((name) => name !== LAYOUT_SEALER);
    const names = workBucket.arnForObjects(`${EXPORT_NAMES_PREFIX}*`);
    const admissions = workBucket.arnForObjects(`${EXPORT_PROVENANCE_PREFIX}*`);
    const calledBy = (sid: string, actions: string[], resources: string[], callers: string[]) => new iam.PolicyStatement({
      sid, actions, resources, conditions: { ArnEquals: { 'lambda:SourceFunctionArn': functionArns(callers) } },
    });
    const list = (sid: string, prefixes: string[], callers: string[]) => new iam.PolicyStatement({
      sid,
      actions: ['s3:ListBucket'],
      resources: [workBucket.bucketArn],
      conditions: { ArnEquals: { 'lambda:SourceFunctionArn': functionArns(callers) }, StringLike: { 's3:prefix': prefixes.map((p) => `${p}*`) } },
    });
    new iam.Policy(this, 'LayoutExports', {
      roles: [copierRole],
      statements: [
        ...layoutWriteStatements(this.partition, s3Service, layouts, functionArns(writers)),
        calledBy('ReadExportNames', ['s3:GetObject'], [names], writers),
        list('ListExportNames', [EXPORT_NAMES_PREFIX], writers),
        calledBy('RecordExportNames', ['s3:PutObject'], [names, admissions], ['put-manifests']),
      ],
    });
    new iam.Policy(this, 'LayoutExportSeal', {
      roles: [readerRole],
      statements: [
        ...layoutWriteStatements(this.partition, s3Service, layouts, functionArns([LAYOUT_SEALER]), true),
        calledBy('SealExportNames', ['s3:GetObject', 's3:DeleteObject'], [names, admissions], [LAYOUT_SEALER]),
        list('ListSealedExportNames', [EXPORT_NAMES_PREFIX, EXPORT_PROVENANCE_PREFIX], [LAYOUT_SEALER]),
        // The statement of an export is signed with the receipt key (validateLayouts requires
        // it), ECDSA only, as put-manifests signs receipts (ReceiptSigning); the seal first reads
        // the key's public half (kms:GetPublicKey) to check the key can sign a statement and to
        // verify the layout's earlier one. Two statements: GetPublicKey has no
        // kms:SigningAlgorithm, which a StringEquals on it would then refuse.
        new iam.PolicyStatement({
          sid: 'SignExportStatements',
          actions: ['kms:Sign'],
          resources: [config.receiptKeyArn!],
          conditions: {
            StringEquals: { 'kms:SigningAlgorithm': 'ECDSA_SHA_256' },
            ArnEquals: { 'lambda:SourceFunctionArn': functionArns([LAYOUT_SEALER]) },
          },
        }),
        calledBy('ExportStatementKey', ['kms:GetPublicKey'], [config.receiptKeyArn!], [LAYOUT_SEALER]),
      ],
    });
  }

  /** The push queue (and its dead-letter queue) and `coalesce-pushes`, which an event source
   * mapping feeds batches of it: each batch starts one run per job of its pushes (1,000 images or
   * 24 KiB of job at most) under a name derived from its input and messages, so a batch delivered
   * again starts none; a run not started returns its messages to the queue, and a message
   * delivered `PUSH_RECEIVES` times goes to the dead-letter queue, which alarms. */
  private pushQueue(root: string, names: DeploymentNames, config: ReplicatorConfig): sqs.Queue {
    // SQS-managed encryption: a customer key would need a key policy for EventBridge, and CDK
    // then drops the queue policy's aws:SourceArn condition on the rule.
    const deadLetters = new sqs.Queue(this, 'PushDeadLetters', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    const queue = new sqs.Queue(this, 'Pushes', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // Lambda: at least six times the function's timeout, plus the batching window.
      visibilityTimeout: Duration.seconds(6 * COALESCER_TIMEOUT_SECONDS + PUSH_BATCH_WINDOW_SECONDS),
      retentionPeriod: Duration.days(4),
      deadLetterQueue: { queue: deadLetters, maxReceiveCount: PUSH_RECEIVES },
    });
    const logGroup = new logs.LogGroup(this, `${COALESCER}-logs`, { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY });
    const role = new iam.Role(this, 'CoalescerRole', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'ecr-replicator coalesce-pushes: reads the push queue, starts runs of this state machine',
    });
    role.addToPolicy(new iam.PolicyStatement({ actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [logGroup.logGroupArn, `${logGroup.logGroupArn}:*`] }));
    // Each message that is no valid push: an ERROR line "malformed push event: ..." (tracing's
    // JSON: the message under `fields`; coalesce_pushes.rs writes it).
    this.malformedPushes = new logs.MetricFilter(this, 'MalformedPushes', {
      logGroup,
      filterPattern: logs.FilterPattern.all(
        logs.FilterPattern.stringValue('$.level', '=', 'ERROR'),
        logs.FilterPattern.stringValue('$.fields.message', '=', 'malformed push event*'),
      ),
      metricNamespace: names.metricsNamespace,
      metricName: 'MalformedPushes',
      metricValue: '1',
    }).metric({ period: Duration.minutes(5), statistic: 'Sum' });
    // Without its binary, the constructor's missing-binaries check refuses the deploy.
    const built = builtCode(root, COALESCER);
    const fn = new lambda.Function(this, COALESCER, {
      description: `ecr-replicator ${COALESCER}: a batch of pushes becomes a few runs`,
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.ARM_64,
      handler: 'bootstrap',
      code: built ?? lambda.Code.fromAsset(path.join(__dirname, '..', '..', 'assets', 'placeholder')),
      memorySize: 128,
      timeout: Duration.seconds(COALESCER_TIMEOUT_SECONDS),
      role,
      logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      environment: {
        RUST_LOG: 'info',
        ECR_REPLICATOR_STATE_MACHINE_ARN: this.stateMachine.stateMachineArn,
        // The push rule's input without its image: the only job a queued message may ask for
        // (anyone in this account with sqs:SendMessage on the queue can send one).
        [PUSH_JOB_VARIABLE]: JSON.stringify(pushJobTemplate(config)),
      },
    });
    this.functions[COALESCER] = fn;
    // states:StartExecution on exactly this state machine; receive, delete and change visibility
    // on exactly the push queue (the event source mapping's grant).
    this.stateMachine.grantStartExecution(fn);
    fn.addEventSource(new SqsEventSource(queue, {
      batchSize: PUSH_BATCH_SIZE,
      maxBatchingWindow: Duration.seconds(PUSH_BATCH_WINDOW_SECONDS),
      reportBatchItemFailures: true,
      maxConcurrency: PUSH_BATCH_CONCURRENCY,
    }));
    this.pushDeadLetters = deadLetters;
    return queue;
  }

  /** Lets `grantee` start runs and wait for them (attaches the caller policy to a role or user in
   * this account; another account's role needs the same statements in its own policy). */
  public grantStartAndWait(grantee: iam.IRole | iam.IUser) {
    if (grantee instanceof iam.Role || grantee instanceof iam.User) grantee.addManagedPolicy(this.callerPolicy);
    else callerStatements(this.partition, this.region, this.account, this.names.stateMachine).forEach((s) => grantee.addToPrincipalPolicy(s));
  }

  /** The dashboard: images copied, present and failed, bytes copied and replication lag per
   * destination (the functions' EMF metrics), and the executions that failed. */
  private dashboard(destinations: string[], names: DeploymentNames) {
    const metric = (name: string, destination: string, statistic = 'Sum') => new cloudwatch.Metric({
      namespace: names.metricsNamespace, metricName: name, dimensionsMap: { Destination: destination },
      statistic, period: Duration.minutes(5), label: `${name} ${destination}`,
    });
    const runMetric = (name: string) => new cloudwatch.Metric({
      namespace: names.metricsNamespace, metricName: name, dimensionsMap: { StateMachine: names.stateMachine },
      statistic: 'Sum', period: Duration.hours(1), label: name,
    });
    const perDestination = (title: string, names: string[], statistic = 'Sum') => new cloudwatch.GraphWidget({
      title, width: 12,
      left: destinations.flatMap((d) => names.map((n) => metric(n, d, statistic))),
    });
    new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: names.stateMachine,
      widgets: [
        [perDestination('Images', ['ImagesCopied', 'ImagesPresent', 'ImagesFailed']), perDestination('Bytes copied', ['BytesCopied'])],
        [new cloudwatch.GraphWidget({
          title: 'Replication lag (seconds: maximum, p99, p50)', width: 12,
          left: destinations.flatMap((d) => LAG_STATISTICS.map((statistic) => replicationLagMetric(names, d, statistic).with({ label: `ReplicationLag ${statistic} ${d}` }))),
        }), new cloudwatch.GraphWidget({
          title: 'Executions', width: 12,
          left: [this.stateMachine.metricSucceeded(), this.stateMachine.metricFailed()],
        })],
        [new cloudwatch.GraphWidget({
          title: 'Estimated cost of runs (USD, from the reports)', width: 12,
          left: [runMetric('EstimatedCostUsd')],
        }), new cloudwatch.GraphWidget({
          title: 'What runs cost (counts)', width: 12,
          left: ['LambdaInvocations', 'StandardTransitions', 'StandardExecutions', 'ExpressExecutions'].map((n) => runMetric(n)),
        })],
      ],
    });
  }

  /** A template synthesized without the function binaries still synthesizes (for `cdk synth` and
   * `cdk diff` on a fresh clone), but CloudFormation refuses to deploy it, saying what to build:
   * a deploy must never ship the placeholder. */
  private refuseDeployWithout(missing: string[]) {
    const message = `The Lambda binaries (${missing.join(', ')}) were not built when this template was synthesized: `
      + 'run `make package` (cargo lambda build --release --arm64 into target/lambda/), then deploy again.';
    Annotations.of(this).addWarningV2('ecr-replicator:missing-binaries', message);
    const built = new CfnParameter(this, 'LambdaBinariesBuilt', {
      type: 'String',
      default: 'no',
      description: 'Whether target/lambda held every function binary at synth time (make package).',
    });
    new CfnRule(this, 'RequireBuiltBinaries', {
      assertions: [{ assert: Fn.conditionEquals(built.valueAsString, 'yes'), assertDescription: message }],
    });
  }
}

/** The replication lag statistics the dashboard shows per destination. */
export const LAG_STATISTICS = ['Maximum', 'p99', 'p50'];

/** The statistic the lag alarm watches: p99, not the maximum. One image that arrives late (a
 * retried copy, one pushed while the run was paused) should not page; lag that most copies share
 * should. CloudWatch evaluates a percentile alarm with few data points as with many unless told
 * to ignore them ("Percentile-based alarms and low data samples",
 * https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/percentiles-with-low-samples.html),
 * so a quiet deployment's p99 is about its maximum and still alarms. */
export const LAG_ALARM_STATISTIC = 'p99';

/** The period the lag alarm evaluates (one period). */
export const LAG_ALARM_PERIOD = Duration.minutes(15);

/** The functions' `ReplicationLag` (seconds from the push to the source until the image arrived)
 * of one destination registry (the `Destination` dimension, crates/replication/src/metrics.rs).
 * Without a label, so an alarm on it is a plain ExtendedStatistic alarm. */
export function replicationLagMetric(names: DeploymentNames, destination: string, statistic: string, period = Duration.minutes(5)): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: names.metricsNamespace, metricName: 'ReplicationLag', dimensionsMap: { Destination: destination },
    statistic, period,
  });
}

/** An alarm when a destination's replication lag p99 is above `seconds` over one period; no data
 * (nothing copied) is not breaching. */
function replicationLagAlarm(scope: Construct, names: DeploymentNames, destination: string, seconds: number): cloudwatch.Alarm {
  return new cloudwatch.Alarm(scope, `ReplicationLag-${destination}`, {
    alarmDescription: `ecr-replicator: replication lag to ${destination} (${LAG_ALARM_STATISTIC} over ${LAG_ALARM_PERIOD.toMinutes()} minutes) above ${seconds} seconds`,
    metric: replicationLagMetric(names, destination, LAG_ALARM_STATISTIC, LAG_ALARM_PERIOD),
    threshold: seconds,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    evaluationPeriods: 1,
    evaluateLowSampleCountPercentile: 'evaluate',
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  });
}

/** The ARNs of the executions of the state machine `name`, and of nothing else: its own
 * (`execution:NAME:ID`, `express:NAME:ID:ID`) and its Map Runs' children (`execution:NAME/LABEL:ID`,
 * `express:NAME/LABEL:ID:ID`; Service Authorization Reference, AWS Step Functions, resource types).
 * Never `NAME*`, which is also every execution of another deployment whose name starts with NAME
 * (`ecr-replicator-staging`); a state machine's name holds neither `:` nor `/`. */
export function executionArns(partition: string, region: string, account: string, name: string): string[] {
  return ['execution', 'express'].flatMap((kind) => [':', '/'].map(
    (separator) => `arn:${partition}:states:${region}:${account}:${kind}:${name}${separator}*`,
  ));
}

/** The functions' trusted-root checks (`ECR_REPLICATOR_TRUSTED_ROOT_*`): the pinned sha256, the
 * account that must own the root's bucket (the configured one, else the workflow's: the functions
 * read the object with S3's ExpectedBucketOwner), and a root without CT logs only when allowed. */
export function trustedRootChecks(config: ReplicatorConfig): Record<string, string> {
  return {
    ...(config.trustedRootSha256 ? { ECR_REPLICATOR_TRUSTED_ROOT_SHA256: config.trustedRootSha256 } : {}),
    ...(config.trustedRoot ? { ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER: config.trustedRootBucketOwner ?? workflowAccount(config) } : {}),
    ...(config.trustedRootAllowNoCtLogs ? { ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT: 'true' } : {}),
  };
}

/** The definition's placeholder for the EventBridge PutEvents integration, filled with
 * `arn:<the stack's partition>:states:::events:putEvents` (a whole-Resource placeholder, as the
 * functions' are, so cfn-lint's ASL check still applies to the rest). */
export const PUT_EVENTS_PLACEHOLDER = 'EventsPutEventsArn';

/** Likewise the `states:startExecution.sync:2` integration (ContinueAsNew: a run that ran its
 * pages goes on as a new execution of the same state machine). */
export const START_EXECUTION_PLACEHOLDER = 'StatesStartExecutionSyncArn';

/** What a caller needs to start a run of the state machine and wait for it: StartExecution on it,
 * DescribeExecution and StopExecution on its executions, and the rule Step Functions manages for
 * `.sync` Tasks (Step Functions developer guide, "IAM policies for AWS Step Functions", Synchronous).
 * A pipeline polling DescribeExecution needs the same. */
export function callerStatements(partition: string, region: string, account: string, stateMachine: string): iam.PolicyStatement[] {
  return [
    new iam.PolicyStatement({
      sid: 'StartRuns',
      actions: ['states:StartExecution'],
      resources: [`arn:${partition}:states:${region}:${account}:stateMachine:${stateMachine}`],
    }),
    new iam.PolicyStatement({
      sid: 'WaitForRuns',
      actions: ['states:DescribeExecution', 'states:StopExecution'],
      resources: [`arn:${partition}:states:${region}:${account}:execution:${stateMachine}:*`],
    }),
    new iam.PolicyStatement({
      sid: 'SyncTaskEvents',
      actions: ['events:PutTargets', 'events:PutRule', 'events:DescribeRule'],
      resources: [`arn:${partition}:events:${region}:${account}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule`],
    }),
  ];
}

/** The pushes a push rule matches: successful, tagged (a push by digest, an index's child or a
 * referrer, has no tag, and its tagged parent's push brings it along), in the repositories
 * `pushRepositoryFilter` allows. The workflow's rule and the rule forwarding pushes from the
 * source account or Region use the same, so nothing is forwarded that the workflow would drop. */
export function pushEventDetail(config: ReplicatorConfig): Record<string, unknown> {
  const repositoryName = pushRepositoryFilter(config);
  return { ...TAGGED_PUSH_DETAIL, ...(repositoryName ? { 'repository-name': repositoryName } : {}) };
}

/** The `detail` of a successful tagged push (ECR "ECR Image Action" events). */
export const TAGGED_PUSH_DETAIL: Record<string, unknown> = { 'action-type': ['PUSH'], result: ['SUCCESS'], 'image-tag': [{ 'anything-but': '' }] };

/** The push rule's `repository-name` matcher: the trigger's prefix, and never a repository this
 * deployment writes in the source registry itself (a destination in the same account and
 * region), whose pushes would start run after run. A prefix that cannot exclude them fails synth. */
export function pushRepositoryFilter(config: ReplicatorConfig): unknown[] | undefined {
  const trigger = config.pushTrigger?.repositoryPrefix ?? '';
  const own = config.destinations
    .filter((d) => d.account === config.sourceAccount && d.region === config.sourceRegion)
    .map((d) => d.repositoryPrefix ?? '');
  const overlapping = own.filter((p) => p.startsWith(trigger) || trigger.startsWith(p));
  if (!overlapping.length) return trigger ? [{ prefix: trigger }] : undefined;
  if (!trigger && overlapping.length === 1) return [{ 'anything-but': { prefix: overlapping[0] } }];
  throw new Error(
    `pushTrigger.repositoryPrefix ${JSON.stringify(trigger)} covers the destination prefix ${JSON.stringify(overlapping[0])} in the source registry itself: `
    + 'each replicated image would be pushed there and trigger another run; choose prefixes that do not overlap',
  );
}
