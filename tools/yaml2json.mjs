#!/usr/bin/env node
// yaml2json.mjs: print a YAML file as JSON on stdout, for tests that have
// only the Python standard library (no PyYAML). Strict: a YAML error, a
// warning, or a duplicate mapping key fails with exit status 1 and the
// message on stderr.
//
// Usage: node tools/yaml2json.mjs FILE.yaml
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

const file = process.argv[2];
if (!file || process.argv.length > 3) {
  process.stderr.write('usage: node tools/yaml2json.mjs FILE.yaml\n');
  process.exit(2);
}

const docs = parseAllDocuments(readFileSync(file, 'utf8'), { uniqueKeys: true, prettyErrors: true });
if (docs.length !== 1) {
  process.stderr.write(`${file}: expected exactly one YAML document, found ${docs.length}\n`);
  process.exit(1);
}
const [doc] = docs;
const problems = [...doc.errors, ...doc.warnings];
if (problems.length > 0) {
  for (const p of problems) process.stderr.write(`${file}: ${p.message}\n`);
  process.exit(1);
}
process.stdout.write(JSON.stringify(doc.toJS({ maxAliasCount: -1 }), null, 1) + '\n');
