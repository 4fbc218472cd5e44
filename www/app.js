// The demo app: notes stored in PluresDB (IndexedDB in this browser).
import init, { PluresDB } from '/pkg/pluresdb.js';

const status = document.getElementById('status');
const form = document.getElementById('note-form');
const text = document.getElementById('note-text');
const list = document.getElementById('notes');

await init();
const db = await PluresDB.open('notes');
// Exposed for debugging from the console and for the end-to-end tests.
globalThis.pluresdb = { db, PluresDB };

async function render() {
  const { items } = await db.list({ prefix: 'note:' });
  items.sort((a, b) => b.data.created - a.data.created);
  list.replaceChildren(...items.map(({ id, data }) => {
    const item = document.createElement('li');
    const body = document.createElement('p');
    body.textContent = data.text;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Delete';
    remove.setAttribute('aria-label', `Delete note: ${data.text.slice(0, 40)}`);
    remove.addEventListener('click', async () => {
      await db.delete(id);
      await render();
    });
    item.append(body, remove);
    return item;
  }));
  status.textContent = `${items.length} note${items.length === 1 ? '' : 's'}, stored in ${db.storageKind}.`;
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const value = text.value.trim();
  if (!value) return;
  const created = Date.now();
  await db.put(`note:${created}:${crypto.randomUUID()}`, { text: value, created });
  text.value = '';
  await render();
});

await render();
document.body.dataset.ready = 'true';
