/** The source-account stack, when the workflow runs in another account: a read-only role the
 * workflow's functions assume, and the forwarding of ECR push events to the workflow's bus. */
import { Stack, StackProps } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { readSourceStatements } from './permissions';
import { deploymentNames, TAGGED_PUSH_DETAIL } from './workflow-stack';

export interface SourceRoleStackProps extends StackProps {
  workflowAccount: string;
  workflowRegion: string;
  externalId: string;
  roleName: string;
  /** The workflow deployment's name (its roles are trusted by name; default `ecr-replicator`). */
  deploymentName?: string;
  /** Forward ECR push events (for the push trigger) to the workflow account's default bus. */
  forwardPushEvents: boolean;
  /** The pushes to forward: the workflow's push rule's `detail` (workflow-stack.ts
   * `pushEventDetail`; default: every successful tagged push). */
  pushEventDetail?: Record<string, unknown>;
}

export class SourceRoleStack extends Stack {
  public readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: SourceRoleStackProps) {
    super(scope, id, props);
    // Only the copier role reads registries (the reader role's functions read none).
    const copier = new iam.ArnPrincipal(
      `arn:${this.partition}:iam::${props.workflowAccount}:role/${deploymentNames(props.deploymentName).copierRole}`,
    );
    this.role = new iam.Role(this, 'SourceRole', {
      roleName: props.roleName,
      description: 'ecr-replicator: read the source registry for the workflow in another account',
      assumedBy: copier.withConditions({ StringEquals: { 'sts:ExternalId': props.externalId } }),
    });
    readSourceStatements(this.partition, this.account, this.region).forEach((s) => this.role.addToPolicy(s));
    if (props.forwardPushEvents) forwardPushes(this, props.workflowAccount, props.workflowRegion, props.pushEventDetail);
    NagSuppressions.addStackSuppressions(this, [
      { id: 'AwsSolutions-IAM5', reason: 'Reads cover every source repository by design (filters are in the job); GetAuthorizationToken has no resource scope.' },
    ]);
  }
}

/** A rule sending this account and region's ECR pushes that the workflow's push rule matches
 * (`detail`: the same filters, so no push is forwarded only to be dropped) to the workflow's
 * default bus (another account, another region, or both). EventBridge rules see only their own
 * region's events; a bus in another region is a target that needs a role (EventBridge user guide,
 * "Sending and receiving events between AWS Regions"), which the EventBus target creates; China
 * has no cross-Region targets (config.ts `CROSS_REGION_EVENT_BUS_PARTITIONS`). */
export function forwardPushes(scope: Stack, workflowAccount: string, workflowRegion: string, detail: Record<string, unknown> = TAGGED_PUSH_DETAIL): events.Rule {
  const bus = events.EventBus.fromEventBusArn(scope, 'WorkflowBus',
    `arn:${scope.partition}:events:${workflowRegion}:${workflowAccount}:event-bus/default`);
  return new events.Rule(scope, 'ForwardPushes', {
    description: 'ecr-replicator: send ECR pushes to the workflow',
    // This account and Region's own pushes, as the workflow's rule matches them (a bus may also
    // receive events other accounts or Regions send it).
    eventPattern: { source: ['aws.ecr'], detailType: ['ECR Image Action'], account: [scope.account], region: [scope.region], detail },
    targets: [new targets.EventBus(bus)],
  });
}

export interface PushForwardingStackProps extends StackProps {
  workflowAccount: string;
  workflowRegion: string;
  /** The pushes to forward (as `SourceRoleStackProps.pushEventDetail`). */
  pushEventDetail?: Record<string, unknown>;
}

/** The source region's forwarding of pushes when the workflow runs in the source account but in
 * another region (in another account, SourceRoleStack forwards them). */
export class PushForwardingStack extends Stack {
  constructor(scope: Construct, id: string, props: PushForwardingStackProps) {
    super(scope, id, props);
    forwardPushes(this, props.workflowAccount, props.workflowRegion, props.pushEventDetail);
    NagSuppressions.addStackSuppressions(this, [
      { id: 'AwsSolutions-IAM5', reason: 'The forwarding role EventBridge uses may put events on the workflow bus only.' },
    ]);
  }
}
