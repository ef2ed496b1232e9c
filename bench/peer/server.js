// The peer in the benchmarks: the seed design's broadcast path, a Node.js Socket.io server
// with the Redis adapter, so several such processes broadcast to one room together.
//
// What it does is the least the seed's chat service does per message: take a `send` from a
// socket, broadcast it to the room, acknowledge it. It writes nothing down (no MongoDB, no
// Kafka), checks no token and keeps no order numbers, so it is the floor of the seed's own
// stack, not a like-for-like product: our path appends every message to the log before
// anyone sees it.
//
// Environment: PEER_PORT (listen on 127.0.0.1), PEER_REDIS_URL, PEER_KEY (the adapter's Redis
// channel prefix, so runs never cross).
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const port = Number(process.env.PEER_PORT || 18100);
const redisUrl = process.env.PEER_REDIS_URL || 'redis://127.0.0.1:6379';
const key = process.env.PEER_KEY || 'bench:socket.io';
const MAX_CONTENT = 4000;

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on('error', (e) => console.error('redis', e.message));
  sub.on('error', (e) => console.error('redis', e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer((req, res) => {
    // Readiness for the harness; everything else is Socket.io's.
    if (req.url === '/ready') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    }
  });
  const io = new Server(server, {
    adapter: createAdapter(pub, sub, { key }),
    transports: ['websocket'],
    perMessageDeflate: false,
    maxHttpBufferSize: 64 * 1024,
    serveClient: false,
  });

  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      if (typeof room !== 'string' || room.length === 0 || room.length > 200) {
        if (typeof ack === 'function') ack({ error: 'invalid_room' });
        return;
      }
      socket.join(room);
      if (typeof ack === 'function') ack({ ok: true });
    });
    socket.on('send', (m, ack) => {
      const ok = m && typeof m.room === 'string' && typeof m.content === 'string'
        && m.content.length <= MAX_CONTENT;
      if (!ok) {
        if (typeof ack === 'function') ack({ error: 'invalid_message', ref: m && m.ref });
        return;
      }
      io.to(m.room).emit('event', { room: m.room, content: m.content, sent_at: Date.now() });
      if (typeof ack === 'function') ack({ ok: true, ref: m.ref });
    });
  });

  server.listen(port, '127.0.0.1', () => console.log(`peer listening on 127.0.0.1:${port}`));

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
