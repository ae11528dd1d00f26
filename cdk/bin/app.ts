#!/usr/bin/env node
/** The CDK app: the deployment's stacks, from the file named by `ecrReplicator:configFile`. */
import { App, Aspects } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { loadConfig } from '../lib/config';
import { deploymentStacks } from '../lib/deployment';

const app = new App();
const config = loadConfig(app.node.tryGetContext('ecrReplicator:configFile') ?? 'config.example.json');
const placeholder = String(app.node.tryGetContext('ecrReplicator:allowPlaceholderCode') ?? 'false') === 'true';
deploymentStacks(app, config, placeholder);
Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
