// The kafkajs counterpart of collect_workload.py, for the collector's tests:
// the same workload and the same JSON, written by another client library.
//
//   node collect_workload.js --bootstrap HOST:PORT --topic T --partitions N \
//       --records-per-partition K --base-ts-ms TS [--group-suffix S] [--timeout SECS] \
//       [--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL] \
//       [--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512] [--sasl-username U] \
//       [--sasl-password P] [--ssl-ca FILE]
//
// Creates T with N partitions unless it exists with N already, produces K
// records to every partition (one send a partition, acks=-1), record i of
// partition p with the CreateTime timestamp TS + i*1000 + p, key "p<p>-<i>",
// value "v<p>-<i>"; the offsets come from the produce response's base offset.
// Then commits, as a member of each group that reads nothing and leaves
// (consumer.commitOffsets), so that the groups end with commits and no members:
//   committed-S   first[p] + min(K, K//2 + p)
//   caughtup-S    first[p] + K
// and prints one JSON line, {"event": "workload", "client": "kafkajs ...",
// ...} with the fields collect_workload.py prints. There is no live group
// here (collect_workload.py --live-seconds has one). Every step is bounded by
// --timeout (default 60 s); a failure prints "collect_workload.js: <step>:
// <why>" on stderr and exits 1. kafkajs's own log goes to stderr.

'use strict'

const fs = require('fs')
const { Kafka, logLevel, Partitioners } = require('kafkajs')

function fail (step, why) {
  process.stderr.write(`collect_workload.js: ${step}: ${why}\n`)
  process.exit(1)
}

function parseArgs (argv) {
  const numeric = new Set(['partitions', 'records-per-partition', 'base-ts-ms', 'timeout'])
  const known = new Set([...numeric, 'bootstrap', 'topic', 'group-suffix', 'security-protocol',
    'sasl-mechanism', 'sasl-username', 'sasl-password', 'ssl-ca'])
  const args = { timeout: 60 }
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i]
    const name = flag.replace(/^--/, '')
    if (!flag.startsWith('--') || !known.has(name)) fail('arguments', `unknown flag "${flag}"`)
    if (i + 1 >= argv.length) fail('arguments', `"${flag}" needs a value`)
    const value = argv[i + 1]
    if (numeric.has(name)) {
      if (!/^-?\d+(\.\d+)?$/.test(value)) fail('arguments', `${flag} "${value}" is not a number`)
      args[name] = Number(value)
    } else {
      args[name] = value
    }
  }
  for (const required of ['bootstrap', 'topic', 'partitions', 'records-per-partition', 'base-ts-ms']) {
    if (args[required] === undefined) fail('arguments', `--${required} is required`)
  }
  if (args.partitions < 1 || args['records-per-partition'] < 1) {
    fail('arguments', '--partitions and --records-per-partition must be at least 1')
  }
  return args
}

function security (args) {
  const protocol = (args['security-protocol'] || 'PLAINTEXT').toUpperCase()
  const out = {}
  if (protocol === 'SSL' || protocol === 'SASL_SSL') {
    out.ssl = args['ssl-ca'] ? { ca: [fs.readFileSync(args['ssl-ca'])] } : true
  } else if (protocol !== 'PLAINTEXT' && protocol !== 'SASL_PLAINTEXT') {
    fail('arguments', `--security-protocol "${protocol}": want PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL`)
  }
  if (protocol.startsWith('SASL_')) {
    out.sasl = {
      mechanism: (args['sasl-mechanism'] || 'PLAIN').toLowerCase(),
      username: args['sasl-username'] || '',
      password: args['sasl-password'] || ''
    }
  }
  return out
}

const logCreator = () => ({ namespace, level, log }) => {
  process.stderr.write(`kafkajs ${level} ${namespace}: ${log.message} ${JSON.stringify(log)}\n`)
}

// `promise`, or a failure of `step` after the --timeout.
function bounded (step, seconds, promise) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${seconds}s`)), seconds * 1000)
  })
  return Promise.race([promise, timeout])
    .catch(err => fail(step, err.message || String(err)))
    .finally(() => clearTimeout(timer))
}

// Commits `committed` (one offset a partition) for `groupId` as a member of
// it that reads nothing: admin.setOffsets does the same with kafkajs's
// default 60 s rebalance timeout, which cost tansu 15 s a group; a member
// whose rebalance timeout is 1 s joins in tansu's 3 s initial delay.
async function commit (kafka, groupId, topic, committed, t) {
  const step = `commit "${groupId}"`
  const consumer = kafka.consumer({
    groupId,
    sessionTimeout: 6000,
    rebalanceTimeout: 1000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 100
  })
  const joined = new Promise(resolve => consumer.on(consumer.events.GROUP_JOIN, resolve))
  await bounded(step, t, consumer.connect())
  await bounded(step, t, consumer.subscribe({ topics: [topic] }))
  await bounded(step, t, consumer.run({ autoCommit: false, eachBatch: async () => {} }))
  consumer.pause([{ topic }])
  await bounded(`${step}: join`, t, joined)
  await bounded(step, t, consumer.commitOffsets(
    committed.map((offset, partition) => ({ topic, partition, offset: String(offset) }))))
  await bounded(`${step}: leave`, t, consumer.disconnect())
}

async function main () {
  const started = Date.now()
  const args = parseArgs(process.argv.slice(2))
  const { topic, partitions } = args
  const perPartition = args['records-per-partition']
  const baseTs = args['base-ts-ms']
  const suffix = args['group-suffix'] || topic
  const t = args.timeout
  const kafka = new Kafka({
    clientId: 'tally-collect-workload',
    brokers: [args.bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 8 },
    ...security(args)
  })

  const admin = kafka.admin()
  await bounded('connect', t, admin.connect())
  await bounded('create topic', t, admin.createTopics({
    topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }],
    waitForLeaders: true
  }))
  const meta = await bounded('metadata', t, admin.fetchTopicMetadata({ topics: [topic] }))
  const have = meta.topics[0].partitions.length
  if (have < partitions) {
    fail('create topic', `"${topic}" exists with ${have} partitions, fewer than the ${partitions} asked for`)
  }

  const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner })
  await bounded('connect producer', t, producer.connect())
  const offsets = []
  for (let p = 0; p < partitions; p++) {
    const messages = []
    for (let i = 0; i < perPartition; i++) {
      messages.push({ partition: p, key: `p${p}-${i}`, value: `v${p}-${i}`, timestamp: String(baseTs + i * 1000 + p) })
    }
    const sent = await bounded(`produce partition ${p}`, t, producer.send({ topic, acks: -1, messages }))
    const answer = sent.find(r => r.partition === p)
    if (!answer || answer.errorCode !== 0) fail('produce', `partition ${p}: ${JSON.stringify(sent)}`)
    const first = Number(answer.baseOffset)
    offsets.push({
      partition: p,
      first,
      end: first + perPartition,
      records: messages.map((m, i) => [first + i, Number(m.timestamp)])
    })
  }
  await bounded('disconnect producer', t, producer.disconnect())

  const groups = {
    [`committed-${suffix}`]: offsets.map(o => o.first + Math.min(perPartition, Math.floor(perPartition / 2) + o.partition)),
    [`caughtup-${suffix}`]: offsets.map(o => o.end)
  }
  for (const [groupId, committed] of Object.entries(groups)) {
    await commit(kafka, groupId, topic, committed, t)
  }
  await bounded('disconnect admin', t, admin.disconnect())

  process.stdout.write(JSON.stringify({
    event: 'workload',
    client: 'kafkajs ' + require('kafkajs/package.json').version,
    topic,
    partitions,
    records_per_partition: perPartition,
    base_ts_ms: baseTs,
    timestamp_scheme: 'base_ts_ms + i*1000 + partition for record i of a partition',
    offsets,
    groups,
    seconds: (Date.now() - started) / 1000
  }) + '\n', () => process.exit(0))
}

main().catch(err => fail('run', err.stack || String(err)))
