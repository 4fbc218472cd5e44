// A tiny request/response protocol shared by the worker and the service
// worker fixtures: { id, op, args } in, { id, result } or { id, error } out.
import { PluresDB } from '/pkg/pluresdb.js';

const databases = new Map();

export async function handle({ op, args }) {
  switch (op) {
    case 'open': {
      const db = await PluresDB.open(...args);
      databases.set(args[0], db);
      return { actorId: db.actorId, storageKind: db.storageKind };
    }
    case 'put': return databases.get(args[0]).put(args[1], args[2]);
    case 'get': return databases.get(args[0]).get(args[1]);
    case 'list': return databases.get(args[0]).list(args[1]);
    case 'search': return (await databases.get(args[0]).search(args[1], args[2])).map((hit) => hit.id);
    case 'close': {
      await databases.get(args[0]).close();
      databases.delete(args[0]);
      return null;
    }
    case 'scope': return typeof window === 'undefined' ? self.constructor.name : 'Window';
    default: throw new Error(`unknown op ${op}`);
  }
}

export async function answer(message, reply) {
  try {
    reply({ id: message.id, result: await handle(message) });
  } catch (error) {
    reply({ id: message.id, error: { name: error.name, message: error.message } });
  }
}

/**
 * Page side: registers the service worker fixture (`/sw.js`), waits until it
 * is active and returns `call(op, ...args)`, which sends one request over a
 * MessageChannel and resolves with the answer, and `registration`.
 */
export async function serviceWorkerRpc() {
  const registration = await navigator.serviceWorker.register('/sw.js', { type: 'module' });
  const worker = registration.active ?? registration.installing ?? registration.waiting;
  if (worker.state !== 'activated') {
    await new Promise((resolve) => worker.addEventListener('statechange', () => {
      if (worker.state === 'activated') resolve();
    }));
  }
  let next = 0;
  const call = (op, ...args) => new Promise((resolve, reject) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = ({ data }) => {
      if (data.error) reject(Object.assign(new Error(data.error.message), data.error));
      else resolve(data.result);
    };
    worker.postMessage({ id: next++, op, args }, [channel.port2]);
  });
  return { call, registration };
}
