// kafkajs groups for tests/start_rules.rs: where a group starts on a
// partition decides what it skipped, so each mode makes a group start in one
// known way and reports what it read and the offsets it committed, from which
// the test computes the books. kafkajs's own log goes to stderr.
//
// usage: node start_kafkajs.js MODE BOOTSTRAP TOPIC < ARGS (JSON)
//   produce     {"create": PARTITIONS (optional), "records": {P: [ts, ...]}}
//       writes the records (value "p<P>-<i>", explicit timestamps); prints
//       {"records": [{"partition", "offset", "timestamp"}]}.
//   read        {"group" | "groups": [{"group", "client_id"}], "from_beginning": bool,
//                "commit": "auto|end", "hold": bool, "more": {P: [ts, ...]}}
//       one consumer per group subscribes (client id kafkajs's default unless
//       named); once each has completed two fetches, MORE is produced; each
//       reads to the end of every partition. "auto": kafkajs auto-commits
//       (autoCommitInterval 1 s, and after each batch) and the run waits
//       until the committed offsets reach the end; "end": autoCommit off,
//       and commitOffsets once with the end. "hold" pauses the topic before
//       the members join and resumes it once all have joined, so that no
//       fetch goes out before every member is assigned its partitions.
//   set-offsets {"group", "offsets": {P: offset}}
//       admin.setOffsets: its consumer joins the group with the topic paused
//       and commits by seek(): no fetch of the topic.
//
// Prints {"produced": [...], "groups": {group: {"read": [{"partition",
// "offset", "timestamp"}], "committed": {P: offset}}}, "mismatches"}
// (produce: {"records", "mismatches"}); exits 1 when something went wrong.

'use strict'

const { Kafka, logLevel } = require('kafkajs')

const [mode, bootstrap, topic] = process.argv.slice(2)
// Every wait is bounded: the test kills a run after 90 s.
const WAIT_MS = 30000
const mismatches = []
let result = { mode, mismatches, produced: [], groups: {} }

const logCreator = () => ({ namespace, level, log }) => {
  process.stderr.write(`kafkajs ${level} ${namespace}: ${log.message}\n`)
}

const options = {
  brokers: [bootstrap],
  logLevel: logLevel.WARN,
  logCreator,
  connectionTimeout: 5000,
  requestTimeout: 15000
}
// kafkajs's default client id, "kafkajs", which every kafkajs application
// on a host shares unless it names its own.
const kafka = new Kafka(options)

function within (what, promise) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${WAIT_MS} ms`)), WAIT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

async function create (partitions) {
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }], waitForLeaders: true })
  await admin.disconnect()
}

// Writes {P: [ts, ...]} and returns the records with their offsets.
async function produce (plan) {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const out = []
  for (const [p, stamps] of Object.entries(plan)) {
    const partition = Number(p)
    const messages = stamps.map((ts, i) => ({ partition, value: `p${p}-${i}`, timestamp: String(ts) }))
    const answers = await producer.send({ topic, acks: -1, messages })
    const answer = answers.find(a => a.partition === partition)
    if (!answer || answer.errorCode !== 0) throw new Error(`produce to partition ${p}: ${JSON.stringify(answers)}`)
    stamps.forEach((ts, i) => out.push({ partition, offset: Number(answer.baseOffset) + i, timestamp: ts }))
  }
  await producer.disconnect()
  return out
}

// {partition: high watermark} of every partition of the topic.
async function ends () {
  const admin = kafka.admin()
  await admin.connect()
  const offsets = await admin.fetchTopicOffsets(topic)
  await admin.disconnect()
  return Object.fromEntries(offsets.map(o => [o.partition, Number(o.high)]))
}

async function committed (group) {
  const admin = kafka.admin()
  await admin.connect()
  const [answer] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
  await admin.disconnect()
  return Object.fromEntries(answer.partitions.map(p => [p.partition, Number(p.offset)]))
}

function sameOffsets (a, b) {
  const keys = Object.keys(b)
  return keys.length === Object.keys(a).length && keys.every(k => a[k] === b[k])
}

// One consumer (the only member of its group): what it read, per partition
// the offset after the last record read, and its events.
function reader (group, clientId, auto) {
  const client = clientId ? new Kafka({ ...options, clientId }) : kafka
  const consumer = client.consumer({
    groupId: group,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 500
  })
  const r = { group, consumer, auto, read: new Map(), next: {}, onFetch: [], onRead: () => {} }
  r.joined = new Promise(resolve => consumer.on(consumer.events.GROUP_JOIN, () => resolve()))
  consumer.on(consumer.events.FETCH, () => {
    const waiting = r.onFetch
    r.onFetch = []
    waiting.forEach(resolve => resolve())
  })
  consumer.on(consumer.events.CRASH, e => mismatches.push(`${group}: consumer crashed: ${e.payload.error}`))
  // A fetch completed after this call: the member's offsets are resolved
  // and its partitions fetched from them.
  r.fetched = () => new Promise(resolve => r.onFetch.push(resolve))
  r.reached = targets => new Promise(resolve => {
    r.onRead = () => {
      if (Object.entries(targets).every(([p, o]) => (r.next[p] || 0) >= o)) resolve()
    }
    r.onRead()
  })
  r.start = async (fromBeginning, hold) => {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning })
    const running = consumer.run({
      autoCommit: auto,
      autoCommitInterval: auto ? 1000 : null,
      eachMessage: async ({ partition, message }) => {
        const offset = Number(message.offset)
        const key = `${partition}:${offset}`
        if (!r.read.has(key)) r.read.set(key, { partition, offset, timestamp: Number(message.timestamp) })
        r.next[partition] = Math.max(r.next[partition] || 0, offset + 1)
        r.onRead()
      }
    })
    // Paused before the member joins (as admin.setOffsets does): nothing
    // of the topic is fetched until release().
    if (hold) consumer.pause([{ topic }])
    await running
  }
  r.release = () => consumer.resume([{ topic }])
  return r
}

async function read (a) {
  const auto = a.commit === 'auto'
  const readers = (a.groups || [{ group: a.group }]).map(g => reader(g.group, g.client_id, auto))
  for (const r of readers) await r.start(a.from_beginning, a.hold)
  if (a.hold) {
    await within('every member assigned', Promise.all(readers.map(r => r.joined)))
    readers.forEach(r => r.release())
  }
  // Two: the second began after the first ended, so after release() too,
  // and a fetch resolves the member's offsets before it asks for records.
  await within('two fetches of every member', Promise.all(readers.map(async r => {
    await r.fetched()
    await r.fetched()
  })))
  result.produced = await produce(a.more || {})
  const targets = await ends()
  await within(`reading to ${JSON.stringify(targets)}`, Promise.all(readers.map(r => r.reached(targets))))
  for (const r of readers) {
    let got
    if (auto) {
      const deadline = Date.now() + WAIT_MS
      for (;;) {
        got = await committed(r.group)
        if (sameOffsets(got, targets)) break
        if (Date.now() > deadline) throw new Error(`${r.group}: committed ${JSON.stringify(got)}, expected ${JSON.stringify(targets)}`)
        await new Promise(resolve => setTimeout(resolve, 200))
      }
    } else {
      await r.consumer.commitOffsets(Object.entries(targets).map(([p, o]) => ({ topic, partition: Number(p), offset: String(o) })))
      got = targets
    }
    const records = [...r.read.values()].sort((x, y) => x.partition - y.partition || x.offset - y.offset)
    result.groups[r.group] = { read: records, committed: got }
  }
  for (const r of readers) await r.consumer.disconnect()
}

async function setOffsets (a) {
  const admin = kafka.admin()
  await admin.connect()
  const partitions = Object.entries(a.offsets).map(([p, o]) => ({ partition: Number(p), offset: String(o) }))
  await within('admin.setOffsets', admin.setOffsets({ groupId: a.group, topic, partitions }))
  await admin.disconnect()
  result.groups[a.group] = { read: [], committed: await committed(a.group) }
}

async function main () {
  const args = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  if (mode === 'produce') {
    if (args.create) await create(args.create)
    result = { mode, mismatches, records: await produce(args.records) }
  } else if (mode === 'read') {
    await read(args)
  } else if (mode === 'set-offsets') {
    await setOffsets(args)
  } else {
    mismatches.push(`unknown mode "${mode}": accepted are produce, read and set-offsets`)
  }
}

main().catch(e => {
  mismatches.push(`${mode} failed: ${e.name}: ${e.message}`)
}).finally(() => {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(mismatches.length ? 1 : 0))
})
