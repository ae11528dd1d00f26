/** The destination-account stack: the role the copying functions assume, nothing else. */
import { Stack, StackProps } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { COPIER_ROLE_NAME } from './workflow-stack';

export interface TargetRoleStackProps extends StackProps {
  sourceAccount: string;
  externalId: string;
  roleName: string;
  /** Repositories the role may create and push to ('' = any). */
  repositoryPrefix?: string;
  /** Allow jobs with `"prune": true` to remove stale tags (ecr:BatchDeleteImage). Off by default. */
  allowPrune?: boolean;
}

export class TargetRoleStack extends Stack {
  public readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: TargetRoleStackProps) {
    super(scope, id, props);
    const copier = `arn:${this.partition}:iam::${props.sourceAccount}:role/${COPIER_ROLE_NAME}`;
    this.role = new iam.Role(this, 'TargetRole', {
      roleName: props.roleName,
      description: 'ecr-replicator: create, configure and push to repositories in this account',
      assumedBy: new iam.ArnPrincipal(copier).withConditions({ StringEquals: { 'sts:ExternalId': props.externalId } }),
      maxSessionDuration: undefined,
    });
    const repositories = `arn:${this.partition}:ecr:*:${this.account}:repository/${props.repositoryPrefix ?? ''}*`;
    this.role.addToPolicy(new iam.PolicyStatement({
      sid: 'CreateAndConfigureRepositories',
      actions: [
        'ecr:CreateRepository', 'ecr:DescribeRepositories', 'ecr:PutImageTagMutability', 'ecr:PutImageScanningConfiguration',
        'ecr:PutLifecyclePolicy', 'ecr:DeleteLifecyclePolicy', 'ecr:GetLifecyclePolicy', 'ecr:SetRepositoryPolicy',
        'ecr:DeleteRepositoryPolicy', 'ecr:GetRepositoryPolicy', 'ecr:TagResource', 'ecr:UntagResource', 'ecr:ListTagsForResource',
      ],
      resources: [repositories],
    }));
    this.role.addToPolicy(new iam.PolicyStatement({
      sid: 'PushImages',
      actions: [
        'ecr:BatchCheckLayerAvailability', 'ecr:InitiateLayerUpload', 'ecr:UploadLayerPart', 'ecr:CompleteLayerUpload',
        'ecr:PutImage', 'ecr:BatchGetImage', 'ecr:DescribeImages', 'ecr:ListImages',
      ],
      resources: [repositories],
    }));
    if (props.allowPrune) {
      this.role.addToPolicy(new iam.PolicyStatement({ sid: 'PruneStaleTags', actions: ['ecr:BatchDeleteImage'], resources: [repositories] }));
    }
    this.role.addToPolicy(new iam.PolicyStatement({ sid: 'RegistryToken', actions: ['ecr:GetAuthorizationToken'], resources: ['*'] }));
    NagSuppressions.addResourceSuppressions(this.role, [
      { id: 'AwsSolutions-IAM5', reason: 'Repository names are chosen by the jobs within the configured prefix; GetAuthorizationToken has no resource scope.' },
    ], true);
  }
}
