/** Deployment configuration: from the file named by CDK context `ecrReplicator:configFile`. */
import { readFileSync } from 'fs';
import * as path from 'path';

export interface DestinationConfig {
  /** Destination account id. */
  account: string;
  /** Destination region. */
  region: string;
  /** External ID the target role requires. */
  externalId: string;
  /** Prefix put before repository names in this destination. */
  repositoryPrefix?: string;
}

export interface ReplicatorConfig {
  sourceAccount: string;
  sourceRegion: string;
  destinations: DestinationConfig[];
  /** Name of the role created in each destination account. */
  targetRoleName: string;
  /** The target role may only create/configure repositories starting with this ('' = any). */
  targetRepositoryPrefix?: string;
  /** Scheduled runs: an EventBridge schedule expression and the job fields besides source/destinations. */
  schedule?: { expression: string; input: Record<string, unknown> };
  /** Runs on ECR pushes (PUSH, SUCCESS), optionally only for repositories with this prefix. */
  pushTrigger?: { repositoryPrefix?: string };
  /** Let the target roles remove stale tags for jobs with `"prune": true` (default false). */
  allowPrune?: boolean;
  /** Subscribed to failed executions. */
  notificationEmail?: string;
}

export function loadConfig(file: string): ReplicatorConfig {
  const config = JSON.parse(readFileSync(path.resolve(__dirname, '..', '..', file), 'utf8')) as ReplicatorConfig;
  const accountRe = /^\d{12}$/;
  if (!accountRe.test(config.sourceAccount)) throw new Error(`${file}: sourceAccount must be a 12-digit account id`);
  if (!config.destinations?.length) throw new Error(`${file}: destinations needs at least one entry`);
  config.destinations.forEach((d, i) => {
    if (!accountRe.test(d.account)) throw new Error(`${file}: destinations[${i}].account must be a 12-digit account id`);
    if (!d.externalId || d.externalId.length < 2) throw new Error(`${file}: destinations[${i}].externalId is required`);
  });
  return config;
}

/** The ECR registry host of an account and region. */
export function registryHost(account: string, region: string): string {
  const suffix = region.startsWith('cn-') ? 'amazonaws.com.cn' : 'amazonaws.com';
  return `${account}.dkr.ecr.${region}.${suffix}`;
}

/** The job `destinations` array for the execution input. */
export function jobDestinations(config: ReplicatorConfig): Record<string, unknown>[] {
  return config.destinations.map((d) => ({
    registry: registryHost(d.account, d.region),
    roleArn: `arn:aws:iam::${d.account}:role/${config.targetRoleName}`,
    externalId: d.externalId,
    ...(d.repositoryPrefix ? { repositoryPrefix: d.repositoryPrefix } : {}),
  }));
}
