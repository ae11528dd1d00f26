/** Checks, at synth, that every trigger's execution input is a job the functions accept and fits
 * EventBridge: a target's `Input` and an input transformer's `InputTemplate` are at most 8,192
 * characters (EventBridge API reference, `Target.Input` and `InputTransformer.InputTemplate`:
 * "Length Constraints: Maximum length of 8192"). A mistyped or oversized schedule then fails
 * `cdk synth`, naming the field, instead of every run (or the deploy). */
import { readFileSync } from 'fs';
import * as path from 'path';
import { Stack } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import Ajv2020 from 'ajv/dist/2020';

/** EventBridge's limit on a target's `Input` and `InputTemplate`, in characters. */
export const EVENTBRIDGE_INPUT_MAX = 8192;

/** The committed JSON Schema of the execution input (`ecr-replicator schema`). */
export const JOB_SCHEMA_PATH = path.resolve(__dirname, '..', '..', '..', 'schema', 'job.schema.json');

/** What EventBridge puts in place of a push event's fields when checking the push input. */
const SAMPLE_EVENT_FIELDS: Record<string, string> = {
  '$.detail.repository-name': 'services/web',
  '$.detail.image-tag': 'v1.2.3',
  '$.detail.image-digest': `sha256:${'0'.repeat(64)}`,
};

let validateJob: ((input: unknown) => string[]) | undefined;

/** Problems of one execution input against the job schema (`field: problem`), none when valid. */
export function jobSchemaProblems(input: unknown): string[] {
  if (!validateJob) {
    const ajv = new Ajv2020({ allErrors: true, strict: false });
    // schemars' integer formats: the ranges of the Rust types.
    ajv.addFormat('uint32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffffffff });
    ajv.addFormat('uint64', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= 0 });
    const check = ajv.compile(JSON.parse(readFileSync(JOB_SCHEMA_PATH, 'utf8')));
    validateJob = (value) => (check(value) ? [] : (check.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? 'is invalid'}${e.params && 'additionalProperty' in e.params ? ` (${String(e.params.additionalProperty)})` : ''}`));
  }
  return validateJob(input);
}

/** The execution input a target sends (transformer placeholders filled with samples); the target
 * as a template has it (`Input`) or as the construct resolves it (`input`). */
export function renderedInput(target: Record<string, any>): { text: string; input: unknown } | undefined {
  const plain = target.Input ?? target.input;
  if (typeof plain === 'string') return { text: plain, input: JSON.parse(plain) };
  const transformer = target.InputTransformer ?? target.inputTransformer;
  if (!transformer) return undefined;
  const text = String(transformer.InputTemplate ?? transformer.inputTemplate);
  let filled = text;
  for (const [key, eventPath] of Object.entries(transformer.InputPathsMap ?? transformer.inputPathsMap ?? {}) as [string, string][]) {
    const sample = SAMPLE_EVENT_FIELDS[eventPath];
    if (sample === undefined) throw new Error(`no sample for the event field ${eventPath}`);
    filled = filled.split(`<${key}>`).join(JSON.stringify(sample));
  }
  return { text, input: JSON.parse(filled) };
}

/** Every problem of the triggers' inputs, each naming the rule and the field. */
export function checkTriggerInputs(stack: Stack, rules: events.Rule[]): string[] {
  const problems: string[] = [];
  for (const rule of rules) {
    const targets = stack.resolve((rule.node.defaultChild as events.CfnRule).targets) as Record<string, any>[];
    for (const target of targets ?? []) {
      const rendered = renderedInput(target);
      if (!rendered) continue;
      const name = `${rule.node.id} input`;
      if (rendered.text.length > EVENTBRIDGE_INPUT_MAX) {
        problems.push(`${name} is ${rendered.text.length} characters; EventBridge takes at most ${EVENTBRIDGE_INPUT_MAX}: move filters into fewer, broader patterns`);
      }
      problems.push(...jobSchemaProblems(rendered.input).map((p) => `${name}: ${p} (schema/job.schema.json)`));
    }
  }
  return problems;
}
