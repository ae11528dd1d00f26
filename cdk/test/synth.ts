/** Helpers the CDK tests share (no tests here): configuration variants validated as `cdk synth`
 * validates them, and deployments synthesized with cdk-nag. */
import * as assert from 'node:assert/strict';
import { App, Aspects } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { loadConfig, ReplicatorConfig, validateConfig } from '../lib/config';
import { deploymentStacks } from '../lib/deployment';

/** The example configuration (`config.example.json`). */
export const config = loadConfig('config.example.json');

/** A variant of the example configuration, validated as `cdk synth` does. */
export function variant(change: (c: ReplicatorConfig) => void): ReplicatorConfig {
  const c = JSON.parse(JSON.stringify(config)) as ReplicatorConfig;
  change(c);
  return validateConfig(c, 'variant');
}

/** Every stack of a deployment, synthesized with cdk-nag; any AwsSolutions error fails the test. */
export function deployment(c: ReplicatorConfig): Template[] {
  const app = new App();
  const stacks = deploymentStacks(app, c, true);
  Aspects.of(app).add(new AwsSolutionsChecks());
  const templates = stacks.map((s) => Template.fromStack(s));
  for (const stack of stacks) {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(errors.map((e) => `${stack.stackName} ${e.id}: ${e.entry.data}`), []);
  }
  return templates;
}
