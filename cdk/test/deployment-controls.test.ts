/** Issue 34's deployment controls, asserted on the synthesized templates: copy concurrency against
 * the account's, managed signing grants, the push trigger's reconciling schedule and forwarding
 * filters, and the replication lag dashboard and alarm. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { Template } from 'aws-cdk-lib/assertions';
import { jobDestinations, prefixGlobs, RECONCILE_EXPRESSION, ReplicatorConfig } from '../lib/config';
import { config, deployment, variant } from './synth';
import { jobSchemaProblems } from '../lib/inputs';
import { COPY_FUNCTIONS, METRICS_NAMESPACE } from '../lib/workflow-stack';



/** The statements of the inline policies on roles whose logical id contains `role`. */
function policyStatements(template: Template, role: string): any[] {
  return Object.values(template.findResources('AWS::IAM::Policy'))
    .filter((p: any) => JSON.stringify(p.Properties.Roles).includes(role))
    .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
}

/** Every statement of a template naming `action`. */
function statementsWith(template: Template, action: string): any[] {
  return Object.values(template.findResources('AWS::IAM::Policy'))
    .flatMap((p: any) => p.Properties.PolicyDocument.Statement)
    .filter((s: any) => [s.Action].flat().includes(action));
}

/** The scheduled rules of a workflow template (rules with a ScheduleExpression). */
function scheduleRules(template: Template): any[] {
  return (Object.values(template.findResources('AWS::Events::Rule')) as any[]).filter((r) => r.Properties.ScheduleExpression);
}

test('copyConcurrency: both copy functions reserve it, and Lambda keeps 100 of accountConcurrency unreserved', () => {
  assert.equal(COPY_FUNCTIONS.length, 2);
  // (1000 - 100) / 2: the largest reservation the default account concurrency leaves room for.
  const [w] = deployment(variant((c) => { c.copyConcurrency = 450; }));
  const reserved = (Object.values(w.findResources('AWS::Lambda::Function')) as any[])
    .map((f) => f.Properties.ReservedConcurrentExecutions).filter((n) => n !== undefined);
  assert.deepEqual(reserved, [450, 450]);
  assert.throws(() => variant((c) => { c.copyConcurrency = 451; }),
    /variant: copyConcurrency \(451\) is reserved by each of copy-blobs and put-manifests: 902 of accountConcurrency 1000, leaving 98 unreserved where Lambda keeps at least 100: at most 450/);
  // A raised quota (less what other functions reserve) is the config's to give.
  variant((c) => { c.accountConcurrency = 3000; c.copyConcurrency = 1450; });
  assert.throws(() => variant((c) => { c.accountConcurrency = 3000; c.copyConcurrency = 1451; }), /copyConcurrency \(1451\) .* at most 1450/);
  assert.throws(() => variant((c) => { c.accountConcurrency = 150; c.copyConcurrency = 30; }), /copyConcurrency \(30\) .* leaving 90 unreserved .* at most 25/);
  assert.throws(() => variant((c) => { c.accountConcurrency = 50; }), /variant: accountConcurrency must be an integer of at least 100/);
  assert.throws(() => variant((c) => { c.copyConcurrency = 0; }), /variant: copyConcurrency must be an integer of at least 1/);
  assert.throws(() => variant((c) => { c.copyConcurrency = 2.5; }), /variant: copyConcurrency must be an integer of at least 1/);
});

test('a configured job\'s maxConcurrency above copyConcurrency fails synth, naming where it is given', () => {
  variant((c) => { c.copyConcurrency = 20; c.job = { maxConcurrency: 20 }; c.schedule!.input = { maxConcurrency: 5 }; });
  assert.throws(() => variant((c) => { c.copyConcurrency = 20; c.job = { maxConcurrency: 21 }; }),
    /variant: job\.maxConcurrency \(21\) is above copyConcurrency \(20\)/);
  assert.throws(() => variant((c) => { c.copyConcurrency = 20; c.schedule!.input = { maxConcurrency: 64 }; }),
    /variant: schedule\.input\.maxConcurrency \(64\) is above copyConcurrency \(20\)/);
  // Without a reservation there is nothing to exceed.
  variant((c) => { delete c.copyConcurrency; c.job = { maxConcurrency: 500 }; });
});

const PROFILE = 'arn:aws:signer:eu-west-1:222222222222:/signing-profiles/release_images';
const OTHER_PROFILE = 'arn:aws:signer:eu-west-1:555555555555:/signing-profiles/shared_profile';

test('managed signing: the role that pushes to a destination may SignPayload with exactly its signing profiles', () => {
  const own = 'arn:aws:signer:eu-central-1:111111111111:/signing-profiles/dr_images';
  const c = variant((c) => {
    c.destinations[0].signingProfileArns = [PROFILE, OTHER_PROFILE];
    delete c.destinations[1].signingProfileArns;
    c.destinations.push({ account: c.sourceAccount, region: 'eu-central-1', repositoryPrefix: 'dr/', signingProfileArns: [own] });
  });
  const [w, t222, t333] = deployment(c);
  // The target role in the destination's account: one statement, exactly the profiles.
  const signing = statementsWith(t222, 'signer:SignPayload');
  assert.equal(signing.length, 1);
  assert.equal(signing[0].Sid, 'ManagedSigning');
  assert.deepEqual(signing[0].Action, 'signer:SignPayload');
  assert.deepEqual(signing[0].Resource, [PROFILE, OTHER_PROFILE]);
  assert.ok(policyStatements(t222, 'TargetRole').includes(signing[0]));
  // Another account's destination without profiles: no signing.
  assert.deepEqual(statementsWith(t333, 'signer:SignPayload'), []);
  // A destination in the workflow's own account: the copier role pushes there, so it signs.
  const copier = statementsWith(w, 'signer:SignPayload');
  assert.equal(copier.length, 1);
  assert.equal(copier[0].Resource, own);
  assert.ok(policyStatements(w, 'CopierRole').includes(copier[0]));
  assert.ok(!policyStatements(w, 'ReaderRole').some((s) => JSON.stringify(s.Action).includes('signer:')));
  // Without profiles, no stack may sign.
  const unsigned = variant((c) => { for (const d of c.destinations) delete d.signingProfileArns; });
  for (const t of deployment(unsigned)) assert.deepEqual(statementsWith(t, 'signer:SignPayload'), []);
  // The example signs in its second destination's account only.
  const [, e222, e333] = deployment(config);
  assert.deepEqual(statementsWith(e222, 'signer:SignPayload'), []);
  assert.deepEqual(statementsWith(e333, 'signer:SignPayload')[0].Resource, config.destinations[1].signingProfileArns![0]);
});

test('signing profile ARNs are checked for shape and partition, naming the field', () => {
  const fails = (arns: unknown, message: RegExp) => assert.throws(() => variant((c) => { c.destinations[0].signingProfileArns = arns as string[]; }), message);
  fails(['arn:aws-cn:signer:eu-west-1:222222222222:/signing-profiles/release'], /variant: destinations\[0\]\.signingProfileArns\[0\] \(.*\) must be a Signer signing profile ARN in aws/);
  fails([PROFILE, `${PROFILE}/AbCdEf1234`], /destinations\[0\]\.signingProfileArns\[1\] .* \(no version\)/);
  fails(['arn:aws:signer:eu-west-1:222222222222:signing-profiles/release'], /destinations\[0\]\.signingProfileArns\[0\]/);
  fails(['arn:aws:signer:eu-west-1:222222222222:/signing-profiles/release-images'], /destinations\[0\]\.signingProfileArns\[0\]/);
  fails(['arn:aws:signer:eu-west-1:222222222222:/signing-profiles/*'], /destinations\[0\]\.signingProfileArns\[0\]/);
  fails([], /destinations\[0\]\.signingProfileArns needs at least one/);
  fails(Array.from({ length: 11 }, (_, i) => `${PROFILE}${i}`), /destinations\[0\]\.signingProfileArns has 11 profiles; an ECR signing configuration names at most 10/);
  // China: the destination's partition, in the ARN and nowhere else.
  const cn = variant((c) => {
    c.sourceRegion = 'cn-north-1';
    c.destinations = [{ account: '222222222222', region: 'cn-northwest-1', externalId: 'ext-cn', signingProfileArns: ['arn:aws-cn:signer:cn-northwest-1:222222222222:/signing-profiles/release'] }];
    delete c.trustPolicies;
  });
  const [, target] = deployment(cn);
  assert.deepEqual(statementsWith(target, 'signer:SignPayload')[0].Resource, 'arn:aws-cn:signer:cn-northwest-1:222222222222:/signing-profiles/release');
  assert.throws(() => variant((c) => {
    c.sourceRegion = 'cn-north-1';
    c.destinations = [{ account: '222222222222', region: 'cn-northwest-1', externalId: 'ext-cn', signingProfileArns: [PROFILE] }];
    delete c.trustPolicies;
  }), /destinations\[0\]\.signingProfileArns\[0\] .* in aws-cn/);
});

test('a push trigger without a schedule gets a daily reconciling run over what the pushes cover; reconcileSchedule false opts out', () => {
  const [w] = deployment(variant((c) => { delete c.schedule; }));
  const rules = scheduleRules(w);
  assert.equal(rules.length, 1);
  assert.equal(rules[0].Properties.ScheduleExpression, RECONCILE_EXPRESSION);
  assert.equal(RECONCILE_EXPRESSION, 'rate(1 day)');
  const input = JSON.parse(rules[0].Properties.Targets[0].Input);
  assert.deepEqual(jobSchemaProblems(input), []);
  // The example's pushes cover services/: so does the reconciling run.
  assert.deepEqual(input.repositories, { include: prefixGlobs('services/'), exclude: [] });
  assert.deepEqual(prefixGlobs('services/'), ['services/**']);
  assert.deepEqual(input.destinations, jobDestinations(config));
  assert.equal(input.images, undefined, 'a listing run, not one image');
  // Opting out, or a schedule of one's own: no reconciling run besides it.
  assert.deepEqual(scheduleRules(deployment(variant((c) => { delete c.schedule; c.pushTrigger!.reconcileSchedule = false; }))[0]), []);
  assert.deepEqual(scheduleRules(deployment(config)[0]).map((r) => r.Properties.ScheduleExpression), ['rate(6 hours)']);
  // No push trigger, no schedule: nothing scheduled.
  assert.deepEqual(scheduleRules(deployment(variant((c) => { delete c.schedule; delete c.pushTrigger; }))[0]), []);
  assert.throws(() => variant((c) => { c.pushTrigger!.reconcileSchedule = 'no' as unknown as boolean; }), /pushTrigger\.reconcileSchedule must be true or false/);
});

test('the reconciling run keeps the job\'s filters within the push prefix, and never lists the deployment\'s own copies', () => {
  const input = (change: (c: ReplicatorConfig) => void) => {
    const rules = scheduleRules(deployment(variant((c) => { delete c.schedule; change(c); }))[0]);
    return JSON.parse(rules[0].Properties.Targets[0].Input);
  };
  const narrowed = input((c) => { c.job = { repositories: { include: ['services/api-*', 'tools/**'], exclude: ['services/legacy'] }, tags: { exclude: ['.*-rc\\d*'] } }; });
  assert.deepEqual(narrowed.repositories, { include: ['services/api-*'], exclude: ['services/legacy'] });
  assert.deepEqual(narrowed.tags, { exclude: ['.*-rc\\d*'] });
  // No prefix: the job's repositories as they are.
  assert.equal(input((c) => { c.pushTrigger = {}; }).repositories, undefined);
  // The source registry itself as a destination: its copies are excluded, as the push rule does.
  const own = input((c) => { c.pushTrigger = {}; c.destinations.push({ account: c.sourceAccount, region: c.sourceRegion, repositoryPrefix: 'mirror/' }); });
  assert.deepEqual(own.repositories, { include: [], exclude: prefixGlobs('mirror/') });
  // A glob that matches within the prefix and outside it cannot be narrowed.
  assert.throws(() => variant((c) => { delete c.schedule; c.job = { repositories: { include: ['serv*/**'] } }; }),
    /variant: pushTrigger\.reconcileSchedule cannot narrow job\.repositories\.include \["serv\*\/\*\*"\] to pushTrigger\.repositoryPrefix "services\/"/);
  assert.throws(() => variant((c) => { delete c.schedule; c.job = { repositories: { include: ['tools/**'] } }; }),
    /variant: pushTrigger\.reconcileSchedule has nothing to reconcile/);
  variant((c) => { delete c.schedule; c.pushTrigger!.reconcileSchedule = false; c.job = { repositories: { include: ['serv*/**'] } }; });
});

/** The workflow's push rule's pattern. */
function pushRulePattern(workflow: Template): any {
  const rule = Object.values(workflow.findResources('AWS::Events::Rule', { Properties: { Description: 'ecr-replicator: replicate a pushed image' } }))[0] as any;
  return rule.Properties.EventPattern;
}

test('pushes forwarded across accounts or Regions pass the same filters as the workflow\'s push rule', () => {
  const expected = { 'action-type': ['PUSH'], result: ['SUCCESS'], 'image-tag': [{ 'anything-but': '' }], 'repository-name': [{ prefix: 'services/' }] };
  const crossAccount = variant((c) => { c.workflowAccount = '444444444444'; c.sourceExternalId = 'ext-src'; });
  const crossRegion = variant((c) => { c.workflowRegion = 'eu-west-1'; });
  const ownCopies = variant((c) => {
    c.workflowRegion = 'eu-west-1';
    c.pushTrigger = {};
    c.destinations.push({ account: c.sourceAccount, region: c.sourceRegion, repositoryPrefix: 'mirror/' });
  });
  for (const [name, c] of [['another account', crossAccount], ['another Region', crossRegion], ['own copies excluded', ownCopies]] as const) {
    const templates = deployment(c);
    const forwarder = templates[templates.length - 1];
    const rules = Object.values(forwarder.findResources('AWS::Events::Rule')) as any[];
    assert.equal(rules.length, 1, name);
    // The same pattern: the source account and Region's successful tagged pushes, the same repositories.
    assert.deepEqual(rules[0].Properties.EventPattern, pushRulePattern(templates[0]), name);
  }
  assert.deepEqual(pushRulePattern(deployment(crossRegion)[0]).detail, expected);
  const own = deployment(ownCopies);
  assert.deepEqual(pushRulePattern(own[0]).detail['repository-name'], [{ 'anything-but': { prefix: 'mirror/' } }]);
});

test('a push trigger needing cross-Region forwarding fails synth where EventBridge has no cross-Region targets (China)', () => {
  const china = (change: (c: ReplicatorConfig) => void) => variant((c) => {
    c.sourceRegion = 'cn-north-1';
    c.destinations = [{ account: '222222222222', region: 'cn-northwest-1', externalId: 'ext-cn' }];
    delete c.trustPolicies;
    change(c);
  });
  assert.throws(() => china((c) => { c.workflowRegion = 'cn-northwest-1'; }),
    /variant: pushTrigger needs the source's pushes \(cn-north-1\) forwarded to the workflow's Region \(workflowRegion cn-northwest-1\), and EventBridge cannot target an event bus in another Region in aws-cn/);
  assert.throws(() => china((c) => { c.workflowRegion = 'cn-northwest-1'; c.workflowAccount = '444444444444'; c.sourceExternalId = 'ext-src'; }), /pushTrigger needs .* in aws-cn/);
  // The same Region (another account: same-Region forwarding), or no push trigger: fine.
  deployment(china((c) => { c.workflowAccount = '444444444444'; c.sourceExternalId = 'ext-src'; }));
  deployment(china((c) => { c.workflowRegion = 'cn-northwest-1'; delete c.pushTrigger; }));
  // GovCloud (US) routes between its Regions.
  const gov = variant((c) => {
    c.sourceRegion = 'us-gov-west-1';
    c.workflowRegion = 'us-gov-east-1';
    c.destinations = [{ account: '222222222222', region: 'us-gov-east-1', externalId: 'ext-gov' }];
    delete c.trustPolicies;
  });
  const templates = deployment(gov);
  const forwarder = templates[templates.length - 1];
  assert.ok(JSON.stringify(forwarder.toJSON()).includes(':events:us-gov-east-1:111111111111:event-bus/default'));
  assert.throws(() => variant((c) => { c.workflowRegion = 'cn-north-1'; }), /workflowRegion \(cn-north-1\) is in another partition than sourceRegion/);
});

/** The dashboard's widgets, its body's tokens as text. */
function dashboardWidgets(template: Template): any[] {
  const dashboard = Object.values(template.findResources('AWS::CloudWatch::Dashboard'))[0] as any;
  const body = dashboard.Properties.DashboardBody;
  const text = typeof body === 'string' ? body : body['Fn::Join'][1].map((p: any) => (typeof p === 'string' ? p : 'TOKEN')).join('');
  return JSON.parse(text).widgets;
}

test('the dashboard shows each destination\'s replication lag: maximum, p99 and p50', () => {
  const [w] = deployment(config);
  const lag = dashboardWidgets(w).find((x) => String(x.properties.title).startsWith('Replication lag'));
  assert.ok(lag, 'a replication lag widget');
  const shown = lag.properties.metrics.map((m: any[]) => `${m[0]} ${m[1]} ${m[2]}=${m[3]} ${m[4].stat}`).sort();
  const registries = [...new Set(jobDestinations(config).map((d) => String(d.registry)))];
  assert.equal(registries.length, 2);
  const expected = registries.flatMap((r) => ['Maximum', 'p99', 'p50'].map((stat) => `${METRICS_NAMESPACE} ReplicationLag Destination=${r} ${stat}`)).sort();
  assert.deepEqual(shown, expected);
});

test('lagAlarmSeconds: one p99 alarm per destination, notifying the failure topic as the failure alarm does', () => {
  const [plain] = deployment(variant((c) => { delete c.lagAlarmSeconds; }));
  // The failure alarm and the push queue's two (dead letters, malformed pushes).
  plain.resourceCountIs('AWS::CloudWatch::Alarm', 3);
  const [w] = deployment(variant((c) => { c.lagAlarmSeconds = 900; }));
  const alarms = Object.values(w.findResources('AWS::CloudWatch::Alarm')) as any[];
  const failure = alarms.find((a) => a.Properties.MetricName === 'ExecutionsFailed');
  const lag = alarms.filter((a) => a.Properties.MetricName === 'ReplicationLag');
  const registries = [...new Set(jobDestinations(config).map((d) => String(d.registry)))];
  assert.deepEqual(lag.map((a) => a.Properties.Dimensions[0].Value).sort(), [...registries].sort());
  const topic = Object.keys(w.findResources('AWS::SNS::Topic'));
  assert.equal(topic.length, 1);
  for (const alarm of lag) {
    const p = alarm.Properties;
    assert.equal(p.Namespace, METRICS_NAMESPACE);
    assert.deepEqual(p.Dimensions.map((d: any) => d.Name), ['Destination']);
    assert.equal(p.ExtendedStatistic, 'p99');
    assert.equal(p.Statistic, undefined);
    assert.equal(p.Threshold, 900);
    assert.equal(p.ComparisonOperator, 'GreaterThanThreshold');
    assert.equal(p.Period, 900);
    assert.equal(p.EvaluateLowSampleCountPercentile, 'evaluate', 'a quiet deployment still alarms (its p99 is about its maximum)');
    assert.equal(p.TreatMissingData, 'notBreaching');
    assert.deepEqual(p.AlarmActions, failure.Properties.AlarmActions);
    assert.deepEqual(p.AlarmActions, [{ Ref: topic[0] }]);
  }
  assert.throws(() => variant((c) => { c.lagAlarmSeconds = 0; }), /variant: lagAlarmSeconds must be a number of seconds above 0/);
  assert.throws(() => variant((c) => { c.lagAlarmSeconds = '600' as unknown as number; }), /variant: lagAlarmSeconds must be/);
});
