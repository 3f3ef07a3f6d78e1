// kafkajs as a consumer-group member and admin of `tally broker`, driven by
// tests/compat_groups.rs. Every consumer uses subscribe(). Output is one JSON
// object per line on stdout; kafkajs's own log goes to stderr.
//
// usage:
//   node groups_kafkajs.js produce BOOTSTRAP TOPIC PER_PARTITION
//       creates TOPIC with 3 partitions and writes PER_PARTITION records
//       "p<partition>-<i>" to each; prints {"produced": n}.
//   node groups_kafkajs.js member BOOTSTRAP TOPIC GROUP NAME
//       a long-lived member: prints {"assigned": [partitions], "ms"} on every
//       GROUP_JOIN, and {"closed": true} once it has left the group after
//       reading "close" on stdin (or stdin's end, or 150 s at the latest).
//   node groups_kafkajs.js consume BOOTSTRAP TOPIC GROUP TAKE COMMIT EXTRA_MS
//       processes TAKE records, commits with commitOffsets (COMMIT:
//       "processed" = the offset after the last processed record of each
//       partition, "none", or explicit "0:4,1:7"), keeps consuming EXTRA_MS
//       more and reports what else arrived, then disconnects. Prints
//       {"read", "extra", "committed", "mismatches"}.
//   node groups_kafkajs.js describe BOOTSTRAP TOPIC GROUP MEMBERS
//       admin describeGroups and listGroups, once the group has MEMBERS
//       members and is Stable (Empty for 0) or after 15 s: prints {"group",
//       "listed"}.
//   node groups_kafkajs.js offsets BOOTSTRAP TOPIC GROUP
//       admin fetchOffsets: prints {"committed": {partition: offset}} for the
//       partitions of TOPIC that have a committed offset.

'use strict'

const { Kafka, logLevel, AssignerProtocol } = require('kafkajs')

const [mode, bootstrap, topic, ...rest] = process.argv.slice(2)
const SESSION_TIMEOUT_MS = 6000
const HEARTBEAT_INTERVAL_MS = 1000
const REBALANCE_TIMEOUT_MS = 10000
const LIFETIME_MS = 150000

const logCreator = () => ({ namespace, level, log }) => {
  process.stderr.write(`kafkajs ${level} ${namespace}: ${log.message} ${JSON.stringify(log)}\n`)
}

function emit (obj) {
  return new Promise(resolve => process.stdout.write(JSON.stringify(obj) + '\n', resolve))
}

function kafka (clientId) {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000
  })
}

function consumer (client, groupId) {
  return client.consumer({
    groupId,
    sessionTimeout: SESSION_TIMEOUT_MS,
    heartbeatInterval: HEARTBEAT_INTERVAL_MS,
    rebalanceTimeout: REBALANCE_TIMEOUT_MS,
    // kafkajs heartbeats between fetches: an idle fetch must not outlast
    // the heartbeat interval by much, or rebalances are noticed late.
    maxWaitTimeInMs: 500,
    retry: { retries: 10 }
  })
}

async function produce (perPartition) {
  const client = kafka('tally-compat-produce')
  const admin = client.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }], waitForLeaders: true })
  await admin.disconnect()
  const producer = client.producer()
  await producer.connect()
  let produced = 0
  for (const partition of [0, 1, 2]) {
    const messages = [...Array(perPartition).keys()].map(i => ({ partition, value: `p${partition}-${i}` }))
    await producer.send({ topic, acks: -1, messages })
    produced += messages.length
  }
  await producer.disconnect()
  await emit({ produced, failures: [] })
}

async function member (groupId, name) {
  const c = consumer(kafka(name), groupId)
  const start = Date.now()
  c.on(c.events.GROUP_JOIN, e => {
    const assigned = [...(e.payload.memberAssignment[topic] || [])].sort((a, b) => a - b)
    emit({ assigned, ms: Date.now() - start })
  })
  c.on(c.events.CRASH, e => process.stderr.write(`consumer crashed: ${e.payload.error}\n`))
  await c.connect()
  await c.subscribe({ topics: [topic], fromBeginning: true })
  await c.run({ eachMessage: async () => {} })
  await new Promise(resolve => {
    process.stdin.on('data', d => { if (d.toString().includes('close')) resolve() })
    process.stdin.on('end', resolve)
    setTimeout(resolve, LIFETIME_MS)
  })
  await c.disconnect()
  await emit({ closed: true })
}

function parseCommits (spec) {
  if (spec === 'processed' || spec === 'none') return spec
  return Object.fromEntries(spec.split(',').map(pair => pair.split(':').map(Number)))
}

async function consume (groupId, take, commitSpec, extraMs) {
  const mismatches = []
  const read = []
  const extra = []
  let phase = 'take'
  let took
  const tookAll = new Promise(resolve => { took = resolve })
  const c = consumer(kafka('tally-compat-consume'), groupId)
  await c.connect()
  await c.subscribe({ topics: [topic], fromBeginning: true })
  await c.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const r = [partition, Number(message.offset), message.value.toString()]
      if (phase === 'take' && read.length < take) {
        read.push(r)
        if (read.length === take) took()
      } else if (phase === 'extra') {
        extra.push(r)
      }
    }
  })
  const timedOut = await Promise.race([
    tookAll.then(() => false),
    new Promise(resolve => setTimeout(() => resolve(true), 40000))
  ])
  if (timedOut) mismatches.push(`read ${read.length} records within 40 s, want ${take}`)
  phase = 'commit'
  let toCommit = {}
  if (commitSpec === 'processed') {
    for (const [p, offset] of read) toCommit[p] = Math.max(toCommit[p] || 0, offset + 1)
  } else if (commitSpec !== 'none') {
    toCommit = commitSpec
  }
  const toSend = Object.entries(toCommit).map(([p, o]) => ({ topic, partition: Number(p), offset: String(o) }))
  let committed = {}
  if (toSend.length) {
    try {
      await c.commitOffsets(toSend)
      committed = toCommit
    } catch (e) {
      mismatches.push(`commitOffsets failed: ${e.name}: ${e.message}`)
    }
  }
  phase = 'extra'
  await new Promise(resolve => setTimeout(resolve, extraMs))
  phase = 'done'
  await c.disconnect()
  await emit({ read, extra, committed, mismatches })
}

async function describe (groupId, members) {
  const admin = kafka('tally-compat-admin').admin()
  await admin.connect()
  const deadline = Date.now() + 15000
  let group
  for (;;) {
    group = (await admin.describeGroups([groupId])).groups.find(g => g.groupId === groupId)
    const settled = members ? 'Stable' : 'Empty'
    if ((group && group.state === settled && group.members.length === members) || Date.now() > deadline) break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  const listed = (await admin.listGroups()).groups
  await admin.disconnect()
  const decoded = {
    group_id: group.groupId,
    state: group.state,
    protocol_type: group.protocolType,
    protocol: group.protocol,
    error_code: group.errorCode,
    members: group.members.map(m => {
      const assignment = m.memberAssignment && m.memberAssignment.length
        ? AssignerProtocol.MemberAssignment.decode(m.memberAssignment).assignment
        : {}
      return {
        member_id: m.memberId,
        client_id: m.clientId,
        client_host: m.clientHost,
        assigned: [...(assignment[topic] || [])].sort((a, b) => a - b)
      }
    })
  }
  await emit({ group: decoded, listed: listed.map(g => ({ group_id: g.groupId, protocol_type: g.protocolType })) })
}

async function offsets (groupId) {
  const admin = kafka('tally-compat-admin').admin()
  await admin.connect()
  const fetched = await admin.fetchOffsets({ groupId, topics: [topic] })
  await admin.disconnect()
  const committed = {}
  for (const t of fetched) {
    // kafkajs reports "-1" for a partition without a commit.
    for (const p of t.partitions) if (Number(p.offset) >= 0) committed[p.partition] = Number(p.offset)
  }
  await emit({ committed })
}

async function main () {
  switch (mode) {
    case 'produce': return produce(Number(rest[0]))
    case 'member': return member(rest[0], rest[1])
    case 'consume': return consume(rest[0], Number(rest[1]), parseCommits(rest[2]), Number(rest[3]))
    case 'describe': return describe(rest[0], Number(rest[1]))
    case 'offsets': return offsets(rest[0])
    default: throw new Error(`unknown mode ${mode}: produce, member, consume, describe or offsets`)
  }
}

main().then(() => process.exit(0), async e => {
  process.stderr.write(`kafkajs failed: ${e.stack || e}\n`)
  await emit({ failed: `${e.name}: ${e.message}` })
  process.exit(1)
})
