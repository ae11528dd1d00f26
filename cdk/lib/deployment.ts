/** Every stack of one deployment: the workflow, a target role in each other destination account, a
 * source role when the workflow runs in another account than the source, and the forwarding of
 * pushes when the workflow runs in another region. Deploy the workflow stack first: the other
 * stacks' roles trust its roles by name (`make deploy` does this order). */
import { Stack } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { crossAccountSource, DEFAULT_DEPLOYMENT_NAME, deploymentName, destinationKeys, destinationSigningProfiles, ReplicatorConfig, repositoryGrant, sourceRoleName, targetAccounts, workflowAccount } from './config';
import { PushForwardingStack, SourceRoleStack } from './source-stack';
import { TargetRoleStack } from './target-stack';
import { pushEventDetail, WorkflowStack } from './workflow-stack';

/** The stack id prefix: `EcrReplicator` for the default deployment, else from its name
 * (`team-b` gives `EcrReplicatorTeamB`), so two deployments' stacks never share a name. */
export function stackPrefix(config: ReplicatorConfig): string {
  const name = deploymentName(config);
  if (name === DEFAULT_DEPLOYMENT_NAME) return 'EcrReplicator';
  return 'EcrReplicator' + name.split('-').map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join('');
}

/** Adds the deployment's stacks to `scope` and returns them, the workflow first. */
export function deploymentStacks(scope: Construct, config: ReplicatorConfig, allowPlaceholderCode = false): Stack[] {
  const prefix = stackPrefix(config);
  const name = deploymentName(config);
  const workflowRegion = config.workflowRegion ?? config.sourceRegion;
  const workflow = new WorkflowStack(scope, `${prefix}Workflow`, {
    env: { account: workflowAccount(config), region: workflowRegion },
    config,
    allowPlaceholderCode,
  });
  const stacks: Stack[] = [workflow];
  for (const [account, destinations] of targetAccounts(config)) {
    stacks.push(new TargetRoleStack(scope, `${prefix}Target${account}`, {
      env: { account, region: destinations[0].region },
      workflowAccount: workflowAccount(config),
      externalIds: destinations.map((d) => d.externalId!),
      roleName: config.targetRoleName,
      deploymentName: name,
      ...repositoryGrant(config, destinations),
      kmsKeys: destinations.flatMap(destinationKeys),
      signingProfileArns: destinationSigningProfiles(destinations),
    }));
  }
  if (crossAccountSource(config)) {
    stacks.push(new SourceRoleStack(scope, `${prefix}Source${config.sourceAccount}`, {
      env: { account: config.sourceAccount, region: config.sourceRegion },
      workflowAccount: workflowAccount(config),
      workflowRegion,
      externalId: config.sourceExternalId!,
      roleName: sourceRoleName(config),
      deploymentName: name,
      forwardPushEvents: Boolean(config.pushTrigger),
      ...(config.pushTrigger ? { pushEventDetail: pushEventDetail(config) } : {}),
    }));
  } else if (config.pushTrigger && workflowRegion !== config.sourceRegion) {
    stacks.push(new PushForwardingStack(scope, `${prefix}Pushes${config.sourceRegion.replace(/-/g, '')}`, {
      env: { account: config.sourceAccount, region: config.sourceRegion },
      workflowAccount: workflowAccount(config),
      workflowRegion,
      pushEventDetail: pushEventDetail(config),
    }));
  }
  return stacks;
}
