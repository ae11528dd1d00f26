#!/usr/bin/env node
/** The CDK app: the workflow, a target role in each other destination account, and a source role
 * when the workflow runs in another account than the source. Deploy the workflow stack first: the
 * other stacks' roles trust its roles by name (`make deploy` does this order). */
import { App, Aspects } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { crossAccountSource, loadConfig, SOURCE_ROLE_NAME, targetAccounts, workflowAccount } from '../lib/config';
import { SourceRoleStack } from '../lib/source-stack';
import { TargetRoleStack } from '../lib/target-stack';
import { WorkflowStack } from '../lib/workflow-stack';

const app = new App();
const config = loadConfig(app.node.tryGetContext('ecrReplicator:configFile') ?? 'config.example.json');
const placeholder = String(app.node.tryGetContext('ecrReplicator:allowPlaceholderCode') ?? 'false') === 'true';
const workflowRegion = config.workflowRegion ?? config.sourceRegion;
new WorkflowStack(app, 'EcrReplicatorWorkflow', {
  env: { account: workflowAccount(config), region: workflowRegion },
  config,
  allowPlaceholderCode: placeholder,
});
for (const [account, destinations] of targetAccounts(config)) {
  new TargetRoleStack(app, `EcrReplicatorTarget${account}`, {
    env: { account, region: destinations[0].region },
    workflowAccount: workflowAccount(config),
    externalIds: destinations.map((d) => d.externalId!),
    roleName: config.targetRoleName,
    repositoryPrefix: config.targetRepositoryPrefix,
    allowPrune: config.allowPrune,
    kmsKeys: destinations.flatMap((d) => d.kmsKeys ?? []),
  });
}
if (crossAccountSource(config)) {
  new SourceRoleStack(app, `EcrReplicatorSource${config.sourceAccount}`, {
    env: { account: config.sourceAccount, region: config.sourceRegion },
    workflowAccount: workflowAccount(config),
    workflowRegion,
    externalId: config.sourceExternalId!,
    roleName: config.sourceRoleName ?? SOURCE_ROLE_NAME,
    forwardPushEvents: Boolean(config.pushTrigger),
  });
}
Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
