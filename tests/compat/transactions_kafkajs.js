// kafkajs transactions against `tally broker`, driven by tests/transactions.rs.
//
// usage: node transactions_kafkajs.js BOOTSTRAP TOPIC
//
// Creates TOPIC (2 partitions); a transactional producer commits a
// transaction of 6 records, aborts one of 4, and commits a consume-transform
// step: it reads TOPIC's committed records in group "kjs-eos" and writes them
// to TOPIC-out with the group's offsets in the same transaction
// (sendOffsets). Then a read_committed consumer (readUncommitted false) and a
// read_uncommitted one read TOPIC back. Prints one JSON object.

const { Kafka, logLevel } = require('kafkajs')

const [bootstrap, topic] = process.argv.slice(2)
const out = topic + '-out'
const kafka = new Kafka({
  clientId: 'tally-txn',
  brokers: [bootstrap],
  logLevel: logLevel.NOTHING,
  requestTimeout: 15000,
  retry: { retries: 5 }
})

async function readAll (name, readUncommitted, expect) {
  const consumer = kafka.consumer({ groupId: `reader-${name}-${Date.now()}`, readUncommitted })
  await consumer.connect()
  await consumer.subscribe({ topic: name, fromBeginning: true })
  const values = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, 15000)
    consumer.run({
      eachMessage: async ({ message }) => {
        values.push(message.value.toString())
        if (values.length >= expect) {
          clearTimeout(timer)
          // Anything past what is expected would show within a moment.
          setTimeout(resolve, 1500)
        }
      }
    }).catch(reject)
  })
  await consumer.disconnect()
  return values.sort()
}

async function main () {
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }, { topic: out, numPartitions: 2 }] })
  await admin.disconnect()

  const producer = kafka.producer({
    transactionalId: 'kafkajs-txn',
    idempotent: true,
    maxInFlightRequests: 1
  })
  await producer.connect()
  const send = async (prefix, n, commit) => {
    const txn = await producer.transaction()
    await txn.send({
      topic,
      messages: Array.from({ length: n }, (_, i) => ({ value: `${prefix}-${i}`, partition: i % 2 }))
    })
    if (commit) await txn.commit()
    else await txn.abort()
  }
  await send('kc', 6, true)
  await send('ka', 4, false)

  // Consume-transform-produce: read the 6 committed records, write them
  // upper-cased with the group's offsets in one transaction.
  const consumer = kafka.consumer({ groupId: 'kjs-eos', readUncommitted: false })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const seen = []
  const offsets = {}
  await new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, 15000)
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        seen.push(message.value.toString())
        offsets[partition] = (BigInt(message.offset) + 1n).toString()
        if (seen.length === 6) {
          clearTimeout(timer)
          resolve()
        }
      }
    }).catch(reject)
  })
  await consumer.stop()
  const txn = await producer.transaction()
  await txn.send({ topic: out, messages: seen.map(v => ({ value: v.toUpperCase() })) })
  await txn.sendOffsets({
    consumerGroupId: 'kjs-eos',
    topics: [{ topic, partitions: Object.entries(offsets).map(([p, offset]) => ({ partition: Number(p), offset })) }]
  })
  await txn.commit()
  await consumer.disconnect()
  await producer.disconnect()

  const admin2 = kafka.admin()
  await admin2.connect()
  const committed = await admin2.fetchOffsets({ groupId: 'kjs-eos', topics: [topic] })
  await admin2.disconnect()

  const result = {
    client: 'kafkajs ' + require('kafkajs/package.json').version,
    committed: await readAll(topic, false, 6),
    uncommitted: await readAll(topic, true, 10),
    output: await readAll(out, false, 6),
    group_offsets: Object.fromEntries(committed[0].partitions.map(p => [String(p.partition), p.offset]))
  }
  console.log(JSON.stringify(result))
}

main().then(() => process.exit(0), e => {
  console.error(e)
  process.exit(1)
})
