// The real-client harness: Baileys' own Signal code (npm `baileys` 7.0.0-rc14, whose Signal
// library is npm `libsignal` 6.x) against a real PostgreSQL key store, so that a test can
// prove what a cleanup run does to a live WhatsApp client.
//
//   node harness.mjs setup  --schema S --state FILE [--dsn URL] [--layout reference|encoded]
//   node harness.mjs verify --schema S --state FILE [--dsn URL] [--layout reference|encoded]
//
// `--layout encoded` keeps keys and creds as devlikeapro/waha's NOWEB PostgreSQL store does
// (docs/layouts.md): one table `waha_auth(session_id, key, value jsonb)`, keys `<type>-<id>`,
// the creds under the key `creds`, no timestamps.
//
// Without --dsn, node-postgres reads the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE), which also covers a server reached through a Unix socket directory.
//
// `setup` replays months of history into the key table (rows written "N days ago" by the
// database clock) and keeps the other parties' state in FILE; `verify`, run after the
// cleanup, delivers the messages held back and prints JSON counts per category. stdout
// carries that one JSON document only; errors are reported by message, never key material.
import { readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

import {
	addTransactionCapability,
	BufferJSON,
	DEFAULT_CONNECTION_CONFIG,
	encodeBigEndian,
	encodeWAMessage,
	getBinaryNodeChild,
	getBinaryNodeChildBuffer,
	getBinaryNodeChildren,
	getBinaryNodeChildUInt,
	getNextPreKeys,
	getNextPreKeysNode,
	initAuthCreds,
	INITIAL_PREKEY_COUNT,
	jidDecode,
	MIN_PREKEY_COUNT,
	newLTHashState,
	parseAndInjectE2ESessions,
	proto,
	unpadRandomMax16,
	xmppPreKey,
	xmppSignedPreKey
} from 'baileys'
import { buildMergedTcTokenIndexWrite } from 'baileys/lib/Utils/tc-token-utils.js'
import pg from 'pg'

// libsignal reports on the console (and dumps session state on decrypt failures): keep it
// off stdout, which carries the JSON result, and never print key material.
const quiet = () => {}
for (const name of ['log', 'info', 'warn', 'error', 'debug', 'trace']) {
	console[name] = process.env.HARNESS_DEBUG ? (...a) => process.stderr.write(`${a.join(' ')}\n`) : quiet
}

const silentLogger = {
	level: 'silent',
	trace: quiet,
	debug: quiet,
	info: quiet,
	warn: quiet,
	error: quiet,
	fatal: quiet,
	child() {
		return silentLogger
	}
}

// src/Socket/socket.ts wraps the auth state's keys with addTransactionCapability; retries are
// pointless against a local database, so commit once.
const TX_OPTS = { maxCommitRetries: 1, delayBetweenTriesMs: 0 }

// The reference deployment's adapter: pre-key, session, sender-key and lid-mapping rows expire
// 7 days after their write, every other type 14 days after.
const TTL_DAYS = { 'pre-key': 7, session: 7, 'sender-key': 7, 'lid-mapping': 7 }
const DEFAULT_TTL_DAYS = 14

const G1 = '120363000000000001@g.us' // LID-addressed group the account sends to
const G2 = '120363000000000002@g.us' // PN-addressed group where a contact sends to the account

// --- the simulated clock ------------------------------------------------------------------

// Days before the database's now() that writes are stamped with. Setup replays history by
// moving it; the database clock stays the one the cleanup measures against.
const clock = { daysAgo: 0 }

// --- the PostgreSQL key store (reference schema) -------------------------------------------

class PgKeyStore {
	constructor(db, schema, company) {
		this.db = db
		this.company = company
		this.keysTable = `${db.escapeIdentifier(schema)}.whatsapp_keys`
		// addTransactionCapability writes key types in parallel; one connection runs one
		// transaction at a time, so writes queue here.
		this.writes = Promise.resolve()
	}

	async get(type, ids) {
		const res = await this.db.query(
			`SELECT key_id, value::text AS v FROM ${this.keysTable}
			 WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3::text[])`,
			[this.company, type, ids]
		)
		const out = {}
		for (const row of res.rows) {
			let value = JSON.parse(row.v, BufferJSON.reviver)
			if (type === 'app-state-sync-key' && value) {
				// As useMultiFileAuthState does on read (src/Utils/use-multi-file-auth-state.ts).
				value = proto.Message.AppStateSyncKeyData.fromObject(value)
			}
			out[row.key_id] = value
		}
		return out
	}

	// Upserts with updated_at = the write's time and expires_at = write + TTL; a null value
	// deletes the row, as the adapter does for a consumed pre-key or a dropped session.
	set(data) {
		const write = this.writes.then(() => this.write(data))
		this.writes = write.catch(() => {})
		return write
	}

	async write(data) {
		await this.db.query('BEGIN')
		try {
			for (const type of Object.keys(data)) {
				const ids = []
				const values = []
				const gone = []
				for (const [id, value] of Object.entries(data[type])) {
					if (value === null || value === undefined) {
						gone.push(id)
					} else {
						ids.push(id)
						values.push(JSON.stringify(value, BufferJSON.replacer))
					}
				}
				if (gone.length) {
					await this.db.query(
						`DELETE FROM ${this.keysTable}
						 WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3::text[])`,
						[this.company, type, gone]
					)
				}
				if (ids.length) {
					await this.db.query(
						`INSERT INTO ${this.keysTable}
						   (company_id, key_type, key_id, value, created_at, updated_at, expires_at)
						 SELECT $1, $2, u.k, u.v::jsonb, c.w, c.w, c.w + make_interval(days => $6)
						 FROM unnest($3::text[], $4::text[]) AS u(k, v),
						      (SELECT now() - make_interval(secs => $5::float8 * 86400) AS w) AS c
						 ON CONFLICT (company_id, key_type, key_id) DO UPDATE
						 SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at,
						     expires_at = EXCLUDED.expires_at`,
						[this.company, type, ids, values, clock.daysAgo, TTL_DAYS[type] ?? DEFAULT_TTL_DAYS]
					)
				}
			}
			await this.db.query('COMMIT')
		} catch (err) {
			await this.db.query('ROLLBACK')
			throw err
		}
	}
}

// --- the PostgreSQL key store in the encoded layout (devlikeapro/waha's) ---------------------

// The layout the accounts' keys and creds are stored in: set once from --layout.
const layout = { encoded: false }

// As src/core/engines/noweb/store/postgres/usePostgresAuthState.ts (devlikeapro/waha) reads and
// writes: `${type}-${id}` per session_id, revived by BufferJSON.reviver on read; a null value
// deletes the row; no timestamp is written. One difference: waha hands the value to
// node-postgres as is (JSON.stringify, Buffers as byte arrays), which turns the Uint8Arrays
// Baileys 7 keeps in some values into {"0": ..} objects that no longer decrypt; this store
// writes them with BufferJSON.replacer. The job reads only the keys and the creds counters.
class EncodedKeyStore {
	constructor(db, schema, session) {
		this.db = db
		this.session = session
		this.table = `${db.escapeIdentifier(schema)}.waha_auth`
		this.writes = Promise.resolve()
	}

	async get(type, ids) {
		const res = await this.db.query(
			`SELECT key, value::text AS v FROM ${this.table} WHERE session_id = $1 AND key = ANY($2::text[])`,
			[this.session, ids.map(id => `${type}-${id}`)]
		)
		const out = {}
		for (const row of res.rows) {
			let value = JSON.parse(row.v, BufferJSON.reviver)
			if (type === 'app-state-sync-key' && value) {
				value = proto.Message.AppStateSyncKeyData.fromObject(value)
			}
			out[row.key.slice(type.length + 1)] = value
		}
		return out
	}

	// usePostgresAuthState's readData: one row by its whole key (the creds: 'creds').
	async read(key) {
		const res = await this.db.query(`SELECT value::text AS v FROM ${this.table} WHERE session_id = $1 AND key = $2`, [
			this.session,
			key
		])
		return res.rows.length ? JSON.parse(res.rows[0].v, BufferJSON.reviver) : null
	}

	set(data) {
		const write = this.writes.then(() => this.write(data))
		this.writes = write.catch(() => {})
		return write
	}

	async write(data) {
		await this.db.query('BEGIN')
		try {
			for (const type of Object.keys(data)) {
				for (const [id, value] of Object.entries(data[type])) {
					await this.put(`${type}-${id}`, value)
				}
			}
			await this.db.query('COMMIT')
		} catch (err) {
			await this.db.query('ROLLBACK')
			throw err
		}
	}

	async put(key, value) {
		if (value === null || value === undefined) {
			await this.db.query(`DELETE FROM ${this.table} WHERE session_id = $1 AND key = $2`, [this.session, key])
			return
		}
		await this.db.query(
			`INSERT INTO ${this.table} (session_id, key, value) VALUES ($1, $2, $3)
			 ON CONFLICT (session_id, key) DO UPDATE SET value = EXCLUDED.value`,
			[this.session, key, JSON.stringify(value, BufferJSON.replacer)]
		)
	}
}

// --- an in-memory key store, for the other parties ------------------------------------------

function memoryStore(data) {
	return {
		async get(type, ids) {
			const out = {}
			for (const id of ids) {
				const value = data[type]?.[id]
				if (value !== undefined && value !== null) {
					out[id] = value
				}
			}
			return out
		},
		async set(update) {
			for (const type of Object.keys(update)) {
				data[type] = data[type] || {}
				for (const [id, value] of Object.entries(update[type])) {
					if (value === null || value === undefined) {
						delete data[type][id]
					} else {
						data[type][id] = value
					}
				}
			}
		}
	}
}

// --- parties ------------------------------------------------------------------------------

// The signal repository exactly as makeWASocket builds it: config.makeSignalRepository (which
// is makeLibSignalRepository) over { creds, keys } with the transaction capability.
function signalRepository(creds, rawKeys) {
	const keys = addTransactionCapability(rawKeys, silentLogger, TX_OPTS)
	const repo = DEFAULT_CONNECTION_CONFIG.makeSignalRepository({ creds, keys }, silentLogger, undefined)
	return { keys, repo }
}

function newCreds(meId, meLid) {
	const creds = initAuthCreds()
	creds.me = { id: meId, lid: meLid, name: 'realclient' }
	creds.registered = true
	return creds
}

// A contact, a group member, or the account's own phone: keys in memory, saved in the state file.
class Party {
	constructor(saved) {
		this.name = saved.name
		this.jid = saved.jid // the device JID others address it by
		this.creds = saved.creds
		this.data = saved.data
		const { keys, repo } = signalRepository(this.creds, memoryStore(this.data))
		this.keys = keys
		this.repo = repo
	}

	static create(name, jid, lid) {
		return new Party({ name, jid, creds: newCreds(jid, lid), data: {} })
	}

	toJSON() {
		return { name: this.name, jid: this.jid, creds: this.creds, data: this.data }
	}
}

// A tenant of the key table (one connected WhatsApp account): keys and creds in PostgreSQL.
class Account {
	constructor(db, schema, company, creds) {
		this.db = db
		this.company = company
		this.authTable = `${db.escapeIdentifier(schema)}.whatsapp_auth`
		this.store = layout.encoded ? new EncodedKeyStore(db, schema, company) : new PgKeyStore(db, schema, company)
		this.adopt(creds)
	}

	adopt(creds) {
		this.creds = creds
		const { keys, repo } = signalRepository(creds, this.store)
		this.keys = keys
		this.repo = repo
	}

	get jid() {
		return this.creds.me.id
	}

	static async load(db, schema, company) {
		if (layout.encoded) {
			const creds = await new EncodedKeyStore(db, schema, company).read('creds')
			if (!creds) {
				throw new Error(`no creds for session ${company}`)
			}
			return new Account(db, schema, company, creds)
		}
		const res = await db.query(
			`SELECT creds::text AS c FROM ${db.escapeIdentifier(schema)}.whatsapp_auth WHERE company_id = $1`,
			[company]
		)
		if (!res.rows.length) {
			throw new Error(`no creds for tenant ${company}`)
		}
		return new Account(db, schema, company, JSON.parse(res.rows[0].c, BufferJSON.reviver))
	}

	// The adapter's saveCreds: creds as jsonb (BufferJSON), so that creds->>'nextPreKeyId' and
	// creds->'me'->>'id' read as plain JSON.
	async saveCreds() {
		if (layout.encoded) {
			// usePostgresAuthState's saveCreds: writeData(creds, 'creds')
			await this.store.put('creds', this.creds)
			return
		}
		await this.db.query(
			`INSERT INTO ${this.authTable} (company_id, creds, created_at, updated_at)
			 SELECT $1, $2::jsonb, c.w, c.w
			 FROM (SELECT now() - make_interval(secs => $3::float8 * 86400) AS w) AS c
			 ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds, updated_at = EXCLUDED.updated_at`,
			[this.company, JSON.stringify(this.creds, BufferJSON.replacer), clock.daysAgo]
		)
	}
}

// --- the WhatsApp server, minimally --------------------------------------------------------

// Keeps each device's uploaded bundle and hands out one-time pre-keys lowest id first,
// removing each from its pool as it goes, as the server does.
class Server {
	constructor(saved = { devices: {}, aliases: {} }) {
		this.devices = saved.devices
		this.aliases = saved.aliases // user JID (no device) or device JID -> device record name
	}

	toJSON() {
		return { devices: this.devices, aliases: this.aliases }
	}

	// A device (re-)registers: a new identity replaces the old bundle and its pool.
	register(deviceKey, jids) {
		this.devices[deviceKey] = { registration: null, identity: null, skey: null, preKeys: [] }
		for (const jid of jids) {
			this.aliases[jid] = deviceKey
		}
	}

	// <iq xmlns=encrypt type=set> from getNextPreKeysNode (src/Utils/signal.ts).
	upload(deviceKey, node) {
		const dev = this.devices[deviceKey]
		dev.registration = getBinaryNodeChildBuffer(node, 'registration')
		dev.identity = getBinaryNodeChildBuffer(node, 'identity')
		const skey = getBinaryNodeChild(node, 'skey')
		dev.skey = {
			id: getBinaryNodeChildBuffer(skey, 'id'),
			value: getBinaryNodeChildBuffer(skey, 'value'),
			signature: getBinaryNodeChildBuffer(skey, 'signature')
		}
		const byId = new Map(dev.preKeys.map(k => [k.id, k]))
		for (const key of getBinaryNodeChildren(getBinaryNodeChild(node, 'list'), 'key')) {
			const id = getBinaryNodeChildUInt(key, 'id', 3)
			byId.set(id, { id, idBytes: getBinaryNodeChildBuffer(key, 'id'), value: getBinaryNodeChildBuffer(key, 'value') })
		}
		dev.preKeys = [...byId.values()].sort((a, b) => a.id - b.id)
	}

	// <iq xmlns=encrypt type=get><count/></iq>
	count(deviceKey) {
		return this.devices[deviceKey]?.preKeys.length ?? 0
	}

	// <iq xmlns=encrypt type=get><key><user jid/></key></iq>: the reply that
	// parseAndInjectE2ESessions (src/Utils/signal.ts) reads. Returns it and the pre-key id.
	fetch(jid) {
		const dev = this.devices[this.aliases[jid]]
		if (!dev) {
			throw new Error(`no bundle on the server for ${jid}`)
		}
		const preKey = dev.preKeys.shift()
		const content = [
			{ tag: 'registration', attrs: {}, content: dev.registration },
			{ tag: 'type', attrs: {}, content: Buffer.from([5]) },
			{ tag: 'identity', attrs: {}, content: dev.identity },
			{
				tag: 'skey',
				attrs: {},
				content: [
					{ tag: 'id', attrs: {}, content: dev.skey.id },
					{ tag: 'value', attrs: {}, content: dev.skey.value },
					{ tag: 'signature', attrs: {}, content: dev.skey.signature }
				]
			}
		]
		if (preKey) {
			content.push({
				tag: 'key',
				attrs: {},
				content: [
					{ tag: 'id', attrs: {}, content: preKey.idBytes },
					{ tag: 'value', attrs: {}, content: preKey.value }
				]
			})
		}
		const node = {
			tag: 'iq',
			attrs: { type: 'result' },
			content: [{ tag: 'list', attrs: {}, content: [{ tag: 'user', attrs: { jid }, content }] }]
		}
		return { node, preKeyId: preKey?.id ?? null }
	}
}

// src/Socket/socket.ts uploadPreKeys: getNextPreKeysNode inside a keys transaction, the creds
// update saved (creds.update), then the node sent to the server.
async function uploadPreKeys(server, deviceKey, holder, count) {
	const node = await holder.keys.transaction(async () => {
		const { update, node } = await getNextPreKeysNode({ creds: holder.creds, keys: holder.keys }, count)
		Object.assign(holder.creds, update)
		return node
	}, holder.creds.me?.id || 'upload-pre-keys')
	if (holder.saveCreds) {
		await holder.saveCreds()
	}
	server.upload(deviceKey, node)
	return count
}

// src/Socket/socket.ts uploadPreKeysToServerIfRequired: INITIAL_PREKEY_COUNT (812) when the
// server holds none, else MIN_PREKEY_COUNT (5) when it holds that many or fewer, or when the
// newest generated pre-key is missing from storage.
async function uploadPreKeysToServerIfRequired(server, deviceKey, holder) {
	const onServer = server.count(deviceKey)
	const count = onServer === 0 ? INITIAL_PREKEY_COUNT : MIN_PREKEY_COUNT
	const current = holder.creds.nextPreKeyId - 1
	const stored = current > 0 ? await holder.keys.get('pre-key', [String(current)]) : {}
	const missingCurrent = current > 0 && !stored[String(current)]
	if (onServer <= count || missingCurrent) {
		return uploadPreKeys(server, deviceKey, holder, count)
	}
	return 0
}

// --- messages ------------------------------------------------------------------------------

function textMessage(text) {
	return encodeWAMessage({ conversation: text })
}

function readMessage(plaintext) {
	return proto.Message.decode(unpadRandomMax16(plaintext))
}

// A party that has no session yet fetches the recipient's bundle (src/Socket/messages-send.ts
// assertSessions) and injects it with the repository's injectE2ESession.
async function assertSession(server, sender, recipientJid) {
	const { exists } = await sender.repo.validateSession(recipientJid)
	if (exists) {
		return null
	}
	const { node, preKeyId } = server.fetch(recipientJid)
	await parseAndInjectE2ESessions(node, sender.repo)
	return preKeyId
}

// One 1:1 message: encrypt on the sender's session, decrypt on the recipient's.
async function send(sender, senderJid, recipient, recipientJid, text) {
	const enc = await sender.repo.encryptMessage({ jid: recipientJid, data: textMessage(text) })
	await deliver(recipient, senderJid, enc, text)
	return enc.type
}

async function deliver(recipient, senderJid, enc, text) {
	const plain = await recipient.repo.decryptMessage({ jid: senderJid, type: enc.type, ciphertext: enc.ciphertext })
	const got = readMessage(plain)
	if (text !== undefined && got.conversation !== text) {
		throw new Error('decrypted text differs from the text sent')
	}
	return got
}

// The group branch of relayMessage in src/Socket/messages-send.ts:
// - senderKeyMap is the `sender-key-memory` row of the group (device JID -> true);
// - encryptGroupMessage({ group, data, meId }) with meId = me.lid for a LID-addressed group,
//   creating the sender key when the store has none;
// - every device not in the map gets the SenderKeyDistributionMessage over its pairwise
//   session (assertSessions fetches a bundle where there is none), and joins the map;
// - the map is written back to `sender-key-memory`.
// Returns what the server would deliver to each device: its pairwise part, if any, and the skmsg.
async function relayGroupMessage(server, sender, { group, addressing, devices, text }) {
	const meId = addressing === 'lid' && sender.creds.me.lid ? sender.creds.me.lid : sender.creds.me.id
	const { [group]: stored } = await sender.keys.get('sender-key-memory', [group])
	const senderKeyMap = stored || {}
	const { ciphertext, senderKeyDistributionMessage } = await sender.repo.encryptGroupMessage({
		group,
		data: textMessage(text),
		meId
	})
	const pairwise = {}
	const recipients = devices.filter(jid => !senderKeyMap[jid])
	for (const jid of recipients) {
		senderKeyMap[jid] = true
	}
	for (const jid of recipients) {
		await assertSession(server, sender, jid)
		pairwise[jid] = await sender.repo.encryptMessage({
			jid,
			data: encodeWAMessage({
				senderKeyDistributionMessage: { axolotlSenderKeyDistributionMessage: senderKeyDistributionMessage, groupId: group }
			})
		})
	}
	await sender.keys.set({ 'sender-key-memory': { [group]: senderKeyMap } })
	return { from: meId, skmsg: ciphertext, pairwise }
}

// A device receiving a group message (src/Utils/decode-wa-message.ts, process-message.ts):
// the pairwise part first (the SKDM, processed with processSenderKeyDistributionMessage),
// then the skmsg with decryptGroupMessage.
async function receiveGroupMessage(recipient, myJid, group, sent, text) {
	const part = sent.pairwise[myJid]
	if (part) {
		const msg = await deliver(recipient, sent.from, part)
		if (msg.senderKeyDistributionMessage) {
			await recipient.repo.processSenderKeyDistributionMessage({
				item: msg.senderKeyDistributionMessage,
				authorJid: sent.from
			})
		}
	}
	const plain = await recipient.repo.decryptGroupMessage({ group, authorJid: sent.from, msg: sent.skmsg })
	if (readMessage(plain).conversation !== text) {
		throw new Error('decrypted group text differs from the text sent')
	}
}

// --- the history ---------------------------------------------------------------------------

const TENANTS = {
	acct: { me: '5511000000001:12@s.whatsapp.net', lid: '100000000001:12@lid' },
	repaired: { me: '5511000000002:7@s.whatsapp.net', lid: '100000000002:7@lid' },
	busy: { me: '5511000000003:3@s.whatsapp.net', lid: '100000000003:3@lid' },
	retried: { me: '5511000000004:2@s.whatsapp.net', lid: '100000000004:2@lid' }
}

// src/Socket/messages-recv.ts sendRetryRequest: a retry receipt with keys
// (retryCount > 1, forceIncludeKeys or shouldRecreateSession) takes getNextPreKeys(authState, 1)
// inside a keys transaction and emits creds.update: one new pre-key id, handed to the contact
// directly (not to the server's pool), and firstUnuploadedPreKeyId moves past it. The contact
// rebuilds its session from that bundle and sends a pkmsg, which consumes the key (removePreKey).
async function retryReceiptWithKeys(account, contact) {
	const { keyId, key } = await account.keys.transaction(async () => {
		const { update, preKeys } = await getNextPreKeys({ creds: account.creds, keys: account.keys }, 1)
		Object.assign(account.creds, update)
		const [keyId] = Object.keys(preKeys)
		return { keyId: +keyId, key: preKeys[+keyId] }
	}, account.creds.me.id)
	await account.saveCreds()
	const c = account.creds
	const node = {
		tag: 'iq',
		attrs: { type: 'result' },
		content: [
			{
				tag: 'list',
				attrs: {},
				content: [
					{
						tag: 'user',
						attrs: { jid: account.jid },
						content: [
							{ tag: 'registration', attrs: {}, content: encodeBigEndian(c.registrationId) },
							{ tag: 'type', attrs: {}, content: Buffer.from([5]) },
							{ tag: 'identity', attrs: {}, content: c.signedIdentityKey.public },
							xmppSignedPreKey(c.signedPreKey),
							xmppPreKey(key, keyId)
						]
					}
				]
			}
		]
	}
	await parseAndInjectE2ESessions(node, contact.repo)
	await send(contact, contact.jid, account, account.jid, `resent after retry ${keyId}`)
	return keyId
}

const pn = (n, device = 0) => `${n}${device ? `:${device}` : ''}@s.whatsapp.net`

function newAccount(db, schema, company) {
	const { me, lid } = TENANTS[company]
	return new Account(db, schema, company, newCreds(me, lid))
}

// A new registration of the account's device on the server, under its PN and LID JIDs.
function registerAccount(server, account) {
	const { user } = jidDecode(account.creds.me.id)
	const { user: lidUser } = jidDecode(account.creds.me.lid)
	server.register(account.company, [account.creds.me.id, account.creds.me.lid, pn(user), `${lidUser}@lid`])
}

// Contacts fetch bundles from the server: `use` of them send their first message (the account
// decrypts it, consuming the pre-key); the rest never send (a failed send, an abandoned chat),
// so their pre-keys stay in the table.
let drainers = 0
async function drain(server, account, n, { useEvery }) {
	let used = 0
	for (let i = 0; i < n; i++) {
		if (useEvery && i % useEvery === 0) {
			drainers++
			const contact = Party.create(`drainer-${drainers}`, pn(`551170${String(drainers).padStart(7, '0')}`))
			await assertSession(server, contact, account.jid)
			await send(contact, contact.jid, account, account.jid, `hi ${i}`)
			used++
		} else {
			server.fetch(account.jid)
		}
	}
	return used
}

async function setup(db, schema, statePath) {
	const server = new Server()
	const parties = {}
	const held = [] // messages the server holds until verify: { category, tenant, from, jid, enc, text }
	const pending = [] // contacts holding a fetched bundle, sending their first message in verify
	const summary = { uploads: {}, drained: {} }
	const addParty = p => {
		parties[p.name] = p
		return p
	}
	const note = (company, what, value) => {
		summary.uploads[company] = summary.uploads[company] || []
		summary.uploads[company].push({ what, ...value })
	}

	// ---- tenant acct ------------------------------------------------------------------------
	clock.daysAgo = 60
	const acct = newAccount(db, schema, 'acct')
	registerAccount(server, acct)
	await acct.saveCreds()
	note('acct', 'upload', { daysAgo: 60, count: await uploadPreKeysToServerIfRequired(server, 'acct', acct) })

	// The account's own phone (device 0 of the me user, by PN and by LID), and the G1 members:
	// they upload bundles so that the account can start sessions with them.
	const phone = addParty(Party.create('phone', pn('5511000000001'), '100000000001@lid'))
	server.register('phone', [phone.jid, '100000000001@lid'])
	await uploadPreKeys(server, 'phone', phone, 10)
	const members = ['200000000001@lid', '200000000002@lid', '200000000003:5@lid'].map((jid, i) => {
		const m = addParty(Party.create(`g1-member-${i + 1}`, jid))
		server.register(m.name, [jid])
		return m
	})
	for (const m of members) {
		await uploadPreKeys(server, m.name, m, 10)
	}

	// 20 contacts start sessions with the 20 lowest pre-key ids, and get a reply.
	const contacts = []
	for (let i = 1; i <= 20; i++) {
		const c = addParty(Party.create(`contact-${i}`, pn(`55119000000${String(i).padStart(2, '0')}`)))
		const preKeyId = await assertSession(server, c, acct.jid)
		if (preKeyId !== i) {
			throw new Error(`contact ${i} got pre-key ${preKeyId}: the server must hand out lowest first`)
		}
		await send(c, c.jid, acct, acct.jid, `hello from contact ${i}`)
		await send(acct, acct.jid, c, c.jid, `hello contact ${i}`)
		contacts.push(c)
	}

	// Own devices: the account starts the sessions (a send also goes to the own other devices,
	// src/Socket/messages-send.ts), the phone answers on each.
	for (const [accountJid, phoneJid] of [
		[acct.creds.me.id, phone.jid],
		[acct.creds.me.lid, '100000000001@lid']
	]) {
		await assertSession(server, acct, phoneJid)
		await send(acct, accountJid, phone, phoneJid, 'to my phone')
		await send(phone, phoneJid, acct, accountJid, 'from my phone')
	}

	// Rows that must survive whatever their age: app-state sync keys and versions, LID mappings.
	await acct.keys.set({
		'app-state-sync-key': Object.fromEntries(
			[1, 2, 3].map(n => [
				`AAAAAAA${n}`,
				{ keyData: Buffer.alloc(32, n), fingerprint: { rawId: n, currentIndex: n, deviceIndexes: [0, 12] }, timestamp: 1_700_000_000 + n }
			])
		),
		'app-state-sync-version': { regular_high: newLTHashState(), critical_block: newLTHashState() }
	})
	await acct.repo.lidMapping.storeLIDPNMappings(
		members.map((m, i) => ({ lid: `${jidDecode(m.jid).user}@lid`, pn: pn(`55118000000${i + 1}`) }))
	)
	// tctoken rows and the `__index` row that tracks them (src/Utils/tc-token-utils.ts).
	const tcJids = members.map(m => `${jidDecode(m.jid).user}@lid`)
	await acct.keys.set({
		tctoken: {
			...Object.fromEntries(tcJids.map((jid, i) => [jid, { token: Buffer.from(`tc-${i}`), timestamp: String(1_700_000_000 + i) }])),
			...(await buildMergedTcTokenIndexWrite(acct.keys, tcJids))
		}
	})

	// Day -40: the account sends to G1 (LID addressing), the members decrypt.
	clock.daysAgo = 40
	const g1Devices = members.map(m => m.jid)
	const g1First = await relayGroupMessage(server, acct, { group: G1, addressing: 'lid', devices: g1Devices, text: 'g1 first' })
	for (const m of members) {
		await receiveGroupMessage(m, m.jid, G1, g1First, 'g1 first')
	}

	// device-list: day -40 the account starts a PN session with DL and sends to
	// it; getUSyncDevices (src/Socket/messages-send.ts) stores DL's `device-list` row then.
	// DL keeps writing (day -10), the account never sends again, so the device-list row is not
	// rewritten. The LID of DL is learnt only at verify (storeMappingFromEnvelope).
	const dl = addParty(Party.create('dl-contact', pn('5511900000099'), '300000000099@lid'))
	server.register('dl-contact', [dl.jid])
	await uploadPreKeys(server, 'dl-contact', dl, 10)
	await assertSession(server, acct, dl.jid)
	await acct.keys.set({ 'device-list': { '5511900000099': ['0'] } })
	await send(acct, acct.jid, dl, dl.jid, 'hello dl')
	await send(dl, dl.jid, acct, acct.jid, 'hello acct')

	// Day -10: contacts 1-10 talk both ways; contact 1 (M) sends to G2 (SKDM + skmsg).
	clock.daysAgo = 10
	for (const c of contacts.slice(0, 10)) {
		await send(c, c.jid, acct, acct.jid, `still here ${c.name}`)
		await send(acct, acct.jid, c, c.jid, `me too ${c.name}`)
	}
	await send(dl, dl.jid, acct, acct.jid, 'dl still writing')
	const m = contacts[0]
	const g2First = await relayGroupMessage(server, m, { group: G2, addressing: 'pn', devices: [acct.jid], text: 'g2 first' })
	await receiveGroupMessage(acct, acct.jid, G2, g2First, 'g2 first')

	// Now (just before the cleanup): messages the server holds for the account, and new
	// contacts that fetched the bundles with pre-keys 21..30.
	clock.daysAgo = 0
	for (const c of contacts) {
		const i = Number(c.name.split('-')[1])
		const text = `held from ${c.name}`
		const enc = await c.repo.encryptMessage({ jid: acct.jid, data: textMessage(text) })
		held.push({
			category: i <= 10 ? 'acct: session used 10 days ago' : 'acct: session idle 60 days',
			tenant: 'acct',
			from: c.jid,
			to: acct.jid,
			enc,
			text
		})
	}
	for (const [accountJid, phoneJid] of [
		[acct.creds.me.id, phone.jid],
		[acct.creds.me.lid, '100000000001@lid']
	]) {
		const text = `held from my phone to ${accountJid}`
		const enc = await phone.repo.encryptMessage({ jid: accountJid, data: textMessage(text) })
		held.push({ category: 'acct: own device, session 60 days old', tenant: 'acct', from: phoneJid, to: accountJid, enc, text })
	}
	{
		const text = 'held from dl'
		const enc = await dl.repo.encryptMessage({ jid: acct.jid, data: textMessage(text) })
		held.push({ category: 'acct: PN session used 10 days ago, LID learnt now', tenant: 'acct', from: dl.jid, to: acct.jid, enc, text, lid: '300000000099@lid' })
	}
	for (let i = 1; i <= 10; i++) {
		const c = addParty(Party.create(`new-contact-${i}`, pn(`55119100000${String(i).padStart(2, '0')}`)))
		const preKeyId = await assertSession(server, c, acct.jid)
		pending.push({ category: 'acct: first message, pre-key 60 days old', tenant: 'acct', party: c.name, preKeyId })
	}

	// ---- tenant repaired ----------------------------------------------------------------------
	// First registration 90 days ago: 812 uploaded, drained by contacts, 812 more; then a
	// re-pair 20 days ago (new creds: nextPreKeyId back to 1) uploads ids 1..812 again.
	clock.daysAgo = 90
	let repaired = newAccount(db, schema, 'repaired')
	registerAccount(server, repaired)
	await repaired.saveCreds()
	note('repaired', 'upload', { daysAgo: 90, count: await uploadPreKeysToServerIfRequired(server, 'repaired', repaired) })
	summary.drained.repaired = { fetched: INITIAL_PREKEY_COUNT, used: await drain(server, repaired, INITIAL_PREKEY_COUNT, { useEvery: 100 }) }
	note('repaired', 'upload', { daysAgo: 90, count: await uploadPreKeysToServerIfRequired(server, 'repaired', repaired) })
	clock.daysAgo = 20
	repaired = newAccount(db, schema, 'repaired')
	registerAccount(server, repaired)
	await repaired.saveCreds()
	note('repaired', 're-pair upload', { daysAgo: 20, count: await uploadPreKeysToServerIfRequired(server, 'repaired', repaired) })
	clock.daysAgo = 0
	for (let i = 1; i <= 5; i++) {
		const c = addParty(Party.create(`repaired-new-${i}`, pn(`55119200000${String(i).padStart(2, '0')}`)))
		const preKeyId = await assertSession(server, c, repaired.jid)
		pending.push({ category: 'repaired: first message after the re-pair', tenant: 'repaired', party: c.name, preKeyId })
	}

	// ---- tenant busy --------------------------------------------------------------------------
	// Uploads at days -100 (812), -80 (812, the server had none left) and -60 (5, it had 3).
	clock.daysAgo = 100
	const busy = newAccount(db, schema, 'busy')
	registerAccount(server, busy)
	await busy.saveCreds()
	note('busy', 'upload', { daysAgo: 100, count: await uploadPreKeysToServerIfRequired(server, 'busy', busy) })
	const busyUsed1 = await drain(server, busy, server.count('busy'), { useEvery: 50 })
	clock.daysAgo = 80
	note('busy', 'upload', { daysAgo: 80, count: await uploadPreKeysToServerIfRequired(server, 'busy', busy) })
	const busyUsed2 = await drain(server, busy, server.count('busy') - 3, { useEvery: 50 })
	clock.daysAgo = 60
	note('busy', 'upload', { daysAgo: 60, count: await uploadPreKeysToServerIfRequired(server, 'busy', busy) })
	summary.drained.busy = { used: busyUsed1 + busyUsed2 }
	clock.daysAgo = 0
	for (let i = 1; i <= 5; i++) {
		const c = addParty(Party.create(`busy-new-${i}`, pn(`55119300000${String(i).padStart(2, '0')}`)))
		const preKeyId = await assertSession(server, c, busy.jid)
		pending.push({ category: 'busy: first message, pre-key from the current pool', tenant: 'busy', party: c.name, preKeyId })
	}

	// ---- tenant retried ---------------------------------------------------------------------
	// Day -60: 812 pre-keys uploaded (ids 1..812). Few new contacts: 10 take ids 1..10 from the
	// pool. Days -59..-1: 250 retry receipts with keys (about 4 a day: messages that failed
	// twice, e.g. on sessions the job deleted), each minting one id past the pool.
	clock.daysAgo = 60
	const retried = newAccount(db, schema, 'retried')
	registerAccount(server, retried)
	await retried.saveCreds()
	note('retried', 'upload', { daysAgo: 60, count: await uploadPreKeysToServerIfRequired(server, 'retried', retried) })
	summary.drained.retried = { used: await drain(server, retried, 10, { useEvery: 1 }) }
	const retryIds = []
	for (let i = 0; i < 250; i++) {
		clock.daysAgo = 59 - Math.floor((i * 59) / 250)
		const c = Party.create(`retrier-${i}`, pn(`55117700${String(i).padStart(5, '0')}`))
		retryIds.push(await retryReceiptWithKeys(retried, c))
	}
	summary.retried_retry_ids = [retryIds[0], retryIds[retryIds.length - 1]]
	clock.daysAgo = 0
	for (let i = 1; i <= 5; i++) {
		const c = addParty(Party.create(`retried-new-${i}`, pn(`55119400000${String(i).padStart(2, '0')}`)))
		const preKeyId = await assertSession(server, c, retried.jid)
		pending.push({ category: 'retried: first message, pre-key from the current pool', tenant: 'retried', party: c.name, preKeyId })
	}

	for (const a of [acct, repaired, busy, retried]) {
		summary[a.company] = {
			nextPreKeyId: a.creds.nextPreKeyId,
			firstUnuploadedPreKeyId: a.creds.firstUnuploadedPreKeyId,
			onServer: server.count(a.company)
		}
	}
	summary.pendingPreKeyIds = Object.fromEntries(['acct', 'repaired', 'busy', 'retried'].map(t => [t, pending.filter(p => p.tenant === t).map(p => p.preKeyId)]))

	const state = {
		server,
		parties: Object.fromEntries(Object.values(parties).map(p => [p.name, p])),
		held,
		pending,
		groups: { G1: { devices: g1Devices }, G2: { sender: m.name } }
	}
	writeFileSync(statePath, JSON.stringify(state, BufferJSON.replacer))
	return summary
}

// --- verify --------------------------------------------------------------------------------

class Tally {
	constructor() {
		this.categories = {}
	}

	async attempt(category, work) {
		const c = (this.categories[category] ||= { attempted: 0, decrypted: 0, failed: 0, errors: {} })
		c.attempted++
		try {
			await work()
			c.decrypted++
		} catch (err) {
			c.failed++
			// The error's message only (libsignal's SessionError / PreKeyError texts), no state.
			const message = String(err?.message ?? err).slice(0, 200)
			c.errors[message] = (c.errors[message] || 0) + 1
		}
	}
}

async function verify(db, schema, statePath) {
	const state = JSON.parse(readFileSync(statePath, 'utf-8'), BufferJSON.reviver)
	const server = new Server(state.server)
	const parties = Object.fromEntries(Object.entries(state.parties).map(([name, saved]) => [name, new Party(saved)]))
	const accounts = {}
	for (const company of Object.keys(TENANTS)) {
		accounts[company] = await Account.load(db, schema, company)
	}
	const tally = new Tally()

	for (const h of state.held) {
		await tally.attempt(h.category, async () => {
			if (h.lid) {
				// src/Utils/decode-wa-message.ts: decryptionJid is computed first (the PN: no
				// mapping yet), then storeMappingFromEnvelope stores the mapping and migrates.
				const repo = accounts[h.tenant].repo
				await repo.lidMapping.storeLIDPNMappings([{ lid: h.lid, pn: h.from }])
				await repo.migrateSession(h.from, h.lid)
			}
			await deliver(accounts[h.tenant], h.from, h.enc, h.text)
		})
	}
	// identity-key: contact-2 talked 10 days ago (session kept); its identity-key
	// row was written 60 days ago and never rewritten. It reinstalls (new identity) and writes.
	await tally.attempt('acct: contact reinstalled after its identity-key aged', async () => {
		const fresh = Party.create('contact-2-reinstalled', parties['contact-2'].jid)
		await assertSession(server, fresh, accounts.acct.jid)
		await send(fresh, fresh.jid, accounts.acct, accounts.acct.jid, 'new phone, first')
		await send(fresh, fresh.jid, accounts.acct, accounts.acct.jid, 'new phone, second')
		await send(accounts.acct, accounts.acct.jid, fresh, fresh.jid, 'reply to new phone')
	})
	for (const p of state.pending) {
		const c = parties[p.party]
		const account = accounts[p.tenant]
		await tally.attempt(p.category, () => send(c, c.jid, account, account.jid, `first from ${c.name}`))
	}

	// G1: the account sends again, following messages-send's rule; every member must decrypt.
	const acct = accounts.acct
	let g1Send = null
	await tally.attempt('acct: G1 send by the account (sender key 40 days old)', async () => {
		g1Send = await relayGroupMessage(server, acct, { group: G1, addressing: 'lid', devices: state.groups.G1.devices, text: 'g1 again' })
	})
	const g1Members = Object.values(parties).filter(p => p.name.startsWith('g1-member-'))
	for (const m of g1Members) {
		await tally.attempt('acct: G1 members decrypt the account\'s send', async () => {
			if (!g1Send) {
				throw new Error('the account could not send to G1')
			}
			await receiveGroupMessage(m, m.jid, G1, g1Send, 'g1 again')
		})
	}

	// G2: M sends again; its sender-key memory says the account has its key, so only the skmsg.
	const m = parties[state.groups.G2.sender]
	await tally.attempt('acct: G2 message from M (sender key 10 days old)', async () => {
		const sent = await relayGroupMessage(server, m, { group: G2, addressing: 'pn', devices: [acct.jid], text: 'g2 again' })
		await receiveGroupMessage(acct, acct.jid, G2, sent, 'g2 again')
	})

	return { categories: tally.categories }
}

// --- main ----------------------------------------------------------------------------------

async function main() {
	const { positionals, values } = parseArgs({
		allowPositionals: true,
		options: {
			dsn: { type: 'string' },
			schema: { type: 'string' },
			state: { type: 'string' },
			layout: { type: 'string', default: 'reference' }
		}
	})
	const [phase] = positionals
	const layouts = ['reference', 'encoded']
	if (!['setup', 'verify'].includes(phase) || !values.schema || !values.state || !layouts.includes(values.layout)) {
		process.stderr.write(
			'usage: node harness.mjs setup|verify --schema S --state FILE [--dsn URL] [--layout reference|encoded]\n'
		)
		process.exit(2)
	}
	layout.encoded = values.layout === 'encoded'
	const db = new pg.Client(values.dsn ? { connectionString: values.dsn } : {})
	await db.connect()
	try {
		let result
		if (phase === 'setup') {
			// The table's trigger stamps updated_at with the real clock on UPDATE; while setup
			// replays history the adapter's own stamp (the simulated write time) must stand.
			// Session-local, setup only: verify writes at the real now(), trigger on.
			await db.query('SET session_replication_role = replica')
			// Hundreds of small commits replay the history; none needs to wait for the disk.
			await db.query('SET synchronous_commit = off')
			result = await setup(db, values.schema, values.state)
		} else {
			result = await verify(db, values.schema, values.state)
		}
		process.stdout.write(`${JSON.stringify(result)}\n`)
	} finally {
		await db.end()
	}
}

main().catch(err => {
	process.stderr.write(`harness failed: ${err?.stack ?? err}\n`)
	process.exit(1)
})
