// Produces a planned set of batches with kafkajs, for tests/reconcile.rs, and
// reports the offset every record got. The plan on stdin is the one
// reconcile_produce.py reads; kafkajs compresses with gzip only ("none" and
// "gzip" are accepted), and each planned batch is one send() to one
// partition, which kafkajs writes as one record batch.
//
// usage: node reconcile_produce.js BOOTSTRAP TOPIC < PLAN
// Prints {"records": [{"partition", "offset", "timestamp"}], "mismatches"};
// exits 1 when a record was not acknowledged.

'use strict'

const { Kafka, logLevel, CompressionTypes } = require('kafkajs')

const [bootstrap, topic] = process.argv.slice(2)
const mismatches = []
const result = { client: 'kafkajs ' + require('kafkajs/package.json').version, topic, records: [], mismatches }

const logCreator = () => ({ namespace, level, log }) => {
  process.stderr.write(`kafkajs ${level} ${namespace}: ${log.message}\n`)
}

function value (batch, i, size) {
  const text = `batch ${batch} record ${i} `
  return text.repeat(Math.ceil(size / text.length) + 1).slice(0, size)
}

async function main () {
  const plan = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const size = plan.value_bytes || 200
  const kafka = new Kafka({
    clientId: 'tally-reconcile',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000
  })
  if (plan.create) {
    const admin = kafka.admin()
    await admin.connect()
    await admin.createTopics({
      topics: [{
        topic,
        numPartitions: plan.create.partitions,
        replicationFactor: 1,
        configEntries: Object.entries(plan.create.configs || {}).map(([name, value]) => ({ name, value }))
      }],
      waitForLeaders: true
    })
    await admin.disconnect()
  }
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const codecs = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }
  for (const [n, batch] of plan.batches.entries()) {
    if (!(batch.codec in codecs)) throw new Error(`kafkajs cannot send codec "${batch.codec}": accepted are none and gzip`)
    const messages = batch.timestamps.map((ts, i) => ({
      partition: batch.partition,
      value: value(n, i, size),
      timestamp: String(ts)
    }))
    const answers = await producer.send({ topic, acks: -1, compression: codecs[batch.codec], messages })
    const answer = answers.find(a => a.partition === batch.partition)
    if (!answer || answer.errorCode !== 0) {
      mismatches.push(`batch ${n}: ${JSON.stringify(answers)}`)
      continue
    }
    batch.timestamps.forEach((ts, i) => {
      result.records.push({ partition: batch.partition, offset: Number(answer.baseOffset) + i, timestamp: ts })
    })
  }
  await producer.disconnect()
}

main().catch(e => {
  mismatches.push(`kafkajs failed: ${e.name}: ${e.message}`)
}).finally(() => {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(mismatches.length ? 1 : 0))
})
