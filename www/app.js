// The demo app: offline-first notes in PluresDB (IndexedDB in this browser),
// searched by meaning, synced end-to-end encrypted through the relay of the
// server that serves this page, with a service worker for offline use and
// background sync. No framework: plain DOM, one module.
import init, { PluresDB, hashEmbed } from '/pkg/pluresdb.js';

const $ = (id) => document.getElementById(id);
const status = $('status');
const DB_KEY = 'pluresdb-demo:db';
const MODEL_KEY = 'pluresdb-demo:model';
const relayUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/relay`;

function showError(action, error) {
  console.error(action, error);
  status.textContent = `Could not ${action}: ${error.message ?? error}`;
  status.dataset.kind = 'error';
}

/** Embeds with an endpoint speaking the OpenAI embeddings format. */
function remoteEmbedder(url) {
  return async (texts) => {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input: texts }),
    });
    if (!response.ok) throw new Error(`the embedding endpoint ${url} answered ${response.status}`);
    const body = await response.json();
    if (!Array.isArray(body?.data)) throw new Error(`the embedding endpoint ${url} sent no "data" array`);
    return body.data.map((item) => item.embedding);
  };
}

// Which built-in embedder a database uses, remembered per database: its
// vectors must all come from one model. New databases use the built-in
// model (`minilm-static`, distilled from all-MiniLM-L6-v2: it knows that
// flights are travel); a database this demo filled before, with the hash
// embedder, keeps that one.
const EMBEDDER_KEY = (name) => `pluresdb-demo:embedder:${name}`;

function showModelProgress({ loaded, total }) {
  const mb = (bytes) => (bytes / 1e6).toFixed(1);
  status.textContent = total
    ? `Loading the search model: ${mb(loaded)} of ${mb(total)} MB (once; it is kept for offline use)…`
    : `Loading the search model: ${mb(loaded)} MB…`;
  status.dataset.kind = 'progress';
}

async function openDatabase(name, { invite, modelUrl } = {}) {
  const options = { embedFields: ['text'] };
  if (invite) options.invite = invite;
  if (modelUrl) return PluresDB.open(name, { ...options, embedder: remoteEmbedder(modelUrl) });
  const remembered = localStorage.getItem(EMBEDDER_KEY(name));
  if (remembered === 'hash') return PluresDB.open(name, { ...options, embedder: (texts) => hashEmbed(texts, 256) });
  const db = await PluresDB.open(name, { ...options, embedder: 'minilm-static', onEmbedderProgress: showModelProgress });
  if (status.dataset.kind === 'progress') {
    status.textContent = '';
    delete status.dataset.kind;
  }
  if (!remembered && db.indexStats().vectors > 0) {
    // Vectors from before the demo remembered its embedder: the hash's.
    await db.close();
    localStorage.setItem(EMBEDDER_KEY(name), 'hash');
    return openDatabase(name, { invite, modelUrl });
  }
  localStorage.setItem(EMBEDDER_KEY(name), 'minilm-static');
  return db;
}

await init();

// Which database: the last one used, or the one an invite link (#invite=…)
// belongs to. Joining opens a database of its own, so notes already on this
// device stay where they are.
const invite = new URLSearchParams(location.hash.slice(1)).get('invite');
let dbName = localStorage.getItem(DB_KEY) ?? 'notes';
if (invite) {
  dbName = `notes-${(invite.split('.')[1] ?? 'shared').slice(0, 16)}`;
  localStorage.setItem(DB_KEY, dbName);
  history.replaceState(null, '', location.pathname);
}
const modelUrl = localStorage.getItem(MODEL_KEY);
let db;
try {
  db = await openDatabase(dbName, { invite, modelUrl });
} catch (error) {
  showError('open the database', error);
  throw error;
}
const inviteLink = `${location.origin}/#invite=${await db.createInvite()}`;
// Exposed for debugging from the console and for the end-to-end tests.
globalThis.pluresdb = { db, PluresDB, dbName, relayUrl };

// ---- notes ---------------------------------------------------------------

const list = $('notes');
const template = $('note-template');
const elements = new Map(); // note id -> <li>, reused so edits keep focus
let editing = null; // id of the note whose editor is open
let noteCount = 0;

function describe(data) {
  const when = new Date(data.updated ?? data.created);
  return `${data.updated && data.updated !== data.created ? 'Edited' : 'Added'} ${when.toLocaleString()}`;
}

function noteElement(id) {
  let item = elements.get(id);
  if (item) return item;
  item = template.content.firstElementChild.cloneNode(true);
  item.dataset.id = id;
  item.querySelector('.edit').addEventListener('click', () => {
    if (editing === id) item.saveEdit?.();
    else openEditor(id);
  });
  item.querySelector('.delete').addEventListener('click', async () => {
    try {
      await db.delete(id);
      afterWrite();
    } catch (error) {
      showError('delete the note', error);
    }
  });
  elements.set(id, item);
  return item;
}

function renderNotes(records) {
  const notes = records.filter(({ data }) => typeof data?.text === 'string');
  notes.sort((a, b) => (b.data.created ?? 0) - (a.data.created ?? 0));
  const seen = new Set();
  const items = notes.map(({ id, data }) => {
    seen.add(id);
    const item = noteElement(id);
    item.dataset.text = data.text;
    if (editing !== id) item.querySelector('.text').textContent = data.text;
    item.querySelector('.meta').textContent = describe(data);
    const label = data.text.slice(0, 40);
    item.querySelector('.edit').setAttribute('aria-label', `Edit note: ${label}`);
    item.querySelector('.delete').setAttribute('aria-label', `Delete note: ${label}`);
    return item;
  });
  for (const id of elements.keys()) if (!seen.has(id)) elements.delete(id);
  list.replaceChildren(...items);
  noteCount = notes.length;
  if (!status.dataset.kind) {
    status.textContent = `${noteCount} note${noteCount === 1 ? '' : 's'}, stored in ${db.storageKind} on this device.`;
  }
  refreshConflicts(notes).catch((error) => showError('read conflicts', error));
  if (searchBox.value.trim()) runSearch();
  document.body.dataset.ready = 'true';
}

function openEditor(id) {
  const item = elements.get(id);
  if (!item) return;
  const text = item.querySelector('.text');
  const editor = document.createElement('textarea');
  editor.className = 'editor';
  editor.value = item.dataset.text;
  editor.rows = Math.max(3, editor.value.split('\n').length);
  editor.setAttribute('aria-label', 'Edit the note (Ctrl+Enter saves, Escape cancels)');
  const close = () => {
    if (editing === id) editing = null;
    item.saveEdit = item.cancelEdit = null;
    editor.replaceWith(text);
    text.textContent = item.dataset.text;
    item.querySelector('.edit').textContent = 'Edit';
    item.querySelector('.edit').focus();
  };
  const save = async () => {
    const value = editor.value.trim();
    if (!value) return;
    try {
      const current = (await db.get(id)) ?? {};
      await db.put(id, { ...current, text: value, updated: Date.now() });
      item.dataset.text = value;
      close();
      afterWrite();
    } catch (error) {
      showError('save the note', error);
    }
  };
  editor.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') close();
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) save();
  });
  if (editing && editing !== id) elements.get(editing)?.cancelEdit?.();
  editing = id;
  item.saveEdit = save;
  item.cancelEdit = close;
  text.replaceWith(editor);
  item.querySelector('.edit').textContent = 'Save';
  editor.focus();
}

async function addNote() {
  const input = $('note-text');
  const value = input.value.trim();
  if (!value) return;
  const created = Date.now();
  try {
    await db.put(`note:${created}:${crypto.randomUUID()}`, { text: value, created, updated: created });
    input.value = '';
    delete status.dataset.kind;
    afterWrite();
  } catch (error) {
    showError('save the note', error);
  }
}

$('note-form').addEventListener('submit', (event) => {
  event.preventDefault();
  addNote();
});
$('note-text').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    addNote();
  }
});

// ---- semantic search -----------------------------------------------------

const searchBox = $('search');
const results = $('results');
let searchTimer;
let searchGeneration = 0;

async function runSearch() {
  const query = searchBox.value.trim();
  const generation = ++searchGeneration;
  if (!query) {
    results.replaceChildren();
    $('search-hint').textContent = '';
    return;
  }
  try {
    const hits = await db.search(query, { k: 5, filter: { prefix: 'note:' }, minScore: 0.05 });
    if (generation !== searchGeneration) return;
    results.replaceChildren(...hits.map((hit) => {
      const item = document.createElement('li');
      const score = document.createElement('span');
      score.className = 'score';
      score.textContent = hit.score.toFixed(2);
      score.title = 'Similarity (1 is identical)';
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = hit.data.text;
      item.dataset.id = hit.id;
      item.append(score, text);
      return item;
    }));
    $('search-hint').textContent = hits.length
      ? `${hits.length} closest note${hits.length === 1 ? '' : 's'}, best first.`
      : 'No note is close to that.';
  } catch (error) {
    showError('search', error);
  }
}

searchBox.addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 120);
});

// ---- conflicts -----------------------------------------------------------

async function refreshConflicts(notes) {
  const found = [];
  for (const { id, data } of notes) {
    const versions = await db.conflicts(id);
    if (versions.length) found.push({ id, data, versions });
  }
  $('conflicts-section').hidden = found.length === 0;
  $('conflicts').replaceChildren(...found.map(({ id, data, versions }) => {
    const item = document.createElement('li');
    item.className = 'conflict';
    item.dataset.id = id;
    const choices = [{ data, label: 'Current' }, ...versions.filter((v) => !v.deleted).map((v) => ({
      data: v.data,
      label: `Concurrent edit, ${new Date(v.timestamp).toLocaleString()}`,
    }))];
    for (const choice of choices) {
      const row = document.createElement('div');
      row.className = 'version';
      const text = document.createElement('p');
      text.textContent = choice.data?.text ?? '';
      const keep = document.createElement('button');
      keep.type = 'button';
      keep.textContent = 'Keep this';
      keep.setAttribute('aria-label', `Keep the version: ${String(choice.data?.text ?? '').slice(0, 40)}`);
      keep.addEventListener('click', async () => {
        try {
          // A new write supersedes every concurrent version it has seen.
          await db.put(id, { ...choice.data, updated: Date.now() });
          afterWrite();
        } catch (error) {
          showError('resolve the conflict', error);
        }
      });
      const label = document.createElement('p');
      label.className = 'meta';
      label.textContent = choice.label;
      row.append(label, text, keep);
      item.append(row);
    }
    return item;
  }));
}

// ---- sync ----------------------------------------------------------------

$('invite-link').value = inviteLink;
$('copy-invite').addEventListener('click', async () => {
  $('invite-link').select();
  try {
    await navigator.clipboard.writeText(inviteLink);
    $('copy-invite').textContent = 'Copied';
  } catch {
    document.execCommand?.('copy');
  }
});

function startSync() {
  try {
    db.sync(relayUrl);
  } catch (error) {
    showError('start syncing', error);
  }
}

const syncTexts = {
  offline: () => 'Offline — changes are kept and sent later',
  connecting: () => 'Connecting…',
  syncing: () => 'Syncing…',
  synced: (s) => `Synced · ${s.peers} other device${s.peers === 1 ? '' : 's'} online`,
  stopped: () => 'Not syncing',
};

function renderSyncState() {
  const sync = db.syncStatus();
  const state = navigator.onLine ? sync.state : 'offline';
  const element = $('sync-state');
  if (element.dataset.state !== state || state === 'synced') {
    element.dataset.state = state;
    $('sync-text').textContent = syncTexts[state](sync);
  }
  element.title = sync.lastError ? `Last error: ${sync.lastError}` : '';
  return sync;
}

/** Asks the service worker to push what this page could not (page closed, offline). */
async function requestBackgroundPush() {
  const registration = await navigator.serviceWorker?.getRegistration();
  if (!registration) return;
  if ('sync' in registration) {
    try {
      await registration.sync.register(`pluresdb:${dbName}`);
      return;
    } catch (error) {
      console.warn('Background Sync unavailable:', error);
    }
  }
  pushOnReconnect = true;
}
let pushOnReconnect = false;

function afterWrite() {
  if (renderSyncState().state !== 'synced' || !navigator.onLine) requestBackgroundPush();
}

window.addEventListener('online', () => {
  startSync(); // reconnect now instead of at the next backoff step
  if (pushOnReconnect) {
    pushOnReconnect = false;
    navigator.serviceWorker?.controller?.postMessage({ type: 'push', db: dbName });
  }
});
window.addEventListener('offline', renderSyncState);

// ---- embedding model setting ---------------------------------------------

/** A short, stable name for a model URL (a 32-bit string hash in base 36). */
function shortHash(text) {
  let hash = 7;
  for (const char of text) hash = (Math.imul(hash, 31) + char.codePointAt(0)) >>> 0;
  return hash.toString(36);
}

$('model-url').value = modelUrl ?? '';
$('model-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const url = $('model-url').value.trim();
  if (url === (modelUrl ?? '')) return;
  // Vectors of one database share a dimension: a new model gets a new
  // database, and the notes are copied (and embedded) into it.
  try {
    const target = `${dbName.split('~')[0]}~${url ? shortHash(url) : 'builtin'}`;
    const copy = await openDatabase(target, { modelUrl: url });
    const { items } = await db.list({ prefix: 'note:', limit: 100000 });
    if (items.length) await copy.putMany(items.map(({ id, data }) => [id, data]));
    await copy.close();
    localStorage.setItem(DB_KEY, target);
    if (url) localStorage.setItem(MODEL_KEY, url);
    else localStorage.removeItem(MODEL_KEY);
    location.reload();
  } catch (error) {
    showError('use that embedding model', error);
  }
});

// ---- start ---------------------------------------------------------------

db.watch({ prefix: 'note:' }, renderNotes);
startSync();
setInterval(renderSyncState, 500);
renderSyncState();

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js', { type: 'module' }).then(async () => {
    const registration = await navigator.serviceWorker.ready;
    // Cache what this page loaded (the package's JS snippets included), so
    // the next visit works offline.
    const urls = [...new Set([location.origin + '/', ...performance.getEntriesByType('resource').map((e) => e.name)])]
      .filter((url) => url.startsWith(location.origin) && !url.includes('/relay'));
    registration.active?.postMessage({ type: 'cache', urls });
    document.body.dataset.offlineReady = 'true';
  }).catch((error) => console.warn('service worker not registered:', error));
}
