/** The source-account stack, when the workflow runs in another account: a read-only role the
 * workflow's functions assume, and the forwarding of ECR push events to the workflow's bus. */
import { Stack, StackProps } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { readSourceStatements } from './permissions';
import { COPIER_ROLE_NAME, READER_ROLE_NAME } from './workflow-stack';

export interface SourceRoleStackProps extends StackProps {
  workflowAccount: string;
  workflowRegion: string;
  externalId: string;
  roleName: string;
  /** Forward ECR push events (for the push trigger) to the workflow account's default bus. */
  forwardPushEvents: boolean;
}

export class SourceRoleStack extends Stack {
  public readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: SourceRoleStackProps) {
    super(scope, id, props);
    const [copier, reader] = [COPIER_ROLE_NAME, READER_ROLE_NAME].map(
      (name) => new iam.ArnPrincipal(`arn:${this.partition}:iam::${props.workflowAccount}:role/${name}`),
    );
    const condition = { StringEquals: { 'sts:ExternalId': props.externalId } };
    this.role = new iam.Role(this, 'SourceRole', {
      roleName: props.roleName,
      description: 'ecr-replicator: read the source registry for the workflow in another account',
      assumedBy: copier.withConditions(condition),
    });
    this.role.assumeRolePolicy?.addStatements(new iam.PolicyStatement({
      actions: ['sts:AssumeRole'], principals: [reader], conditions: condition,
    }));
    readSourceStatements(this.partition, this.account, this.region).forEach((s) => this.role.addToPolicy(s));
    if (props.forwardPushEvents) {
      const bus = events.EventBus.fromEventBusArn(this, 'WorkflowBus',
        `arn:${this.partition}:events:${props.workflowRegion}:${props.workflowAccount}:event-bus/default`);
      new events.Rule(this, 'ForwardPushes', {
        description: 'ecr-replicator: send ECR pushes to the workflow account',
        eventPattern: { source: ['aws.ecr'], detailType: ['ECR Image Action'], detail: { 'action-type': ['PUSH'], result: ['SUCCESS'] } },
        targets: [new targets.EventBus(bus)],
      });
    }
    NagSuppressions.addStackSuppressions(this, [
      { id: 'AwsSolutions-IAM5', reason: 'Reads cover every source repository by design (filters are in the job); GetAuthorizationToken has no resource scope.' },
    ]);
  }
}
