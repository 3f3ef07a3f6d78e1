// kafkajs against `tally broker`: creates a topic of 3 partitions, lists it,
// reads its metadata, produces with an idempotent producer (one request in
// flight) uncompressed and with gzip, and checks the topic's offsets and
// offsets by timestamp. kafkajs consumes only through consumer groups, which
// the broker does not serve yet, so tests/compat.rs reads the records back
// with read_back.py. Prints a JSON result; exits 1 on any mismatch.
//
// usage: node with_kafkajs.js BOOTSTRAP TOPIC

'use strict'

const { Kafka, logLevel, CompressionTypes, Partitioners } = require('kafkajs')

const [bootstrap, topic] = process.argv.slice(2)
const mismatches = []
const checks = {}
const result = { client: 'kafkajs ' + require('kafkajs/package.json').version, topic, checks, mismatches }

function check (what, got, want) {
  checks[what] = { got, want }
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    mismatches.push(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
  }
}

// kafkajs logs to the console; stdout carries only the JSON result.
const logCreator = () => ({ namespace, level, log }) => {
  process.stderr.write(`kafkajs ${level} ${namespace}: ${log.message} ${JSON.stringify(log)}\n`)
}

// Records for one partition, written the way read_back.py prints them:
// strings, null key or value, headers in order with a repeated name.
function workload (n, partition, baseTs, tag) {
  const out = []
  for (let i = 0; i < n; i++) {
    const headers = { trace: `${tag}-${i}`, seq: String(i) }
    if (i % 4 === 3) headers.dup = ['first', 'second']
    if (i % 4 === 2) headers.empty = ''
    out.push({
      partition,
      key: i % 4 === 1 ? null : `${tag}-key-${i}`,
      value: i % 4 === 2 ? null : `${tag} value ${i} `.repeat(8),
      headers,
      timestamp: String(baseTs + 1000 * i)
    })
  }
  return out
}

function asRecord (m, offset) {
  const headers = []
  for (const [name, v] of Object.entries(m.headers)) {
    for (const one of Array.isArray(v) ? v : [v]) headers.push([name, one])
  }
  return {
    topic,
    partition: m.partition,
    key: m.key,
    value: m.value,
    headers,
    timestamp: Number(m.timestamp),
    offset
  }
}

async function main () {
  const kafka = new Kafka({
    clientId: 'tally-compat',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000
  })

  const admin = kafka.admin()
  await admin.connect()
  check('createTopics', await admin.createTopics({
    topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
    waitForLeaders: true
  }), true)
  check('topic listed', (await admin.listTopics()).includes(topic), true)
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  const described = metadata.topics.find(t => t.name === topic)
  check('partitions', described ? described.partitions.map(p => [p.partitionId, p.leader, p.partitionErrorCode]).sort() : null,
    [[0, 0, 0], [1, 0, 0], [2, 0, 0]])

  const base = (Math.floor(Date.now() / 1000) - 3600) * 1000
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner
  })
  await producer.connect()
  const sent = []
  const plan = [
    [CompressionTypes.None, workload(12, 0, base, 'plain')],
    [CompressionTypes.GZIP, workload(12, 1, base, 'gzip')],
    [CompressionTypes.None, workload(4, 2, base, 'first')],
    [CompressionTypes.GZIP, workload(8, 2, base + 4000, 'second')]
  ]
  for (const [compression, messages] of plan) {
    const answers = await producer.send({ topic, acks: -1, compression, messages })
    for (const answer of answers) {
      if (answer.errorCode !== 0) mismatches.push(`send: ${JSON.stringify(answer)}`)
    }
    const basePerPartition = new Map(answers.map(a => [a.partition, Number(a.baseOffset)]))
    const next = new Map()
    for (const m of messages) {
      const offset = (basePerPartition.get(m.partition) ?? NaN) + (next.get(m.partition) ?? 0)
      next.set(m.partition, (next.get(m.partition) ?? 0) + 1)
      sent.push(asRecord(m, offset))
    }
  }
  await producer.disconnect()
  result.sent = sent
  for (const p of [0, 1, 2]) {
    check(`partition ${p}: offsets acknowledged`, sent.filter(r => r.partition === p).map(r => r.offset),
      [...Array(12).keys()])
  }

  const offsets = (await admin.fetchTopicOffsets(topic)).map(o => [o.partition, o.low, o.high, o.offset])
  check('fetchTopicOffsets', offsets.sort(), [[0, '0', '12', '12'], [1, '0', '12', '12'], [2, '0', '12', '12']])
  // The first offset at or after the time; kafkajs puts the end offset where
  // there is none.
  const byTime = async (ts) => (await admin.fetchTopicOffsetsByTimestamp(topic, ts)).map(o => [o.partition, o.offset]).sort()
  check('fetchTopicOffsetsByTimestamp(base - 1 min)', await byTime(base - 60000), [[0, '0'], [1, '0'], [2, '0']])
  check('fetchTopicOffsetsByTimestamp(base + 3.5 s)', await byTime(base + 3500), [[0, '4'], [1, '4'], [2, '4']])
  check('fetchTopicOffsetsByTimestamp(base + 5 s)', await byTime(base + 5000), [[0, '5'], [1, '5'], [2, '5']])
  check('fetchTopicOffsetsByTimestamp(after the last)', await byTime(base + 60000), [[0, '12'], [1, '12'], [2, '12']])
  await admin.disconnect()
}

main().catch(e => {
  mismatches.push(`kafkajs failed: ${e.name}: ${e.message}`)
}).finally(() => {
  process.stdout.write(JSON.stringify(result, null, 1) + '\n', () => process.exit(mismatches.length ? 1 : 0))
})
