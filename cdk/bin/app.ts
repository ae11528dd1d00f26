#!/usr/bin/env node
/** The CDK app: the workflow in the source account, a target role in each destination account. */
import { App, Aspects } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { loadConfig } from '../lib/config';
import { TargetRoleStack } from '../lib/target-stack';
import { WorkflowStack } from '../lib/workflow-stack';

const app = new App();
const config = loadConfig(app.node.tryGetContext('ecrReplicator:configFile') ?? 'config.example.json');
new WorkflowStack(app, 'EcrReplicatorWorkflow', { env: { account: config.sourceAccount, region: config.sourceRegion }, config });
const accounts = new Set<string>();
for (const d of config.destinations) {
  if (accounts.has(d.account)) continue;
  accounts.add(d.account);
  new TargetRoleStack(app, `EcrReplicatorTarget${d.account}`, {
    env: { account: d.account, region: d.region },
    sourceAccount: config.sourceAccount,
    externalId: d.externalId,
    roleName: config.targetRoleName,
    repositoryPrefix: config.targetRepositoryPrefix,
    allowPrune: config.allowPrune,
  });
}
Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
