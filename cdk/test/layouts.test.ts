/** The configuration's `layouts` (OCI image layouts in S3 the workflow imports from and exports
 * into), asserted on the allowlist the functions get, their environment and the IAM the
 * synthesized templates grant. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { generateKeyPairSync } from 'crypto';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { allowlist, LayoutConfig, loadConfig } from '../lib/config';
import { config, deployment, variant } from './synth';
import { FUNCTIONS, LAYOUT_READERS, LAYOUT_WRITERS } from '../lib/workflow-stack';
import { LAYOUT_ROOT_FILES } from '../lib/permissions';


/** A transfer key as `openssl ecparam -name prime256v1 ... | openssl ec -pubout` writes it. */
const p256 = () => generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
const KEY_A = p256();
const KEY_B = p256();
const LAYOUT_KEY = 'arn:aws:kms:us-east-1:111111111111:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
/** The deployment's receipt key, which signs an export's statement. */
const RECEIPT_KEY = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';


/** `arn:${AWS::Partition}:s3:::REST` as CloudFormation gets it. */
const s3Arn = (rest: string) => ({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, `:s3:::${rest}`]] });

/** The step each function's logical id runs (`ecr-replicator step NAME`). */
function stepsByLogicalId(template: Template): Record<string, string> {
  return Object.fromEntries(Object.entries(template.findResources('AWS::Lambda::Function'))
    .map(([logical, f]: [string, any]) => [logical, String(f.Properties.Description).replace(/^ecr-replicator step /, '')]));
}

/** The `lambda:SourceFunctionArn` a statement is limited to, as the steps' names. */
function callers(template: Template, statement: any): string[] {
  const steps = stepsByLogicalId(template);
  return [statement.Condition?.ArnEquals?.['lambda:SourceFunctionArn']].flat()
    .map((arn: any) => steps[arn?.['Fn::GetAtt']?.[0]] ?? JSON.stringify(arn));
}

/** Every statement of every IAM policy of a template, with the policy's logical id and roles. */
function allStatements(template: Template): { policy: string; roles: string; statement: any }[] {
  return ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy'].flatMap((type) => Object.entries(template.findResources(type)))
    .flatMap(([policy, p]: [string, any]) => p.Properties.PolicyDocument.Statement.map((statement: any) => ({ policy, roles: JSON.stringify(p.Properties.Roles ?? []), statement })));
}

/** The statements of the policy `name` (`LayoutImports`, `LayoutExports`, `LayoutExportSeal`;
 * none: `[]`), and the roles it is on. */
function layoutPolicy(template: Template, name = 'LayoutImports'): { roles: any[]; statements: any[] } {
  const policies = Object.values(template.findResources('AWS::IAM::Policy', { Properties: { PolicyName: Match.stringLikeRegexp(`^${name}`) } })) as any[];
  assert.ok(policies.length <= 1, `one ${name} policy`);
  return { roles: policies[0]?.Properties.Roles ?? [], statements: policies[0]?.Properties.PolicyDocument.Statement ?? [] };
}

/** A step's function's ARN as the template names it. */
function stepArn(template: Template, step: string): any {
  const logical = Object.entries(stepsByLogicalId(template)).find(([, name]) => name === step)![0];
  return { 'Fn::GetAtt': [logical, 'Arn'] };
}

/** The steps whose function gets the environment variable `name`, and its values. */
function stepsWith(template: Template, name: string): { steps: string[]; values: unknown[] } {
  const found = (Object.values(template.findResources('AWS::Lambda::Function', { Properties: { Description: Match.stringLikeRegexp('^ecr-replicator step ') } })) as any[])
    .filter((f) => f.Properties.Environment.Variables[name] !== undefined);
  return {
    steps: found.map((f) => String(f.Properties.Description).replace(/^ecr-replicator step /, '')).sort(),
    values: [...new Set(found.map((f) => JSON.stringify(f.Properties.Environment.Variables[name])))].map((v) => JSON.parse(v)),
  };
}

/** The work bucket's ARN (`Fn::GetAtt`), and of its objects under `prefix`. */
function workBucket(template: Template): { arn: any; objects: (prefix: string) => any } {
  const [logical] = Object.keys(template.findResources('AWS::S3::Bucket'));
  const arn = { 'Fn::GetAtt': [logical, 'Arn'] };
  return { arn, objects: (prefix) => ({ 'Fn::Join': ['', [arn, `/${prefix}*`]] }) };
}

/** What every step function gets as its allowlist (the same for each). */
function functionAllowlist(template: Template): any {
  const texts = (Object.values(template.findResources('AWS::Lambda::Function', { Properties: { Description: Match.stringLikeRegexp('^ecr-replicator step ') } })) as any[])
    .map((f) => f.Properties.Environment.Variables.ECR_REPLICATOR_ALLOWED_REGISTRIES);
  assert.equal(texts.length, FUNCTIONS.length);
  assert.equal(new Set(texts).size, 1, 'every function gets the same allowlist');
  return JSON.parse(texts[0]);
}

/** Two layouts: a prefix (trailing `/` dropped) in the workflow's account, and a whole bucket of
 * another account, encrypted, under a required policy. */
const LAYOUTS: LayoutConfig[] = [
  { bucket: 'air-gap-in', prefix: 'releases/2026/', import: true, transferKey: KEY_A },
  { bucket: 'air-gap.whole', import: true, bucketOwner: '555555555555', kmsKeyArn: LAYOUT_KEY, requireSignature: 'release', transferKey: KEY_B },
];

test('the allowlist names each layout as s3://BUCKET/PREFIX, import only, with the owner, key, policy and transfer key the config pins', () => {
  const [w] = deployment(variant((c) => { c.layouts = LAYOUTS; }));
  assert.deepEqual(functionAllowlist(w).layouts, [
    { location: 's3://air-gap-in/releases/2026', import: true, transferKey: KEY_A },
    { location: 's3://air-gap.whole', import: true, bucketOwner: '555555555555', kmsKey: LAYOUT_KEY, requireSignature: 'release', transferKey: KEY_B },
  ]);
  // The rest of the allowlist is unchanged by them.
  const plain = allowlist(config) as any;
  const { layouts: _layouts, ...rest } = functionAllowlist(w);
  assert.deepEqual(rest, plain);
  assert.ok(!('layouts' in plain), 'no layouts configured, none allowed');
});

test('the source-reading functions may get exactly the layouts\' objects and list exactly their prefixes, in the expected account; no other function, and nothing without layouts', () => {
  assert.deepEqual([...LAYOUT_READERS].sort(), ['copy-blobs', 'ensure-repository', 'enumerate-images', 'enumerate-repositories', 'plan-image', 'put-manifests']);
  // Every reader is a step; the steps left out are those that never open a layout.
  assert.deepEqual(FUNCTIONS.map((f) => f.name).filter((n) => !LAYOUT_READERS.includes(n)).sort(), ['summarise', 'verify-repository']);
  const [w] = deployment(variant((c) => { c.layouts = LAYOUTS; }));
  const { roles, statements: all } = layoutPolicy(w);
  // The first step keeps the newest statement imported from each layout in the work bucket
  // (a later run refuses an older one): that prefix only, that function only.
  const MARKS = ['NewestLayoutStatements', 'ListNewestLayoutStatements'];
  const marks = all.filter((s) => MARKS.includes(s.Sid));
  const first = Object.entries(stepsByLogicalId(w)).find(([, step]) => step === 'enumerate-repositories')![0];
  assert.equal(marks.length, 2);
  const caller1 = { 'lambda:SourceFunctionArn': [{ 'Fn::GetAtt': [first, 'Arn'] }] };
  assert.deepEqual(marks[0].Action, ['s3:GetObject', 's3:PutObject']);
  assert.match(JSON.stringify(marks[0].Resource), /WorkBucket.*layout-statements\/\*/);
  assert.deepEqual(marks[0].Condition, { ArnEquals: caller1 });
  assert.equal(marks[1].Action, 's3:ListBucket');
  assert.match(JSON.stringify(marks[1].Resource), /WorkBucket/);
  assert.deepEqual(marks[1].Condition, { ArnEquals: caller1, StringLike: { 's3:prefix': ['layout-statements/*'] } });
  const statements = all.filter((s) => !MARKS.includes(s.Sid));
  assert.equal(roles.length, 1);
  assert.match(roles[0].Ref, /^CopierRole/);
  const readers = LAYOUT_READERS.map((name) => Object.entries(stepsByLogicalId(w)).find(([, step]) => step === name)![0]);
  const caller = { 'lambda:SourceFunctionArn': readers.map((logical) => ({ 'Fn::GetAtt': [logical, 'Arn'] })) };
  assert.deepEqual(statements, [
    {
      Sid: 'ReadLayoutObjects0', Effect: 'Allow', Action: 's3:GetObject',
      Resource: s3Arn('air-gap-in/releases/2026/*'),
      Condition: { ArnEquals: caller, StringEquals: { 's3:ResourceAccount': '111111111111' } },
    },
    {
      Sid: 'ListLayoutObjects0', Effect: 'Allow', Action: 's3:ListBucket',
      Resource: s3Arn('air-gap-in'),
      Condition: { ArnEquals: caller, StringEquals: { 's3:ResourceAccount': '111111111111' }, StringLike: { 's3:prefix': ['releases/2026/*'] } },
    },
    {
      Sid: 'ReadLayoutObjects1', Effect: 'Allow', Action: 's3:GetObject',
      Resource: s3Arn('air-gap.whole/*'),
      Condition: { ArnEquals: caller, StringEquals: { 's3:ResourceAccount': '555555555555' } },
    },
    {
      Sid: 'ListLayoutObjects1', Effect: 'Allow', Action: 's3:ListBucket',
      Resource: s3Arn('air-gap.whole'),
      Condition: { ArnEquals: caller, StringEquals: { 's3:ResourceAccount': '555555555555' } },
    },
    {
      Sid: 'DecryptLayoutObjects', Effect: 'Allow', Action: 'kms:Decrypt',
      Resource: LAYOUT_KEY,
      Condition: { StringEquals: { 'kms:ViaService': { 'Fn::Join': ['', ['s3.us-east-1.', { Ref: 'AWS::URLSuffix' }]] } } },
    },
  ]);
  for (const s of statements.filter((s) => s.Action.startsWith('s3:'))) {
    assert.deepEqual(callers(w, s).sort(), [...LAYOUT_READERS].sort(), s.Sid);
  }
  // Nothing else in the deployment names a layout bucket or its key: no other role, no other
  // statement of the copier role (which ensure-repository and verify-repository share).
  const others = allStatements(w).filter(({ policy }) => !policy.startsWith('LayoutImports'));
  assert.equal(allStatements(w).length - others.length, all.length);
  assert.deepEqual(others.filter(({ statement }) => /air-gap|0f1e2d3c/.test(JSON.stringify(statement))), []);
  // (The work bucket's own listing, ListWorkBucket, names its selections only.)
  const listsOrDecrypts = ({ statement }: { statement: any }) => statement.Sid !== 'ListWorkBucket' && /s3:ListBucket|kms:Decrypt/.test(JSON.stringify(statement.Action));
  assert.deepEqual(others.filter(listsOrDecrypts), []);
  // Import-only layouts: no export grant on either role, and no function gets the work bucket
  // or the receipt key for one.
  assert.deepEqual(layoutPolicy(w, 'LayoutExports').statements, []);
  assert.deepEqual(layoutPolicy(w, 'LayoutExportSeal').statements, []);
  assert.deepEqual(stepsWith(w, 'ECR_REPLICATOR_WORK_BUCKET').steps, ['enumerate-images', 'enumerate-repositories']);
  assert.deepEqual(stepsWith(w, 'ECR_REPLICATOR_RECEIPT_KEY').steps, []);
  // Without layouts: no layout policy, no listing, no decrypting through S3.
  const [plain] = deployment(config);
  assert.deepEqual(layoutPolicy(plain).statements, []);
  assert.ok(!allStatements(plain).some(listsOrDecrypts));
});

test('layouts sharing a bucket share its two statements: every prefix\'s objects, the listing for those prefixes; a whole-bucket entry lists without a prefix condition', () => {
  const key = 'arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const [w] = deployment(variant((c) => {
    c.layouts = [
      { bucket: 'air-gap-in', prefix: 'team-a', import: true, transferKey: KEY_A },
      { bucket: 'air-gap-in', prefix: 'team-b/drop', import: true, kmsKeyArn: key, transferKey: KEY_B },
      { bucket: 'air-gap-all', import: true, transferKey: KEY_A },
      { bucket: 'air-gap-all', prefix: 'nested', import: true, transferKey: KEY_B },
    ];
  }));
  const statements = layoutPolicy(w).statements.filter((s) => !/NewestLayoutStatements$/.test(s.Sid));
  const by = (sid: string) => statements.find((s) => s.Sid === sid);
  assert.deepEqual(statements.map((s) => s.Sid), ['ReadLayoutObjects0', 'ListLayoutObjects0', 'ReadLayoutObjects1', 'ListLayoutObjects1', 'DecryptLayoutObjects']);
  assert.deepEqual(by('ReadLayoutObjects0').Resource, [s3Arn('air-gap-in/team-a/*'), s3Arn('air-gap-in/team-b/drop/*')]);
  assert.deepEqual(by('ListLayoutObjects0').Condition.StringLike, { 's3:prefix': ['team-a/*', 'team-b/drop/*'] });
  assert.deepEqual(by('ReadLayoutObjects1').Resource, s3Arn('air-gap-all/*'));
  assert.equal(by('ListLayoutObjects1').Condition.StringLike, undefined);
  assert.deepEqual(by('ListLayoutObjects1').Resource, s3Arn('air-gap-all'));
  assert.equal(by('DecryptLayoutObjects').Resource, key);
  assert.deepEqual(functionAllowlist(w).layouts.map((l: any) => l.location), ['s3://air-gap-in/team-a', 's3://air-gap-in/team-b/drop', 's3://air-gap-all', 's3://air-gap-all/nested']);
});

test('the end-to-end IAM check\'s deployment (config.iam.json) imports from s3://ecr-replicator-layouts/air-gap, and China\'s (config.cn.json) grants it in its own partition', () => {
  const iamConfig = loadConfig('test/config.iam.json');
  const [w] = deployment(iamConfig);
  assert.deepEqual(functionAllowlist(w).layouts, [
    { location: 's3://ecr-replicator-layouts/air-gap', import: true, transferKey: iamConfig.layouts![0].transferKey },
    { location: 's3://ecr-replicator-layouts/export', export: true },
  ]);
  const statements = layoutPolicy(w).statements.filter((s) => !/NewestLayoutStatements$/.test(s.Sid));
  assert.deepEqual(statements.map((s) => [s.Sid, s.Action, s.Resource, s.Condition.StringEquals, s.Condition.StringLike]), [
    ['ReadLayoutObjects0', 's3:GetObject', s3Arn('ecr-replicator-layouts/air-gap/*'), { 's3:ResourceAccount': '123456789012' }, undefined],
    ['ListLayoutObjects0', 's3:ListBucket', s3Arn('ecr-replicator-layouts'), { 's3:ResourceAccount': '123456789012' }, { 's3:prefix': ['air-gap/*'] }],
  ]);
  for (const s of statements) assert.deepEqual(callers(w, s).sort(), [...LAYOUT_READERS].sort());

  const cn = loadConfig('test/config.cn.json');
  const [cnWorkflow] = deployment(cn);
  const decrypt = layoutPolicy(cnWorkflow).statements.find((s) => s.Sid === 'DecryptLayoutObjects');
  assert.equal(decrypt.Resource, cn.layouts![0].kmsKeyArn);
  assert.match(decrypt.Resource, /^arn:aws-cn:kms:cn-north-1:/);
  assert.deepEqual(decrypt.Condition, { StringEquals: { 'kms:ViaService': { 'Fn::Join': ['', ['s3.cn-north-1.', { Ref: 'AWS::URLSuffix' }]] } } });
  assert.ok(!JSON.stringify(cnWorkflow.toJSON()).includes('arn:aws:'));
});

test('the end-to-end IAM check\'s deployment (config.iam.json) exports into s3://ecr-replicator-layouts/export: exactly these statements, on the copier role for the exporting steps and on the reader role for summarise', () => {
  const iamConfig = loadConfig('test/config.iam.json');
  const [w] = deployment(iamConfig);
  assert.deepEqual([...LAYOUT_WRITERS].sort(), ['copy-blobs', 'enumerate-images', 'plan-image', 'put-manifests', 'summarise']);
  // Every writer is a step; the steps left out never open a destination layout.
  assert.deepEqual(FUNCTIONS.map((f) => f.name).filter((n) => !LAYOUT_WRITERS.includes(n)).sort(), ['ensure-repository', 'enumerate-repositories', 'verify-repository']);
  const writers = ['enumerate-images', 'plan-image', 'copy-blobs', 'put-manifests'];
  assert.deepEqual(FUNCTIONS.filter((f) => LAYOUT_WRITERS.includes(f.name) && f.copier).map((f) => f.name).sort(), [...writers].sort());
  const caller = (steps: string[]) => ({ 'lambda:SourceFunctionArn': steps.map((step) => stepArn(w, step)) });
  const owner = { 's3:ResourceAccount': '123456789012' };
  const work = workBucket(w);
  // The layout's statements for `steps`: reading its objects; the writers writing blobs/ and
  // uploads/ only (and aborting a multipart upload there), the uploads staged there listed and
  // deleted; the seal writing index.json, oci-layout and the statement only; the listing of
  // its prefix; all in the owner's bucket.
  const layoutFor = (steps: string[], uploads: boolean) => [
    {
      Sid: 'ReadExportObjects0', Effect: 'Allow', Action: 's3:GetObject',
      Resource: s3Arn('ecr-replicator-layouts/export/*'),
      Condition: { ArnEquals: caller(steps), StringEquals: owner },
    },
    ...(uploads ? [{
      Sid: 'WriteLayoutBlobs0', Effect: 'Allow', Action: ['s3:PutObject', 's3:AbortMultipartUpload'],
      Resource: [s3Arn('ecr-replicator-layouts/export/blobs/*'), s3Arn('ecr-replicator-layouts/export/uploads/*')],
      Condition: { ArnEquals: caller(steps), StringEquals: owner },
    }, {
      Sid: 'StagedLayoutUploads0', Effect: 'Allow', Action: ['s3:ListMultipartUploadParts', 's3:DeleteObject'],
      Resource: s3Arn('ecr-replicator-layouts/export/uploads/*'),
      Condition: { ArnEquals: caller(steps), StringEquals: owner },
    }] : [{
      Sid: 'WriteLayoutIndex0', Effect: 'Allow', Action: 's3:PutObject',
      Resource: ['index.json', 'oci-layout', 'ecr-replicator-transfer.json', 'ecr-replicator-transfer.dsse.json'].map((f) => s3Arn(`ecr-replicator-layouts/export/${f}`)),
      Condition: { ArnEquals: caller(steps), StringEquals: owner },
    }]),
    {
      Sid: 'ListExportLayouts0', Effect: 'Allow', Action: 's3:ListBucket',
      Resource: s3Arn('ecr-replicator-layouts'),
      Condition: { ArnEquals: caller(steps), StringEquals: owner, StringLike: { 's3:prefix': ['export/*'] } },
    },
  ];

  const copier = layoutPolicy(w, 'LayoutExports');
  assert.equal(copier.roles.length, 1);
  assert.match(copier.roles[0].Ref, /^CopierRole/);
  assert.deepEqual(copier.statements, [
    ...layoutFor(writers, true),
    {
      Sid: 'ReadExportNames', Effect: 'Allow', Action: 's3:GetObject',
      Resource: work.objects('layout-names/'),
      Condition: { ArnEquals: caller(writers) },
    },
    {
      Sid: 'ListExportNames', Effect: 'Allow', Action: 's3:ListBucket',
      Resource: work.arn,
      Condition: { ArnEquals: caller(writers), StringLike: { 's3:prefix': ['layout-names/*'] } },
    },
    {
      Sid: 'RecordExportNames', Effect: 'Allow', Action: 's3:PutObject',
      Resource: [work.objects('layout-names/'), work.objects('layout-provenance/')],
      Condition: { ArnEquals: caller(['put-manifests']) },
    },
  ]);

  const seal = layoutPolicy(w, 'LayoutExportSeal');
  assert.equal(seal.roles.length, 1);
  assert.match(seal.roles[0].Ref, /^ReaderRole/);
  assert.deepEqual(seal.statements, [
    ...layoutFor(['summarise'], false),
    {
      Sid: 'SealExportNames', Effect: 'Allow', Action: ['s3:GetObject', 's3:DeleteObject'],
      Resource: [work.objects('layout-names/'), work.objects('layout-provenance/')],
      Condition: { ArnEquals: caller(['summarise']) },
    },
    {
      Sid: 'ListSealedExportNames', Effect: 'Allow', Action: 's3:ListBucket',
      Resource: work.arn,
      Condition: { ArnEquals: caller(['summarise']), StringLike: { 's3:prefix': ['layout-names/*', 'layout-provenance/*'] } },
    },
    {
      Sid: 'SignExportStatements', Effect: 'Allow', Action: 'kms:Sign',
      Resource: iamConfig.receiptKeyArn,
      Condition: { StringEquals: { 'kms:SigningAlgorithm': 'ECDSA_SHA_256' }, ArnEquals: caller(['summarise']) },
    },
    {
      Sid: 'ExportStatementKey', Effect: 'Allow', Action: 'kms:GetPublicKey',
      Resource: iamConfig.receiptKeyArn,
      Condition: { ArnEquals: caller(['summarise']) },
    },
  ]);

  // Nothing else names the export layout, its names or admissions, and nothing else may sign
  // but put-manifests' receipts (ReceiptSigning, as before).
  const exported = /ecr-replicator-layouts\/export|layout-names|layout-provenance/;
  assert.deepEqual(allStatements(w).filter(({ policy, statement }) => !/^LayoutExport/.test(policy) && exported.test(JSON.stringify(statement))), []);
  const signing = allStatements(w).filter(({ statement }) => JSON.stringify(statement.Action).includes('kms:Sign'));
  assert.deepEqual(signing.map(({ statement }) => [statement.Sid, callers(w, statement)]), [['SignPromotionReceipts', ['put-manifests']], ['SignExportStatements', ['summarise']]]);
  // No KMS key on the layout: no key grant.
  assert.ok(!allStatements(w).some(({ statement }) => /kms:(GenerateDataKey|Decrypt)/.test(JSON.stringify(statement.Action))));

  // The exporting steps get the work bucket (enumerate-repositories has it for its selections),
  // and summarise the receipt key beside put-manifests.
  const bucket = stepsWith(w, 'ECR_REPLICATOR_WORK_BUCKET');
  assert.deepEqual(bucket.steps, [...LAYOUT_WRITERS, 'enumerate-repositories'].sort());
  assert.equal(bucket.values.length, 1);
  assert.deepEqual(stepsWith(w, 'ECR_REPLICATOR_RECEIPT_KEY'), { steps: ['put-manifests', 'summarise'], values: [iamConfig.receiptKeyArn] });
});

test('an export layout encrypted with a KMS key, a whole bucket of another account and a layout both imported and exported: each bucket\'s grants, the key\'s through S3, the allowlist\'s entries', () => {
  const [w] = deployment(variant((c) => {
    c.receiptKeyArn = RECEIPT_KEY;
    c.layouts = [
      { bucket: 'air-gap-out', prefix: 'drop/', export: true, kmsKeyArn: LAYOUT_KEY, requireSignature: 'release' },
      { bucket: 'air-gap-out', prefix: 'both', import: true, export: true, transferKey: KEY_A },
      { bucket: 'air-gap.whole', export: true, bucketOwner: '555555555555' },
      { bucket: 'air-gap-in', prefix: 'in', import: true, transferKey: KEY_B },
    ];
  }));
  assert.deepEqual(functionAllowlist(w).layouts, [
    { location: 's3://air-gap-out/drop', export: true, kmsKey: LAYOUT_KEY, requireSignature: 'release' },
    { location: 's3://air-gap-out/both', export: true, import: true, transferKey: KEY_A },
    { location: 's3://air-gap.whole', export: true, bucketOwner: '555555555555' },
    { location: 's3://air-gap-in/in', import: true, transferKey: KEY_B },
  ]);
  const writers = ['enumerate-images', 'plan-image', 'copy-blobs', 'put-manifests'];
  const statements = layoutPolicy(w, 'LayoutExports').statements;
  const by = (sid: string) => statements.find((s) => s.Sid === sid);
  assert.deepEqual(statements.map((s) => s.Sid), [
    'ReadExportObjects0', 'WriteLayoutBlobs0', 'StagedLayoutUploads0', 'ListExportLayouts0',
    'ReadExportObjects1', 'WriteLayoutBlobs1', 'StagedLayoutUploads1', 'ListExportLayouts1',
    'EncryptLayoutObjects', 'ReadExportNames', 'ListExportNames', 'RecordExportNames',
  ]);
  assert.deepEqual(by('ReadExportObjects0').Resource, [s3Arn('air-gap-out/drop/*'), s3Arn('air-gap-out/both/*')]);
  assert.deepEqual(by('WriteLayoutBlobs0').Resource, ['drop/blobs', 'drop/uploads', 'both/blobs', 'both/uploads'].map((p) => s3Arn(`air-gap-out/${p}/*`)));
  assert.deepEqual(by('StagedLayoutUploads0').Resource, [s3Arn('air-gap-out/drop/uploads/*'), s3Arn('air-gap-out/both/uploads/*')]);
  assert.deepEqual(by('ListExportLayouts0').Condition.StringLike, { 's3:prefix': ['drop/*', 'both/*'] });
  assert.deepEqual(by('ReadExportObjects0').Condition.StringEquals, { 's3:ResourceAccount': '111111111111' });
  // A whole bucket: its objects, its blobs/ and uploads/ at the top, listed without a prefix
  // condition.
  assert.deepEqual(by('ReadExportObjects1').Resource, s3Arn('air-gap.whole/*'));
  assert.deepEqual(by('WriteLayoutBlobs1').Resource, [s3Arn('air-gap.whole/blobs/*'), s3Arn('air-gap.whole/uploads/*')]);
  assert.deepEqual(by('StagedLayoutUploads1').Resource, s3Arn('air-gap.whole/uploads/*'));
  assert.deepEqual(by('ListExportLayouts1').Resource, s3Arn('air-gap.whole'));
  assert.equal(by('ListExportLayouts1').Condition.StringLike, undefined);
  for (const sid of ['ReadExportObjects1', 'WriteLayoutBlobs1', 'StagedLayoutUploads1', 'ListExportLayouts1']) {
    assert.deepEqual(by(sid).Condition.StringEquals, { 's3:ResourceAccount': '555555555555' }, sid);
  }
  for (const s of statements.filter((s) => s.Sid !== 'EncryptLayoutObjects' && s.Sid !== 'RecordExportNames')) {
    assert.deepEqual(callers(w, s), writers, s.Sid);
  }
  // The key: a data key for each object written, decrypting what is read, copied or completed;
  // through S3 in the workflow's region only.
  const s3Service = { 'Fn::Join': ['', ['s3.us-east-1.', { Ref: 'AWS::URLSuffix' }]] };
  assert.deepEqual(by('EncryptLayoutObjects'), {
    Sid: 'EncryptLayoutObjects', Effect: 'Allow', Action: ['kms:GenerateDataKey', 'kms:Decrypt'],
    Resource: LAYOUT_KEY,
    Condition: { StringEquals: { 'kms:ViaService': s3Service } },
  });
  // The seal: the same reads, listing and key; writes to the layout's root files only, no
  // staged upload.
  const seal = layoutPolicy(w, 'LayoutExportSeal').statements;
  assert.deepEqual(seal.map((s) => s.Sid), [
    'ReadExportObjects0', 'WriteLayoutIndex0', 'ListExportLayouts0', 'ReadExportObjects1', 'WriteLayoutIndex1', 'ListExportLayouts1', 'EncryptLayoutObjects',
    'SealExportNames', 'ListSealedExportNames', 'SignExportStatements', 'ExportStatementKey',
  ]);
  assert.deepEqual(seal.find((s) => s.Sid === 'WriteLayoutIndex1').Resource, LAYOUT_ROOT_FILES.map((f) => s3Arn(`air-gap.whole/${f}`)));
  for (const sid of ['ReadExportObjects0', 'ListExportLayouts0', 'ReadExportObjects1', 'ListExportLayouts1']) {
    assert.deepEqual({ ...seal.find((s) => s.Sid === sid), Condition: undefined }, { ...by(sid), Condition: undefined }, sid);
    assert.deepEqual(callers(w, seal.find((s) => s.Sid === sid)), ['summarise'], sid);
  }
  assert.deepEqual(seal.find((s) => s.Sid === 'EncryptLayoutObjects'), by('EncryptLayoutObjects'));
  assert.ok(!JSON.stringify(seal).includes('uploads/'));
  // The imports are the import entries' only (the layout both imported and exported among them).
  const imports = layoutPolicy(w).statements.filter((s) => !/NewestLayoutStatements$/.test(s.Sid));
  assert.deepEqual(imports.map((s) => [s.Sid, s.Resource]), [
    ['ReadLayoutObjects0', s3Arn('air-gap-out/both/*')],
    ['ListLayoutObjects0', s3Arn('air-gap-out')],
    ['ReadLayoutObjects1', s3Arn('air-gap-in/in/*')],
    ['ListLayoutObjects1', s3Arn('air-gap-in')],
  ]);
});

test('a layout the workflow cannot use, or a mistaken one, fails synth naming the field', () => {
  const fails = (layouts: unknown, message: RegExp) => assert.throws(() => variant((c) => { c.layouts = layouts as LayoutConfig[]; }), message);
  const ok: LayoutConfig = { bucket: 'air-gap-in', prefix: 'releases', import: true, transferKey: KEY_A };
  const one = (change: Record<string, unknown>) => [{ ...ok, ...change }];
  // An entry allows import, export or both; not neither.
  const neither = /variant: layouts\[0\] allows neither import nor export: set "export": true \(jobs may export into it\), "import": true \(jobs may import from it\) or both/;
  fails(one({ import: false }), neither);
  fails(one({ import: false, export: false }), neither);
  fails([{ bucket: 'air-gap-in', transferKey: KEY_A }], neither);
  fails(one({ export: 'no' }), /variant: layouts\[0\]\.export must be true or false/);
  fails(one({ import: 'yes' }), /variant: layouts\[0\]\.import must be true or false/);
  // An export's statement is signed with the receipt key: none, no export.
  const noReceiptKey = /variant: layouts\[0\]\.export needs the config's receiptKeyArn: the transfer statement of an export is signed with the deployment's receipt key/;
  fails(one({ export: true }), noReceiptKey);
  fails([{ bucket: 'air-gap-in', export: true }], noReceiptKey);
  // With it: a transfer key only where the entry imports too (the functions refuse one on a
  // layout that allows no import).
  const exporting = (layouts: unknown, message: RegExp) => assert.throws(() => variant((c) => { c.receiptKeyArn = RECEIPT_KEY; c.layouts = layouts as LayoutConfig[]; }), message);
  const notImported = /variant: layouts\[0\]\.transferKey is given for a layout jobs may not import from: it checks imports only/;
  exporting([{ bucket: 'air-gap-in', export: true, transferKey: KEY_A }], notImported);
  exporting(one({ import: false, export: true }), notImported);
  exporting([{ bucket: 'air-gap-in', import: true, export: true }], /variant: layouts\[0\]\.transferKey is required/);
  exporting([{ bucket: 'air-gap-in', export: true, kmsKeyArn: 'arn:aws:kms:eu-west-1:111111111111:key/0f1e2d3c' }], /variant: layouts\[0\]\.kmsKeyArn must be the ARN of a KMS key in us-east-1/);
  exporting([{ bucket: 'air-gap-in', export: true }, { bucket: 'air-gap-in', prefix: 'releases/', export: true }, { bucket: 'air-gap-in', export: true, import: true, transferKey: KEY_A }],
    /variant: layouts\[2\] is the same place as layouts\[0\] \(s3:\/\/air-gap-in\): one entry per layout/);
  const exported = variant((c) => {
    c.receiptKeyArn = RECEIPT_KEY;
    c.layouts = [
      { bucket: 'air-gap-in', export: true },
      { bucket: 'air-gap-in', prefix: 'both', export: true, import: true, transferKey: KEY_A, requireSignature: 'release' },
      { bucket: 'air-gap-out', prefix: 'drop', export: true, import: false, bucketOwner: '555555555555', kmsKeyArn: LAYOUT_KEY, requireSignature: 'release' },
    ];
  });
  assert.deepEqual((allowlist(exported) as any).layouts, [
    { location: 's3://air-gap-in', export: true },
    { location: 's3://air-gap-in/both', export: true, import: true, requireSignature: 'release', transferKey: KEY_A },
    { location: 's3://air-gap-out/drop', export: true, bucketOwner: '555555555555', kmsKey: LAYOUT_KEY, requireSignature: 'release' },
  ]);
  // Imports are always verified: no transfer key, no import.
  const noKey = /variant: layouts\[0\]\.transferKey is required: the exporting deployment's statement key, one ECDSA P-256 public key in PEM/;
  fails([{ bucket: 'air-gap-in', import: true }], noKey);
  fails(one({ transferKey: '' }), noKey);
  fails(one({ transferKey: generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString() }), noKey);
  fails(one({ transferKey: KEY_A + KEY_B }), noKey);
  for (const bucket of ['Air-Gap', 'ab', '-air-gap', 'air-gap-', 'a'.repeat(64), 'air_gap', 'air-gap/in', undefined]) {
    assert.throws(() => variant((c) => { c.layouts = one({ bucket }) as LayoutConfig[]; }), (e: Error) =>
      e.message.startsWith(`variant: layouts[0].bucket (${JSON.stringify(bucket)}) must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-'`), String(bucket));
  }
  for (const prefix of ['..', 'a/../b', 'a/./b', 'a//b', '/a', '/', '', 'a:b', 'team-*', 'a?', '${aws:username}', 'a\nb', 'x'.repeat(513), 7]) {
    fails(one({ prefix }), /variant: layouts\[0\]\.prefix \(.*\) must be '\/'-separated names without empty, '\.' or '\.\.' segments/s);
  }
  fails(one({ bucketOwner: '12345' }), /variant: layouts\[0\]\.bucketOwner must be a 12-digit account id/);
  for (const kmsKeyArn of ['arn:aws:kms:us-east-1:111111111111:alias/layouts', 'arn:aws:kms:eu-west-1:111111111111:key/0f1e2d3c', 'arn:aws-cn:kms:us-east-1:111111111111:key/0f1e2d3c', '0f1e2d3c']) {
    fails(one({ kmsKeyArn }), /variant: layouts\[0\]\.kmsKeyArn must be the ARN of a KMS key in us-east-1 \(arn:aws:kms:us-east-1:ACCOUNT:key\/ID; not an alias\)/);
  }
  fails(one({ requireSignature: 'nightly' }), /variant: layouts\[0\]\.requireSignature \("nightly"\) must name one of trustPolicies \(release\)/);
  fails(one({ kmsKey: LAYOUT_KEY }), /variant: layouts\[0\]\.kmsKey is not a layout field \(bucket, prefix, import, export, bucketOwner, kmsKeyArn, requireSignature, transferKey\)/);
  fails(one({ location: 's3://air-gap-in/releases' }), /variant: layouts\[0\]\.location is not a layout field/);
  // One entry per place: a trailing '/' is the same place.
  fails([ok, { ...ok, prefix: 'releases/', transferKey: KEY_B }], /variant: layouts\[1\] is the same place as layouts\[0\] \(s3:\/\/air-gap-in\/releases\): one entry per layout/);
  fails([{ ...ok, prefix: undefined }, { ...ok, prefix: undefined }], /variant: layouts\[1\] is the same place as layouts\[0\] \(s3:\/\/air-gap-in\): one entry per layout/);
  fails([ok, { ...ok, prefix: 'other', bucketOwner: '555555555555' }], /variant: layouts\[1\]\.bucketOwner \(555555555555\) differs from layouts\[0\]'s \(111111111111\) for the same bucket air-gap-in: a bucket has one owner/);
  fails({ bucket: 'air-gap-in' }, /variant: layouts must be a list/);
  fails(['s3://air-gap-in/releases'], /variant: layouts\[0\] must be an object/);
  // Lambda's 4 KB of environment: the allowlist with a dozen transfer keys does not fit.
  fails(Array.from({ length: 12 }, (_, i) => ({ ...ok, prefix: `drop-${i}` })),
    /variant: layouts \(with trustPolicies and destinations\[\]\.repositories\) make the allowlist \(ECR_REPLICATOR_ALLOWED_REGISTRIES\) \d+ bytes; .* passes Lambda's 4096 bytes of environment: fewer layouts, keys, identities or globs/);
  // What is right passes: the longest prefix, nested names, a whole bucket, several buckets,
  // another owner's bucket, a key of the workflow's region.
  const passed = variant((c) => {
    c.layouts = [
      { ...ok, prefix: 'x'.repeat(512) },
      { ...ok, prefix: 'team-a/drops/2026-12/' },
      { ...ok, prefix: undefined, bucket: 'air.gap.123' },
      { ...ok, bucket: 'air-gap-other', bucketOwner: '555555555555', kmsKeyArn: LAYOUT_KEY, requireSignature: 'release', export: false },
    ];
  });
  assert.deepEqual((allowlist(passed) as any).layouts.map((l: any) => l.location), [
    `s3://air-gap-in/${'x'.repeat(512)}`, 's3://air-gap-in/team-a/drops/2026-12', 's3://air.gap.123', 's3://air-gap-other/releases',
  ]);
});
