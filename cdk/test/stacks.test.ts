/** Assertions on the synthesized templates (node:test, run by `npm test` from `make test`). */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { generateKeyPairSync } from 'crypto';
import { existsSync, readdirSync, readFileSync } from 'fs';
import * as path from 'path';
import { App, Aspects } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as iam from 'aws-cdk-lib/aws-iam';
import { AwsSolutionsChecks } from 'cdk-nag';
import { allowlist, jobDestinations, LAMBDA_ENVIRONMENT_MAX, loadConfig, pushInput, ReplicatorConfig, scheduleInput, validateConfig } from '../lib/config';
import { deploymentStacks } from '../lib/deployment';
import { EVENTBRIDGE_INPUT_MAX, jobSchemaProblems, renderedInput } from '../lib/inputs';
import { SourceRoleStack } from '../lib/source-stack';
import { TargetRoleStack } from '../lib/target-stack';
import { callerStatements, COALESCER, COALESCER_TIMEOUT_SECONDS, COPY_FUNCTIONS, PUSH_BATCH_CONCURRENCY, PUSH_BATCH_SIZE, PUSH_BATCH_WINDOW_SECONDS, PUSH_RECEIVES, deploymentNames, FUNCTIONS, PUT_EVENTS_PLACEHOLDER, START_EXECUTION_PLACEHOLDER, functionsOf, METRICS_NAMESPACE, pushRepositoryFilter, SELECTION_DAYS, SELECTIONS_PREFIX, WorkflowStack } from '../lib/workflow-stack';

/** The default deployment's role names. */
const { copierRole: COPIER_ROLE_NAME, readerRole: READER_ROLE_NAME } = deploymentNames();

const config = loadConfig('config.example.json');

function synth() {
  const app = new App();
  const workflow = new WorkflowStack(app, 'Workflow', { env: { account: config.sourceAccount, region: config.sourceRegion }, config, allowPlaceholderCode: true });
  const target = new TargetRoleStack(app, 'Target', {
    env: { account: '222222222222', region: 'eu-west-1' },
    workflowAccount: config.sourceAccount,
    externalIds: ['ext-123'],
    roleName: 'ecr-replicator-target',
    repositoryPrefix: 'mirror/',
  });
  const source = new SourceRoleStack(app, 'Source', {
    env: { account: config.sourceAccount, region: config.sourceRegion },
    workflowAccount: '444444444444', workflowRegion: config.sourceRegion,
    externalId: 'ext-src', roleName: 'ecr-replicator-source', forwardPushEvents: true,
  });
  Aspects.of(app).add(new AwsSolutionsChecks());
  return { workflow, target, source, w: Template.fromStack(workflow), t: Template.fromStack(target) };
}

const { workflow, target, source, w, t } = synth();

/** The steps' functions (not coalesce-pushes, which reads no registry and starts runs). */
const STEP_FUNCTION = { Properties: { Description: Match.stringLikeRegexp('^ecr-replicator step ') } };

test('one arm64 provided.al2023 function per binary, the copy step large and 15 minutes', () => {
  // The steps, and coalesce-pushes (the example has a push trigger).
  w.resourceCountIs('AWS::Lambda::Function', FUNCTIONS.length + 1);
  w.allResourcesProperties('AWS::Lambda::Function', { Runtime: 'provided.al2023', Architectures: ['arm64'], Handler: 'bootstrap', LoggingConfig: { LogFormat: 'JSON' } });
  w.hasResourceProperties('AWS::Lambda::Function', { Description: 'ecr-replicator step copy-blobs', Timeout: 900, MemorySize: 3008 });
  w.resourceCountIs('AWS::Logs::LogGroup', FUNCTIONS.length + 2);
  w.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
});

test('the functions are the steps the definition names, each sized and given the role it needs', () => {
  assert.deepEqual(FUNCTIONS.map((f) => f.name).sort(), [
    'enumerate-repositories', 'ensure-repository', 'enumerate-images', 'plan-image', 'copy-blobs', 'put-manifests', 'summarise',
    'verify-repository',
  ].sort());
  // enumerate-repositories checks destinations for work (read only) before giving a child.
  assert.deepEqual(FUNCTIONS.filter((f) => !f.copier).map((f) => f.name), ['summarise']);
  assert.deepEqual(FUNCTIONS.filter((f) => f.workBucket).map((f) => f.name).sort(), ['enumerate-images', 'enumerate-repositories']);
  // A new step needs only its Task in the definition: it gets the defaults.
  assert.deepEqual(functionsOf('{"Resource": "${VerifyImagesFunctionArn}"}'), [
    { name: 'verify-images', placeholder: 'VerifyImagesFunctionArn', copier: true, memory: 256, minutes: 5, workBucket: false },
  ]);
});

test('the definition is the committed file with every placeholder bound to its function', () => {
  const sm = Object.values(w.findResources('AWS::StepFunctions::StateMachine'))[0] as any;
  const committed = readFileSync(path.resolve(__dirname, '..', '..', '..', 'statemachine', 'replicate.asl.json'), 'utf8');
  assert.equal(sm.Properties.DefinitionString, committed);
  const subs = sm.Properties.DefinitionSubstitutions;
  const placeholders = [...committed.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]);
  assert.deepEqual(new Set(Object.keys(subs)), new Set(placeholders));
  assert.deepEqual(subs[PUT_EVENTS_PLACEHOLDER], { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':states:::events:putEvents']] }, 'service integrations in the stack\'s partition');
  assert.deepEqual(subs[START_EXECUTION_PLACEHOLDER], { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':states:::states:startExecution.sync:2']] });
  for (const f of FUNCTIONS) {
    const logical = Object.entries(w.findResources('AWS::Lambda::Function', { Properties: { Description: `ecr-replicator step ${f.name}` } }))[0][0];
    assert.deepEqual(subs[f.placeholder], { 'Fn::GetAtt': [logical, 'Arn'] }, f.placeholder);
  }
  // Filled in, nothing is left unresolved.
  let filled = committed;
  for (const p of placeholders) filled = filled.split('${' + p + '}').join('arn:aws:lambda:us-east-1:111111111111:function:x');
  assert.ok(!filled.includes('${'));
  assert.equal(sm.Properties.StateMachineType, 'STANDARD');
});

test('the state machine may invoke only its functions', () => {
  const policies = w.findResources('AWS::IAM::Policy', { Properties: { PolicyName: Match.stringLikeRegexp('WorkflowRole') } });
  const statements = (Object.values(policies)[0] as any).Properties.PolicyDocument.Statement;
  const invoke = statements.find((s: any) => s.Sid === 'InvokeStepFunctions');
  assert.equal(invoke.Action, 'lambda:InvokeFunction');
  assert.equal(invoke.Resource.length, FUNCTIONS.length);
  for (const s of statements) assert.ok(!(String(s.Action).includes('*')), `no wildcard action: ${JSON.stringify(s.Action)}`);
});

test('only the copier role may assume the destination roles; source access is read-only', () => {
  const all = Object.values(w.findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
  const assume = all.filter((s: any) => [s.Action].flat().includes('sts:AssumeRole'));
  assert.equal(assume.length, 1);
  assert.deepEqual(assume[0].Resource, config.destinations.map((d) => ({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, `:iam::${d.account}:role/${config.targetRoleName}`]] })));
  const copierPolicy = Object.values(w.findResources('AWS::IAM::Policy')).find((p: any) => p.Properties.PolicyDocument.Statement.some((s: any) => s.Sid === 'AssumeDestinationRoles')) as any;
  assert.ok(JSON.stringify(copierPolicy.Properties.Roles).includes('CopierRole'));
  const writes = all.flatMap((s: any) => [s.Action].flat()).filter((a: string) => /^ecr:(Put|Create|Delete|Set|Upload|Complete|Initiate|Tag|Untag)/.test(a));
  assert.deepEqual(writes, [], 'the source side never writes to ECR');
  w.hasResourceProperties('AWS::IAM::Role', { RoleName: COPIER_ROLE_NAME });
});

test('the push rule matches successful pushes and starts a run for just that image', () => {
  const rule = Object.values(w.findResources('AWS::Events::Rule', { Properties: { Description: 'ecr-replicator: replicate a pushed image' } }))[0] as any;
  assert.deepEqual(rule.Properties.EventPattern, {
    source: ['aws.ecr'],
    'detail-type': ['ECR Image Action'],
    account: [config.sourceAccount],
    region: [config.sourceRegion],
    detail: { 'action-type': ['PUSH'], result: ['SUCCESS'], 'image-tag': [{ 'anything-but': '' }], 'repository-name': [{ prefix: 'services/' }] },
  });
  const transformer = rule.Properties.Targets[0].InputTransformer;
  assert.deepEqual(Object.values(transformer.InputPathsMap).sort(), ['$.detail.image-digest', '$.detail.image-tag', '$.detail.repository-name']);
  const template = String(transformer.InputTemplate);
  assert.ok(template.includes('"source":{"registry":"111111111111.dkr.ecr.us-east-1.amazonaws.com"}'), template);
  // What EventBridge sends for a push of services/web:v1.2 (placeholders become JSON strings).
  const [repoKey] = Object.entries(transformer.InputPathsMap).find(([, p]) => p === '$.detail.repository-name')!;
  const [tagKey] = Object.entries(transformer.InputPathsMap).find(([, p]) => p === '$.detail.image-tag')!;
  const [digestKey] = Object.entries(transformer.InputPathsMap).find(([, p]) => p === '$.detail.image-digest')!;
  const digest = `sha256:${'a'.repeat(64)}`;
  const input = JSON.parse(template.replace(`<${repoKey}>`, '"services/web"').replace(`<${tagKey}>`, '"v1.2"').replace(`<${digestKey}>`, JSON.stringify(digest)));
  assert.deepEqual(input.images, [{ repository: 'services/web', tag: 'v1.2', digest }]);
  assert.equal(input.repositories, undefined);
  assert.equal(input.tags, undefined);
  assert.match(input.destinations[0].roleArn, /ecr-replicator-target/);
});

/** The push job a workflow template's coalesce-pushes pins, and its push rule's input without the image. */
function pinnedPushJob(template: Template): { pinned: unknown; rule: Record<string, unknown>; size: number } {
  const fn = Object.values(template.findResources('AWS::Lambda::Function', { Properties: { Description: Match.stringLikeRegexp(`^ecr-replicator ${COALESCER}`) } }))[0] as any;
  const variables = fn.Properties.Environment.Variables;
  const text = variables.ECR_REPLICATOR_PUSH_JOB;
  assert.equal(typeof text, 'string', 'a plain JSON string, no token');
  const rule = Object.values(template.findResources('AWS::Events::Rule', { Properties: { Description: 'ecr-replicator: replicate a pushed image' } }))[0] as any;
  const { images, ...job } = renderedInput(rule.Properties.Targets[0])!.input as Record<string, unknown>;
  assert.equal((images as unknown[]).length, 1, 'the rule sends one image');
  // Every variable's name and value (the ARN a Ref: counted at its longest).
  const size = Object.entries(variables).reduce((n, [k, v]) => n + k.length + (typeof v === 'string' ? Buffer.byteLength(v) : 140), 0);
  return { pinned: JSON.parse(text), rule: job, size };
}

test('coalesce-pushes pins the push job: its environment holds exactly the push rule\'s input without the image, within Lambda\'s 4 KB', () => {
  const example = pinnedPushJob(w);
  assert.deepEqual(example.pinned, example.rule);
  assert.ok(example.size <= LAMBDA_ENVIRONMENT_MAX, `${example.size}`);
  // With job-level settings (a required signature, tag and repository filters, prune left out of
  // pushes), the pinned job carries them all, as the rule does.
  const [workflowTemplate] = deployment(variant((c) => {
    c.job = {
      requireSignature: { policy: 'release' }, repositorySettings: 'create', prune: true, imageEvents: true,
      tags: { exclude: ['.*-dev'], latest: 5 }, repositories: { exclude: ['scratch/**'] },
    };
  }));
  const configured = pinnedPushJob(workflowTemplate);
  assert.deepEqual(configured.pinned, configured.rule);
  const pinned = configured.pinned as Record<string, any>;
  assert.deepEqual(pinned.requireSignature, { policy: 'release' });
  assert.deepEqual(pinned.tags, { exclude: ['.*-dev'] });
  assert.equal(pinned.prune, undefined);
  assert.equal(pinned.images, undefined);
  assert.ok(configured.size <= LAMBDA_ENVIRONMENT_MAX, `${configured.size}`);
  // A push job too large for the environment fails synth, naming the variable.
  assert.throws(() => variant((c) => { c.job = { repositories: { exclude: Array.from({ length: 120 }, (_, i) => `scratch-team-number-${i}/**`) } }; }),
    /job and destinations make the push job coalesce-pushes pins \(ECR_REPLICATOR_PUSH_JOB\) \d+ bytes; .* passes Lambda's 4096 bytes of environment/);
});

test('pushes queue up (encrypted, TLS only, a dead-letter queue that alarms); coalesce-pushes takes them in batches and may start only this state machine', () => {
  const rule = Object.values(w.findResources('AWS::Events::Rule', { Properties: { Description: 'ecr-replicator: replicate a pushed image' } }))[0] as any;
  const queues = w.findResources('AWS::SQS::Queue');
  assert.equal(Object.keys(queues).length, 2, 'the push queue and its dead-letter queue');
  const [pushes] = Object.entries(queues).find(([, q]: [string, any]) => q.Properties.RedrivePolicy)!;
  const [deadLetters] = Object.entries(queues).find(([id]) => id !== pushes)!;
  // The rule no longer starts a run per push: it sends the push's one-image job to the queue.
  assert.equal(rule.Properties.Targets.length, 1);
  assert.deepEqual(rule.Properties.Targets[0].Arn, { 'Fn::GetAtt': [pushes, 'Arn'] });
  for (const q of Object.values(queues) as any[]) assert.equal(q.Properties.SqsManagedSseEnabled, true);
  assert.deepEqual(queues[pushes].Properties.RedrivePolicy, { deadLetterTargetArn: { 'Fn::GetAtt': [deadLetters, 'Arn'] }, maxReceiveCount: PUSH_RECEIVES });
  // Lambda: the visibility timeout at least six times the function's timeout plus the window.
  assert.ok(queues[pushes].Properties.VisibilityTimeout >= 6 * COALESCER_TIMEOUT_SECONDS + PUSH_BATCH_WINDOW_SECONDS);
  // Only EventBridge, for exactly this rule, may send; nothing over plain HTTP.
  const policies = Object.values(w.findResources('AWS::SQS::QueuePolicy')) as any[];
  const send = policies.flatMap((p) => p.Properties.PolicyDocument.Statement).filter((s: any) => s.Effect === 'Allow');
  assert.equal(send.length, 1);
  assert.deepEqual(send[0].Principal, { Service: 'events.amazonaws.com' });
  assert.deepEqual(send[0].Resource, { 'Fn::GetAtt': [pushes, 'Arn'] });
  assert.ok(JSON.stringify(send[0].Condition).includes('aws:SourceArn'), JSON.stringify(send[0].Condition));
  for (const id of [pushes, deadLetters]) {
    assert.ok(policies.some((p) => JSON.stringify(p.Properties.Queues).includes(id) && JSON.stringify(p.Properties.PolicyDocument).includes('aws:SecureTransport')), id);
  }
  // Batches: up to PUSH_BATCH_SIZE messages gathered for PUSH_BATCH_WINDOW_SECONDS, two at once,
  // failed runs' messages reported back one by one.
  const mappings = Object.values(w.findResources('AWS::Lambda::EventSourceMapping')) as any[];
  assert.equal(mappings.length, 1);
  const mapping = mappings[0].Properties;
  assert.deepEqual(mapping.EventSourceArn, { 'Fn::GetAtt': [pushes, 'Arn'] });
  assert.equal(mapping.BatchSize, PUSH_BATCH_SIZE);
  assert.ok(PUSH_BATCH_SIZE <= 10000, 'Lambda: at most 10,000 messages a batch from a standard queue');
  assert.equal(mapping.MaximumBatchingWindowInSeconds, PUSH_BATCH_WINDOW_SECONDS);
  assert.ok(PUSH_BATCH_WINDOW_SECONDS <= 300, 'Lambda: a batching window of at most 300 s');
  assert.deepEqual(mapping.FunctionResponseTypes, ['ReportBatchItemFailures']);
  assert.deepEqual(mapping.ScalingConfig, { MaximumConcurrency: PUSH_BATCH_CONCURRENCY });
  const [fnId, fn] = Object.entries(w.findResources('AWS::Lambda::Function', { Properties: { Description: Match.stringLikeRegexp(`^ecr-replicator ${COALESCER}`) } }))[0] as [string, any];
  assert.deepEqual(mapping.FunctionName, { Ref: fnId });
  const stateMachine = Object.keys(w.findResources('AWS::StepFunctions::StateMachine'))[0];
  assert.deepEqual(Object.keys(fn.Properties.Environment.Variables).sort(), ['ECR_REPLICATOR_PUSH_JOB', 'ECR_REPLICATOR_STATE_MACHINE_ARN', 'RUST_LOG']);
  assert.equal(fn.Properties.Environment.Variables.RUST_LOG, 'info');
  assert.deepEqual(fn.Properties.Environment.Variables.ECR_REPLICATOR_STATE_MACHINE_ARN, { Ref: stateMachine });
  assert.equal(fn.Properties.Timeout, COALESCER_TIMEOUT_SECONDS);
  // Least privilege: its own role; StartExecution on exactly the state machine, the queue's
  // consumer actions on exactly the queue, its own log group; nothing else.
  const role = fn.Properties.Role['Fn::GetAtt'][0];
  const statements = (Object.values(w.findResources('AWS::IAM::Policy')) as any[])
    .filter((p) => JSON.stringify(p.Properties.Roles).includes(role))
    .flatMap((p) => p.Properties.PolicyDocument.Statement);
  const byAction = (prefix: string) => statements.filter((s: any) => [s.Action].flat().every((a: string) => a.startsWith(prefix)));
  assert.deepEqual(byAction('states:').map((s: any) => [s.Action, s.Resource]), [['states:StartExecution', { Ref: stateMachine }]]);
  const consume = byAction('sqs:');
  assert.equal(consume.length, 1);
  assert.deepEqual(consume[0].Resource, { 'Fn::GetAtt': [pushes, 'Arn'] });
  assert.deepEqual([consume[0].Action].flat().filter((a: string) => !['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'].includes(a)), []);
  assert.equal(byAction('logs:').length, 1);
  assert.equal(statements.length, 3, JSON.stringify(statements));
  // Runs the queue gave up on alarm to the failure topic.
  const alarm = Object.values(w.findResources('AWS::CloudWatch::Alarm', { Properties: { MetricName: 'ApproximateNumberOfMessagesVisible' } }))[0] as any;
  assert.deepEqual(alarm.Properties.Dimensions, [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [deadLetters, 'QueueName'] } }]);
  assert.equal(alarm.Properties.AlarmActions.length, 1);
  // Malformed pushes (each an ERROR line the function writes) are counted and alarm too.
  const filter = Object.values(w.findResources('AWS::Logs::MetricFilter'))[0] as any;
  assert.equal(filter.Properties.FilterPattern, '{ ($.level = "ERROR") && ($.fields.message = "malformed push event*") }');
  assert.match(readFileSync(path.join(__dirname, '..', '..', '..', 'crates', 'replication', 'src', 'steps', 'coalesce_pushes.rs'), 'utf8'), /tracing::error!\([^;]*"malformed push event: /);
  const logGroup = Object.keys(w.findResources('AWS::Logs::LogGroup')).find((id) => id.startsWith('coalescepusheslogs'));
  assert.deepEqual(filter.Properties.LogGroupName, { Ref: logGroup });
  assert.deepEqual(filter.Properties.MetricTransformations, [{ MetricNamespace: METRICS_NAMESPACE, MetricName: 'MalformedPushes', MetricValue: '1' }]);
  w.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'MalformedPushes', Namespace: METRICS_NAMESPACE, Threshold: 1, AlarmActions: Match.anyValue() });
  // No push trigger: no queue, no coalescer.
  const [plain] = deployment(variant((c) => { delete c.pushTrigger; }));
  plain.resourceCountIs('AWS::SQS::Queue', 0);
  plain.resourceCountIs('AWS::Lambda::EventSourceMapping', 0);
  plain.resourceCountIs('AWS::Lambda::Function', FUNCTIONS.length);
});

test('a schedule with its input, and failure notifications', () => {
  w.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(6 hours)' });
  w.resourceCountIs('AWS::SNS::Topic', 1);
  w.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'platform-team@example.com' });
  w.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'ExecutionsFailed', Threshold: 1 });
  w.hasResourceProperties('AWS::Events::Rule', { EventPattern: { 'detail-type': ['Step Functions Execution Status Change'], detail: Match.objectLike({ status: ['FAILED', 'TIMED_OUT', 'ABORTED'] }) } });
});

test('the target role trusts only the copier role, with the external ID', () => {
  t.resourceCountIs('AWS::IAM::Role', 1);
  t.hasResourceProperties('AWS::IAM::Role', {
    RoleName: 'ecr-replicator-target',
    AssumeRolePolicyDocument: {
      Statement: [{
        Action: 'sts:AssumeRole',
        Effect: 'Allow',
        Condition: { StringEquals: { 'sts:ExternalId': 'ext-123' } },
        Principal: { AWS: { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, `:iam::${config.sourceAccount}:role/${COPIER_ROLE_NAME}`]] } },
      }],
    },
  });
  const statements = (Object.values(t.findResources('AWS::IAM::Policy'))[0] as any).Properties.PolicyDocument.Statement;
  for (const s of statements.filter((x: any) => x.Sid !== 'RegistryToken')) {
    assert.ok(JSON.stringify(s.Resource).includes(':repository/mirror/*'), JSON.stringify(s.Resource));
  }
  const actions = statements.flatMap((s: any) => [s.Action].flat());
  assert.ok(actions.every((a: string) => a.startsWith('ecr:')), 'nothing but ECR');
  assert.ok(!actions.includes('ecr:DeleteRepository') && !actions.includes('ecr:BatchDeleteImage'));
});

test('prune permission only when the deployment allows it, and only within the prefix', () => {
  const app = new App();
  const pruning = Template.fromStack(new TargetRoleStack(app, 'Pruning', {
    env: { account: '222222222222', region: 'eu-west-1' },
    workflowAccount: config.sourceAccount,
    externalIds: ['ext-123'],
    roleName: 'ecr-replicator-target',
    repositoryPrefix: 'mirror/',
    allowPrune: true,
  }));
  const statements = (Object.values(pruning.findResources('AWS::IAM::Policy'))[0] as any).Properties.PolicyDocument.Statement;
  const prune = statements.find((s: any) => s.Sid === 'PruneStaleTags');
  assert.equal(prune.Action, 'ecr:BatchDeleteImage');
  assert.ok(JSON.stringify(prune.Resource).includes(':repository/mirror/*'), JSON.stringify(prune.Resource));
});

test('cdk-nag AwsSolutions passes (suppressions are justified in code)', () => {
  for (const stack of [workflow, target, source]) {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(errors.map((e) => `${e.id}: ${e.entry.data}`), []);
  }
});

/** A variant of the example configuration. */
function variant(change: (c: ReplicatorConfig) => void): ReplicatorConfig {
  const c = JSON.parse(JSON.stringify(config)) as ReplicatorConfig;
  change(c);
  return validateConfig(c, 'variant');
}

function policyStatements(template: Template, roleLogicalPart: string): any[] {
  return Object.values(template.findResources('AWS::IAM::Policy'))
    .filter((p: any) => JSON.stringify(p.Properties.Roles).includes(roleLogicalPart))
    .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
}

test('a destination in the workflow account takes no role: the copier role may write there, within the prefix', () => {
  const c = variant((c) => { c.destinations.push({ account: c.sourceAccount, region: 'eu-central-1', repositoryPrefix: 'dr/' }); c.targetRepositoryPrefix = 'dr/'; });
  assert.deepEqual(jobDestinations(c)[2], { registry: '111111111111.dkr.ecr.eu-central-1.amazonaws.com', repositoryPrefix: 'dr/' });
  const w2 = Template.fromStack(new WorkflowStack(new App(), 'W', { env: { account: c.sourceAccount, region: c.sourceRegion }, config: c, allowPlaceholderCode: true }));
  const copier = policyStatements(w2, 'CopierRole');
  const push = copier.find((s) => s.Sid === 'PushImages');
  assert.ok(push, 'the copier role can push');
  assert.ok([push.Action].flat().includes('ecr:PutImage'));
  assert.ok(JSON.stringify(push.Resource).includes(':ecr:eu-central-1:111111111111:repository/dr/*'), JSON.stringify(push.Resource));
  const reader = policyStatements(w2, 'ReaderRole');
  assert.ok(!reader.some((s) => [s.Action].flat().includes('ecr:PutImage')), 'the reader role never writes');
});

test('one target role per account trusts every external ID its destinations use', () => {
  const t2 = Template.fromStack(new TargetRoleStack(new App(), 'T', {
    env: { account: '222222222222', region: 'eu-west-1' }, workflowAccount: config.sourceAccount,
    externalIds: ['ext-a', 'ext-b', 'ext-a'], roleName: 'ecr-replicator-target',
  }));
  t2.hasResourceProperties('AWS::IAM::Role', {
    AssumeRolePolicyDocument: { Statement: [Match.objectLike({ Condition: { StringEquals: { 'sts:ExternalId': ['ext-a', 'ext-b'] } } })] },
  });
});

test('KMS grants for encrypted destination repositories, only on the configured keys and only through ECR', () => {
  const key = 'arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const t2 = Template.fromStack(new TargetRoleStack(new App(), 'T', {
    env: { account: '222222222222', region: 'eu-west-1' }, workflowAccount: config.sourceAccount,
    externalIds: ['ext-a'], roleName: 'ecr-replicator-target', kmsKeys: [key],
  }));
  const kms = policyStatements(t2, 'TargetRole').find((s) => s.Sid === 'EncryptedRepositories');
  assert.deepEqual(kms.Action, ['kms:CreateGrant', 'kms:RetireGrant', 'kms:DescribeKey']);
  assert.equal(kms.Resource, key);
  assert.deepEqual(kms.Condition, { StringLike: { 'kms:ViaService': 'ecr.*.amazonaws.com*' } });
  const none = Template.fromStack(new TargetRoleStack(new App(), 'T', {
    env: { account: '222222222222', region: 'eu-west-1' }, workflowAccount: config.sourceAccount,
    externalIds: ['ext-a'], roleName: 'ecr-replicator-target',
  }));
  assert.ok(!policyStatements(none, 'TargetRole').some((s) => JSON.stringify(s.Action).includes('kms:')));
});

test('role ARNs in the execution input carry the partition of their region', () => {
  const c = variant((c) => {
    c.sourceRegion = 'cn-north-1';
    c.destinations = [{ account: '222222222222', region: 'cn-northwest-1', externalId: 'ext-cn' }];
  });
  assert.deepEqual(jobDestinations(c), [{
    registry: '222222222222.dkr.ecr.cn-northwest-1.amazonaws.com.cn',
    roleArn: 'arn:aws-cn:iam::222222222222:role/ecr-replicator-target',
    externalId: 'ext-cn',
  }]);
  const gov = variant((c) => { c.sourceRegion = 'us-gov-west-1'; c.destinations = [{ account: '222222222222', region: 'us-gov-east-1', externalId: 'ext-gov' }]; });
  assert.match(String(jobDestinations(gov)[0].roleArn), /^arn:aws-us-gov:iam::/);
  assert.throws(() => variant((c) => { c.destinations[0].region = 'cn-north-1'; }), /span partitions/);
});

test('without the function binaries a template synthesizes but CloudFormation refuses to deploy it, naming what to build', () => {
  const built = FUNCTIONS.every((f) => existsSync(path.resolve(__dirname, '..', '..', '..', 'target', 'lambda', f.name, 'bootstrap')));
  const stack = new WorkflowStack(new App(), 'W', { env: { account: config.sourceAccount, region: config.sourceRegion }, config });
  const rules = Template.fromStack(stack).toJSON().Rules ?? {};
  if (built) {
    assert.equal(rules.RequireBuiltBinaries, undefined, 'every binary is built: nothing to refuse');
    return;
  }
  const assertion = rules.RequireBuiltBinaries.Assertions[0];
  assert.match(assertion.AssertDescription, /not built .*run `make package`/);
  assert.deepEqual(assertion.Assert, { 'Fn::Equals': [{ Ref: 'LambdaBinariesBuilt' }, 'yes'] });
  // Tests (and `make cdk-test`) say so explicitly and get the placeholder without the refusal.
  assert.equal(w.toJSON().Rules?.RequireBuiltBinaries, undefined);
});

test('the push rule never matches what this deployment pushes into the source registry itself', () => {
  const same = (prefix: string, trigger?: string) => variant((c) => {
    c.destinations = [{ account: c.sourceAccount, region: c.sourceRegion, repositoryPrefix: prefix }];
    c.pushTrigger = trigger === undefined ? {} : { repositoryPrefix: trigger };
  });
  assert.deepEqual(pushRepositoryFilter(same('mirror/')), [{ 'anything-but': { prefix: 'mirror/' } }]);
  assert.deepEqual(pushRepositoryFilter(same('mirror/', 'services/')), [{ prefix: 'services/' }]);
  assert.throws(() => pushRepositoryFilter(same('services/mirror/', 'services/')), /trigger another run/);
  assert.throws(() => variant((c) => { c.destinations = [{ account: c.sourceAccount, region: c.sourceRegion }]; }), /repositoryPrefix is required/);
  // A deployment whose rule excludes its own copies, end to end in the template.
  const c = same('mirror/');
  const w2 = Template.fromStack(new WorkflowStack(new App(), 'W', { env: { account: c.sourceAccount, region: c.sourceRegion }, config: c, allowPlaceholderCode: true }));
  w2.hasResourceProperties('AWS::Events::Rule', {
    EventPattern: Match.objectLike({ account: [c.sourceAccount], detail: Match.objectLike({ 'repository-name': [{ 'anything-but': { prefix: 'mirror/' } }] }) }),
  });
});

test('a source in another account is read through its own role, trusted by the workflow roles only', () => {
  const c = variant((c) => { c.workflowAccount = '444444444444'; c.sourceExternalId = 'ext-src'; });
  assert.throws(() => variant((c) => { c.workflowAccount = '444444444444'; }), /sourceExternalId is required/);
  const w2 = Template.fromStack(new WorkflowStack(new App(), 'W', { env: { account: '444444444444', region: c.sourceRegion }, config: c, allowPlaceholderCode: true }));
  const s2 = Template.fromStack(new SourceRoleStack(new App(), 'S', {
    env: { account: c.sourceAccount, region: c.sourceRegion }, workflowAccount: '444444444444', workflowRegion: c.sourceRegion,
    externalId: 'ext-src', roleName: 'ecr-replicator-source', forwardPushEvents: true,
  }));
  const statements = policyStatements(w2, 'CopierRole');
  const assume = statements.find((s) => s.Sid === 'AssumeSourceRole');
  assert.equal(assume.Resource, 'arn:aws:iam::111111111111:role/ecr-replicator-source');
  assert.ok(!statements.some((s) => s.Sid === 'ReadSourceRepositories'), 'the copier role reads only through the source role');
  // The reader role's functions read no registry: they may not assume the source role either.
  assert.ok(!JSON.stringify(policyStatements(w2, 'ReaderRole')).includes('sts:AssumeRole'));
  const trust = (Object.values(s2.findResources('AWS::IAM::Role'))[0] as any).Properties.AssumeRolePolicyDocument.Statement;
  const principals = trust.map((s: any) => JSON.stringify(s.Principal)).join(' ');
  assert.ok(principals.includes(`:iam::444444444444:role/${COPIER_ROLE_NAME}`) && !principals.includes(READER_ROLE_NAME), principals);
  assert.ok(trust.every((s: any) => s.Condition.StringEquals['sts:ExternalId'] === 'ext-src'));
  assert.ok(policyStatements(s2, 'SourceRole').some((s) => s.Sid === 'ReadSourceRepositories'));
  s2.hasResourceProperties('AWS::Events::Rule', { EventPattern: Match.objectLike({ source: ['aws.ecr'] }) });
  w2.hasResourceProperties('AWS::Events::EventBusPolicy', {
    Statement: Match.objectLike({ Action: 'events:PutEvents', Principal: { AWS: { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::111111111111:root']] } } }),
  });
  const schedule = Object.values(w2.findResources('AWS::Events::Rule', { Properties: { ScheduleExpression: 'rate(6 hours)' } }))[0] as any;
  const input = JSON.parse(schedule.Properties.Targets[0].Input);
  assert.deepEqual(input.source, { registry: '111111111111.dkr.ecr.us-east-1.amazonaws.com', roleArn: 'arn:aws:iam::111111111111:role/ecr-replicator-source', externalId: 'ext-src' });
});

test('the work bucket is private, TLS only and expiring; only the enumerating functions get it, and only its selections', () => {
  w.resourceCountIs('AWS::S3::Bucket', 1);
  const [logical, bucket] = Object.entries(w.findResources('AWS::S3::Bucket'))[0] as [string, any];
  assert.deepEqual(bucket.Properties.PublicAccessBlockConfiguration, { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true });
  assert.equal(bucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm, 'AES256');
  assert.deepEqual(bucket.Properties.LifecycleConfiguration.Rules, [{ ExpirationInDays: SELECTION_DAYS, Prefix: SELECTIONS_PREFIX, Status: 'Enabled' }]);
  const policy = Object.values(w.findResources('AWS::S3::BucketPolicy'))[0] as any;
  assert.ok(policy.Properties.PolicyDocument.Statement.some((s: any) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false'));
  for (const f of FUNCTIONS) {
    const fn = Object.values(w.findResources('AWS::Lambda::Function', { Properties: { Description: `ecr-replicator step ${f.name}` } }))[0] as any;
    const env = fn.Properties.Environment.Variables;
    if (['enumerate-images', 'enumerate-repositories'].includes(f.name)) assert.deepEqual(env.ECR_REPLICATOR_WORK_BUCKET, { Ref: logical });
    else assert.equal(env.ECR_REPLICATOR_WORK_BUCKET, undefined, f.name);
  }
  const all = Object.values(w.findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
  const s3 = all.filter((s: any) => [s.Action].flat().some((a: string) => a.startsWith('s3:')));
  assert.equal(s3.length, 2);
  assert.deepEqual(s3[0].Action, ['s3:PutObject', 's3:GetObject']);
  assert.deepEqual(s3[0].Resource, { 'Fn::Join': ['', [{ 'Fn::GetAtt': [logical, 'Arn'] }, `/${SELECTIONS_PREFIX}*`]] });
  // Listing its selections only: a missing (expired) one is then 404, not 403.
  assert.deepEqual(s3[1], {
    Sid: 'ListWorkBucket', Effect: 'Allow', Action: 's3:ListBucket',
    Resource: { 'Fn::GetAtt': [logical, 'Arn'] },
    Condition: { StringLike: { 's3:prefix': [`${SELECTIONS_PREFIX}*`] } },
  });
});

test('events go to the default bus only; every function writes metrics; the dashboard shows them per destination', () => {
  const statements = Object.values(w.findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
  const events = statements.filter((s: any) => [s.Action].flat().includes('events:PutEvents'));
  assert.equal(events.length, 1);
  assert.deepEqual(events[0].Resource, { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':events:us-east-1:111111111111:event-bus/default']] });
  for (const f of Object.values(w.findResources('AWS::Lambda::Function', STEP_FUNCTION)) as any[]) {
    assert.equal(f.Properties.Environment.Variables.ECR_REPLICATOR_METRICS_NAMESPACE, METRICS_NAMESPACE);
  }
  const dashboards = Object.values(w.findResources('AWS::CloudWatch::Dashboard')) as any[];
  assert.equal(dashboards.length, 1);
  const body = JSON.stringify(dashboards[0].Properties.DashboardBody);
  for (const name of ['ImagesCopied', 'ImagesPresent', 'ImagesFailed', 'BytesCopied', 'ReplicationLag']) {
    assert.ok(body.includes(name), name);
  }
  for (const d of jobDestinations(config)) assert.ok(body.includes(String(d.registry)), JSON.stringify(d));
  // The failure alarm, the push queue's two (dead letters, malformed pushes), and the example's
  // lagAlarmSeconds: one lag alarm per destination.
  w.resourceCountIs('AWS::CloudWatch::Alarm', 3 + config.destinations.length);
});

test('every function gets the deployment allowlist: the configured source and destinations, their roles and scopes, no plain HTTP', () => {
  const expected = {
    sources: [{ registry: `${config.sourceAccount}.dkr.ecr.${config.sourceRegion}.amazonaws.com`, roleArns: [] }],
    destinations: jobDestinations(config)
      .filter((d, i, all) => all.findIndex((e) => e.registry === d.registry) === i)
      .map((d, i) => ({
        registry: d.registry,
        roleArns: d.roleArn ? [d.roleArn] : [],
        repositories: [`${config.destinations[i].repositoryPrefix ?? ''}**`],
        prune: false,
        settingsModes: ['copy', 'create', 'none'],
        ...(config.destinations[i].requireSignature ? { requireSignature: config.destinations[i].requireSignature } : {}),
      })),
    insecure: [],
    trustPolicies: config.trustPolicies,
  };
  assert.equal(expected.destinations[1].requireSignature, 'release', 'the example requires its policy in one destination');
  const functions = Object.values(w.findResources('AWS::Lambda::Function', STEP_FUNCTION)) as any[];
  assert.equal(functions.length, FUNCTIONS.length);
  for (const f of functions) {
    const text = f.Properties.Environment.Variables.ECR_REPLICATOR_ALLOWED_REGISTRIES;
    assert.equal(typeof text, 'string', 'the allowlist is a plain string (no token)');
    assert.deepEqual(JSON.parse(text), expected);
  }
  // A cross-account destination is allowed with exactly its target role.
  assert.ok(expected.destinations.some((d) => d.roleArns.length === 1 && String(d.roleArns[0]).endsWith(`:role/${config.targetRoleName}`)));
});

/** Every stack of a deployment, synthesized as `cdk synth` does (validations included). */
function deployment(c: ReplicatorConfig, app = new App()): Template[] {
  const stacks = deploymentStacks(app, c, true);
  Aspects.of(app).add(new AwsSolutionsChecks());
  return stacks.map((s) => Template.fromStack(s));
}

/** Every trigger's execution input in a workflow template, transformer fields filled with samples. */
function triggerInputs(template: Template): Record<string, any> {
  const inputs: Record<string, any> = {};
  for (const rule of Object.values(template.findResources('AWS::Events::Rule')) as any[]) {
    for (const target of rule.Properties.Targets ?? []) {
      const rendered = renderedInput(target);
      if (rendered) inputs[rule.Properties.ScheduleExpression ? 'schedule' : 'push'] = rendered.input;
    }
  }
  return inputs;
}

test('China and GovCloud: nothing any stack synthesizes names the aws partition, the definition included', () => {
  for (const [region, other] of [['cn-north-1', 'cn-northwest-1'], ['us-gov-west-1', 'us-gov-east-1']]) {
    const c = variant((c) => {
      c.sourceRegion = region;
      c.workflowAccount = '444444444444';
      c.sourceExternalId = 'ext-src';
      c.destinations = [
        { account: '222222222222', region: other, externalId: 'ext-a', kmsKeyMapping: { '*': `arn:${region.startsWith('cn-') ? 'aws-cn' : 'aws-us-gov'}:kms:${other}:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab` } },
        { account: '444444444444', region: other, repositoryPrefix: 'dr/' },
      ];
    });
    const templates = deployment(c);
    assert.equal(templates.length, 3, 'workflow, target and source stacks');
    for (const t of templates) {
      const text = JSON.stringify(t.toJSON());
      assert.ok(!text.includes('arn:aws:'), `${region}: ${text.match(/.{80}arn:aws:.{40}/)?.[0]}`);
    }
    const sm = Object.values(templates[0].findResources('AWS::StepFunctions::StateMachine'))[0] as any;
    assert.ok(sm.Properties.DefinitionString.includes('"Resource": "${EventsPutEventsArn}"'));
    assert.equal(triggerInputs(templates[0]).schedule.destinations[0].kmsKeyMapping['*'].split(':')[1], region.startsWith('cn-') ? 'aws-cn' : 'aws-us-gov');
  }
});

test('a workflow in another region of the source account gets the pushes forwarded across regions', () => {
  const c = variant((c) => { c.workflowRegion = 'eu-west-1'; });
  const all = deployment(c);
  const [w2, forwarder] = [all[0], all[all.length - 1]];
  const rule = Object.values(forwarder.findResources('AWS::Events::Rule'))[0] as any;
  // The workflow's push filters: tagged pushes under the trigger's prefix only.
  assert.deepEqual(rule.Properties.EventPattern, {
    source: ['aws.ecr'], 'detail-type': ['ECR Image Action'], account: ['111111111111'], region: ['us-east-1'],
    detail: { 'action-type': ['PUSH'], result: ['SUCCESS'], 'image-tag': [{ 'anything-but': '' }], 'repository-name': [{ prefix: 'services/' }] },
  });
  const target = rule.Properties.Targets[0];
  assert.deepEqual(target.Arn, { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':events:eu-west-1:111111111111:event-bus/default']] });
  assert.ok(target.RoleArn, 'a bus in another region is a target with a role');
  // The workflow's rule still matches the source account and region (forwarded events keep them).
  w2.hasResourceProperties('AWS::Events::Rule', { EventPattern: Match.objectLike({ account: ['111111111111'], region: ['us-east-1'] }) });
  // ... and queues them for coalesce-pushes, as in the source's own Region.
  const queue = Object.keys(w2.findResources('AWS::SQS::Queue', { Properties: { RedrivePolicy: Match.anyValue() } }))[0];
  w2.hasResourceProperties('AWS::Events::Rule', { EventPattern: Match.objectLike({ account: ['111111111111'] }), Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [queue, 'Arn'] } })] });
  w2.hasResourceProperties('AWS::Lambda::EventSourceMapping', { EventSourceArn: { 'Fn::GetAtt': [queue, 'Arn'] } });
  // Same region, same account: nothing to forward.
  assert.equal(deployment(config).length, 3);
  assert.equal(deployment(variant((c) => { c.workflowRegion = 'eu-west-1'; delete c.pushTrigger; })).length, 3);
});

test('KMS key mapping and rename rules from the config reach every trigger, as valid jobs, with grants on the mapped keys', () => {
  const key = 'arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const c = variant((c) => {
    c.destinations[0].kmsKeyMapping = { '*': key };
    c.destinations[0].repositoryMapping = [{ match: '^services/(.+)$', replace: 'apps/$1' }];
    c.job = { tags: { exclude: ['.*-rc\\d*'], latest: 5 }, repositorySettings: 'create', prune: true };
  });
  const [w2, t2] = deployment(c);
  const inputs = triggerInputs(w2);
  for (const [name, input] of Object.entries(inputs)) {
    assert.deepEqual(input.destinations[0].kmsKeyMapping, { '*': key }, name);
    assert.deepEqual(input.destinations[0].repositoryMapping, [{ match: '^services/(.+)$', replace: 'apps/$1' }], name);
    assert.deepEqual(jobSchemaProblems(input), [], name);
    assert.deepEqual(input.tags.exclude, ['.*-rc\\d*'], `${name}: the deployment's tag exclusions hold`);
  }
  assert.equal(inputs.schedule.tags.latest, 5);
  assert.equal(inputs.schedule.repositorySettings, 'create');
  assert.equal(inputs.push.tags.latest, undefined, 'a listing filter has no meaning for one pushed image');
  assert.equal(inputs.push.prune, undefined);
  assert.equal(inputs.push.repositorySettings, 'create');
  const kms = policyStatements(t2, 'TargetRole').find((s) => s.Sid === 'EncryptedRepositories');
  assert.equal(kms.Resource, key, 'the mapped key is granted without listing it twice');
  assert.throws(() => variant((c) => { c.destinations[0].kmsKeyMapping = { '*': 'arn:aws:kms:us-east-1:222222222222:key/abc' }; }),
    /destinations\[0\]\.kmsKeyMapping\["\*"\] must be the ARN of a KMS key in eu-west-1/);
});

test('a mistyped or oversized schedule fails synth, naming the field or the limit', () => {
  const mistyped = variant((c) => { c.schedule!.input = { tags: { maxAgeDay: 30 } }; });
  assert.throws(() => deployment(mistyped), /Schedule input: \/tags must NOT have additional properties \(maxAgeDay\)/);
  const huge = variant((c) => { c.schedule!.input = { repositories: { include: Array.from({ length: 600 }, (_, i) => `team-${i}/**`) } }; });
  assert.ok(JSON.stringify(scheduleInput(huge)).length > EVENTBRIDGE_INPUT_MAX);
  assert.throws(() => deployment(huge), /Schedule input is \d+ characters; EventBridge takes at most 8192/);
  assert.throws(() => variant((c) => { c.schedule!.input = { source: { registry: 'evil.example.com' } }; }), /schedule\.input\.source is set by the deployment/);
  // The example configuration's inputs are valid.
  assert.deepEqual(Object.values(triggerInputs(w)).flatMap((i) => jobSchemaProblems(i)), []);
});

test('two deployments in one account: every named resource and stack is scoped by the deployment name', () => {
  const app = new App();
  const names = (templates: Template[]) => templates.flatMap((t) => Object.values(t.toJSON().Resources) as any[])
    .flatMap((r) => ['RoleName', 'StateMachineName', 'DashboardName', 'ManagedPolicyName', 'StatementId', 'Name']
      .map((k) => r.Properties?.[k]).filter((v) => typeof v === 'string'));
  const firstStacks = deploymentStacks(app, config, true);
  const secondStacks = deploymentStacks(app, variant((c) => { c.deploymentName = 'team-b'; c.targetRoleName = 'team-b-target'; }), true);
  const [first, second] = [firstStacks, secondStacks].map((stacks) => stacks.map((s) => Template.fromStack(s)));
  assert.deepEqual(firstStacks.map((s) => s.stackName).filter((n) => secondStacks.some((t) => t.stackName === n)), [], 'no stack name in common');
  const [a, b] = [names(first), names(second)];
  assert.ok(a.includes('ecr-replicator-copier') && b.includes('team-b-copier') && b.includes('team-b'), JSON.stringify(b));
  assert.deepEqual(a.filter((n) => b.includes(n)), [], 'no name in common');
  // The second deployment's target role trusts its own copier role.
  const trust = JSON.stringify(second[1].toJSON());
  assert.ok(trust.includes(':role/team-b-copier') && !trust.includes(':role/ecr-replicator-copier'));
  assert.throws(() => variant((c) => { c.deploymentName = 'Team B'; }), /deploymentName must be/);
});

test('callers that start a run and wait for it get the .sync policy: start, describe, stop, the managed rule', () => {
  const policy = Object.values(w.findResources('AWS::IAM::ManagedPolicy'))[0] as any;
  assert.equal(policy.Properties.ManagedPolicyName, 'ecr-replicator-caller');
  const statements = policy.Properties.PolicyDocument.Statement;
  const by = (sid: string) => statements.find((s: any) => s.Sid === sid);
  assert.equal(by('StartRuns').Action, 'states:StartExecution');
  assert.match(JSON.stringify(by('StartRuns').Resource), /:states:us-east-1:111111111111:stateMachine:ecr-replicator"/);
  assert.deepEqual(by('WaitForRuns').Action, ['states:DescribeExecution', 'states:StopExecution']);
  assert.match(JSON.stringify(by('WaitForRuns').Resource), /:execution:ecr-replicator:\*"/);
  assert.deepEqual(by('SyncTaskEvents').Action, ['events:PutTargets', 'events:PutRule', 'events:DescribeRule']);
  assert.match(JSON.stringify(by('SyncTaskEvents').Resource), /:rule\/StepFunctionsGetEventsForStepFunctionsExecutionRule"/);
  // The guide's JSON is this policy: the page that shows it (README.md, or the docs/ page it
  // moved to) names every action.
  const root = path.resolve(__dirname, '..', '..', '..');
  const pages = ['README.md', ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => path.join('docs', f))]
    .map((page) => ({ page, text: readFileSync(path.join(root, page), 'utf8') }))
    .filter(({ text }) => text.includes('rule/StepFunctionsGetEventsForStepFunctionsExecutionRule'));
  assert.ok(pages.length >= 1, 'a page of the guide shows the caller policy');
  for (const { page, text } of pages) {
    for (const s of callerStatements('aws', 'us-east-1', '111111111111', 'ecr-replicator')) {
      const json = s.toStatementJson();
      for (const action of [json.Action].flat()) assert.ok(text.includes(`"${action}"`), `${page} names ${action}`);
    }
  }
  // grantStartAndWait attaches it to a pipeline's role.
  const app = new App();
  const stack = new WorkflowStack(app, 'W', { env: { account: config.sourceAccount, region: config.sourceRegion }, config, allowPlaceholderCode: true });
  const role = new iam.Role(stack, 'Pipeline', { assumedBy: new iam.ServicePrincipal('codebuild.amazonaws.com') });
  stack.grantStartAndWait(role);
  const pipeline = Object.values(Template.fromStack(stack).findResources('AWS::IAM::Role', { Properties: { AssumeRolePolicyDocument: Match.objectLike({ Statement: [Match.objectLike({ Principal: { Service: 'codebuild.amazonaws.com' } })] }) } }))[0] as any;
  assert.ok(JSON.stringify(pipeline.Properties.ManagedPolicyArns).includes('CallerPolicy'));
});

test('reserved concurrency for the copying functions only, from the config', () => {
  const [w2] = deployment(variant((c) => { c.copyConcurrency = 50; }));
  for (const fn of Object.values(w2.findResources('AWS::Lambda::Function')) as any[]) {
    const name = String(fn.Properties.Description).replace('ecr-replicator step ', '');
    assert.equal(fn.Properties.ReservedConcurrentExecutions, COPY_FUNCTIONS.includes(name) ? 50 : undefined, name);
    // enumerate-repositories cuts a run's maxConcurrency to the reservation.
    assert.equal(fn.Properties.Environment.Variables.ECR_REPLICATOR_COPY_CONCURRENCY, name === 'enumerate-repositories' ? '50' : undefined, name);
  }
  assert.deepEqual(COPY_FUNCTIONS.filter((f) => FUNCTIONS.some((g) => g.name === f)), COPY_FUNCTIONS);
  for (const fn of Object.values(w.findResources('AWS::Lambda::Function')) as any[]) assert.equal(fn.Properties.ReservedConcurrentExecutions, undefined);
  // Both copy functions reserve it: 1000 each of the default 1000 leaves none unreserved.
  assert.throws(() => variant((c) => { c.copyConcurrency = 1000; }), /copyConcurrency \(1000\) is reserved by each of copy-blobs and put-manifests: 2000 of accountConcurrency 1000.* at most 450/);
});

test('every function gets the price table: the copy function\'s memory and the config\'s prices', () => {
  const [w2] = deployment(variant((c) => { c.prices = { standardTransition: 0.0000279, crossRegionGb: 0.09 }; }));
  const functions = Object.values(w2.findResources('AWS::Lambda::Function', STEP_FUNCTION)) as any[];
  assert.ok(functions.length >= 8);
  for (const fn of functions) {
    const prices = JSON.parse(fn.Properties.Environment.Variables.ECR_REPLICATOR_PRICES);
    assert.deepEqual(prices, { copyMemoryMb: 3008, standardTransition: 0.0000279, crossRegionGb: 0.09 });
  }
  assert.throws(() => variant((c) => { c.prices = { standardTransitions: 1 }; }), /prices.standardTransitions is not a price/);
  assert.throws(() => variant((c) => { c.prices = { internetGb: -1 }; }), /prices.internetGb must be a number of at least 0/);
});

test('an upstream mirror: its secret is readable by the functions, allowed for its registry only, and the schedule mirrors it', () => {
  const hub = 'arn:aws:secretsmanager:us-east-1:111111111111:secret:ecr-pullthroughcache/docker-hub';
  const key = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const [w2] = deployment(variant((c) => {
    c.upstreams = [{ registry: 'registry-1.docker.io', credentialArn: hub, kmsKeyArn: key }, { registry: 'ghcr.io' }];
    c.schedule = { expression: 'rate(1 day)', source: 'registry-1.docker.io', input: { tags: { include: ['1\\..*'] } } };
  }));
  const statements = policyStatements(w2, 'CopierRole');
  const read = statements.find((s) => s.Sid === 'ReadUpstreamSecrets');
  assert.deepEqual(read?.Action, 'secretsmanager:GetSecretValue');
  assert.deepEqual(read?.Resource, [hub, `${hub}-??????`]);
  const decrypt = statements.find((s) => s.Sid === 'DecryptUpstreamSecrets');
  assert.deepEqual(decrypt?.Resource, key);
  assert.deepEqual(decrypt?.Condition, { StringLike: { 'kms:ViaService': ['secretsmanager.us-east-1.amazonaws.com'] } });
  // The reader role's functions (summarise) read no registry, so no secret either.
  assert.ok(!JSON.stringify(policyStatements(w2, 'ReaderRole')).includes('secretsmanager'));
  const fn = Object.values(w2.findResources('AWS::Lambda::Function'))[0] as any;
  const allow = JSON.parse(fn.Properties.Environment.Variables.ECR_REPLICATOR_ALLOWED_REGISTRIES);
  assert.deepEqual(allow.sources.slice(1), [
    { registry: 'registry-1.docker.io', roleArns: [], credentialArns: [hub] },
    { registry: 'ghcr.io', roleArns: [] },
  ]);
  const schedule = Object.values(w2.findResources('AWS::Events::Rule', { Properties: { ScheduleExpression: 'rate(1 day)' } }))[0] as any;
  const input = JSON.parse(schedule.Properties.Targets[0].Input);
  assert.deepEqual(input.source, { registry: 'registry-1.docker.io', credentialArn: hub });
  assert.deepEqual(jobSchemaProblems(input), []);
  // Without upstreams, no role may read any secret.
  for (const role of ['ReaderRole', 'CopierRole']) {
    assert.ok(!JSON.stringify(policyStatements(w, role)).includes('secretsmanager'), role);
  }
  assert.throws(() => variant((c) => { c.upstreams = [{ registry: '111111111111.dkr.ecr.us-east-1.amazonaws.com' }]; }), /upstreams\[0\].registry must be a registry host that is not ECR/);
  assert.throws(() => variant((c) => { c.upstreams = [{ registry: 'ghcr.io', credentialArn: 'arn:aws:ssm:us-east-1:111111111111:parameter/x' }]; }), /upstreams\[0\].credentialArn must be a Secrets Manager secret ARN/);
  assert.throws(() => variant((c) => { c.schedule = { expression: 'rate(1 day)', source: 'quay.io' }; }), /schedule.source must name one of upstreams/);
});

test('the trusted root and the receipt key: exactly that object and key, each function the variable it needs', () => {
  const key = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const signing = { ...config, trustedRoot: 's3://acme-sigstore/roots/trusted_root.json', receiptKeyArn: key };
  const t = Template.fromStack(new WorkflowStack(new App(), 'W', {
    env: { account: config.sourceAccount, region: config.sourceRegion }, config: signing, allowPlaceholderCode: true,
  }));
  for (const f of FUNCTIONS) {
    const fn = Object.values(t.findResources('AWS::Lambda::Function', { Properties: { Description: `ecr-replicator step ${f.name}` } }))[0] as any;
    const env = fn.Properties.Environment.Variables;
    assert.equal(env.ECR_REPLICATOR_TRUSTED_ROOT, signing.trustedRoot, f.name);
    assert.equal(env.ECR_REPLICATOR_RECEIPT_KEY, f.name === 'put-manifests' ? key : undefined, f.name);
  }
  const root = policyStatements(t, 'CopierRole').find((s) => s.Sid === 'SigstoreTrustedRoot');
  assert.equal(root.Action, 's3:GetObject');
  assert.deepEqual(root.Resource, { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':s3:::acme-sigstore/roots/trusted_root.json']] });
  assert.ok(!JSON.stringify(policyStatements(t, 'ReaderRole')).includes('s3:'), 'the reader role reads no trusted root');
  const sign = policyStatements(t, 'CopierRole').find((s) => s.Sid === 'SignPromotionReceipts');
  assert.equal(sign.Action, 'kms:Sign');
  assert.equal(sign.Resource, key);
  const putManifests = Object.keys(t.findResources('AWS::Lambda::Function', { Properties: { Description: 'ecr-replicator step put-manifests' } }))[0];
  assert.deepEqual(sign.Condition, {
    StringEquals: { 'kms:SigningAlgorithm': 'ECDSA_SHA_256' },
    ArnEquals: { 'lambda:SourceFunctionArn': { 'Fn::GetAtt': [putManifests, 'Arn'] } },
  });
  assert.ok(!policyStatements(t, 'ReaderRole').some((s) => JSON.stringify(s.Action).includes('kms:Sign')));
  // Without them: no variable, no permission.
  assert.ok(!policyStatements(w, 'CopierRole').some((s) => JSON.stringify(s.Action).includes('kms:Sign')));
  assert.throws(() => validateConfig({ ...config, trustedRoot: 'https://example.com/root.json' }, 'c.json'), /c\.json: trustedRoot must be an S3 object/);
  assert.throws(() => validateConfig({ ...config, receiptKeyArn: 'arn:aws:kms:us-east-1:111111111111:alias/receipts' }, 'c.json'), /c\.json: receiptKeyArn must be a KMS key ARN/);
});

/** A cosign-style public key (ECDSA P-256, PEM). */
const PUBLIC_KEY = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
const RELEASE_IDENTITY = { issuer: 'https://token.actions.githubusercontent.com', subject: 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main' };

/** The allowlist a workflow template gives its functions (the same for each). */
function functionAllowlist(template: Template): any {
  const texts = (Object.values(template.findResources('AWS::Lambda::Function', STEP_FUNCTION)) as any[])
    .map((f) => f.Properties.Environment.Variables.ECR_REPLICATOR_ALLOWED_REGISTRIES);
  assert.equal(new Set(texts).size, 1, 'every function gets the same allowlist');
  return JSON.parse(texts[0]);
}

test('the allowlist carries the trust policies and each registry\'s repositories, prune, settings modes and required policy; destinations sharing a registry get the union', () => {
  const c = variant((c) => {
    c.trustPolicies = { release: { publicKeys: [PUBLIC_KEY], identities: [RELEASE_IDENTITY] }, audit: { identities: [{ issuer: 'https://gitlab.com', subjectRegExp: 'https://gitlab\\.com/acme/.+' }] } };
    c.allowJobTrustPolicies = false;
    c.allowPrune = false;
    Object.assign(c.destinations[0], { repositories: ['apps/**', 'team-*/api'], prune: true, settingsModes: ['copy', 'mirror'], requireSignature: 'audit' });
    // A second destination in the same registry (account and region): another prefix, its own modes.
    // It must agree on prune and settings modes (checked per registry by the functions).
    c.destinations.push({ account: '222222222222', region: 'eu-west-1', externalId: 'ext-b', repositoryPrefix: 'backup/', settingsModes: ['mirror', 'copy'], prune: true, requireSignature: 'audit' });
  });
  const allow = functionAllowlist(deployment(c)[0]);
  assert.deepEqual(allow.trustPolicies, c.trustPolicies);
  assert.equal(allow.allowJobTrustPolicies, false);
  assert.deepEqual(allow.destinations, [
    {
      registry: '222222222222.dkr.ecr.eu-west-1.amazonaws.com',
      roleArns: ['arn:aws:iam::222222222222:role/ecr-replicator-target'],
      repositories: ['apps/**', 'team-*/api', 'backup/**'],
      prune: true,
      settingsModes: ['copy', 'mirror'],
      requireSignature: 'audit',
    },
    {
      registry: '333333333333.dkr.ecr.ap-south-1.amazonaws.com',
      roleArns: ['arn:aws:iam::333333333333:role/ecr-replicator-target'],
      repositories: ['mirror/**'],
      prune: false,
      settingsModes: ['copy', 'create', 'none'],
      requireSignature: 'release',
    },
  ]);
  // Destinations of one registry that differ in prune or settings modes would lend one's
  // permissions to the other's repositories: refused.
  for (const differ of [{ prune: false }, { settingsModes: ['copy', 'mirror', 'copyRepositoryPolicy'] }]) {
    assert.throws(() => variant((v) => {
      Object.assign(v.destinations[0], { prune: true, settingsModes: ['copy', 'mirror'] });
      v.destinations.push({ account: '222222222222', region: 'eu-west-1', externalId: 'ext-b', repositoryPrefix: 'dev/', prune: true, settingsModes: ['copy', 'mirror'], ...differ });
    }), /destinations\[\]\.prune \/ destinations\[\]\.settingsModes: the destinations writing to 222222222222\.dkr\.ecr\.eu-west-1\.amazonaws\.com differ/);
  }
  // A prefix not ending in `/`: `**` crosses `/` only as a whole segment, so its scope is two globs.
  const dashed = allowlist(variant((c) => { c.destinations[1].repositoryPrefix = 'mirror-'; })) as any;
  assert.deepEqual(dashed.destinations[1].repositories, ['mirror-*', 'mirror-*/**']);
  // allowPrune is every destination's default; a destination's prune overrides it either way.
  const pruning = allowlist(variant((c) => { c.allowPrune = true; c.destinations[1].prune = false; })) as any;
  assert.deepEqual(pruning.destinations.map((d: any) => d.prune), [true, false]);
  // Without trust settings, the allowlist names none.
  const plain = allowlist(variant((c) => { delete c.trustPolicies; delete c.destinations[1].requireSignature; })) as any;
  assert.ok(!('trustPolicies' in plain) && !('allowJobTrustPolicies' in plain), JSON.stringify(plain));
  assert.ok(!plain.destinations.some((d: any) => 'requireSignature' in d));
  // One registry, one required policy.
  assert.throws(() => variant((c) => {
    c.destinations.push({ account: '333333333333', region: 'ap-south-1', externalId: 'ext-b', repositoryPrefix: 'other/' });
  }), /variant: destinations\[2\]\.requireSignature \(null\) differs from destinations\[1\]'s \("release"\): both write to 333333333333\.dkr\.ecr\.ap-south-1\.amazonaws\.com/);
});

test('a job naming a trust policy passes it as is to the schedule and the pushes; it must be one of trustPolicies', () => {
  const c = variant((c) => { c.job = { requireSignature: { policy: 'release' } }; });
  assert.deepEqual(scheduleInput(c).requireSignature, { policy: 'release' });
  assert.deepEqual(pushInput(c, { repository: 'services/web', tag: 'v1' }).requireSignature, { policy: 'release' });
  assert.throws(() => variant((c) => { c.job = { requireSignature: { policy: 'nightly' } }; }), /variant: job\.requireSignature\.policy must name one of trustPolicies \(release\)/);
  assert.throws(() => variant((c) => { c.schedule!.input = { requireSignature: { policy: 'nightly' } }; }), /schedule\.input\.requireSignature\.policy must name one of trustPolicies/);
});

test('a mistaken trust policy or destination scope fails synth, naming the field', () => {
  const fails = (change: (c: ReplicatorConfig) => void, message: RegExp) => assert.throws(() => variant(change), message);
  fails((c) => { c.destinations[0].requireSignature = 'nightly'; }, /variant: destinations\[0\]\.requireSignature \("nightly"\) must name one of trustPolicies \(release\)/);
  fails((c) => { delete c.trustPolicies; }, /destinations\[1\]\.requireSignature \("release"\) must name one of trustPolicies \(none defined\)/);
  fails((c) => { c.trustPolicies!.Release = { identities: [RELEASE_IDENTITY] }; }, /trustPolicies\.Release is not a policy name/);
  fails((c) => { c.trustPolicies!['r'.repeat(33)] = { identities: [RELEASE_IDENTITY] }; }, /trustPolicies\.r{33} is not a policy name/);
  fails((c) => { c.trustPolicies!['1st'] = { identities: [RELEASE_IDENTITY] }; }, /trustPolicies\.1st is not a policy name/);
  fails((c) => { c.trustPolicies!.empty = {}; }, /trustPolicies\.empty names no signer/);
  fails((c) => { c.trustPolicies!.empty = { publicKeys: [], identities: [] }; }, /trustPolicies\.empty names no signer/);
  fails((c) => { c.trustPolicies!.keys = { publicKeys: Array(11).fill(PUBLIC_KEY) }; }, /trustPolicies\.keys\.publicKeys has 11 keys; at most 10/);
  fails((c) => { c.trustPolicies!.ids = { identities: Array(11).fill(RELEASE_IDENTITY) }; }, /trustPolicies\.ids\.identities has 11 identities; at most 10/);
  fails((c) => { c.trustPolicies!.keys = { publicKeys: [PUBLIC_KEY, 'ssh-ed25519 AAAA'] }; }, /trustPolicies\.keys\.publicKeys\[1\] must be one ECDSA P-256 public key/);
  fails((c) => { c.trustPolicies!.keys = { publicKeys: [PUBLIC_KEY.replace(/.{4}\n-----END/, '\n-----END')] }; }, /trustPolicies\.keys\.publicKeys\[0\] must be one ECDSA P-256 public key/);
  fails((c) => { c.trustPolicies!.keys = { publicKeys: [PUBLIC_KEY + PUBLIC_KEY] }; }, /trustPolicies\.keys\.publicKeys\[0\] must be one ECDSA P-256 public key in PEM/);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  fails((c) => { c.trustPolicies!.keys = { publicKeys: [rsa] }; }, /trustPolicies\.keys\.publicKeys\[0\] must be one ECDSA P-256 public key/);
  fails((c) => { c.trustPolicies!.ids = { identities: [{ issuer: '', subject: 'x' }] }; }, /trustPolicies\.ids\.identities\[0\]\.issuer is required/);
  fails((c) => { c.trustPolicies!.ids = { identities: [{ issuer: 'https://gitlab.com' }] }; }, /trustPolicies\.ids\.identities\[0\] needs exactly one of subject .* and subjectRegExp/);
  fails((c) => { c.trustPolicies!.ids = { identities: [{ ...RELEASE_IDENTITY, subjectRegExp: '.*' }] }; }, /trustPolicies\.ids\.identities\[0\] needs exactly one of subject/);
  fails((c) => { c.destinations[0].settingsModes = ['copy', 'clone']; }, /destinations\[0\]\.settingsModes\[1\] \("clone"\) is not one of copy, create, mirror, none, copyRepositoryPolicy/);
  fails((c) => { c.destinations[0].settingsModes = []; }, /destinations\[0\]\.settingsModes needs at least one of/);
  fails((c) => { c.destinations[0].repositories = []; }, /destinations\[0\]\.repositories needs at least one glob/);
  fails((c) => { c.destinations[0].repositories = ['apps/**', '']; }, /destinations\[0\]\.repositories\[1\] must be a non-empty glob/);
  fails((c) => { c.destinations[0].repositories = Array.from({ length: 51 }, (_, i) => `team-${i}/**`); }, /destinations\[0\]\.repositories has 51 globs; at most 50/);
  fails((c) => { c.targetRepositoryPrefix = 'mirror/'; c.destinations[1].repositories = ['mirror/**', 'apps/**']; },
    /destinations\[1\]\.repositories\[1\] \("apps\/\*\*"\) must start with targetRepositoryPrefix "mirror\/": the roles may only write there, so IAM would refuse what the allowlist allows/);
  fails((c) => { c.destinations[0].repositories = ['apps/**', 'team-**']; },
    /destinations\[0\]\.repositories\[1\] \("team-\*\*"\): \*\* crosses \/ only as a whole path segment/);
  fails((c) => { c.destinations[0].repositories = ['apps/***']; }, /destinations\[0\]\.repositories\[0\] \("apps\/\*\*\*"\): \*\* crosses/);
  fails((c) => { c.trustPolicies!.a = { publicKeys: Array(10).fill(PUBLIC_KEY) }; c.trustPolicies!.b = { publicKeys: Array(10).fill(PUBLIC_KEY) }; },
    /trustPolicies and destinations\[\]\.repositories make the allowlist \(ECR_REPLICATOR_ALLOWED_REGISTRIES\) \d+ bytes; .* passes Lambda's 4096 bytes of environment/);
  fails((c) => { c.allowJobTrustPolicies = 'yes' as unknown as boolean; }, /allowJobTrustPolicies must be true or false/);
  // What is right passes: a key alone, an identity by pattern, every mode, globs within the prefix.
  variant((c) => {
    c.trustPolicies!.keys = { publicKeys: [PUBLIC_KEY, `\n${PUBLIC_KEY.trim()}`] };
    c.trustPolicies!['ci-2'] = { identities: [{ issuer: 'https://gitlab.com', subjectRegExp: 'https://gitlab\\.com/acme/.+' }] };
    c.targetRepositoryPrefix = 'mirror/';
    c.destinations[1].repositories = ['mirror/**', 'mirror/team-*/api', 'mirror/**/api'];
    c.destinations[1].settingsModes = ['copy', 'create', 'mirror', 'none', 'copyRepositoryPolicy'];
    c.allowJobTrustPolicies = true;
  });
});

/** The repository patterns (after `repository/`) a statement grants. */
function repositoryPatterns(statement: any): string[] {
  return [statement?.Resource].flat().map((r) => /:repository\/([^"]*)"/.exec(JSON.stringify(r))?.[1] ?? JSON.stringify(r));
}

test('the roles\' ECR permissions follow the repository globs where IAM can, and prune only where allowed', () => {
  const c = variant((c) => {
    c.allowPrune = false;
    Object.assign(c.destinations[0], { repositories: ['apps/**', 'team-*/api', 'apps/web', 'tools/{lint,fmt}'], prune: true });
    c.destinations.push(
      { account: '222222222222', region: 'us-west-2', externalId: 'ext-b', repositories: ['ops/**'] },
      { account: c.sourceAccount, region: 'eu-central-1', repositoryPrefix: 'dr/', repositories: ['dr/services/**'], prune: true },
    );
  });
  const [w2, t222, t333] = deployment(c);
  const statement = (t: Template, role: string, sid: string) => policyStatements(t, role).find((s) => s.Sid === sid);
  // The account's two destinations: one pattern per glob (`**` and `*` as IAM's `*`, `apps/web`
  // already within `apps/*`, an alternation widened), in any region; prune on the pruning one's only.
  for (const sid of ['CreateAndConfigureRepositories', 'PushImages']) {
    assert.deepEqual(repositoryPatterns(statement(t222, 'TargetRole', sid)), ['apps/*', 'team-*/api', 'tools/*', 'ops/*'], sid);
  }
  assert.ok(JSON.stringify(statement(t222, 'TargetRole', 'PushImages').Resource).includes(':ecr:*:222222222222:repository/ops/*'));
  assert.deepEqual(repositoryPatterns(statement(t222, 'TargetRole', 'PruneStaleTags')), ['apps/*', 'team-*/api', 'tools/*']);
  // A destination without globs: within the target prefix as before; no prune where none allows it.
  assert.deepEqual(repositoryPatterns(statement(t333, 'TargetRole', 'PushImages')), ['*']);
  assert.equal(statement(t333, 'TargetRole', 'PruneStaleTags'), undefined);
  // The workflow's own account: the copier role, in the destination's region.
  const push = statement(w2, 'CopierRole', 'PushImages');
  assert.deepEqual(repositoryPatterns(push), ['dr/services/*']);
  assert.ok(JSON.stringify(push.Resource).includes(':ecr:eu-central-1:111111111111:repository/dr/services/*'));
  assert.deepEqual(repositoryPatterns(statement(w2, 'CopierRole', 'PruneStaleTags')), ['dr/services/*']);
  // allowPrune alone still grants prune everywhere within the prefix, as before.
  const [, pruning] = deployment(variant((c) => { c.allowPrune = true; }));
  assert.deepEqual(repositoryPatterns(statement(pruning, 'TargetRole', 'PruneStaleTags')), ['*']);
});

/** Every IAM statement of a template (inline and managed policies), `Fn::Join`s of literals and
 * `Ref`/`GetAtt`s flattened to text (`<Ref AWS::Partition>`), with the role(s) it is on. */
function flatStatements(template: Template): { roles: string; statement: any; resources: string[] }[] {
  const text = (v: any): string => {
    if (typeof v === 'string') return v;
    if (v?.['Fn::Join']) return v['Fn::Join'][1].map(text).join(v['Fn::Join'][0]);
    if (v?.Ref) return `<Ref ${v.Ref}>`;
    if (v?.['Fn::GetAtt']) return `<GetAtt ${v['Fn::GetAtt'].join('.')}>`;
    return JSON.stringify(v);
  };
  return ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy'].flatMap((type) => Object.values(template.findResources(type)))
    .flatMap((p: any) => p.Properties.PolicyDocument.Statement.map((statement: any) => ({
      roles: JSON.stringify(p.Properties.Roles ?? []),
      statement,
      resources: [statement.Resource].flat().map(text),
    })));
}

test('Step Functions grants name the deployment\'s executions as NAME:* and its Map Runs\' as NAME/*, never NAME*', () => {
  for (const name of ['ecr-replicator', 'team-b']) {
    const c = variant((c) => { if (name !== 'ecr-replicator') c.deploymentName = name; });
    const [w2] = deployment(c);
    const executions = flatStatements(w2).flatMap((s) => s.resources).filter((r) => /:states:[^:]*:[^:]*:(execution|express):/.test(r));
    assert.ok(executions.length >= 5, JSON.stringify(executions));
    // As IAM matches a resource: `*` is any run of characters, `:` and `/` included.
    const literal = (text: string) => text.replace(/[.+?^$(){}|[\]\\]/g, '\\$&');
    const matches = (pattern: string, resource: string) =>
      new RegExp('^' + pattern.split('*').map(literal).join('.*') + '$').test(resource);
    const own = (kind: string, id: string) => `arn:<Ref AWS::Partition>:states:us-east-1:111111111111:${kind}:${id}`;
    for (const arn of executions) {
      assert.match(arn, new RegExp(`:(execution|express):${name}[:/]\\*$`), arn);
      // Another deployment whose name starts with this one's matches none of them.
      for (const other of [own('execution', `${name}-staging:run-1`), own('express', `${name}2:run-1:abc`), own('execution', `${name}-b/Map:child`)]) {
        assert.ok(!matches(arn, other), `${arn} matches ${other}`);
      }
    }
    // This deployment's own executions, Map Run children included, are matched.
    for (const mine of [own('execution', `${name}:run-1`), own('execution', `${name}/Repositories:child-1`), own('express', `${name}/Ranges:child:abc`)]) {
      assert.ok(executions.some((arn) => matches(arn, mine)), mine);
    }
    const children = flatStatements(w2).find((s) => s.statement.Sid === 'DistributedMapChildren');
    const arn = (kind: string, rest: string) => `arn:<Ref AWS::Partition>:states:us-east-1:111111111111:${kind}:${rest}`;
    assert.deepEqual(children?.resources, [
      arn('stateMachine', name),
      arn('execution', `${name}:*`), arn('execution', `${name}/*`),
      arn('express', `${name}:*`), arn('express', `${name}/*`),
    ]);
    const wait = flatStatements(w2).find((s) => s.statement.Sid === 'WaitForRuns');
    assert.deepEqual(wait?.resources, [arn('execution', `${name}:*`)]);
  }
});

test('the role of the functions that read no registry (summarise) holds no registry access, no secret, no trusted root, no key', () => {
  const key = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const hub = 'arn:aws:secretsmanager:us-east-1:111111111111:secret:ecr-pullthroughcache/docker-hub';
  const [w2] = deployment(variant((c) => {
    c.upstreams = [{ registry: 'registry-1.docker.io', credentialArn: hub }];
    c.trustedRoot = 's3://acme-sigstore/roots/trusted_root.json';
    c.receiptKeyArn = key;
  }));
  const summarise = Object.values(w2.findResources('AWS::Lambda::Function', { Properties: { Description: 'ecr-replicator step summarise' } }))[0] as any;
  const role = summarise.Properties.Role['Fn::GetAtt'][0];
  assert.match(role, /^ReaderRole/);
  assert.deepEqual(FUNCTIONS.filter((f) => !f.copier).map((f) => f.name), ['summarise']);
  const actions = flatStatements(w2).filter((s) => s.roles.includes(role)).flatMap((s) => [s.statement.Action].flat());
  assert.ok(actions.length > 0);
  assert.deepEqual([...new Set(actions)].sort(), ['logs:CreateLogStream', 'logs:PutLogEvents'], JSON.stringify(actions));
  // The copier role still reads registries and the secret.
  const copier = flatStatements(w2).filter((s) => s.roles.includes('CopierRole')).flatMap((s) => [s.statement.Action].flat());
  assert.ok(copier.includes('ecr:BatchGetImage') && copier.includes('secretsmanager:GetSecretValue') && copier.includes('s3:GetObject'));
});

test('kms:Sign: one statement, on exactly the receipt key, usable by put-manifests only', () => {
  const key = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const [w2] = deployment(variant((c) => { c.receiptKeyArn = key; }));
  const signing = flatStatements(w2).filter((s) => JSON.stringify(s.statement.Action).includes('kms:Sign'));
  assert.equal(signing.length, 1, JSON.stringify(signing));
  const [{ statement, roles }] = signing;
  assert.equal(statement.Action, 'kms:Sign');
  assert.equal(statement.Resource, key);
  assert.match(roles, /CopierRole/);
  const putManifests = Object.keys(w2.findResources('AWS::Lambda::Function', { Properties: { Description: 'ecr-replicator step put-manifests' } }))[0];
  assert.deepEqual(statement.Condition, {
    StringEquals: { 'kms:SigningAlgorithm': 'ECDSA_SHA_256' },
    ArnEquals: { 'lambda:SourceFunctionArn': { 'Fn::GetAtt': [putManifests, 'Arn'] } },
  });
  // Only put-manifests gets the key's variable; without a key, nothing may sign.
  for (const fn of Object.values(w2.findResources('AWS::Lambda::Function')) as any[]) {
    const expected = fn.Properties.Description === 'ecr-replicator step put-manifests' ? key : undefined;
    assert.equal(fn.Properties.Environment.Variables.ECR_REPLICATOR_RECEIPT_KEY, expected, fn.Properties.Description);
  }
  assert.ok(!flatStatements(w).some((s) => JSON.stringify(s.statement.Action).includes('kms:Sign')));
});

test('the trusted root\'s checks: its pin, its bucket\'s owner (default the workflow account), CT logs only when allowed', () => {
  const pin = `sha256:${'ab'.repeat(32)}`;
  const root = 's3://acme-sigstore/roots/trusted_root.json';
  const env = (c: ReplicatorConfig) => {
    const [w2] = deployment(c);
    return (Object.values(w2.findResources('AWS::Lambda::Function', STEP_FUNCTION)) as any[]).map((fn) => fn.Properties.Environment.Variables);
  };
  for (const vars of env(variant((c) => { c.trustedRoot = root; c.trustedRootSha256 = pin; c.trustedRootAllowNoCtLogs = true; }))) {
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_SHA256, pin);
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER, config.sourceAccount);
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT, 'true');
  }
  for (const vars of env(variant((c) => { c.trustedRoot = root; c.trustedRootBucketOwner = '555555555555'; }))) {
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER, '555555555555');
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_SHA256, undefined);
    assert.equal(vars.ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT, undefined, 'a root without CT logs is refused unless allowed');
  }
  for (const vars of env(config)) {
    assert.ok(!Object.keys(vars).some((k) => k.startsWith('ECR_REPLICATOR_TRUSTED_ROOT')), JSON.stringify(vars));
  }
  assert.throws(() => variant((c) => { c.trustedRoot = root; c.trustedRootSha256 = 'abc'; }), /trustedRootSha256 must be a sha256 digest/);
  assert.throws(() => variant((c) => { c.trustedRootBucketOwner = '555555555555'; }), /trustedRootBucketOwner must be a 12-digit account id, given with trustedRoot/);
});

test('what deploys, runs: more destinations than a job takes, or no target role name, fail synth naming the field', () => {
  assert.throws(() => variant((c) => {
    c.destinations = Array.from({ length: 11 }, (_, i) => ({ account: '123456789012', region: 'eu-west-1', repositoryPrefix: `copy-${i}/` }));
  }), /destinations has 11 entries; a job takes at most 10/);
  assert.throws(() => variant((c) => { delete (c as any).targetRoleName; }), /targetRoleName is required/);
  assert.throws(() => variant((c) => { c.targetRoleName = 'bad name'; }), /targetRoleName is required/);
});
