// kafkajs against a `tally broker` with TLS and/or SASL.
//
// usage: node security_kafkajs.js BOOTSTRAP CASES_JSON
//
// CASES_JSON is a list of cases, each {name, topic, ssl, sasl}: ssl is false,
// or {ca_file, cert_file, key_file} (file paths, read here); sasl is kafkajs's
// {mechanism, username, password} or absent. Each case produces 5 records with
// acks=-1 and reads them back through a consumer group. Prints a JSON result;
// exits 1 on any mismatch.

const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

const [bootstrap, casesJson] = process.argv.slice(2)
const cases = JSON.parse(casesJson)
const mismatches = []
const result = { client: 'kafkajs ' + require('kafkajs/package.json').version, cases: {}, mismatches }

function ssl (spec) {
  if (!spec) return false
  const out = { ca: [fs.readFileSync(spec.ca_file, 'utf8')] }
  if (spec.cert_file) out.cert = fs.readFileSync(spec.cert_file, 'utf8')
  if (spec.key_file) out.key = fs.readFileSync(spec.key_file, 'utf8')
  return out
}

async function run (c) {
  const kafka = new Kafka({
    clientId: 'tally-security',
    brokers: [bootstrap],
    ssl: ssl(c.ssl),
    sasl: c.sasl,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 3 }
  })
  const values = [0, 1, 2, 3, 4].map(i => `${c.name}-${i}`)
  const producer = kafka.producer()
  await producer.connect()
  const answers = await producer.send({ topic: c.topic, acks: -1, messages: values.map(v => ({ key: 'k', value: v })) })
  await producer.disconnect()
  if (answers.length !== 1 || answers[0].errorCode !== 0) mismatches.push(`${c.name}: send: ${JSON.stringify(answers)}`)
  const consumer = kafka.consumer({ groupId: `${c.name}-group`, heartbeatInterval: 500 })
  await consumer.connect()
  await consumer.subscribe({ topic: c.topic, fromBeginning: true })
  const read = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, 30000)
    consumer.run({
      eachMessage: async ({ message }) => {
        read.push(message.value.toString())
        if (read.length >= values.length) { clearTimeout(timer); resolve() }
      }
    }).catch(reject)
  })
  await consumer.disconnect()
  if (JSON.stringify(read) !== JSON.stringify(values)) mismatches.push(`${c.name}: read ${JSON.stringify(read)}, want ${JSON.stringify(values)}`)
  result.cases[c.name] = { sent: values.length, read: read.length }
}

async function main () {
  for (const c of cases) {
    try {
      await run(c)
    } catch (e) {
      mismatches.push(`${c.name}: ${e.name}: ${e.message}`)
    }
  }
  console.log(JSON.stringify(result, null, 1))
  process.exit(mismatches.length ? 1 : 0)
}

main()
