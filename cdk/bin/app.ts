#!/usr/bin/env node
/** The CDK app: the deployment's stacks, from the file named by `ecrReplicator:configFile`. */
import { App, Aspects } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { loadConfig } from '../lib/config';
import { deploymentStacks } from '../lib/deployment';

const app = new App();
const configFile = app.node.tryGetContext('ecrReplicator:configFile');
if (!configFile) {
  // No default: a bare `cdk deploy` must not deploy the example's accounts.
  throw new Error('No deployment configuration: copy cdk/config.example.json to a file of your own (e.g. cdk/config.json), '
    + 'fill in your accounts, and pass it: npx cdk deploy -c ecrReplicator:configFile=config.json (make deploy CDK_ARGS="-c ecrReplicator:configFile=config.json")');
}
const config = loadConfig(configFile);
const placeholder = String(app.node.tryGetContext('ecrReplicator:allowPlaceholderCode') ?? 'false') === 'true';
deploymentStacks(app, config, placeholder);
Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
