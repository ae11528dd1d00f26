/** The destination-account stack: the role the copying functions assume, nothing else. */
import { Stack, StackProps } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { destinationStatements, registryTokenStatement } from './permissions';
import { deploymentNames } from './workflow-stack';

export interface TargetRoleStackProps extends StackProps {
  /** The account the workflow (and its copier role) runs in. */
  workflowAccount: string;
  /** Every external ID the destinations in this account use (one role trusts them all). */
  externalIds: string[];
  roleName: string;
  /** The workflow deployment's name (its copier role is trusted by name; default `ecr-replicator`). */
  deploymentName?: string;
  /** Repositories the role may create and push to ('' = any). */
  repositoryPrefix?: string;
  /** Globs on the repository names the role may create and push to, instead of the prefix
   * (IAM's `*` for both `*` and `**`). */
  repositories?: string[];
  /** Allow jobs with `"prune": true` to remove stale tags (ecr:BatchDeleteImage). Off by default. */
  allowPrune?: boolean;
  /** The globs prune is limited to (default: every repository the role may push to). */
  pruneRepositories?: string[];
  /** Customer managed KMS keys destination repositories may be created with. */
  kmsKeys?: string[];
  /** Signer signing profiles ECR managed signing signs this role's pushes with (`signer:SignPayload`). */
  signingProfileArns?: string[];
}

export class TargetRoleStack extends Stack {
  public readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: TargetRoleStackProps) {
    super(scope, id, props);
    if (!props.externalIds.length) throw new Error(`${id}: at least one external ID is needed`);
    const copier = `arn:${this.partition}:iam::${props.workflowAccount}:role/${deploymentNames(props.deploymentName).copierRole}`;
    const externalIds = [...new Set(props.externalIds)];
    this.role = new iam.Role(this, 'TargetRole', {
      roleName: props.roleName,
      description: 'ecr-replicator: create, configure and push to repositories in this account',
      assumedBy: new iam.ArnPrincipal(copier).withConditions({
        StringEquals: { 'sts:ExternalId': externalIds.length === 1 ? externalIds[0] : externalIds },
      }),
    });
    const statements = destinationStatements({
      partition: this.partition,
      account: this.account,
      regions: ['*'],
      repositoryPrefix: props.repositoryPrefix,
      repositories: props.repositories,
      allowPrune: props.allowPrune,
      pruneRepositories: props.pruneRepositories,
      kmsKeys: props.kmsKeys,
      signingProfileArns: props.signingProfileArns,
    });
    [...statements, registryTokenStatement()].forEach((s) => this.role.addToPolicy(s));
    NagSuppressions.addResourceSuppressions(this.role, [
      { id: 'AwsSolutions-IAM5', reason: 'Repository names are chosen by the jobs within the configured prefix or repository globs; GetAuthorizationToken has no resource scope.' },
    ], true);
  }
}
