#!/usr/bin/env node
// Validates Grafana dashboard JSON files against the `Dashboard` type of the
// pinned @grafana/schema package: ts-json-schema-generator turns the type
// into a JSON Schema (cached in node_modules/.cache, keyed by the lock file),
// and ajv checks every file against it.
//
//   node check.js FILE.json...       exit 0 when every file is valid,
//                                    1 with each error's path when one is not
//   node check.js --print-schema     the generated schema on stdout

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

function dashboardSchema() {
  const lock = fs.readFileSync(path.join(__dirname, 'package-lock.json'));
  const key = crypto.createHash('sha256').update(lock).digest('hex').slice(0, 16);
  const cacheDir = path.join(__dirname, 'node_modules', '.cache', 'tally');
  const cached = path.join(cacheDir, `dashboard-schema-${key}.json`);
  if (fs.existsSync(cached)) {
    return JSON.parse(fs.readFileSync(cached, 'utf8'));
  }
  const tsj = require('ts-json-schema-generator');
  // The package's public entry point: its `Dashboard` is the classic
  // dashboard JSON model (schemaVersion 39+) that Grafana provisions.
  const entry = path.join(
    path.dirname(require.resolve('@grafana/schema/package.json')),
    'dist', 'types', 'index.d.ts',
  );
  // expose "none" inlines the referenced types: the package declares two
  // different `DataSourceRef`s, which named definitions cannot hold apart.
  const schema = tsj
    .createGenerator({ path: entry, type: 'Dashboard', expose: 'none', skipTypeCheck: true })
    .createSchema('Dashboard');
  fs.mkdirSync(cacheDir, { recursive: true });
  fs.writeFileSync(cached, JSON.stringify(schema));
  return schema;
}

function main(args) {
  if (args.length === 0) {
    console.error('usage: node check.js DASHBOARD.json... | --print-schema');
    return 2;
  }
  const schema = dashboardSchema();
  if (args[0] === '--print-schema') {
    process.stdout.write(JSON.stringify(schema, null, 2) + '\n');
    return 0;
  }
  const Ajv = require('ajv');
  const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
  let failed = 0;
  for (const file of args) {
    let dashboard;
    try {
      dashboard = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      console.log(`${file}: not readable JSON: ${e.message}`);
      failed += 1;
      continue;
    }
    if (validate(dashboard)) {
      console.log(`${file}: valid`);
      continue;
    }
    failed += 1;
    console.log(`${file}: ${validate.errors.length} schema errors`);
    for (const e of validate.errors) {
      const extra = e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : '';
      console.log(`  ${e.instancePath || '/'}: ${e.message}${extra}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
