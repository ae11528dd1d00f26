/** Assertions on the synthesized templates (node:test, run by `npm test` from `make test`). */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync } from 'fs';
import * as path from 'path';
import { App, Aspects } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { loadConfig } from '../lib/config';
import { TargetRoleStack } from '../lib/target-stack';
import { COPIER_ROLE_NAME, FUNCTIONS, WorkflowStack } from '../lib/workflow-stack';

const config = loadConfig('config.example.json');

function synth() {
  const app = new App();
  const workflow = new WorkflowStack(app, 'Workflow', { env: { account: config.sourceAccount, region: config.sourceRegion }, config });
  const target = new TargetRoleStack(app, 'Target', {
    env: { account: '222222222222', region: 'eu-west-1' },
    sourceAccount: config.sourceAccount,
    externalId: 'ext-123',
    roleName: 'ecr-replicator-target',
    repositoryPrefix: 'mirror/',
  });
  Aspects.of(app).add(new AwsSolutionsChecks());
  return { workflow, target, w: Template.fromStack(workflow), t: Template.fromStack(target) };
}

const { workflow, target, w, t } = synth();

test('one arm64 provided.al2023 function per binary, the copy step large and 15 minutes', () => {
  w.resourceCountIs('AWS::Lambda::Function', FUNCTIONS.length);
  w.allResourcesProperties('AWS::Lambda::Function', { Runtime: 'provided.al2023', Architectures: ['arm64'], Handler: 'bootstrap', LoggingConfig: { LogFormat: 'JSON' } });
  w.hasResourceProperties('AWS::Lambda::Function', { Description: 'ecr-replicator step copy-blobs', Timeout: 900, MemorySize: 3008 });
  w.resourceCountIs('AWS::Logs::LogGroup', FUNCTIONS.length + 1);
  w.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
});

test('the definition is the committed file with every placeholder bound to its function', () => {
  const sm = Object.values(w.findResources('AWS::StepFunctions::StateMachine'))[0] as any;
  const committed = readFileSync(path.resolve(__dirname, '..', '..', '..', 'statemachine', 'replicate.asl.json'), 'utf8');
  assert.equal(sm.Properties.DefinitionString, committed);
  const subs = sm.Properties.DefinitionSubstitutions;
  const placeholders = [...committed.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]);
  assert.deepEqual(new Set(Object.keys(subs)), new Set(placeholders));
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
    detail: { 'action-type': ['PUSH'], result: ['SUCCESS'], 'image-tag': [{ 'anything-but': '' }], 'repository-name': [{ prefix: 'services/' }] },
  });
  const transformer = rule.Properties.Targets[0].InputTransformer;
  assert.deepEqual(Object.values(transformer.InputPathsMap).sort(), ['$.detail.image-tag', '$.detail.repository-name']);
  const template = String(transformer.InputTemplate);
  assert.ok(template.includes('"source":{"registry":"111111111111.dkr.ecr.us-east-1.amazonaws.com"}'), template);
  // What EventBridge sends for a push of services/web:v1.2 (placeholders become JSON strings).
  const [repoKey] = Object.entries(transformer.InputPathsMap).find(([, p]) => p === '$.detail.repository-name')!;
  const [tagKey] = Object.entries(transformer.InputPathsMap).find(([, p]) => p === '$.detail.image-tag')!;
  const input = JSON.parse(template.replace(`<${repoKey}>`, '"services/web"').replace(`<${tagKey}>`, '"v1.2"'));
  assert.deepEqual(input.images, [{ repository: 'services/web', tag: 'v1.2' }]);
  assert.equal(input.repositories, undefined);
  assert.equal(input.tags, undefined);
  assert.match(input.destinations[0].roleArn, /ecr-replicator-target/);
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
    sourceAccount: config.sourceAccount,
    externalId: 'ext-123',
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
  for (const stack of [workflow, target]) {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(errors.map((e) => `${e.id}: ${e.entry.data}`), []);
  }
});
